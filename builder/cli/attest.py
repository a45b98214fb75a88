"""`enclave-build attest` and `enclave-build secrets upload`: check a server's enclave identity
before trusting it, and hand keys to an attested secret server over that same connection.

Parses arguments and prints; the work is in :mod:`attestation.attest_client` and
:mod:`attestation.upload`.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from enclave_build.plugin import EnclaveBuildError, UsageError, hookimpl

from .output import errors, print_json

_VERIFY_HELP = """\b
Verification: the quote is checked with dcap-qvl against the collateral (--collateral FILE, or
--pccs URL) up to Intel's SGX root CA; --allow-synthetic-root ROOT.pem trusts a SYNTHETIC TEST
root instead (simulation only; warned loudly). DEBUG enclaves are always refused; TCB statuses
other than UpToDate only with --allow-tcb-status. The identity must equal one of the
measurements.json files: mr_enclave, mr_signer, isv_prod_id, isv_svn and debug."""


def _verification_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--measurements",
            "measurement_files",
            required=True,
            multiple=True,
            metavar="M.json",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="measurements.json of the build(s) the server must be (repeatable; "
            "one must match).",
        ),
        click.option(
            "--collateral",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Offline collateral (dcap-qvl JSON) to verify the quote with ...",
        ),
        click.option(
            "--pccs",
            "pccs_url",
            metavar="URL",
            help="... or fetch it from this PCCS "
            "(e.g. https://pccs.internal:8081/sgx/certification/v4/).",
        ),
        click.option(
            "--allow-synthetic-root",
            "synthetic_root",
            metavar="ROOT.pem",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Trust this root CA instead of Intel's: for simulation with a "
            "synthetic test PKI only (a loud warning is printed).",
        ),
        click.option(
            "--root-ca",
            "legacy_root",
            hidden=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
        ),
        click.option(
            "--allow-tcb-status",
            multiple=True,
            metavar="STATUS",
            help="Accept this TCB status besides UpToDate (repeatable; warned).",
        ),
        click.option(
            "--timeout",
            default=10.0,
            show_default=True,
            type=click.FloatRange(0.1),
            help="Seconds for connecting, the handshake and collateral; "
            "for an upload, also for the server's answer.",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the verdict as JSON (stable schema, see below).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _endpoint(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="HOST:PORT")
    return host.strip("[]"), int(port)


def _expectation(
    measurement_files,
    collateral,
    pccs_url,
    synthetic_root,
    legacy_root,
    allow_tcb_status,
    require_framework=None,
):
    from enclave_build.attestation.attest_client import Expectation
    from enclave_build.attestation.collateral import FileCollateral, PccsCollateral
    from enclave_build.attestation.measurements import Measurements, MeasurementsError
    from enclave_build.attestation.verify import TcbPolicy, VerifierConfigError, load_root_der

    if (collateral is None) == (pccs_url is None):
        raise UsageError(
            "give exactly one of --collateral FILE and --pccs URL (the collateral "
            "the server's quote is verified with)"
        )
    if synthetic_root is not None and legacy_root is not None:
        raise UsageError("--root-ca is the old name of --allow-synthetic-root: give one")
    root = synthetic_root or legacy_root
    try:
        builds = tuple((str(p), Measurements.load(p)) for p in measurement_files)
    except MeasurementsError as exc:  # a file given on the command line that cannot be used
        raise UsageError(f"--measurements: {exc}") from None
    not_servers = [
        f"{src} ({b.framework})"
        for src, b in builds
        if require_framework and b.framework != require_framework
    ]
    if not_servers:
        raise UsageError(
            f"--measurements {not_servers[0]}: not a {require_framework} build; "
            "keys are uploaded to the secret server, which releases them to the "
            "model enclaves"
        )
    try:
        policy = TcbPolicy(frozenset({"UpToDate", *allow_tcb_status}))
    except VerifierConfigError as exc:
        raise UsageError(f"--allow-tcb-status: {exc}") from None
    for status in sorted(set(allow_tcb_status) - {"UpToDate"}):
        click.echo(
            f"warning: accepting TCB status {status}: such platforms have known, "
            "unpatched vulnerabilities",
            err=True,
        )
    root_der = None
    if root is not None:
        try:
            root_der = load_root_der(root)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--allow-synthetic-root {root}: not a certificate: {exc}") from None
        click.echo(
            f"warning: trusting the root CA in {root} instead of Intel's: quotes it "
            "vouches for are not backed by Intel. A SYNTHETIC TEST root proves nothing "
            "about real hardware; use it for simulation only.",
            err=True,
        )
    try:
        source = FileCollateral(collateral) if collateral is not None else PccsCollateral(pccs_url)
    except VerifierConfigError as exc:
        raise UsageError(f"--collateral: {exc}") from None
    return Expectation(builds, source, root_der, policy), root is not None


def _print_verdict(info: dict) -> None:
    names = (
        "service",
        "framework",
        "measurements",
        "evidence",
        "certificate_sha256",
        "mr_enclave",
        "mr_signer",
        "isv_prod_id",
        "isv_svn",
        "debug",
        "status",
        "advisory_ids",
    )
    for name in names:
        value = info.get(name)
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        click.echo(f"{name:<19} {value if value is not None else '-'}")


def _refused(endpoint: str, exc, synthetic: bool, as_json: bool) -> None:
    from enclave_build.attestation.attest_client import verdict

    if as_json:
        print_json(verdict(endpoint, exc, synthetic_root=synthetic))
    click.echo(f"error: {endpoint} not attested: {exc.reason}", err=True)
    for m in exc.mismatches:
        click.echo(
            f"error:   {m.field}: {m.build} has {m.expected!r}, the server has {m.actual!r}",
            err=True,
        )
    if not synthetic and "quote verification failed" in exc.reason:
        click.echo(
            "hint: the quote was verified up to Intel's SGX root CA. A server run with "
            "`enclave-build run --simulate` quotes with a SYNTHETIC test PKI: for such a "
            "simulation only, add --allow-synthetic-root PKI/root.pem (the root.pem of "
            "the --pki directory it was run with)",
            err=True,
        )
    sys.exit(1)


@click.command(
    "attest",
    epilog=f"""{_VERIFY_HELP}

