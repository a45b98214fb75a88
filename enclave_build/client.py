"""Verify an enclave's serving endpoint before sending it anything, then pin exactly what was
verified. Importable without the builder: the standard library's ``ssl``, ``cryptography`` and
dcap-qvl (through :mod:`enclave_build.attestation`).

::

    from enclave_build.client import EndpointPolicy, verify_endpoint

    policy = EndpointPolicy.from_files(["out/measurements.json"], collateral="collateral.json")
    enclave = verify_endpoint("models.example.com", 8001, policy)   # EndpointRefused if not
    client = tritonclient.grpc.InferenceServerClient(
        "models.example.com:8001", **enclave.tritonclient_grpc_options())
    client = tritonclient.http.InferenceServerClient(
        "models.example.com:8000", **enclave.tritonclient_http_options())

:func:`verify_endpoint` opens one TLS connection without trusting the certificate, takes the
certificate the endpoint presents, and accepts it only when its TCG DICE (or other RA-TLS)
evidence binds the certificate's public key, the quote verifies (dcap-qvl, the TCB policy,
Intel's root unless a synthetic test root is explicitly allowed) and the enclave identity equals
one of the expected builds. Nothing is sent on that connection. It works for every issuer that
puts a quote in the certificate: ``"secret-server"`` (issued by the secret server's CA) and
``"self"``; an ``issuer = "file"`` endpoint carries no quote and is refused.

The result pins *that* certificate: gRPC gets it as its only root certificate (grpcio has no
verification callback, hence verify first, then pin), HTTP an ``ssl.SSLContext`` whose only trust
anchor is it. A renewed certificate (same key) is a new certificate: verify again; the SPKI pin
(``spki_sha256``, or curl's ``--pinnedpubkey sha256//BASE64``) stays the same across renewals.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .attestation.attest_client import AttestationRefused, Expectation, open_attested
from .attestation.collateral import CollateralSource, FileCollateral, PccsCollateral
from .attestation.measurements import Measurements
from .attestation.verify import TcbPolicy, VerifiedQuote, load_root_der

#: What a refusal is (the reason, and for a wrong identity every differing field).
EndpointRefused = AttestationRefused


@dataclass(frozen=True)
class EndpointPolicy:
    """What an endpoint must prove: one of *builds* (measurements.json), verified with
    *collateral* up to Intel's root, or *synthetic_root_der* (a SYNTHETIC test root: simulation
    only)."""

    builds: tuple[tuple[str, Measurements], ...]
    collateral: CollateralSource
    synthetic_root_der: bytes | None = None
    tcb: TcbPolicy = field(default_factory=TcbPolicy)
    timeout: float = 10.0

    @classmethod
    def from_files(
        cls,
        measurements: Sequence[str | Path],
        *,
        collateral: str | Path | None = None,
        pccs_url: str | None = None,
        allow_synthetic_root: str | Path | None = None,
        allowed_tcb_statuses: Sequence[str] = ("UpToDate",),
        timeout: float = 10.0,
    ) -> EndpointPolicy:
        if (collateral is None) == (pccs_url is None):
            raise ValueError("give exactly one of collateral (a file) and pccs_url")
        source: CollateralSource
        if collateral is not None:
            source = FileCollateral(Path(collateral))
        else:
            assert pccs_url is not None
            source = PccsCollateral(pccs_url)
        return cls(
            tuple((str(p), Measurements.load(p)) for p in measurements),
            source,
            load_root_der(allow_synthetic_root) if allow_synthetic_root is not None else None,
            TcbPolicy(frozenset(allowed_tcb_statuses)),
            timeout,
        )


@dataclass(frozen=True)
class VerifiedEnclave:
    """An endpoint whose certificate was verified: the certificate, its pins, what its quote
    says and which build it is."""

    host: str
    port: int
    certificate_der: bytes
    evidence_format: str
    quote: VerifiedQuote
    build_source: str
    build: Measurements

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.certificate_der)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def certificate_sha256(self) -> str:
        return hashlib.sha256(self.certificate_der).hexdigest()

    @property
    def spki_der(self) -> bytes:
        return self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def spki_sha256(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo (hex): the key pin, stable across renewals."""
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def curl_pin(self) -> str:
        """The value of curl's ``--pinnedpubkey``: ``sha256//BASE64``."""
        return "sha256//" + base64.b64encode(hashlib.sha256(self.spki_der).digest()).decode()

    @property
    def server_name(self) -> str:
        """A name the certificate is valid for (its first SAN), for TLS name checks."""
        try:
            san = self.certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            return self.host
        names = [str(n.value) for n in san if isinstance(n, (x509.DNSName, x509.IPAddress))]
        return self.host if self.host in names or not names else names[0]

    def ssl_context(
        self, client_cert: str | Path | None = None, client_key: str | Path | None = None
    ) -> ssl.SSLContext:
        """A client context whose only trust anchor is the verified certificate (a partial
        chain: an issued certificate is trusted without its CA, and nothing else is). With
        *client_cert* (PEM, the certificate and any chain) and *client_key* (PEM; may be left
        out when it is in *client_cert*), the client presents that certificate: for an
        endpoint with mutual TLS (``[tls] client_ca``)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cadata=self.certificate_pem.decode())
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = self.server_name == self.host
        if client_cert is not None:
            context.load_cert_chain(
                str(client_cert), str(client_key) if client_key is not None else None
            )
        elif client_key is not None:
            raise ValueError("client_key without client_cert")
        return context

    def tritonclient_http_options(
        self, client_cert: str | Path | None = None, client_key: str | Path | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``tritonclient.http.InferenceServerClient``: TLS with the pinned
        context; presenting *client_cert* / *client_key* for mutual TLS (see
        :meth:`ssl_context`)."""
        self.ssl_context(client_cert, client_key)  # a bad certificate or key fails here

        def factory() -> ssl.SSLContext:
            return self.ssl_context(client_cert, client_key)

        return {"ssl": True, "ssl_context_factory": factory, "insecure": False}

    def grpc_credentials(
        self, client_cert: str | Path | None = None, client_key: str | Path | None = None
    ):
        """gRPC channel credentials: the verified certificate as the only root; with
        *client_cert* and *client_key* (PEM files, both needed) the client's for mutual TLS."""
        import grpc

        if (client_cert is None) != (client_key is None):
            raise ValueError("gRPC needs both client_cert and client_key (PEM files)")
        chain = Path(client_cert).read_bytes() if client_cert is not None else None
        key = Path(client_key).read_bytes() if client_key is not None else None
        return grpc.ssl_channel_credentials(
            root_certificates=self.certificate_pem, private_key=key, certificate_chain=chain
        )

    def grpc_channel_options(self) -> list[tuple[str, str]]:
        """gRPC channel arguments: the name the certificate is checked against, when the address
        connected to is not one of its names."""
        if self.server_name == self.host:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

    def tritonclient_grpc_options(
        self, client_cert: str | Path | None = None, client_key: str | Path | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``tritonclient.grpc.InferenceServerClient``: the verified
        certificate as its only root (see :meth:`grpc_channel_options`); presenting
        *client_cert* / *client_key* (PEM files) for mutual TLS."""
        return {
            "ssl": True,
            "creds": self.grpc_credentials(client_cert, client_key),
            "channel_args": self.grpc_channel_options() or None,
        }


def verify_endpoint(
    host: str, port: int, policy: EndpointPolicy, *, now: _dt.datetime | None = None
) -> VerifiedEnclave:
    """Verify the enclave serving at *host*:*port* (see the module docstring); the
    :class:`VerifiedEnclave`, or :class:`EndpointRefused` with the reason. Nothing is sent."""
    expectation = Expectation(
        policy.builds, policy.collateral, policy.synthetic_root_der, policy.tcb, now
    )
    with open_attested(host, port, expectation, timeout=policy.timeout) as channel:
        der = channel.tls.getpeercert(binary_form=True)
        assert der is not None  # open_attested refuses an endpoint without one
        return VerifiedEnclave(
            host,
            port,
            der,
            channel.evidence_format,
            channel.quote,
            channel.build_source,
            channel.build,
        )


__all__ = ["EndpointPolicy", "EndpointRefused", "VerifiedEnclave", "verify_endpoint"]
