"""Verify an SGX DCAP quote: dcap-qvl for the cryptography and collateral, then our policy.

dcap-qvl checks the PCK chain (with CRLs) up to the root, the TCB info and QE identity
signatures and validity, the QE report and the ISV report signatures, and matches the platform
TCB. On top of that this module:

* parses the quote strictly (length fields must add up; the embedded PCK chain must be at most
  3 certificates, a chain of valid signatures ending in a self-signed root, equal to the trusted
  root when one is given — dcap-qvl ignores the embedded copy of the root, so a modified copy
  would otherwise pass; the length and the root are checked before any signature);
* applies the TCB-status policy: only ``UpToDate`` unless other statuses are allowed by name, with
  advisory allow/deny lists;
* checks attributes like Gramine's verifier: INIT and MODE64BIT set, PROVISION_KEY and
  EINITTOKEN_KEY clear, DEBUG refused unless allowed.

Every refusal raises :class:`QuoteRejected` with a reason meant for logs and users.

**Verification cache** (:class:`VerificationCache`, opt-in per call; the secret server uses one
per process). Of everything dcap-qvl checks, only two things depend on the 384-byte ISV
enclave report and its signature: the ECDSA signature over header + ISV report by the quote's
attestation key, and the report's DEBUG attribute. Everything else — the PCK chain up to the
root with the CRLs, the TCB info and QE identity signatures and dates, the QE report, its
signature by the PCK key and its binding of the attestation key, the TCB level match — depends
only on the rest of the quote, the collateral and the root. So an accepted outcome (TCB status
and advisories) is cached under SHA-256 of exactly those inputs (the quote minus the ISV report
and its signature, the whole collateral, the root), and a later quote that matches byte for
byte gets only its own checks: the ISV signature by the (same, already vouched-for) attestation
key and the attribute checks. An entry is used only from the second it was verified at until
(excluded) the earliest expiry of anything verification relied on: the TCB info's and QE
identity's nextUpdate, both CRLs' nextUpdate, and the notAfter of every certificate in the
quote's PCK chain, the collateral's issuer chains and the trusted root. Refusals are never
cached; a collateral that cannot be read for those dates is never cached under.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from enclave_build.contract import tcb as _tcb
from enclave_build.contract.identity import EnclaveIdentity

from .errors import AttestationConfigError, AttestationError
from .quote import (
    FLAG_DEBUG,
    FLAG_EINITTOKEN_KEY,
    FLAG_INIT,
    FLAG_MODE64BIT,
    FLAG_PROVISION_KEY,
    HEADER_LEN,
    SIGNED_LEN,
    Quote,
    QuoteFormatError,
)


class QuoteRejected(AttestationError):
    """The quote does not prove what the policy requires."""


class VerifierConfigError(AttestationConfigError, ValueError):
    """The verifier was asked for something it cannot do."""


@dataclass(frozen=True)
class TcbPolicy(_tcb.TcbPolicy):
    """The contract's TCB policy (:class:`enclave_build.contract.tcb.TcbPolicy`), refused where
    this verifier cannot honour it: VerifierConfigError."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as exc:
            raise VerifierConfigError(str(exc)) from None
        if self.allow_debug:
            # dcap-qvl's Python binding refuses debug enclaves unconditionally.
            raise VerifierConfigError(
                "allow_debug was requested, but the quote verifier (dcap-qvl's Python binding) "
                "always rejects DEBUG enclaves: this verifier cannot honour that allowance"
            )

    @classmethod
    def of(cls, policy: _tcb.TcbPolicy) -> TcbPolicy:
        """*policy* as this verifier applies it (secrets.toml's reader gives the contract's
        TcbPolicy, which holds the values only)."""
        if isinstance(policy, cls):
            return policy
        return cls(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)})

    def refusal(self, quote: VerifiedQuote) -> str | None:
        """Why this policy refuses a cryptographically verified *quote* (TCB status,
        advisories, attributes, DEBUG), or None when it accepts it. Pure: no I/O, no clock."""
        status, advisories = quote.status, quote.advisory_ids
        if status not in self.allowed_statuses:
            return (
                f"TCB status {status} is not allowed (allowed: "
                f"{', '.join(sorted(self.allowed_statuses))})"
                + (f"; advisories {', '.join(advisories)}" if advisories else "")
            )
        denied = sorted(set(advisories) & self.denied_advisories)
        if denied:
            return f"advisory {denied[0]} is denied by policy"
        if self.allowed_advisories is not None:
            unlisted = sorted(set(advisories) - self.allowed_advisories)
            if unlisted:
                return f"advisory {unlisted[0]} is not in the allowed advisories"
        flags = quote.flags
        if not flags & FLAG_INIT or not flags & FLAG_MODE64BIT:
            return "enclave attributes lack INIT or MODE64BIT"
        if flags & FLAG_PROVISION_KEY or flags & FLAG_EINITTOKEN_KEY:
            return "enclave has PROVISION_KEY or EINITTOKEN_KEY: not an application enclave"
        if flags & FLAG_DEBUG and not self.allow_debug:
            return "DEBUG enclave: refused"
        return None


