"""Verify an SGX DCAP quote: dcap-qvl for the cryptography and collateral, then our policy.

dcap-qvl checks the PCK chain (with CRLs) up to the root, the TCB info and QE identity
signatures and validity, the QE report and the ISV report signatures, and matches the platform
TCB. On top of that this module:

* parses the quote strictly (length fields must add up; the embedded PCK chain must be a chain of
  valid signatures ending in a self-signed root, equal to the trusted root when one is given —
  dcap-qvl ignores the embedded copy of the root, so a modified copy would otherwise pass);
* applies the TCB-status policy: only ``UpToDate`` unless other statuses are allowed by name, with
  advisory allow/deny lists;
* checks attributes like Gramine's verifier: INIT and MODE64BIT set, PROVISION_KEY and
  EINITTOKEN_KEY clear, DEBUG refused unless allowed.

Every refusal raises :class:`QuoteRejected` with a reason meant for logs and users.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from .quote import (FLAG_DEBUG, FLAG_EINITTOKEN_KEY, FLAG_INIT, FLAG_MODE64BIT,
                    FLAG_PROVISION_KEY, Quote, QuoteFormatError)

TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded")


class QuoteRejected(Exception):
    """The quote does not prove what the policy requires."""


class VerifierConfigError(ValueError):
    """The verifier was asked for something it cannot do."""


@dataclass(frozen=True)
class TcbPolicy:
    allowed_statuses: frozenset[str] = frozenset({"UpToDate"})
    allowed_advisories: frozenset[str] | None = None   # None: any advisory of an allowed status
    denied_advisories: frozenset[str] = frozenset()
    allow_debug: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.allowed_statuses) - set(TCB_STATUSES)
        if unknown:
            raise VerifierConfigError(f"unknown TCB status {sorted(unknown)[0]!r}; known: "
                                      f"{', '.join(TCB_STATUSES)}")
        if self.allow_debug:
            # dcap-qvl's Python binding refuses debug enclaves unconditionally.
            raise VerifierConfigError(
                "allow_debug was requested, but the quote verifier (dcap-qvl's Python binding) "
                "always rejects DEBUG enclaves: this verifier cannot honour that allowance")

    def relaxations(self) -> list[str]:
        """Human-readable list of what this policy allows beyond the strict default."""
        extra = sorted(set(self.allowed_statuses) - {"UpToDate"})
        return [f"TCB status {s} allowed" for s in extra]


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

    def to_json(self) -> dict:
        return {"status": self.status, "advisory_ids": list(self.advisory_ids),
                "mr_enclave": self.mr_enclave, "mr_signer": self.mr_signer,
                "isv_prod_id": self.isv_prod_id, "isv_svn": self.isv_svn, "debug": self.debug,
                "attributes": self.attributes, "report_data": self.report_data.hex()}


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
    needed = {"pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain",
              "tcb_info", "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity",
              "qe_identity_signature"}
    missing = sorted(needed - set(data))
    if missing:
        raise VerifierConfigError(f"{path}: collateral lacks {', '.join(missing)}")
    return text


def collateral_validity(collateral_json: str) -> tuple[_dt.datetime, _dt.datetime]:
    """(issueDate, nextUpdate) of the TCB info: when this collateral may be used."""
    tcb = json.loads(json.loads(collateral_json)["tcb_info"])
    parse = lambda s: _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return parse(tcb["issueDate"]), parse(tcb["nextUpdate"])


_verified_chains: dict[bytes, bool] = {}   # sha256(cert data + root) of chains that verified
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
    try:
        for child, parent in zip(certs, certs[1:]):
            child.verify_directly_issued_by(parent)
        certs[-1].verify_directly_issued_by(certs[-1])
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise QuoteRejected(f"the quote's embedded PCK chain does not verify ({exc or 'bad signature'})") \
            from None
    if root_der is not None:
        from cryptography.hazmat.primitives.serialization import Encoding
        if certs[-1].public_bytes(Encoding.DER) != root_der:
            raise QuoteRejected("the quote's PCK chain ends in another root than the trusted one")


def verify_quote(raw: bytes, collateral_json: str, *, root_ca_der: bytes | None = None,
                 now: _dt.datetime | None = None, policy: TcbPolicy = TcbPolicy()) -> VerifiedQuote:
    """Verify *raw* against the collateral and the policy; raise QuoteRejected if refused.

    *root_ca_der* None means Intel's SGX root CA (built into dcap-qvl)."""
    try:
        quote = Quote.parse(raw)
    except QuoteFormatError as exc:
        raise QuoteRejected(f"malformed quote: {exc}") from None
    _check_embedded_chain(quote, root_ca_der)
    moment = now or _dt.datetime.now(_dt.timezone.utc)
    try:
        collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json)
        seconds = int(moment.timestamp())
        if root_ca_der is None:
            report = dcap_qvl.verify(raw, collateral, seconds)
        else:
            report = dcap_qvl.verify_with_root_ca(raw, collateral, root_ca_der, seconds)
    except ValueError as exc:
        reason = str(exc).replace("\n", " ").replace("Caused by:", "—").strip()
        if "Debug mode is enabled" in reason:
            raise QuoteRejected("DEBUG enclave: refused") from None
        raise QuoteRejected(f"quote verification failed: {reason}") from None

    status = report.status
    advisories = tuple(report.advisory_ids)
    if status not in policy.allowed_statuses:
        raise QuoteRejected(
            f"TCB status {status} is not allowed (allowed: {', '.join(sorted(policy.allowed_statuses))})"
            + (f"; advisories {', '.join(advisories)}" if advisories else ""))
    denied = sorted(set(advisories) & policy.denied_advisories)
    if denied:
        raise QuoteRejected(f"advisory {denied[0]} is denied by policy")
    if policy.allowed_advisories is not None:
        unlisted = sorted(set(advisories) - policy.allowed_advisories)
        if unlisted:
            raise QuoteRejected(f"advisory {unlisted[0]} is not in the allowed advisories")

    body = quote.report
    flags = body.flags
    if not flags & FLAG_INIT or not flags & FLAG_MODE64BIT:
        raise QuoteRejected("enclave attributes lack INIT or MODE64BIT")
    if flags & FLAG_PROVISION_KEY or flags & FLAG_EINITTOKEN_KEY:
        raise QuoteRejected("enclave has PROVISION_KEY or EINITTOKEN_KEY: not an application "
                            "enclave")
    if flags & FLAG_DEBUG and not policy.allow_debug:
        raise QuoteRejected("DEBUG enclave: refused")
    return VerifiedQuote(status, advisories, body.mr_enclave.hex(), body.mr_signer.hex(),
                         body.isv_prod_id, body.isv_svn, body.debug, body.attributes.hex(),
                         body.report_data)
