"""What a client's RA-TLS certificate proves: the evidence is extracted and must bind the
certificate's key (:mod:`attestation.ratls`), and the quote must verify cryptographically
against collateral and the trusted root (:func:`attestation.verify.verify_quote_signature`,
with the process's verification cache). Judging the verified quote (TCB status, attributes,
identity) is :func:`attestation.server.decide.decide`'s job.

With the verification cache on, what a certificate proved is also kept by the certificate's
SHA-256 digest (:class:`VerdictCache`): an enclave presents the same certificate on each of its
connections (one per key it fetches), and the TLS handshake has just proved it holds that
certificate's key, so a certificate seen before needs no extraction and no signature checks
again. A verdict is kept only while the verification cache's entry it rests on may be reused
(the collateral's, the PCK chain's and the root's validity), only for the collateral the source
still hands out for the quote, and only for verified evidence; the policy still decides every
connection.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import threading
from collections.abc import Callable
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

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


class _Verdict:
    __slots__ = ("collateral", "evidence", "quote", "since", "until")

    def __init__(
        self, evidence: Evidence, quote: bytes, collateral: str, since: int, until: int
    ) -> None:
        self.evidence = evidence
        self.quote = quote
        self.collateral = collateral
        self.since = since  # the second (Unix time) it was verified at
        self.until = until  # the first second it may no longer be used


class VerdictCache:
    """Verified evidence by client certificate digest; thread-safe, at most *max_entries*
    (the oldest eighth is dropped when full)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, _Verdict] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, seconds: int) -> _Verdict | None:
        verdict = self._entries.get(digest)
        if verdict is None or not verdict.since <= seconds < verdict.until:
            return None
        return verdict

    def put(self, digest: bytes, verdict: _Verdict) -> None:
        with self._lock:
            if digest not in self._entries and len(self._entries) >= self.max_entries:
                for old in list(self._entries)[: max(1, self.max_entries // 8)]:
                    del self._entries[old]
            self._entries[digest] = verdict


def certificate_der(peer: PeerCertificate) -> bytes:
    """The certificate's DER bytes (from OpenSSL directly when it is pyOpenSSL's)."""
    if isinstance(peer, crypto.X509):
        return crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)
    return peer.to_cryptography().public_bytes(serialization.Encoding.DER)


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
        self.verdicts = VerdictCache() if cache is not None else None
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
        verdicts = self.verdicts
        if verdicts is None:
            return self._verify(peer, timeout)[0]
        try:
            digest = hashlib.sha256(certificate_der(peer)).digest()
        except Exception as exc:  # noqa: BLE001 - anything the encoder chokes on
            return Unverified(f"the client certificate cannot be read: {exc}")
        now = self._now()
        verdict = verdicts.get(digest, int(now.timestamp()))
        if verdict is not None:
            try:
                current = self.collateral.for_quote(verdict.quote, timeout=max(0.0, timeout))
            except CollateralError:
                current = None
            if current is not None and (
                current is verdict.collateral or current == verdict.collateral
            ):
                verdicts.hits += 1
                return verdict.evidence
        verdicts.misses += 1
        result, quote, collateral = self._verify(peer, timeout, now)
        if isinstance(result, Evidence) and quote is not None and collateral is not None:
            assert self.cache is not None  # verdicts are kept only with the cache
            seconds = int(now.timestamp())
            until = self.cache.valid_until(quote, collateral, self.root_der, seconds)
            if until is not None:
                verdicts.put(digest, _Verdict(result, quote, collateral, seconds, until))
        return result

    def _verify(
        self, peer: PeerCertificate, timeout: float, now: _dt.datetime | None = None
    ) -> tuple[ClientEvidence, bytes | None, str | None]:
        """What *peer* proves, and (when verified) the quote and the collateral it was
        verified with."""
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
                now=now or self._now(),
                cache=self.cache,
            )
        except (EvidenceError, QuoteRejected, VerifierConfigError) as exc:
            return Unverified(str(exc), fmt), None, None
        except CollateralError as exc:
            failed = Unverified(
                f"no collateral to verify the quote: {exc}", fmt, no_collateral=True
            )
            return failed, None, None
        config_svn = int.from_bytes(
            evidence.quote[CONFIG_SVN_OFFSET : CONFIG_SVN_OFFSET + 2], "little"
        )
        return Evidence(fmt, verified, config_svn), evidence.quote, collateral