\b
Exit status: 0 only when the server is one of the builds; 1 when it is not (or cannot be
verified, or cannot be reached); 2 for usage errors.
\b
JSON (--json, stable, schema 1): {{"schema": 1, "endpoint", "attested", "reason", "evidence",
"certificate_sha256", "synthetic_root", "measurements", "service", "framework", "image",
"status", "advisory_ids", "mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "debug",
"attributes", "mismatches": [{{"measurements", "field", "expected", "actual"}}]}}
\b
Example:
  enclave-build attest secrets.example.com:4433 \\
      --measurements out/secret-server/measurements.json \\
      --pccs https://pccs.internal:8081/sgx/certification/v4/
\b
Example (simulation: `enclave-build run out/secret-server --simulate --pki pki/`):
  enclave-build attest 127.0.0.1:4433 --measurements out/secret-server/measurements.json \\
      --collateral pki/collateral.json --allow-synthetic-root pki/root.pem --json
""",
)
@click.argument("endpoint", metavar="HOST:PORT")
@_verification_options
def attest(
    endpoint: str,
    measurement_files: tuple[Path, ...],
    collateral: Path | None,
    pccs_url: str | None,
    synthetic_root: Path | None,
    legacy_root: Path | None,
    allow_tcb_status: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Check that HOST:PORT runs in a genuine SGX enclave built as one of the given builds.

    Opens one TLS connection, takes the RA-TLS certificate the server presents (a secret server
    built with framework "secret-server", or any service serving RA-TLS), checks that its quote
    binds the certificate's key, verifies the quote and compares the enclave's identity with
    the measurements.json files. Nothing is sent to the server. A mismatch names the field and
    both values.
    """
    from enclave_build.attestation.attest_client import AttestationRefused, open_attested, verdict

    host, port = _endpoint(endpoint)
    with errors():
        expectation, synthetic = _expectation(
            measurement_files, collateral, pccs_url, synthetic_root, legacy_root, allow_tcb_status
        )
        try:
            channel = open_attested(host, port, expectation, timeout=timeout)
        except AttestationRefused as exc:
            _refused(endpoint, exc, synthetic, as_json)
    channel.close()
    info = verdict(endpoint, channel, synthetic_root=synthetic)
    if as_json:
        print_json(info)
        return
    click.echo(
        f"attested: {endpoint} is build {info['service']!r} ({info['measurements']})"
        + (" [SYNTHETIC root: simulation only]" if synthetic else "")
    )
    _print_verdict(info)