@dataclass(frozen=True)
class VerifiedQuote:
    status: str
    advisory_ids: tuple[str, ...]
    mr_enclave: str
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    debug: bool
    attributes: str
    report_data: bytes = field(repr=False)

    @property
    def identity(self) -> EnclaveIdentity:
        return EnclaveIdentity(
            self.mr_enclave, self.mr_signer, self.isv_prod_id, self.isv_svn, self.debug
        )

    @property
    def flags(self) -> int:
        """attributes.flags (the first 8 bytes of the attributes, little-endian)."""
        return int.from_bytes(bytes.fromhex(self.attributes)[:8], "little")

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "advisory_ids": list(self.advisory_ids),
            "mr_enclave": self.mr_enclave,
            "mr_signer": self.mr_signer,
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "debug": self.debug,
            "attributes": self.attributes,
            "report_data": self.report_data.hex(),
        }


def load_root_der(path: str | Path | None) -> bytes | None:
    """A root CA certificate (PEM or DER file) as DER; None stays None (Intel's root)."""
    if path is None:
        return None
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def load_collateral(path: str | Path) -> str:
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise VerifierConfigError(f"{path}: cannot read collateral: {exc}") from None
    needed = {
        "pck_crl_issuer_chain",
        "root_ca_crl",
        "pck_crl",
        "tcb_info_issuer_chain",
        "tcb_info",
        "tcb_info_signature",
        "qe_identity_issuer_chain",
        "qe_identity",
        "qe_identity_signature",
    }
    missing = sorted(needed - set(data))
    if missing:
        raise VerifierConfigError(f"{path}: collateral lacks {', '.join(missing)}")
    return text


def collateral_validity(collateral_json: str) -> tuple[_dt.datetime, _dt.datetime]:
    """(issueDate, nextUpdate) of the TCB info: when this collateral may be used."""
    tcb = json.loads(json.loads(collateral_json)["tcb_info"])
    parse = lambda s: _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return parse(tcb["issueDate"]), parse(tcb["nextUpdate"])


#: Intel's PCK certificate chain (certification data type 5) is PCK, PCK Platform/Processor
#: CA, root: 3 certificates.
MAX_PCK_CHAIN = 3

_verified_chains: dict[bytes, bool] = {}  # sha256(cert data + root) of chains that verified
_CHAIN_CACHE_SIZE = 256


def _check_embedded_chain(quote: Quote, root_der: bytes | None) -> None:
    """Every quote from one platform carries the same PCK chain: a chain whose exact bytes
    already verified against this root is not verified again."""
    key = hashlib.sha256(quote.cert_data + b"|" + (root_der or b"intel")).digest()
    if key in _verified_chains:
        return
    _verify_embedded_chain(quote, root_der)
    if len(_verified_chains) >= _CHAIN_CACHE_SIZE:
        _verified_chains.clear()
    _verified_chains[key] = True


