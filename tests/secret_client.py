"""Clients of the secret server for tests (the product's own clients are
``enclave_build.model_server.keys`` in the enclave and ``attestation.attest_client`` for owners).

* :func:`fetch_secret` does what Gramine's provisioning constructor does inside an enclave:
  connect to the secret server with TLS, present a self-signed RA-TLS certificate, check the
  server's certificate against the configured CA and host name, send the request and read the
  secret.
* :func:`attest_endpoint` connects to a served endpoint, takes its RA-TLS certificate, verifies
  the quote and checks that the enclave is one of the builds given as measurements.json files.
* :func:`verify_peer_certificate` checks an Occlum-style RA-TLS certificate as Occlum's library
  does (evidence bound to the key, quote verified, ``sgx_mrs`` matched), as Occlum's init checks
  the GrSecret server's.
* :func:`decode_secret` reads a GrSecret ``SecretReply.secret`` as Occlum's client does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclave_build.attestation.measurements import Measurements
from enclave_build.attestation.occlum_ra import CONFIG_SVN_OFFSET, PeerIdentity, RaConfig
from enclave_build.attestation.ratls import extract_evidence
from enclave_build.attestation.verify import (
    QuoteRejected,
    TcbPolicy,
    VerificationCache,
    VerifiedQuote,
    verify_quote,
)
from enclave_build.attestation.wire import HEADER_LEN, REQUEST, parse_header, recv_exact


class ProvisioningError(RuntimeError):
    """The secret could not be obtained (refused, or protocol error)."""


def fetch_secret(
    host: str,
    port: int,
    ca_cert: str | Path,
    ratls_cert: x509.Certificate,
    ratls_key,
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
    tls_version: ssl.TLSVersion | None = None,
    request: bytes = REQUEST,
) -> bytes:
    """Obtain the secret the server releases to the enclave whose RA-TLS certificate this is."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    if tls_version is not None:
        context.minimum_version = context.maximum_version = tls_version
    with tempfile.TemporaryDirectory(prefix="ratls-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(ratls_cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            ratls_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_path, key_path)
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        with context.wrap_socket(raw, server_hostname=server_name or host) as tls:
            tls.sendall(request)
            header = recv_exact(tls, HEADER_LEN)
            if len(header) < HEADER_LEN:
                raise ProvisioningError(
                    "the secret server closed the connection: the enclave "
                    "was refused (see the server's audit log)"
                )
            try:
                released, size = parse_header(header)
            except ValueError as exc:
                raise ProvisioningError(
                    f"unexpected response from the secret server: {exc}"
                ) from None
            if not released:
                reason = recv_exact(tls, size).decode("utf-8", "replace")
                raise ProvisioningError(f"the secret server refused: {reason}")
            secret = recv_exact(tls, size)
            if len(secret) != size:
                raise ProvisioningError("truncated secret")
            return secret
    except (TimeoutError, ssl.SSLError, ConnectionError) as exc:
        raise ProvisioningError(f"TLS with {host}:{port} failed: {exc}") from None
    finally:
        raw.close()


@dataclass(frozen=True)
class EndpointAttestation:
    evidence_format: str
    quote: VerifiedQuote
    build: Measurements


def attest_endpoint(
    host: str,
    port: int,
    measurements: list[Measurements],
    collateral_json: str,
    *,
    root_ca_der: bytes | None = None,
    policy: TcbPolicy = TcbPolicy(),
    now: _dt.datetime | None = None,
    timeout: float = 10.0,
) -> EndpointAttestation:
    """Check that HOST:PORT is served by one of the given builds, inside a genuine enclave."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the evidence in the certificate is what is verified
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    if der is None:
        raise QuoteRejected(f"{host}:{port} presented no certificate")
    evidence = extract_evidence(x509.load_der_x509_certificate(der))
    verified = verify_quote(
        evidence.quote, collateral_json, root_ca_der=root_ca_der, now=now, policy=policy
    )
    for build in measurements:
        if (build.mr_enclave, build.mr_signer, build.isv_prod_id, build.isv_svn, build.debug) == (
            verified.mr_enclave,
            verified.mr_signer,
            verified.isv_prod_id,
            verified.isv_svn,
            verified.debug,
        ):
            return EndpointAttestation(evidence.format, verified, build)
    raise QuoteRejected(
        f"{host}:{port} runs enclave {verified.mr_enclave}, which is not one of the given builds"
    )


class PeerRejected(Exception):
    """The peer's RA-TLS certificate does not prove what the ra_config requires."""


@dataclass(frozen=True)
class VerifiedPeer:
    evidence_format: str
    quote: VerifiedQuote
    identity: PeerIdentity


def verify_peer_certificate(
    cert: x509.Certificate,
    ra_config: RaConfig | None,
    collateral_json: str,
    *,
    root_ca_der: bytes | None = None,
    policy: TcbPolicy = TcbPolicy(),
    now: _dt.datetime | None = None,
    cache: VerificationCache | None = None,
) -> VerifiedPeer:
    """Check a peer's RA-TLS certificate as Occlum's library does, with our quote verifier:
    the evidence binds the certificate's key, the quote verifies (TCB policy included), and
    (unless *ra_config* is None) an ``sgx_mrs`` entry matches. Raises :class:`PeerRejected`,
    or EvidenceError / QuoteRejected from the steps before."""
    evidence = extract_evidence(cert)
    verified = verify_quote(
        evidence.quote,
        collateral_json,
        root_ca_der=root_ca_der,
        now=now,
        policy=policy,
        cache=cache,
    )
    config_svn = int.from_bytes(evidence.quote[CONFIG_SVN_OFFSET : CONFIG_SVN_OFFSET + 2], "little")
    identity = PeerIdentity(
        verified.mr_enclave,
        verified.mr_signer,
        verified.isv_prod_id,
        verified.isv_svn,
        config_svn,
        verified.debug,
    )
    if ra_config is not None:
        reason = ra_config.mismatch(identity)
        if reason is not None:
            raise PeerRejected(reason)
    return VerifiedPeer(evidence.format, verified, identity)


def decode_secret(text: str) -> bytes:
    """The secret bytes of a GrSecret SecretReply.secret, quoted (Occlum's server, ours) or
    bare."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"SecretReply.secret is not base64: {exc}") from None
