"""spec.toml checks of mutual TLS and per-model client lists: ``[tls] client_ca`` and
``[[models]] clients``.

A client list is enforced by the model server on certificates the TLS layer verified, so every
list needs ``[tls] client_ca``, ``sha256:`` pins included: neither Python's ``ssl`` nor grpcio
can ask a client for a certificate without verifying it against a root (grpcio's
``ssl_server_credentials`` takes ``require_client_auth`` only with ``root_certificates``). A
client with a self-signed certificate is named by putting that certificate itself in the
``client_ca`` bundle; its pin then says which models it may use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enclave_build.contract.client_access import client_list_problems
from enclave_build.contract.schema import Problem, bad

_NEEDS_CA = (
    "a client list is checked on client certificates verified by mutual TLS: add "
    'client_ca = "FILE" to [tls] (a PEM bundle of the CA(s) that issued the clients\' '
    "certificates, or of the clients' self-signed certificates)"
)


def check(
    models: list[dict[str, Any]],
    tls: dict[str, Any],
    tls_written: bool,
    problems: list[Problem],
    no_tls: str | None = None,
) -> None:
    """Located problems of each model's ``clients`` and of ``[tls] client_ca``. *no_tls*: the
    framework whose server ``[tls]`` does not apply to (its lists could never be enforced)."""
    ca = tls.get("client_ca") if tls_written else None
    if isinstance(ca, Path) and not bad(problems, ("tls", "client_ca")):
        _check_ca_file(ca, problems)
    for index, model in enumerate(models):
        clients = model.get("clients")
        if not clients:
            continue
        where = ("models", index, "clients")
        problems += client_list_problems(clients, where)
        if no_tls is not None:
            problems.append(
                Problem(
                    where,
                    "clients are enforced by enclave-build's model server after mutual TLS "
                    f"([tls] client_ca); framework {no_tls} runs a server of its own, which "
                    "[tls] does not configure and which cannot enforce them: remove it",
                )
            )
        elif not tls_written:
            problems.append(
                Problem(
                    where,
                    "needs TLS with client certificates: add a [tls] section with cert, key "
                    'and client_ca = "FILE" (the CA that issued the clients\' certificates)',
                )
            )
        elif tls.get("client_ca") is None and not bad(problems, ("tls",)):
            problems.append(Problem(where, _NEEDS_CA))


def _check_ca_file(path: Path, problems: list[Problem]) -> None:
    """client_ca ships as a plain (trusted) file: it must be certificates, and nothing secret."""
    from cryptography import x509

    where = ("tls", "client_ca")
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(where, f"cannot read {path}: {exc.strerror or exc}"))
        return
    if b"PRIVATE KEY" in data:
        problems.append(
            Problem(
                where,
                f"{path} holds a private key; client_ca ships unencrypted in the image: give "
                "a file with the CA certificate(s) only",
            )
        )
        return
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        problems.append(
            Problem(
                where,
                f"{path} is not a PEM certificate bundle; expected one or more "
                "-----BEGIN CERTIFICATE----- blocks (the CA certificate(s) clients chain to)",
            )
        )


__all__ = ["check"]
