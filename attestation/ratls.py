"""RA-TLS certificates: find the SGX evidence in an X.509 certificate and check that the quote
binds the certificate's public key. Three formats exist in the field:

* **TCG DICE tagged evidence** (Gramine >= 1.8), extension 2.23.133.5.4.9: CBOR tag 60000 over
  ``[quote, claims]`` (both byte strings); *claims* is a CBOR map whose ``"pubkey-hash"`` is the
  serialized CBOR array ``[1, SHA-256(DER SubjectPublicKeyInfo)]``; the quote's
  report_data[0:32] is SHA-256 of the serialized claims. If this extension is present but
  invalid, the certificate is refused: no fallback to another format.
* **Gramine legacy**: Gramine's mis-encoded OID (read by standard parsers as
  0.6.9.42.840.113741.1337.6) holding the raw quote; report_data[0:32] = SHA-256(DER SPKI).
* **CCZoo / Occlum gRPC RA-TLS**: extension 1.2.840.113741.1 holding the raw quote, same binding.

A certificate is refused outright (EvidenceError) when its key is too weak to bind anything
(RSA under 2048 bits, elliptic curves other than P-256/P-384/P-521, other key types: in TLS 1.2
a client certificate travels in the clear, so a breakable key lets an eavesdropper replay the
certificate and its quote), when an extension appears twice, or when it carries both raw-quote
extensions (Gramine legacy and CCZoo) without TCG DICE evidence: which one would be "the"
identity is ambiguous, and no producer writes both. Other extensions next to TCG DICE evidence
are ignored, as Gramine's verifier ignores them (Intel's DCAP TLS library writes a raw quote
beside it).

This module only extracts and binds; :mod:`attestation.verify` decides whether the quote is good.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import cbor2
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .errors import AttestationError
from .quote import Quote, QuoteFormatError

#: The key of an RA-TLS certificate: ECDSA P-384 (Gramine's formats) or RSA-2048 (CCZoo's).
RaTlsKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DICE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
LEGACY_OID = x509.ObjectIdentifier("0.6.9.42.840.113741.1337.6")
CCZOO_OID = x509.ObjectIdentifier("1.2.840.113741.1")
DICE_TAG = 60000
SHA256_ALG = 1  # IANA named-information hash algorithm registry

FORMATS = ("tcg-dice", "gramine-legacy", "cczoo")


class EvidenceError(AttestationError, ValueError):
    """The certificate carries no usable SGX evidence, or it does not bind the key."""


@dataclass(frozen=True)
class Evidence:
    format: str
    quote: bytes
    public_key_der: bytes  # DER SubjectPublicKeyInfo of the certificate


MIN_RSA_BITS = 2048
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _spki(cert: x509.Certificate) -> bytes:
    try:
        key = cert.public_key()
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise EvidenceError(f"the certificate's public key cannot be read: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise EvidenceError(
                f"the certificate's RSA key has {key.key_size} bits; RA-TLS "
                f"needs at least {MIN_RSA_BITS} (a weaker key could be broken "
                "and the certificate replayed)"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise EvidenceError(
                f"the certificate's EC key is on {key.curve.name}; RA-TLS keys "
                f"are on {', '.join(EC_CURVES)}"
            )
    else:
        raise EvidenceError(
            f"the certificate's key is {type(key).__name__.lstrip('_')}; RA-TLS "
            "keys are RSA (2048 bits or more) or ECDSA (P-256, P-384, P-521)"
        )
    return spki


def _extension_oids(cert: x509.Certificate) -> set[str]:
    """The certificate's extension OIDs; EvidenceError for an unreadable or repeated one."""
    try:
        return {ext.oid.dotted_string for ext in cert.extensions}
    except x509.DuplicateExtension as exc:
        raise EvidenceError(
            f"the certificate carries the extension {exc.oid.dotted_string} twice"
        ) from None
    except (ValueError, TypeError) as exc:
        raise EvidenceError(
            f"the certificate has an extension that cannot be parsed: {exc}"
        ) from None


