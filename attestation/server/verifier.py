"""What a client's RA-TLS certificate proves: the evidence is extracted and must bind the
certificate's key (:mod:`attestation.ratls`), and the quote must verify cryptographically
against collateral and the trusted root (:func:`attestation.verify.verify_quote_signature`,
with the process's verification cache). Judging the verified quote (TCB status, attributes,
identity) is :func:`attestation.server.decide.decide`'s job.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Protocol

from cryptography import x509

from enclave_build.contract.secrets_config import SecretsConfig

from ..collateral import CollateralError, CollateralSource, source_for
from ..occlum_ra import CONFIG_SVN_OFFSET
from ..ratls import EvidenceError, extract_evidence
from ..verify import (
    QuoteRejected,
    VerificationCache,
    VerifierConfigError,
    load_root_der,
    verify_quote_signature,
)
from .decide import ClientEvidence, Evidence, Unverified

Clock = Callable[[], _dt.datetime]


class PeerCertificate(Protocol):
    """The client certificate as the TLS library hands it over (pyOpenSSL's X509)."""

    def to_cryptography(self) -> x509.Certificate: ...


class Verifier(Protocol):
    def verify(self, peer: PeerCertificate | None, timeout: float) -> ClientEvidence:
        """What *peer* proves; *timeout* bounds the wait for collateral (seconds)."""


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class ClientVerifier:
    """Verifies client certificates against one configuration's collateral and root."""

    def __init__(
        self,
        collateral: CollateralSource,
        root_der: bytes | None,
        cache: VerificationCache | None,
        now: Clock = utc_now,
    ):
        self.collateral = collateral
        self.root_der = root_der
        self.cache = cache
        self._now = now

    @classmethod
    def for_config(cls, config: SecretsConfig, now: Clock = utc_now) -> ClientVerifier:
        """``[attestation]``: the collateral source, the root, and a fresh verification cache
        unless ``verification_cache = false``."""
        attestation = config.attestation
        root_der = load_root_der(attestation.root_ca)
        return cls(
            source_for(attestation),
            root_der,
            VerificationCache() if attestation.verification_cache else None,
            now,
        )

    def verify(self, peer: PeerCertificate | None, timeout: float) -> ClientEvidence:
        if peer is None:
            return Unverified("no client certificate")
        fmt = None
        try:
            try:
                certificate = peer.to_cryptography()
            except Exception as exc:  # noqa: BLE001 - anything the parser chokes on
                raise EvidenceError(f"the client certificate cannot be parsed: {exc}") from None
            evidence = extract_evidence(certificate)
            fmt = evidence.format
            collateral = self.collateral.for_quote(evidence.quote, timeout=max(0.0, timeout))
            verified = verify_quote_signature(
                evidence.quote,
                collateral,
                root_ca_der=self.root_der,
                now=self._now(),
                cache=self.cache,
            )
        except (EvidenceError, QuoteRejected, VerifierConfigError) as exc:
            return Unverified(str(exc), fmt)
        except CollateralError as exc:
            return Unverified(f"no collateral to verify the quote: {exc}", fmt, no_collateral=True)
        config_svn = int.from_bytes(
            evidence.quote[CONFIG_SVN_OFFSET : CONFIG_SVN_OFFSET + 2], "little"
        )
        return Evidence(fmt, verified, config_svn)
