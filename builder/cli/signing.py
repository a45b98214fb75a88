"""``enclave-build keygen`` and ``enclave-build gramine``: enclave signing keys, measuring and
signing manifests, reading SIGSTRUCTs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import UsageError
from .output import errors, print_fields, print_json, signature_text


@click.command(
    epilog="""\b
Examples:
  enclave-build keygen --out keys/enclave-key.pem
  ENCLAVE_KEY_PASS=... enclave-build keygen --out key.pem --passphrase-env ENCLAVE_KEY_PASS \\
      --public-out key.pub.pem      # [signing] passphrase_env = "ENCLAVE_KEY_PASS"
"""
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the new PEM private key (created with mode 0600).",
)
@click.option(
    "--passphrase-env",
    metavar="VAR",
    help="Encrypt the key with the passphrase in environment variable VAR.",
)
@click.option(
    "--public-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the public key (PEM) here.",
)
def keygen(out: Path, passphrase_env: str | None, public_out: Path | None) -> None:
    """Generate an SGX enclave signing key (RSA-3072, public exponent 3)."""
    from ..gramine.signer import public_key_pem, write_new_key

    with errors():
        passphrase = _passphrase(passphrase_env)
        key = write_new_key(out, passphrase)
        if public_out:
            public_out.write_bytes(public_key_pem(key))
    click.echo(f"wrote {out} (RSA-3072, e=3, mode 0600)", err=True)


def _passphrase(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise UsageError(f"environment variable {var} (--passphrase-env) is not set")
    if not value:
        raise UsageError(
            f"environment variable {var} (--passphrase-env) is empty; an empty "
            "passphrase would leave the key unencrypted (drop --passphrase-env "
            "for an unencrypted key)"
        )
    return value.encode()


# --------------------------------------------------------------------------- gramine


@click.group(
    epilog="""\b
Examples:
  enclave-build gramine sigstruct out.sig
  enclave-build gramine sign --manifest app.manifest.sgx --libpal libpal.so \\
      --offsets _graminelibos_offsets.py --key enclave-key.pem --sigfile app.sig
"""
)
def gramine() -> None:
    """Gramine tools: measure and sign manifests, read SIGSTRUCTs."""


@gramine.command(
    epilog="""\b
Examples:
  G=/usr/lib/x86_64-linux-gnu/gramine
  enclave-build gramine sign --manifest app.manifest.sgx --libpal $G/sgx/libpal.so \\
      --offsets /usr/lib/python3/dist-packages/_graminelibos_offsets.py \\
      --key enclave-key.pem --date 0000-00-00 --sigfile app.sig --json
  enclave-build gramine sign ... --tbs-out app.tbs        # external signing, step one
  enclave-build gramine sign ... --public-key pub.pem --signature app.tbs.sig --sigfile app.sig
"""
)
@click.option(
    "--manifest",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The final manifest (.manifest.sgx); its exact bytes are measured.",
)
@click.option(
    "--libpal",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Gramine's sgx/libpal.so.",
)
@click.option(
    "--offsets",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Gramine's _graminelibos_offsets.py (read as data).",
)
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="RSA-3072 (e=3) PEM private key.",
)
@click.option(
    "--passphrase-env", metavar="VAR", help="Environment variable with the key's passphrase."
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="External signing: the signer's public key (PEM).",
)
@click.option(
    "--signature",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="External signing: detached signature over the --tbs-out bytes.",
)
@click.option(
    "--tbs-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="External signing, step one: write the 256 bytes to sign here and stop.",
)
@click.option(
    "--date",
    default=None,
    metavar="YYYY-MM-DD|0000-00-00",
    help="SIGSTRUCT date (default: today; 0000-00-00 for reproducible signatures).",
)
@click.option(
    "--sigfile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the SIGSTRUCT.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print mr_enclave, mr_signer, isv_prod_id and isv_svn as JSON.",
)
def sign(
    manifest: Path,
    libpal: Path,
    offsets: Path,
    key: Path | None,
    passphrase_env: str | None,
    public_key: Path | None,
    signature: Path | None,
    tbs_out: Path | None,
    date: str | None,
    sigfile: Path | None,
    as_json: bool,
) -> None:
    """Measure MANIFEST and write its SIGSTRUCT (like gramine-sgx-sign, byte for byte)."""
    from ..gramine.sign import sign_manifest_file

    with errors():
        result = sign_manifest_file(
            manifest,
            libpal,
            offsets,
            key=key,
            passphrase=_passphrase(passphrase_env),
            public_key=public_key,
            signature=signature,
            tbs_out=tbs_out,
            date=date,
            sigfile=sigfile,
        )
    if result.signed is None:
        click.echo(
            f"mr_enclave {result.mr_enclave.hex()}; wrote {result.tbs_size} bytes to sign "
            f"to {result.written}",
            err=True,
        )
    elif as_json:
        print_json(result.signed.summary())
    else:
        click.echo(f"mr_enclave {result.signed.mr_enclave.hex()}")
        click.echo(f"mr_signer  {result.signed.mr_signer.hex()}")


@gramine.command(
    epilog="""\b
Example:
  enclave-build gramine sigstruct audit/face-detect.sig --json
"""
)
@click.argument("sigfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: mr_enclave, mr_signer, "
    "isv_prod_id, isv_svn, date, debug, attributes, signature_valid, "
    "signature_problem.",
)
def sigstruct(sigfile: Path, as_json: bool) -> None:
    """Show the identity in a SIGSTRUCT (.sig) file and check its signature (exit 1 if it does
    not verify: `signature INVALID: reason`)."""
    from ..gramine.sigstruct import ARCH_LAYOUT, Sigstruct, summarize

    with errors():
        sig = Sigstruct.from_bytes(sigfile.read_bytes(), ARCH_LAYOUT, str(sigfile))
        info = summarize(sig)
    if as_json:
        print_json(info)
    else:
        print_fields(
            {k: v for k, v in info.items() if k not in ("signature_valid", "signature_problem")}
        )
        click.echo(f"{'signature':<16} {signature_text(info)}")
    if not info["signature_valid"]:
        click.echo(
            f"error: the SIGSTRUCT's signature does not verify: {info['signature_problem']}",
            err=True,
        )
        sys.exit(1)