def _report_data(quote: bytes) -> bytes:
    try:
        return Quote.parse(quote).report.report_data
    except QuoteFormatError as exc:
        raise EvidenceError(f"the certificate's quote is malformed: {exc}") from None


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except (ValueError, TypeError) as exc:  # e.g. a known extension with a malformed value
        raise EvidenceError(
            f"the certificate has an extension that cannot be parsed: {exc}"
        ) from None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _dice(evidence: bytes, spki: bytes) -> bytes:
    try:
        tagged = cbor2.loads(evidence)
    except (
        cbor2.CBORDecodeError,
        ValueError,
        TypeError,
        RecursionError,
        MemoryError,
        OverflowError,
        LookupError,
    ) as exc:
        raise EvidenceError(f"TCG DICE evidence is not CBOR: {exc}") from None
    if not isinstance(tagged, cbor2.CBORTag) or tagged.tag != DICE_TAG:
        raise EvidenceError(f"TCG DICE evidence is not CBOR tag {DICE_TAG}")
    value = tagged.value
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, bytes) for v in value)
    ):
        raise EvidenceError("TCG DICE evidence must be [quote, claims] byte strings")
    quote, claims_raw = value
    try:
        claims = cbor2.loads(claims_raw)
        entry = cbor2.loads(claims["pubkey-hash"])
    except (
        cbor2.CBORDecodeError,
        KeyError,
        TypeError,
        ValueError,
        RecursionError,
        MemoryError,
        OverflowError,
        LookupError,
    ) as exc:
        raise EvidenceError(f"TCG DICE claims lack a valid pubkey-hash ({exc})") from None
    if (
        not isinstance(entry, list)
        or len(entry) != 2
        or entry[0] != SHA256_ALG
        or isinstance(entry[0], bool)
    ):
        raise EvidenceError("TCG DICE pubkey-hash must be [1 (SHA-256), hash]")
    if entry[1] != hashlib.sha256(spki).digest():
        raise EvidenceError("TCG DICE pubkey-hash does not match the certificate's public key")
    if _report_data(quote)[:32] != hashlib.sha256(claims_raw).digest():
        raise EvidenceError("the quote's report_data does not bind the TCG DICE claims")
    return quote


def extract_evidence(cert: x509.Certificate) -> Evidence:
    """The certificate's quote, checked to bind the certificate's public key."""
    oids = _extension_oids(cert)
    spki = _spki(cert)
    if (
        DICE_OID.dotted_string not in oids
        and {LEGACY_OID.dotted_string, CCZOO_OID.dotted_string} <= oids
    ):
        raise EvidenceError(
            "the certificate carries two raw SGX quotes (Gramine legacy "
            f"{LEGACY_OID.dotted_string} and CCZoo {CCZOO_OID.dotted_string}): "
            "ambiguous evidence is refused"
        )
    dice = _extension(cert, DICE_OID)
    if dice is not None:
        return Evidence("tcg-dice", _dice(dice, spki), spki)
    for fmt, oid in (("gramine-legacy", LEGACY_OID), ("cczoo", CCZOO_OID)):
        quote = _extension(cert, oid)
        if quote is not None:
            if _report_data(quote)[:32] != hashlib.sha256(spki).digest():
                raise EvidenceError(
                    f"{fmt} RA-TLS: the quote's report_data does not bind the "
                    "certificate's public key"
                )
            return Evidence(fmt, quote, spki)
    raise EvidenceError("the certificate carries no SGX evidence (not an RA-TLS certificate)")


# --------------------------------------------------------------------------- creating

QuoteMaker = Callable[[bytes], bytes]  # report_data (64 bytes) -> quote


GRAMINE_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "RATLS"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ]
)
#: The subject Occlum's gRPC RA-TLS library gives its certificates (peers do not check it).
OCCLUM_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Intel Inc."),
        x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
    ]
)


