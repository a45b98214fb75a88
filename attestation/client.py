"""Client side of attestation.

* :func:`fetch_secret` does what Gramine's provisioning constructor does inside an enclave:
  connect to the secret server with TLS, present a self-signed RA-TLS certificate, check the
  server's certificate against the configured CA and host name, send the request and read the
  secret. Used by simulation mode and by tests against the real server.
* :func:`attest_endpoint` is for inference clients and the model owner: connect to a served
  endpoint, take its RA-TLS certificate, verify the quote and check that the enclave is one of
  the builds given as measurements.json files.
"""

from __future__ import annotations

import datetime as _dt
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .measurements import Measurements
from .ratls import extract_evidence
from .verify import QuoteRejected, TcbPolicy, VerifiedQuote, verify_quote
from .wire import HEADER_LEN, REQUEST, RESPONSE, parse_header, recv_exact  # noqa: F401  (re-exported)
from .errors import AttestationError


class ProvisioningError(AttestationError, RuntimeError):
    """The secret could not be obtained (refused, or protocol error)."""


def fetch_secret(host: str, port: int, ca_cert: str | Path, ratls_cert: x509.Certificate,
                 ratls_key, *, server_name: str | None = None, timeout: float = 10.0,
                 tls_version: ssl.TLSVersion | None = None, request: bytes = REQUEST) -> bytes:
    """Obtain the secret the server releases to the enclave whose RA-TLS certificate this is."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    if tls_version is not None:
        context.minimum_version = context.maximum_version = tls_version
    with tempfile.TemporaryDirectory(prefix="ratls-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(ratls_cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(ratls_key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
        context.load_cert_chain(cert_path, key_path)
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        with context.wrap_socket(raw, server_hostname=server_name or host) as tls:
            tls.sendall(request)
            header = recv_exact(tls, HEADER_LEN)
            if len(header) < HEADER_LEN:
                raise ProvisioningError("the secret server closed the connection: the enclave "
                                        "was refused (see the server's audit log)")
            try:
                released, size = parse_header(header)
            except ValueError as exc:
                raise ProvisioningError(f"unexpected response from the secret server: {exc}") \
                    from None
            if not released:
                reason = recv_exact(tls, size).decode("utf-8", "replace")
                raise ProvisioningError(f"the secret server refused: {reason}")
            secret = recv_exact(tls, size)
            if len(secret) != size:
                raise ProvisioningError("truncated secret")
            return secret
    except (ssl.SSLError, ConnectionError, socket.timeout) as exc:
        raise ProvisioningError(f"TLS with {host}:{port} failed: {exc}") from None
    finally:
        raw.close()


@dataclass(frozen=True)
class EndpointAttestation:
    evidence_format: str
    quote: VerifiedQuote
    build: Measurements


def attest_endpoint(host: str, port: int, measurements: list[Measurements], collateral_json: str,
                    *, root_ca_der: bytes | None = None, policy: TcbPolicy = TcbPolicy(),
                    now: _dt.datetime | None = None, timeout: float = 10.0) -> EndpointAttestation:
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
    verified = verify_quote(evidence.quote, collateral_json, root_ca_der=root_ca_der, now=now,
                            policy=policy)
    for build in measurements:
        if (build.mr_enclave, build.mr_signer, build.isv_prod_id, build.isv_svn,
                build.debug) == (verified.mr_enclave, verified.mr_signer, verified.isv_prod_id,
                                 verified.isv_svn, verified.debug):
            return EndpointAttestation(evidence.format, verified, build)
    raise QuoteRejected(f"{host}:{port} runs enclave {verified.mr_enclave}, which is not one of "
                        "the given builds")
