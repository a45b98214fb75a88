"""``enclave-build secrets``: the RA-TLS secret server (serve, configure), its TLS
certificate and the synthetic test PKI."""

from __future__ import annotations

from pathlib import Path

import click

from enclave_build.contract.secrets_config import ISSUER_MAX_LIFETIME, ISSUER_MIN_LIFETIME

from ..errors import EnclaveBuildError, UsageError
from .output import errors, print_json


@click.group(
    epilog="""\b
Example:
  enclave-build secrets tls tls/ --host secrets.example.com
  enclave-build secrets config out/ --cert tls/server.crt --key tls/server.key \\
      --pccs-url https://pccs.internal:8081/sgx/certification/v4/ --out secrets.toml
  enclave-build secrets serve --config secrets.toml
"""
)
def secrets() -> None:
    """The RA-TLS secret server that releases keys to attested enclaves."""


@secrets.command(
    "serve",
    epilog="""\b
Example:
  enclave-build secrets serve --config secrets.toml & server=$!
  kill -HUP $server      # reload secrets.toml without dropping clients
  kill -TERM $server     # stop: open connections are answered first
""",
)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="secrets.toml ([server], [attestation], measurements, [[secrets]]).",
)
def secrets_serve(config_path: Path) -> None:
    """Serve secrets until SIGINT/SIGTERM; SIGHUP reloads the configuration."""
    # A bad secrets.toml is a usage error (2: attestation's configuration errors); a server
    # that cannot start (TLS material it cannot use, an address in use) a runtime one (1).
    from OpenSSL import SSL

    from enclave_build.attestation.server import serve

    with errors({OSError: EnclaveBuildError}):
        try:
            serve(
                config_path,
                ready=lambda addr: click.echo(f"serving on {addr[0]}:{addr[1]}", err=True),
            )
        except SSL.Error as exc:  # the [server] cert/key, loaded at start-up
            reasons = (
                "; ".join(str(e[-1]) for e in exc.args[0] if isinstance(e, tuple))
                if exc.args and isinstance(exc.args[0], list)
                else str(exc)
            )
            raise EnclaveBuildError(
                f"{config_path}: cannot use the TLS certificate and key of "
                f"[server]: {reasons or 'OpenSSL error'}"
            ) from None


