"""The secret server of ``enclave-build dev``: a synthetic PKI and a secret-server
configuration kept in the project's ``.enclave-build/``, and a look at the spec's secret-server
address before anything is started.

* :func:`ensure_pki` -- the synthetic test PKI the simulated quoter signs with and the local
  secret server trusts (``.enclave-build/pki``): made once (as ``enclave-build secrets
  simulate-pki`` makes it), reused after; made anew only when it is about to expire;
* :func:`write_config` -- ``.enclave-build/secrets.toml`` for this build's keys (as ``enclave-build
  secrets config`` composes it, checked by the server's own loader), listening on the address
  the enclave was built to dial, with the certificate and key next to the spec's ``[secrets]
  ca`` (``tls/server.crt``, ``tls/server.key``, as ``init`` writes them), one process, audit
  lines on the server's stderr; with the issuing CA of :func:`ensure_issuer_ca` as its
  ``[issuer]`` when the build's ``[tls] issuer`` is ``"secret-server"``;
* :func:`ensure_issuer_ca` -- the CA the secret server issues serving certificates with: the
  project's own ``issuer-ca.pem`` / ``.key`` next to ``[secrets] ca`` (``init`` and ``secrets
  tls`` write them), else one made once in ``.enclave-build/issuer`` and reused after;
* :func:`probe` -- what answers at the build's secret-server address: nothing (dev starts its
  own), a TLS server whose certificate the spec's CA vouches for (a secret server already
  running: dev uses it), or something else (an error naming it).
"""

from __future__ import annotations

import datetime as _dt
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave_build.contract.names import SECRETS_FILE

from ..errors import EnclaveBuildError, UsageError
from ..secrets_config import ServerSide, compose_config
from ..secrets_config import write_config as write_secrets_config

PKI_DIR = "pki"
#: A kept PKI with less validity than this left is replaced.
PKI_MARGIN = _dt.timedelta(days=7)
PKI_DAYS = 365
#: Loopback names: a secret server there can be started here.
LOOPBACK = ("localhost", "127.0.0.1", "::1")


class DevSecretsError(EnclaveBuildError):
    """The local secret server cannot be prepared."""