def dice_evidence(spki: bytes, make_quote: QuoteMaker) -> bytes:
    """The value of a TCG DICE tagged-evidence extension (:data:`DICE_OID`) for the DER
    SubjectPublicKeyInfo *spki*: CBOR tag 60000 over ``[quote, claims]``, the claims'
    ``pubkey-hash`` the SHA-256 of *spki* and the quote's report_data[0:32] the SHA-256 of the
    claims, as Gramine's RA-TLS makes it."""
    entry = cbor2.dumps([SHA256_ALG, hashlib.sha256(spki).digest()])
    claims = cbor2.dumps({"pubkey-hash": entry})
    quote = make_quote(hashlib.sha256(claims).digest() + bytes(32))
    return cbor2.dumps(cbor2.CBORTag(DICE_TAG, [quote, claims]))


def create_certificate(
    fmt: str,
    make_quote: QuoteMaker,
    key: RaTlsKey | None = None,
    days: int = 1,
    subject: x509.Name | None = None,
) -> tuple[x509.Certificate, RaTlsKey]:
    """A self-signed RA-TLS certificate in format *fmt* (what an enclave presents).

    Gramine's formats use an ECDSA P-384 key and subject CN=RATLS,O=GramineDevelopers,C=US;
    CCZoo's uses RSA-2048 (and the same subject unless *subject* is given)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown RA-TLS format {fmt!r}; known: {', '.join(FORMATS)}")
    if key is None:
        key = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if fmt == "cczoo"
            else ec.generate_private_key(ec.SECP384R1())
        )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if fmt == "tcg-dice":
        value, oid = dice_evidence(spki, make_quote), DICE_OID
    else:
        value = make_quote(hashlib.sha256(spki).digest() + bytes(32))
        oid = LEGACY_OID if fmt == "gramine-legacy" else CCZOO_OID
    name = subject if subject is not None else GRAMINE_SUBJECT
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


# --------------------------------------------------------------------------- server identity

#: Formats of :func:`server_certificate`: what the peer expects of the server.
SERVER_FORMATS = {"dice": "tcg-dice", "occlum": "cczoo"}
SERVER_CERT_DAYS = 3650  # the key is fresh per start: validity is not what protects it


def server_certificate(
    fmt: str, quote_source: QuoteMaker, *, days: int = SERVER_CERT_DAYS
) -> tuple[bytes, bytes]:
    """The secret server's own RA-TLS identity, made fresh (new key) each time it is called:
    ``(cert_pem, key_pem)`` (the key PKCS#8, unencrypted: keep it in memory or a 0600 file).

    *fmt* is what the peer expects:

    * ``"dice"`` (Gramine peers): ECDSA P-384, TCG DICE tagged evidence (2.23.133.5.4.9),
      subject CN=RATLS,O=GramineDevelopers,C=US;
    * ``"occlum"`` (Occlum's init and its gRPC RA-TLS library): RSA-2048, the raw quote in
      extension 1.2.840.113741.1 with report_data[0:32] = SHA-256 of the DER
      SubjectPublicKeyInfo, subject C=CN,O=Intel Inc.,CN=localhost as Occlum's library makes.

    *quote_source* turns 64 bytes of report data into a quote: inside Gramine
    :func:`attestation.quote_source.discover` gives the quote device
    (``/dev/attestation/user_report_data`` -> ``/dev/attestation/quote``), in a simulation the
    simulated quoter. Raises ValueError for an unknown *fmt*; whatever *quote_source* raises
    passes through."""
    if fmt not in SERVER_FORMATS:
        raise ValueError(
            f"unknown server RA-TLS format {fmt!r}; known: {', '.join(SERVER_FORMATS)}"
        )
    cert, key = create_certificate(
        SERVER_FORMATS[fmt],
        quote_source,
        days=days,
        subject=OCCLUM_SUBJECT if fmt == "occlum" else None,
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