@secrets.command(
    "config",
    epilog="""\b
Example (one secret server for two services, verifying quotes against Intel's root):
  enclave-build secrets config out/face-detect out/ocr --cert server.crt --key server.key \\
      --pccs-url https://pccs.internal:8081/sgx/certification/v4/ --out secrets.toml
  enclave-build secrets serve --config secrets.toml
\b
An Occlum build (its init asks over GrSecret; run the server in an enclave of its own):
  enclave-build secrets config out/face-occlum --cert server.crt --key server.key \\
      --pccs-url https://pccs.internal:8081/sgx/certification/v4/ \\
      --grsecret-listen 0.0.0.0:50051 --out secrets.toml
""",
)
@click.argument(
    "policies",
    nargs=-1,
    required=True,
    metavar="BUILD_DIR_OR_FRAGMENT...",
    type=click.Path(exists=True, path_type=Path),
)
@click.option(
    "--cert",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The server's CA-signed TLS certificate (enclaves check it against the CA "
    "in their spec's [secrets] ca).",
)
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its private key.",
)
@click.option(
    "--listen",
    default="0.0.0.0:4433",
    show_default=True,
    metavar="HOST:PORT",
    help="Address the secret server listens on ([server] listen).",
)
@click.option(
    "--root-ca",
    default="intel",
    show_default=True,
    help="Root of the quote's PCK chain: 'intel', or a PEM/DER file (a synthetic test "
    "root for simulation; the server warns about it at every start).",
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Offline collateral file (JSON) ...",
)
@click.option("--pccs-url", help="... or the PCCS to fetch collateral from.")
@click.option(
    "--audit-log",
    default="audit.jsonl",
    show_default=True,
    help="Audit log (JSON lines; relative to the config file; '-' = stderr).",
)
@click.option(
    "--issuer-ca",
    "issuer_ca",
    metavar="DIR",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Issue serving certificates to attested enclaves ([tls] issuer = "
    '"secret-server") with the CA in DIR/issuer-ca.pem and DIR/issuer-ca.key '
    "(`secrets tls DIR` writes them; clients trust issuer-ca.pem).",
)
@click.option(
    "--issuer-lifetime",
    default=86400,
    show_default=True,
    type=click.IntRange(ISSUER_MIN_LIFETIME, ISSUER_MAX_LIFETIME),
    metavar="SECONDS",
    help="How long an issued serving certificate is valid (the enclave renews it two thirds of "
    "the way to expiry).",
)
@click.option(
    "--grsecret-listen",
    metavar="HOST:PORT",
    help="Also serve Occlum's ratls.GrSecret/GetSecret (mutual RA-TLS) there "
    "([grsecret] listen): needed by Occlum builds, whose init fetches its keys "
    "and its image key (image_key) this way.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write secrets.toml.",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option(
    "--allow-keys-outside",
    is_flag=True,
    help="Accept key files outside a fragment's own keys directory (its build's "
    "[secrets] keys_dir) or owned by another user than the fragment; each is "
    "warned about. Without it they are refused (exit 2).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: written, secrets (names), "
    "measurements (files), keys ({secret, file, fragment}).",
)
def secrets_config(
    policies: tuple[Path, ...],
    cert: Path,
    key: Path,
    listen: str,
    root_ca: str,
    collateral: Path | None,
    pccs_url: str | None,
    audit_log: str,
    issuer_ca: Path | None,
    issuer_lifetime: int,
    grsecret_listen: str | None,
    out: Path,
    force: bool,
    allow_keys_outside: bool,
    as_json: bool,
) -> None:
    """Write a secret server's secrets.toml from builds' policy fragments.

    Each BUILD_DIR is a build output (its secrets-policy.toml is used), or name the fragment
    file itself. Measurements and key files are referenced by absolute path; the result is
    checked by the secret server's own loader before it is written. A fragment's key files must
    be in its own keys directory (its build's [secrets] keys_dir) and belong to the fragment's
    owner, unless --allow-keys-outside.
    """
    from ..secrets_config import ServerSide, compose_config, write_config

    with errors():
        root = root_ca if root_ca == "intel" else str(Path(root_ca).resolve())
        config = compose_config(
            list(policies),
            ServerSide(
                cert=cert,
                key=key,
                listen=listen,
                root_ca=root,
                collateral=collateral,
                pccs_url=pccs_url,
                audit_log=audit_log,
                grsecret_listen=grsecret_listen,
                issuer_ca=issuer_ca,
                issuer_lifetime=issuer_lifetime,
            ),
            allow_keys_outside=allow_keys_outside,
        )
        written = write_config(out, config, force=force)
    if as_json:
        print_json(
            {
                "written": str(written),
                "secrets": [s.name for s in config.config.secrets],
                "measurements": [str(m) for m in config.config.measurements],
                "keys": [
                    {"secret": k.secret, "file": k.file, "fragment": str(k.fragment)}
                    for k in config.sources
                ],
            }
        )
    else:
        click.echo(
            f"wrote {written}: {len(config.config.secrets)} secret(s) for "
            f"{len(config.config.measurements)} build(s); serve it with "
            f"`enclave-build secrets serve --config {written}`"
        )


@secrets.command(
    "simulate-pki",
    epilog="""\b
Example:
  enclave-build secrets simulate-pki pki/
  enclave-build secrets config out/ --cert server.crt --key server.key \\
      --root-ca pki/root.pem --collateral pki/collateral.json --out secrets.toml
  sudo "$(command -v enclave-build)" run out --simulate --pki pki/
""",
)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--days",
    default=365,
    show_default=True,
    type=click.IntRange(1, 3650),
    help="Validity of the certificates and collateral.",
)
@click.option("--force", is_flag=True, help="Replace a PKI already in DIRECTORY.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: written (files), root_ca, collateral, synthetic (always true).",
)
def secrets_simulate_pki(directory: Path, days: int, force: bool, as_json: bool) -> None:
    """Write a SYNTHETIC TEST SGX PKI to DIRECTORY, for simulated attestation.

    `run --simulate` signs its quotes with it; a secret server accepts them only when told to
    trust DIRECTORY/root.pem. Never trust this root in production: whoever holds
    DIRECTORY/pki-private.json can mint quotes for any enclave.
    """
    from enclave_build.attestation.synthetic import SyntheticPKI

    with errors():
        written = SyntheticPKI(days=days).save(directory, overwrite=force)
    root, collateral = directory.resolve() / "root.pem", directory.resolve() / "collateral.json"
    if as_json:
        print_json(
            {
                "written": [str(p) for p in written],
                "root_ca": str(root),
                "collateral": str(collateral),
                "synthetic": True,
            }
        )
    for path in [] if as_json else written:
        click.echo(
            f"wrote {path}"
            + (" (private keys, mode 0600)" if path.name.endswith("private.json") else "")
        )
    if not as_json:
        click.echo(
            "\nTo trust it, put this in the secret server's secrets.toml:\n\n"
            f'[attestation]\nroot_ca = "{root}"\ncollateral = "{collateral}"\n'
        )
    click.echo(
        "WARNING: this is a SYNTHETIC TEST root, not Intel's: a secret server that trusts "
        "it releases secrets to simulated enclaves that prove nothing. For tests and "
        "`run --simulate` only.",
        err=True,
    )


def _report_issuer_only(directory: Path, cert: Path, key: Path, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "issuer_ca": str(cert),
                "issuer_key": str(key),
                "kept": ["ca.pem", "server.crt", "server.key"],
            }
        )
        return
    click.echo(
        f"kept {directory.resolve()}/ca.pem, server.crt, server.key (the secret server's CA is "
        "built into the services: --force replaces it, and every service must be rebuilt)"
    )
    click.echo(
        f"wrote {cert} (the CA of the services' serving certificates: their clients trust it)"
    )
    click.echo(f"wrote {key} (its private key, mode 0600: the secret server's)")
    click.echo(
        "\nFor the secret server:\n\n"
        f"  enclave-build secrets config BUILD_DIR... --issuer-ca {cert.parent} ...\n"
    )