def ensure_pki(
    directory: Path,
    log: Callable[[str], None],
    now: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.UTC),
) -> Path:
    """The synthetic PKI in *directory* (made if missing or about to expire); its path."""
    from enclave_build.attestation.synthetic import PKIError, SyntheticPKI

    if (directory / "pki-private.json").exists():
        try:
            pki = SyntheticPKI.load(directory)
        except PKIError as exc:
            raise DevSecretsError(f"{exc} (remove {directory} to make a new one)") from None
        if pki.not_after - now() > PKI_MARGIN:
            return directory
        log(
            f"dev: the synthetic PKI in {directory} expires {pki.not_after:%Y-%m-%d}: making a "
            "new one"
        )
    try:
        SyntheticPKI(now=now(), days=PKI_DAYS).save(directory, overwrite=True)
    except PKIError as exc:
        raise DevSecretsError(str(exc)) from None
    log(f"dev: made a SYNTHETIC test SGX PKI in {directory} (simulation only)")
    return directory


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ServerAddress:
        host, _, port = text.rpartition(":")
        return cls(host.strip("[]"), int(port))

    @property
    def local(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")

    def listen(self) -> str:
        """Where a local secret server listens for this address."""
        host = "127.0.0.1" if self.host == "localhost" else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: The secret server's certificate and key next to [secrets] ca, by the names `enclave-build
#: init` / `secrets tls` write, then the examples' keys directory's.
SERVER_TLS_NAMES = (("server.crt", "server.key"), ("secret-server.crt", "secret-server.key"))


def server_tls(ca: Path | None) -> tuple[Path, Path]:
    """The secret server's certificate and key next to the spec's [secrets] ca."""
    if ca is None:
        raise UsageError(
            "the spec has no [secrets] ca: `dev` starts a secret server only for "
            "a spec whose enclave checks its server against a CA"
        )
    for cert_name, key_name in SERVER_TLS_NAMES:
        cert, key = ca.parent / cert_name, ca.parent / key_name
        if cert.is_file() and key.is_file():
            return cert, key
    cert, key = ca.parent / "server.crt", ca.parent / "server.key"
    missing = [str(p) for p in (cert, key) if not p.is_file()]
    if missing:
        raise UsageError(
            f"{', '.join(missing)}: not found; the local secret server needs the "
            f"certificate and key issued by {ca} (`enclave-build secrets tls "
            f"{ca.parent} --host HOST --force` makes all three; rebuild afterwards: "
            "the CA is measured)"
        )
    return cert, key


#: Where dev keeps an issuing CA of its own (under .enclave-build/) when [secrets] ca has none
#: next to it.
ISSUER_DIR = "issuer"


def ensure_issuer_ca(ca: Path | None, state: Path, log: Callable[[str], None]) -> Path:
    """The directory of the issuing CA (issuer-ca.pem, issuer-ca.key) the local secret server
    signs serving certificates with: next to *ca* if both files are there, else
    ``STATE/issuer`` (made once, reused after)."""
    from enclave_build.contract.names import ISSUER_CA_CERT, ISSUER_CA_KEY

    from ..secrets_config import write_issuing_ca

    candidates = ([ca.parent] if ca is not None else []) + [state / ISSUER_DIR]
    for directory in candidates:
        if (directory / ISSUER_CA_CERT).is_file() and (directory / ISSUER_CA_KEY).is_file():
            return directory.resolve()
    directory = state / ISSUER_DIR
    try:
        write_issuing_ca(directory, days=PKI_DAYS)
    except OSError as exc:
        raise DevSecretsError(f"{directory}: cannot write the issuing CA: {exc}") from None
    log(
        f"dev: made an issuing CA for serving certificates in {directory} (clients of the "
        f"service trust {directory / ISSUER_CA_CERT})"
    )
    return directory.resolve()


def write_config(
    state: Path,
    build_dir: Path,
    address: ServerAddress,
    cert: Path,
    key: Path,
    pki: Path,
    issuer_ca: Path | None = None,
) -> Path:
    """``STATE/secrets.toml`` serving *build_dir*'s keys on *address* (replaced each time:
    the policy follows the build); issuing serving certificates with the CA in *issuer_ca*
    (a directory) if given."""
    composed = compose_config(
        [build_dir.resolve()],
        ServerSide(
            issuer_ca=issuer_ca,
            cert=cert,
            key=key,
            listen=address.listen(),
            root_ca=str((pki / "root.pem").resolve()),
            collateral=(pki / "collateral.json").resolve(),
            audit_log="-",
            extra_server={"processes": 1, "workers": 16},
        ),
    )
    return write_secrets_config(state / SECRETS_FILE, composed, force=True, log=None)


@dataclass(frozen=True)
class Probe:
    """What answers at an address: ``free``, ``secret-server`` (TLS, certificate checked
    against the spec's CA) or ``other``; *detail* says what was seen."""

    kind: str
    detail: str = ""


def probe(address: ServerAddress, ca: Path | None, timeout: float = 3.0) -> Probe:
    try:
        raw = socket.create_connection((address.host, address.port), timeout=timeout)
    except (ConnectionRefusedError, TimeoutError):
        return Probe("free")
    except OSError as exc:
        return Probe("free", str(exc.strerror or exc))
    with raw:
        if ca is None:
            return Probe("other", "something listens there (no CA to check it against)")
        context = ssl.create_default_context(cafile=str(ca))
        try:
            with context.wrap_socket(raw, server_hostname=address.host) as tls:
                cert: dict[str, Any] = tls.getpeercert() or {}
                subject = {key: value for rdn in cert.get("subject", ()) for key, value in rdn}
                return Probe(
                    "secret-server",
                    f"TLS certificate {subject.get('commonName', '?')} issued under {ca}",
                )
        except ssl.SSLCertVerificationError as exc:
            return Probe(
                "other", f"its TLS certificate is not one {ca} vouches for ({exc.verify_message})"
            )
        except (ssl.SSLError, OSError) as exc:
            return Probe("other", f"not a TLS server ({exc})")


__all__ = [
    "ensure_pki",
    "ensure_issuer_ca",
    "ISSUER_DIR",
    "write_config",
    "server_tls",
    "probe",
    "Probe",
    "ServerAddress",
    "DevSecretsError",
    "PKI_DIR",
]