def _verify_embedded_chain(quote: Quote, root_der: bytes | None) -> None:
    try:
        certs = [x509.load_der_x509_certificate(der) for der in quote.pem_chain()]
    except (QuoteFormatError, UnsupportedAlgorithm, ValueError) as exc:
        raise QuoteRejected(f"malformed PCK certificate chain in the quote: {exc}") from None
    if len(certs) < 2:
        raise QuoteRejected("the quote's PCK certificate chain is too short")
    # Cheap checks first: the chain comes from an unauthenticated peer, and every signature
    # costs (~100 KB of certificates fit into one TLS certificate message).
    if len(certs) > MAX_PCK_CHAIN:
        raise QuoteRejected(
            f"the quote's PCK certificate chain has {len(certs)} certificates; "
            f"a PCK chain has at most {MAX_PCK_CHAIN} (PCK, PCK CA, root)"
        )
    if root_der is not None:
        from cryptography.hazmat.primitives.serialization import Encoding

        if certs[-1].public_bytes(Encoding.DER) != root_der:
            raise QuoteRejected("the quote's PCK chain ends in another root than the trusted one")
    try:
        for child, parent in itertools.pairwise(certs):
            child.verify_directly_issued_by(parent)
        certs[-1].verify_directly_issued_by(certs[-1])
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise QuoteRejected(
            f"the quote's embedded PCK chain does not verify ({exc or 'bad signature'})"
        ) from None


# ----------------------------------------------------------------------------- cache

_ISV_SIG_START = SIGNED_LEN + 4  # after the u32 signature-data length
_ISV_SIG_END = _ISV_SIG_START + 64  # r || s


def _parse_time(text: str) -> _dt.datetime:
    moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return moment


def _not_after(certs: list[x509.Certificate]) -> _dt.datetime:
    return min(c.not_valid_after_utc for c in certs)


def _crl_bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value)
    if isinstance(value, list):
        return bytes(value)
    raise ValueError("CRL is neither hex nor a byte list")


@dataclass(frozen=True)
class CollateralFacts:
    digest: bytes
    expires: _dt.datetime  # earliest nextUpdate / notAfter in the collateral


def collateral_facts(collateral_json: str) -> CollateralFacts | None:
    """What the cache needs to know about a collateral: its digest and the earliest moment any
    part of it stops being valid. None when any of those dates cannot be read (never cache)."""
    try:
        data = json.loads(collateral_json)
        moments = [
            _parse_time(json.loads(data["tcb_info"])["nextUpdate"]),
            _parse_time(json.loads(data["qe_identity"])["nextUpdate"]),
        ]
        for name in ("root_ca_crl", "pck_crl"):
            crl = x509.load_der_x509_crl(_crl_bytes(data[name]))
            if crl.next_update_utc is None:
                return None  # a CRL without nextUpdate gives no bound: do not cache
            moments.append(crl.next_update_utc)
        for name in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"):
            certs = x509.load_pem_x509_certificates(data[name].encode())
            moments.append(_not_after(certs))
    except Exception:  # noqa: BLE001 - unreadable: dcap-qvl decides every time
        return None
    return CollateralFacts(hashlib.sha256(collateral_json.encode()).digest(), min(moments))


@dataclass(frozen=True)
class CachedOutcome:
    """dcap-qvl's acceptance of one platform part, and when it may be reused."""

    status: str
    advisories: tuple[str, ...]
    valid_from: int  # the second (Unix time) dcap-qvl accepted it at
    valid_until: int  # first second it may no longer be used (exclusive)
    attestation_key: ec.EllipticCurvePublicKey


