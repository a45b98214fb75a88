"""Serving certificates for attested enclaves (``[issuer]`` of secrets.toml).

An enclave whose ``[tls] issuer = "secret-server"`` connects to the secret_prov listener with the
TLS server name :data:`CERT_SERVER_NAME`, presenting a self-signed RA-TLS certificate for its
serving key. After the evidence is verified and :func:`~attestation.server.decide.
decide_certificate` accepts the enclave — the same verification and policy that release model
keys — the request is read (:data:`attestation.wire.CERT_REQUEST`, a length, a DER CSR for the
same key) and answered with the PEM chain: the certificate :func:`attestation.serving_cert.issue`
makes (valid ``lifetime`` seconds, the names of the CSR, the quote and the enclave identity in
extensions), then the issuing CA's. A refusal is answered with the reason
(:func:`attestation.wire.refusal`). Gramine's clients never send this server name, so its
exchange is untouched.

The CA's key is read once per (re)load into this process's memory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_build.contract.secrets_config import IssuerSettings

from ..errors import AttestationConfigError
from ..serving_cert import ServingCertError, issue
from ..wire import CERT_REQUEST, CERT_SERVER_NAME, LENGTH_BYTES, MAX_CSR, RESPONSE, refusal
from .decide import Evidence, decide_certificate

__all__ = ["CERT_SERVER_NAME", "Issuer", "IssuerError", "serve_certificate"]


class IssuerError(AttestationConfigError, ValueError):
    """``[issuer]``'s CA certificate or key cannot be used."""


@dataclass(frozen=True)
class Issuer:
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca_pem: bytes
    lifetime: _dt.timedelta

    @classmethod
    def load(cls, settings: IssuerSettings) -> Issuer:
        try:
            ca_pem = settings.cert.read_bytes()
            cert = x509.load_pem_x509_certificate(ca_pem)
            key = serialization.load_pem_private_key(settings.key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise IssuerError(
                f"[issuer] {settings.cert} / {settings.key}: cannot use the issuing CA: {exc}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IssuerError(f"[issuer] key {settings.key}: an ECDSA key is expected")
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if public != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise IssuerError(
                f"[issuer] key {settings.key} is not the key of the CA certificate {settings.cert}"
            )
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise IssuerError(f"[issuer] cert {settings.cert} is not a CA certificate")
        return cls(cert, key, ca_pem, _dt.timedelta(seconds=settings.lifetime))

    def certify(
        self, csr_der: bytes, presented: x509.Certificate, evidence: Evidence, now: _dt.datetime
    ) -> bytes:
        """The PEM chain (issued certificate, then the CA) for an accepted enclave."""
        cert = issue(
            csr_der,
            presented,
            evidence.quote.identity,
            self.ca_cert,
            self.ca_key,
            lifetime=self.lifetime,
            now=now,
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.ca_pem


def serve_certificate(
    session,
    evidence,
    read_exact: Callable[[int], bytes],
    now: Callable[[], _dt.datetime],
) -> None:
    """One certificate request on a secret_prov connection (see the module docstring)."""
    conn, state, event = session.conn, session.state, session.event
    event.event = "certificate"
    decision = decide_certificate(evidence, state.secret_prov)
    session.note_client(evidence, decision.attested)
    issuer: Issuer | None = state.issuer
    allowed, decision_reason = decision.allowed, decision.reason
    if allowed and issuer is None:
        allowed = False
        decision_reason = (
            "this secret server issues no serving certificates (its secrets.toml has no [issuer])"
        )
    header = read_exact(len(CERT_REQUEST) + LENGTH_BYTES)
    if header[: len(CERT_REQUEST)] != CERT_REQUEST or len(header) != len(CERT_REQUEST) + 4:
        event.deny(f"malformed certificate request ({len(header)} bytes of header)")
        return
    size = int.from_bytes(header[len(CERT_REQUEST) :], "big")
    if not 0 < size <= MAX_CSR:
        event.deny(f"certificate request announces a {size}-byte CSR (allowed: 1..{MAX_CSR})")
        conn.sendall(refusal(event.reason or ""))
        return
    csr_der = read_exact(size)
    if len(csr_der) != size:
        event.deny(f"certificate request truncated ({len(csr_der)} of {size} bytes)")
        return
    if not allowed:
        event.deny(decision_reason)
        conn.sendall(refusal(decision_reason))
        return
    assert issuer is not None and isinstance(evidence, Evidence)
    presented = conn.get_peer_certificate(as_cryptography=True)
    try:
        chain = issuer.certify(csr_der, presented, evidence, now())
    except ServingCertError as exc:
        event.deny(f"certificate request refused: {exc}")
        conn.sendall(refusal(event.reason or ""))
        return
    first = chain.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    der = x509.load_pem_x509_certificate(first).public_bytes(serialization.Encoding.DER)
    event.certificate = hashlib.sha256(der).hexdigest()
    conn.sendall(RESPONSE + len(chain).to_bytes(LENGTH_BYTES, "big") + chain)
    event.allow(decision_reason)