def _read_key(name: str, path: Path) -> bytes:
    from enclave_build.attestation.wire import WRAP_KEY_SIZE

    try:
        info = os.stat(path)
    except OSError as exc:
        raise UsageError(f"--file {path} (secret {name!r}): {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"--file {path} (secret {name!r}): not a regular file")
    if info.st_mode & 0o077:
        raise UsageError(
            f"--file {path} (secret {name!r}): group/others may read it (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); make it private: chmod 600 {path}"
        )
    data = path.read_bytes()
    if len(data) != WRAP_KEY_SIZE:
        raise UsageError(
            f"--file {path} (secret {name!r}): {len(data)} bytes; a key is exactly "
            f"{WRAP_KEY_SIZE} raw bytes (e.g. from `enclave-build pf keygen`)"
        )
    return data


@click.command(
    "upload",
    epilog=f"""{_VERIFY_HELP}

\b
Only a secret server presenting an RA-TLS certificate is accepted (one running in an enclave,
framework "secret-server"); the measurements.json must be a secret-server build. Keys are sent on
the attested TLS connection itself, never on a second one, after the server's identity matched.
The server stores them in enclave memory only: upload them again after every start. Key bytes
are never printed or logged.
\b
JSON (--json, stable, schema 1): the verdict of `enclave-build attest --json` plus
"uploaded" (the secret names sent) and "server_answer" (the server's reply line).
\b
Owner authentication: --owner-cert/--owner-key is the client certificate the server's spec
lists in [secret-server] owners (pinned; measured into the server's MRENCLAVE). Make one with:
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \\
      -subj "/CN=model owner" -keyout owner.key -out owner.crt && chmod 600 owner.key
\b
Example:
  enclave-build secrets upload secrets.example.com:4433 \\
      --measurements out/secret-server/measurements.json \\
      --pccs https://pccs.internal:8081/sgx/certification/v4/ \\
      --owner-cert owner.crt --owner-key owner.key \\
      --name face-detect-key --file keys/face-detect-key.key
""",
)
@click.argument("endpoint", metavar="HOST:PORT")
@click.option(
    "--name",
    "names",
    multiple=True,
    required=True,
    metavar="KEY",
    help="Secret name (a [[secrets]] name of the server's policy); repeatable, paired "
    "in order with --file.",
)
@click.option(
    "--file",
    "files",
    multiple=True,
    required=True,
    metavar="KEYFILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The key: 16 raw bytes, mode 0600 (repeatable, one per --name).",
)
@click.option(
    "--owner-cert",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your owner certificate (PEM), presented as TLS client certificate.",
)
@click.option(
    "--owner-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its private key (PEM).",
)
@_verification_options
def upload(
    endpoint: str,
    names: tuple[str, ...],
    files: tuple[Path, ...],
    owner_cert: Path,
    owner_key: Path,
    measurement_files: tuple[Path, ...],
    collateral: Path | None,
    pccs_url: str | None,
    synthetic_root: Path | None,
    legacy_root: Path | None,
    allow_tcb_status: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Attest the secret server at HOST:PORT, then upload keys to it over that connection.

    First exactly what `enclave-build attest` does (the server must be one of the
    measurements.json builds); then, on the same TLS connection, the keys, all or none. The
    server accepts them only from an owner it lists, and only for secrets of its policy that
    are provided by upload.
    """
    from enclave_build.attestation.attest_client import AttestationRefused, open_attested, verdict
    from enclave_build.attestation.upload import UploadRefused, encode_request, upload_keys

    host, port = _endpoint(endpoint)
    with errors():
        if len(names) != len(files):
            raise UsageError(f"{len(names)} --name but {len(files)} --file: give them in pairs")
        if len(set(names)) != len(names):
            raise UsageError("a --name is given twice")
        keys = [(name, _read_key(name, path)) for name, path in zip(names, files, strict=True)]
        try:  # what the protocol cannot carry is refused here, not after attesting the server
            encode_request(keys)
        except ValueError as exc:
            raise UsageError(f"--name: {exc}") from None
        check_owner_certificate(owner_cert)
        expectation, synthetic = _expectation(
            measurement_files,
            collateral,
            pccs_url,
            synthetic_root,
            legacy_root,
            allow_tcb_status,
            require_framework="secret-server",
        )
        try:
            channel = open_attested(
                host,
                port,
                expectation,
                client_cert=owner_cert,
                client_key=owner_key,
                timeout=timeout,
            )
        except AttestationRefused as exc:
            _refused(endpoint, exc, synthetic, as_json)
        try:
            with channel:
                answer = upload_keys(channel.tls, keys, timeout=timeout)
        except (UploadRefused, OSError) as exc:
            click.echo(f"error: {endpoint}: upload failed: {exc}", err=True)
            sys.exit(1)
    info = {
        **verdict(endpoint, channel, synthetic_root=synthetic),
        "uploaded": list(names),
        "server_answer": answer,
    }
    if as_json:
        print_json(info)
        return
    click.echo(
        f"attested: {endpoint} is build {info['service']!r} (mr_enclave "
        f"{info['mr_enclave']})" + (" [SYNTHETIC root]" if synthetic else "")
    )
    click.echo(f"uploaded: {answer}")


def check_owner_certificate(path: Path) -> None:
    """An owner certificate must be an ordinary one: the server takes a certificate with SGX
    evidence for an enclave's and would never treat the connection as an upload."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from enclave_build.attestation.upload import is_owner_certificate

    data = path.read_bytes()
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data)
        )
    except ValueError as exc:
        raise UsageError(f"--owner-cert {path}: not an X.509 certificate: {exc}") from None
    if not is_owner_certificate(cert.public_bytes(Encoding.DER)):
        raise UsageError(
            f"--owner-cert {path}: carries SGX evidence (an RA-TLS certificate, or "
            "one that cannot be read); the server would take it for an enclave's. "
            "Use the ordinary certificate listed in the server's owners"
        )


@hookimpl
def enclave_build_register_commands(cli: click.Group) -> None:
    """``enclave-build attest``, and ``upload`` in the ``secrets`` group (a builtin plugin)."""
    cli.add_command(attest)
    secrets = cli.commands.get("secrets")
    if not isinstance(secrets, click.Group):
        raise EnclaveBuildError(
            "the `secrets` command group is missing: `secrets upload` has no place"
        )
    secrets.add_command(upload)


__all__ = ["attest", "upload", "check_owner_certificate", "enclave_build_register_commands"]