class VerificationCache:
    """dcap-qvl outcomes by platform part of the quote + collateral + root (see the module
    docstring for why a hit is as strict as a full verification). Thread-safe; bounded."""

    def __init__(
        self,
        max_entries: int = 4096,
        *,
        facts: Callable[[str], CollateralFacts | None] = collateral_facts,
    ):
        self.max_entries = max_entries
        self._read_facts = facts  # what the cache needs to know about a collateral
        self._entries: dict[bytes, CachedOutcome] = {}
        self._collaterals: dict[str, CollateralFacts | None] = {}
        self._roots: dict[bytes | None, _dt.datetime | None] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[tuple[bytes, CachedOutcome]]:
        """(key, outcome) of every entry, oldest first."""
        with self._lock:
            return list(self._entries.items())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._collaterals.clear()
            self._roots.clear()

    def _facts(self, collateral_json: str) -> CollateralFacts | None:
        # str keys hash once (CPython caches a str's hash) and the same object compares by
        # identity: looking up the collateral a source hands out again and again is cheap.
        try:
            return self._collaterals[collateral_json]
        except KeyError:
            facts = self._read_facts(collateral_json)
            with self._lock:
                if len(self._collaterals) >= 16:
                    self._collaterals.clear()
                self._collaterals[collateral_json] = facts
            return facts

    def _root_expiry(self, root_der: bytes | None) -> _dt.datetime | None:
        if root_der is None:
            return None  # Intel's root, inside dcap-qvl (valid until 2049)
        try:
            return self._roots[root_der]
        except KeyError:
            try:
                expiry = x509.load_der_x509_certificate(root_der).not_valid_after_utc
            except ValueError:
                expiry = _dt.datetime.min.replace(tzinfo=_dt.UTC)  # never cache
            self._roots[root_der] = expiry
            return expiry

    @staticmethod
    def key(raw: bytes, facts: CollateralFacts, root_der: bytes | None) -> bytes:
        """Everything dcap-qvl's verdict depends on except the ISV report and its signature."""
        digest = hashlib.sha256(b"enclave-build verification cache v1\0")
        digest.update(hashlib.sha256(root_der).digest() if root_der is not None else b"intel")
        digest.update(facts.digest)
        digest.update(raw[:HEADER_LEN])
        digest.update(raw[SIGNED_LEN:_ISV_SIG_START])
        digest.update(raw[_ISV_SIG_END:])
        return digest.digest()

    def lookup(self, key: bytes, seconds: int) -> CachedOutcome | None:
        outcome = self._entries.get(key)
        if outcome is None or not outcome.valid_from <= seconds < outcome.valid_until:
            return None
        return outcome

    def valid_until(
        self, raw: bytes, collateral_json: str, root_der: bytes | None, seconds: int
    ) -> int | None:
        """The first second (Unix time) at which the cached verification of the quote *raw*
        with this collateral and root may no longer be reused, or None when none is cached."""
        facts = self._facts(collateral_json)
        if facts is None:
            return None
        outcome = self.lookup(VerificationCache.key(raw, facts, root_der), seconds)
        return None if outcome is None else outcome.valid_until

    def store(self, key: bytes, outcome: CachedOutcome) -> None:
        with self._lock:
            if key not in self._entries and len(self._entries) >= self.max_entries:
                # drop the oldest entries (insertion order): a burst of new platforms costs
                # re-verification of old ones, never unbounded memory
                for old in list(self._entries)[: max(1, self.max_entries // 8)]:
                    del self._entries[old]
            self._entries[key] = outcome


def _pck_chain_expiry(quote: Quote) -> _dt.datetime:
    return _not_after([x509.load_der_x509_certificate(der) for der in quote.pem_chain()])


def _isv_signature_ok(outcome: CachedOutcome, raw: bytes) -> bool:
    signature = raw[_ISV_SIG_START:_ISV_SIG_END]
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        outcome.attestation_key.verify(der, raw[:SIGNED_LEN], ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _dcap_qvl(
    raw: bytes, collateral_json: str, root_ca_der: bytes | None, seconds: int
) -> tuple[str, tuple[str, ...]]:
    try:
        collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
        if root_ca_der is None:
            report = dcap_qvl.verify(raw, collateral, seconds)
        else:
            report = dcap_qvl.verify_with_root_ca(raw, collateral, root_ca_der, seconds)
    except ValueError as exc:
        reason = str(exc).replace("\n", " ").replace("Caused by:", "—").strip()
        if "Debug mode is enabled" in reason:
            raise QuoteRejected("DEBUG enclave: refused") from None
        raise QuoteRejected(
            f"quote verification failed: {reason}" + _root_hint(collateral_json, root_ca_der)
        ) from None
    return report.status, tuple(report.advisory_ids)


def _root_hint(collateral_json: str, root_ca_der: bytes | None) -> str:
    """What to change when the refusal comes from collateral that does not chain to the
    trusted root (every quote fails the same way then), else ""."""
    from .collateral_root import collateral_root_problem

    try:
        problem = collateral_root_problem(collateral_json, root_ca_der)
    except ValueError:  # a trusted root that is no certificate: reported where it is loaded
        return ""
    return f" (the collateral does not chain to the trusted root: {problem})" if problem else ""


def _verified_outcome(
    raw: bytes,
    quote: Quote,
    collateral_json: str,
    root_ca_der: bytes | None,
    seconds: int,
    cache: VerificationCache | None,
) -> tuple[str, tuple[str, ...]]:
    """(TCB status, advisories) as dcap-qvl gives them, from the cache when it may be."""
    if cache is None:
        _check_embedded_chain(quote, root_ca_der)
        return _dcap_qvl(raw, collateral_json, root_ca_der, seconds)
    facts = cache._facts(collateral_json)
    key = VerificationCache.key(raw, facts, root_ca_der) if facts is not None else None
    outcome = cache.lookup(key, seconds) if key is not None else None
    if outcome is not None:
        cache.hits += 1
        # The two checks dcap-qvl makes on the ISV report, in its order.
        if not _isv_signature_ok(outcome, raw):
            raise QuoteRejected(
                "quote verification failed: ISV enclave report signature is invalid"
            )
        if quote.report.flags & FLAG_DEBUG:
            raise QuoteRejected("DEBUG enclave: refused")
        return outcome.status, outcome.advisories
    cache.misses += 1
    _check_embedded_chain(quote, root_ca_der)
    status, advisories = _dcap_qvl(raw, collateral_json, root_ca_der, seconds)
    if key is not None:
        try:
            assert facts is not None  # a cache key is made from the facts
            bounds = [facts.expires, _pck_chain_expiry(quote)]
            root_expiry = cache._root_expiry(root_ca_der)
            if root_expiry is not None:
                bounds.append(root_expiry)
            until = int(min(bounds).timestamp())  # floor: the expiry second itself is out
            attestation_key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b"\x04" + quote.attestation_key
            )
        except (ValueError, QuoteFormatError, OverflowError):
            return status, advisories  # not cacheable; the verdict stands
        if seconds < until:
            cache.store(key, CachedOutcome(status, advisories, seconds, until, attestation_key))
    return status, advisories


def verify_quote_signature(
    raw: bytes,
    collateral_json: str,
    *,
    root_ca_der: bytes | None = None,
    now: _dt.datetime | None = None,
    cache: VerificationCache | None = None,
) -> VerifiedQuote:
    """Verify *raw* cryptographically against the collateral (dcap-qvl, the embedded PCK
    chain); raise QuoteRejected if it does not verify. The TCB status, advisories and
    attributes are reported, not judged: :meth:`TcbPolicy.refusal` judges them (dcap-qvl
    itself always refuses DEBUG enclaves).

    *root_ca_der* None means Intel's SGX root CA (built into dcap-qvl). With a *cache*, the
    platform part of the verification is reused while it is valid (see the module docstring);
    the result is the same as without."""
    try:
        quote = Quote.parse(raw)
    except QuoteFormatError as exc:
        raise QuoteRejected(f"malformed quote: {exc}") from None
    moment = now or _dt.datetime.now(_dt.UTC)
    status, advisories = _verified_outcome(
        quote.raw, quote, collateral_json, root_ca_der, int(moment.timestamp()), cache
    )
    body = quote.report
    return VerifiedQuote(
        status,
        advisories,
        body.mr_enclave.hex(),
        body.mr_signer.hex(),
        body.isv_prod_id,
        body.isv_svn,
        body.debug,
        body.attributes.hex(),
        body.report_data,
    )


def verify_quote(
    raw: bytes,
    collateral_json: str,
    *,
    root_ca_der: bytes | None = None,
    now: _dt.datetime | None = None,
    policy: _tcb.TcbPolicy = TcbPolicy(),
    cache: VerificationCache | None = None,
) -> VerifiedQuote:
    """Verify *raw* against the collateral (:func:`verify_quote_signature`) and the policy
    (:meth:`TcbPolicy.refusal`; the contract's TcbPolicy too); raise QuoteRejected if
    refused."""
    verified = verify_quote_signature(
        raw, collateral_json, root_ca_der=root_ca_der, now=now, cache=cache
    )
    reason = TcbPolicy.of(policy).refusal(verified)
    if reason is not None:
        raise QuoteRejected(reason)
    return verified