@secrets.command(
    "tls",
    epilog="""\b
Example:
  enclave-build secrets tls tls/ --host secrets.example.com --host 10.0.0.5
\b
The same with openssl (keep ca.key offline, or delete it):
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
      -keyout ca.key -out ca.pem -days 365 -subj "/CN=secret-server CA" \\
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \\
      -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
      -keyout server.key -out server.csr -subj "/CN=secrets.example.com"
  echo "subjectAltName=DNS:secrets.example.com,IP:10.0.0.5" > ext.cnf
  echo "extendedKeyUsage=serverAuth" >> ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
      -days 365 -extfile ext.cnf -out server.crt
  chmod 600 server.key
""",
)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--host",
    "hosts",
    required=True,
    multiple=True,
    metavar="NAME",
    help='Name the enclaves connect to ([secrets] server = "NAME:PORT"): a DNS name '
    "or an IP address (repeatable; the first is the subject's CN).",
)
@click.option(
    "--days",
    default=365,
    show_default=True,
    type=click.IntRange(1, 3650),
    help="Validity of the CA and the server certificate.",
)
@click.option(
    "--port",
    default=4433,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The secret server's port (only for the printed spec lines).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace ca.pem, server.crt, server.key, issuer-ca.pem, issuer-ca.key in DIRECTORY.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: ca, cert, key, issuer_ca, issuer_key, hosts, days, server (the "
    "[secrets] server value).",
)
def secrets_tls(
    directory: Path, hosts: tuple[str, ...], days: int, port: int, force: bool, as_json: bool
) -> None:
    """Write a small CA and a TLS certificate for the secret server to DIRECTORY.

    DIRECTORY/ca.pem is the CA the enclaves trust ([secrets] ca in every spec: it is built into
    the image, so replacing it changes MRENCLAVE); server.crt and server.key (mode 0600) are the
    secret server's certificate, for the --host names, and key. The CA's private key is not
    kept: nothing else can be issued under it; when server.crt expires, run this again and
    rebuild the services with the new ca.pem. For production, prefer a certificate from your
    organisation's own PKI (see the openssl equivalent below to do it by hand).

    DIRECTORY/issuer-ca.pem and issuer-ca.key (mode 0600) are a second CA, kept: with
    `secrets config --issuer-ca DIRECTORY` the secret server signs short-lived serving
    certificates with it for the enclaves its policy accepts ([tls] issuer = "secret-server");
    the services' clients trust issuer-ca.pem. When DIRECTORY already holds ca.pem, server.crt
    and server.key but no issuing CA, only issuer-ca.pem and issuer-ca.key are written (the
    rest is kept: replacing ca.pem changes every service's MRENCLAVE).
    """
    import ipaddress
    import re as _re

    from enclave_build.attestation.synthetic import tls_ca_and_server
    from enclave_build.contract.names import ISSUER_CA_CERT, ISSUER_CA_KEY

    from ..secrets_config import write_issuing_ca

    with errors():
        for host in hosts:
            try:
                ipaddress.ip_address(host.strip("[]"))
                continue
            except ValueError:
                pass
            if not _re.fullmatch(
                r"(?=.{1,253}\Z)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                r"[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                r"[A-Za-z0-9])?)*\.?",
                host,
            ):
                raise UsageError(f"--host {host!r}: not a DNS name or an IP address")
        issuer_paths = (directory / ISSUER_CA_CERT, directory / ISSUER_CA_KEY)
        server_paths = (directory / "ca.pem", directory / "server.crt", directory / "server.key")
        if (
            not force
            and all(p.is_file() for p in server_paths)
            and not any(p.exists() for p in issuer_paths)
        ):
            # A DIRECTORY made before issuing CAs (or by hand): add only the issuing CA. The
            # secret server's CA is measured into every service; replacing it is --force.
            try:
                issuer_cert, issuer_key = write_issuing_ca(directory, days=days)
            except OSError as exc:
                raise EnclaveBuildError(f"{directory}: cannot write: {exc}") from None
            _report_issuer_only(directory, issuer_cert.resolve(), issuer_key.resolve(), as_json)
            return
        try:
            if not force:
                for path in issuer_paths:
                    if path.exists():
                        raise FileExistsError(f"{path} exists")
            ca, cert, key = tls_ca_and_server(
                directory,
                list(hosts),
                days=days,
                ca_name="enclave-build secret-server CA",
                overwrite=force,
            )
            issuer_cert, issuer_key = write_issuing_ca(directory, days=days)
        except FileExistsError as exc:
            raise UsageError(
                f"{exc} (use --force to replace ca.pem, server.crt, server.key, "
                "issuer-ca.pem and issuer-ca.key)"
            ) from None
        except OSError as exc:
            raise EnclaveBuildError(f"{directory}: cannot write: {exc}") from None
    ca, cert, key = ca.resolve(), cert.resolve(), key.resolve()
    issuer_cert, issuer_key = issuer_cert.resolve(), issuer_key.resolve()
    first = hosts[0] if ":" not in hosts[0] else f"[{hosts[0].strip('[]')}]"
    if as_json:
        print_json(
            {
                "ca": str(ca),
                "cert": str(cert),
                "key": str(key),
                "issuer_ca": str(issuer_cert),
                "issuer_key": str(issuer_key),
                "hosts": list(hosts),
                "days": days,
                "server": f"{first}:{port}",
            }
        )
        return
    click.echo(f"wrote {ca} (the CA the enclaves trust)")
    click.echo(f"wrote {cert} (for {', '.join(hosts)}; valid {days} days)")
    click.echo(f"wrote {key} (private key, mode 0600)")
    click.echo(
        f"wrote {issuer_cert} (the CA of the services' serving certificates: their clients "
        "trust it)"
    )
    click.echo(f"wrote {issuer_key} (its private key, mode 0600: the secret server's)")
    click.echo(f'\nIn each service\'s spec:\n\n[secrets]\nserver = "{first}:{port}"\nca = "{ca}"\n')
    click.echo(
        "For the secret server:\n\n"
        f"  enclave-build secrets config BUILD_DIR... --cert {cert} --key {key} "
        f"--issuer-ca {issuer_cert.parent} --listen 0.0.0.0:{port} ...\n"
    )
    click.echo(
        "Note: a CA of its own for the secret server only. In production prefer a "
        "certificate from your organisation's PKI (then set [secrets] ca to its CA).",
        err=True,
    )
