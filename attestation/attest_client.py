"""Attest a server before trusting it: the model owner's side of the secret server's identity.

:func:`open_attested` opens one TLS connection to HOST:PORT, takes the certificate the server
presented, and accepts the connection only when that certificate is an RA-TLS certificate whose
quote (a) binds the certificate's own public key, (b) verifies with :func:`attestation.verify.
verify_quote` (dcap-qvl, the TCB policy, the attribute checks; Intel's root unless a root is
given explicitly) and (c) carries the identity of one of the given measurements.json builds:
mr_enclave, mr_signer, isv_prod_id, isv_svn and debug all equal. The TLS handshake itself proved
that the server holds the private key of that certificate, so the returned
:class:`AttestedChannel` *is* the attested channel: whatever is sent on it (e.g. a key upload,
:mod:`attestation.upload`) reaches the attested enclave and nothing else. There is never a
second connection.

Every refusal is an :class:`AttestationRefused` with a reason and, for an identity that does not
match, the field-by-field :class:`Mismatch` list (field, expected, actual) per build.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from .collateral import CollateralError, CollateralSource
from .errors import AttestationError
from .measurements import Measurements
from .ratls import EvidenceError, extract_evidence
from .verify import QuoteRejected, TcbPolicy, VerifiedQuote, verify_quote

#: The identity fields compared, in the order a mismatch is reported.
IDENTITY_FIELDS = ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "debug")


class AttestationRefused(AttestationError):
    """The server is not (provably) one of the expected builds. ``mismatches`` lists, for an
    identity that verified but matched no build, every differing field of every build."""

    def __init__(
        self,
        reason: str,
        mismatches: tuple[Mismatch, ...] = (),
        quote: VerifiedQuote | None = None,
        evidence_format: str | None = None,
        certificate_sha256: str | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.mismatches = mismatches
        self.quote = quote
        self.evidence_format = evidence_format
        self.certificate_sha256 = certificate_sha256


@dataclass(frozen=True)
class Mismatch:
    build: str  # the measurements.json it was compared with (path or service)
    field: str
    expected: object  # from measurements.json
    actual: object  # from the verified quote


@dataclass(frozen=True)
class Expectation:
    """What the server must prove. *builds*: (source, measurements) pairs, one must match."""

    builds: tuple[tuple[str, Measurements], ...]
    collateral: CollateralSource
    root_ca_der: bytes | None = None  # None: Intel's SGX root (inside dcap-qvl)
    policy: TcbPolicy = field(default_factory=TcbPolicy)
    now: _dt.datetime | None = None


@dataclass
class AttestedChannel:
    """An open TLS connection to a server whose identity was verified (close it when done)."""

    tls: ssl.SSLSocket
    endpoint: str
    evidence_format: str
    certificate_sha256: str  # SHA-256 of the server's DER certificate (the pinned one)
    quote: VerifiedQuote
    build_source: str
    build: Measurements

    def close(self) -> None:
        try:
            self.tls.close()
        except OSError:
            pass

    def __enter__(self) -> AttestedChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compare(quote: VerifiedQuote, build: Measurements, source: str) -> list[Mismatch]:
    """Every identity field in which *quote* differs from *build*."""
    return [
        Mismatch(source, name, getattr(build, name), getattr(quote, name))
        for name in IDENTITY_FIELDS
        if getattr(build, name) != getattr(quote, name)
    ]


def match_identity(
    quote: VerifiedQuote, builds: tuple[tuple[str, Measurements], ...], endpoint: str
) -> tuple[str, Measurements]:
    """The (source, build) the verified *quote* is; AttestationRefused naming every differing
    field with both values otherwise."""
    mismatches: list[Mismatch] = []
    for source, build in builds:
        found = compare(quote, build, source)
        if not found:
            return source, build
        mismatches += found
    details = "; ".join(
        f"{m.build}: {m.field} expected {_show(m.expected)}, server has {_show(m.actual)}"
        for m in mismatches
    )
    raise AttestationRefused(
        f"{endpoint} runs enclave {quote.mr_enclave}, which is not one of "
        f"the given builds ({details})",
        tuple(mismatches),
        quote,
    )


def _show(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def client_context(client_cert: Path | None, client_key: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The certificate is self-signed (RA-TLS): no CA can vouch for it. What is verified instead
    # is the SGX evidence inside it, right after the handshake and before anything is sent.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # The attested certificate must stay the connection's: no renegotiation to another one.
    context.options |= ssl.OP_NO_RENEGOTIATION
    if client_cert is not None:
        try:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        except (OSError, ssl.SSLError) as exc:
            raise AttestationRefused(
                f"cannot use the client certificate {client_cert} / key {client_key}: {exc}"
            ) from None
    return context


def open_attested(
    host: str,
    port: int,
    expectation: Expectation,
    *,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    timeout: float = 10.0,
) -> AttestedChannel:
    """Connect, verify the server's RA-TLS certificate and identity; the open channel, or
    :class:`AttestationRefused` (the connection is then closed; nothing was sent on it).
    *client_cert*/*client_key*: a certificate to present (a key owner's, for uploads)."""
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    context = client_context(client_cert, client_key)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise AttestationRefused(f"cannot connect to {endpoint}: {exc.strerror or exc}") from None
    tls: ssl.SSLSocket | None = None
    handed_over = False
    try:
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except (ssl.SSLError, OSError) as exc:
            raise AttestationRefused(f"TLS handshake with {endpoint} failed: {exc}") from None
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise AttestationRefused(f"{endpoint} presented no certificate")
        fingerprint = hashlib.sha256(der).hexdigest()
        try:
            evidence = extract_evidence(x509.load_der_x509_certificate(der))
        except ValueError as exc:  # EvidenceError, or a certificate that does not parse
            hint = (
                ""
                if not isinstance(exc, EvidenceError) or "no SGX evidence" not in str(exc)
                else " — the server does not run with an RA-TLS identity (e.g. a secret "
                "server outside an enclave, with an ordinary CA-signed certificate)"
            )
            raise AttestationRefused(
                f"{endpoint}: {exc}{hint}", certificate_sha256=fingerprint
            ) from None
        try:
            collateral = expectation.collateral.for_quote(evidence.quote, timeout=timeout)
            verified = verify_quote(
                evidence.quote,
                collateral,
                root_ca_der=expectation.root_ca_der,
                now=expectation.now,
                policy=expectation.policy,
            )
        except QuoteRejected as exc:
            raise AttestationRefused(
                str(exc), evidence_format=evidence.format, certificate_sha256=fingerprint
            ) from None
        except CollateralError as exc:
            raise AttestationRefused(
                f"no collateral to verify the quote: {exc}",
                evidence_format=evidence.format,
                certificate_sha256=fingerprint,
            ) from None
        try:
            source, build = match_identity(verified, expectation.builds, endpoint)
        except AttestationRefused as exc:
            exc.evidence_format, exc.certificate_sha256 = evidence.format, fingerprint
            raise
        handed_over = True
        return AttestedChannel(tls, endpoint, evidence.format, fingerprint, verified, source, build)
    finally:
        if not handed_over:
            (tls or raw).close()


#: Version of :func:`verdict`'s JSON; bump only with an incompatible change.
VERDICT_SCHEMA = 1


def verdict(
    endpoint: str, result: AttestedChannel | AttestationRefused, *, synthetic_root: bool
) -> dict[str, Any]:
    """The stable JSON form of an attestation outcome (``enclave-build attest --json``)::

    {"schema": 1, "endpoint", "attested": bool, "reason": str | null,
     "evidence": "tcg-dice" | "gramine-legacy" | "cczoo" | null,
     "certificate_sha256": hex | null, "synthetic_root": bool,
     "measurements": file | null, "service", "framework", "image": ref | null,
     "status", "advisory_ids", "mr_enclave", "mr_signer", "isv_prod_id", "isv_svn",
     "debug", "attributes",            # from the verified quote; null when none verified
     "mismatches": [{"measurements", "field", "expected", "actual"}]}
    """
    quote = result.quote
    attested = isinstance(result, AttestedChannel)
    info: dict[str, Any] = {
        "schema": VERDICT_SCHEMA,
        "endpoint": endpoint,
        "attested": attested,
        "reason": None if isinstance(result, AttestedChannel) else result.reason,
        "evidence": result.evidence_format,
        "certificate_sha256": result.certificate_sha256,
        "synthetic_root": synthetic_root,
        "measurements": None,
        "service": None,
        "framework": None,
        "image": None,
    }
    if isinstance(result, AttestedChannel):
        info.update(
            measurements=result.build_source,
            service=result.build.service,
            framework=result.build.framework,
            image=result.build.image.ref,
        )
    fields = (
        "status",
        "advisory_ids",
        "mr_enclave",
        "mr_signer",
        "isv_prod_id",
        "isv_svn",
        "debug",
        "attributes",
    )
    quote_json = quote.to_json() if quote is not None else {}
    info.update({name: quote_json.get(name) for name in fields})
    info["mismatches"] = (
        []
        if isinstance(result, AttestedChannel)
        else [
            {"measurements": m.build, "field": m.field, "expected": m.expected, "actual": m.actual}
            for m in result.mismatches
        ]
    )
    return info


__all__ = [
    "AttestationRefused",
    "VERDICT_SCHEMA",
    "verdict",
    "AttestedChannel",
    "Expectation",
    "Mismatch",
    "IDENTITY_FIELDS",
    "compare",
    "match_identity",
    "open_attested",
]
