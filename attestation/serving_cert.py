"""Serving certificates of an enclave's endpoint: the key pair is made in the enclave, and its
certificate carries the enclave's quote so that a client can check what it talks to.

* **The key**: ECDSA P-256 (:func:`serving_key`), made at start in the enclave's memory and never
  exported. P-256 rather than Gramine's P-384 because this key signs in every client handshake:
  P-256 costs a fraction of P-384's CPU per connection and every TLS client (browsers, curl,
  gRPC, tritonclient) accepts it.
* **The evidence**: a TCG DICE tagged-evidence extension (2.23.133.5.4.9), made exactly as
  Gramine's RA-TLS makes it (:func:`attestation.ratls.dice_evidence`): the quote's
  report_data[0:32] is the SHA-256 of CBOR claims whose ``pubkey-hash`` is the SHA-256 of the
  certificate's DER SubjectPublicKeyInfo. :func:`attestation.ratls.extract_evidence` reads it
  from either kind of certificate below.
* **Issuer "self"** (:func:`self_signed`): a self-signed certificate with that extension, the
  endpoint's names as subject alternative names.
* **Issuer "secret-server"** (:func:`issue`): the enclave presents a self-signed RA-TLS
  certificate for its serving key to the secret server and sends a CSR for the same key; after
  the policy accepts the enclave, the server signs a short-lived certificate for it with its
  issuing CA, copying the (already verified) evidence extension and adding the enclave identity
  (:data:`IDENTITY_OID`). Ordinary TLS clients trust the CA; attestation-aware clients verify
  the quote in it themselves.

The identity extension is informative (the quote is what proves it): its OID sits under the
UUID arc 2.25 (ITU-T X.667, no registration needed) and its value is a DER UTF8String holding
the JSON of the enclave identity (mr_enclave, mr_signer, isv_prod_id, isv_svn, debug).

Runs inside the image too (the enclave makes its key, CSR and self-signed certificate):
standard library and ``cryptography`` (the bases install 50.x; the enclave's side also works with
Debian 12's python3-cryptography 38, which cannot represent :data:`IDENTITY_OID`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enclave_build.contract.identity import EnclaveIdentity

from .errors import AttestationError
from .ratls import DICE_OID, QuoteMaker, dice_evidence

#: The enclave identity of an issued serving certificate (JSON in a DER UTF8String), dotted.
IDENTITY_OID_DOTTED = "2.25.222521398991411296400498293397320035771"


def _identity_oid() -> x509.ObjectIdentifier | None:
    """The identity extension's OID; None under a ``cryptography`` that cannot represent a
    128-bit arc (Debian 12's 38), where only the enclave's side of this module is usable (its
    key, CSR and self-signed certificate), not the issuing or reading of the extension."""
    try:
        return x509.ObjectIdentifier(IDENTITY_OID_DOTTED)
    except ValueError:
        return None


#: The enclave identity of an issued serving certificate (None: see :func:`_identity_oid`).
IDENTITY_OID = _identity_oid()
#: Most names one certificate may carry (a CSR asking for more is refused).
MAX_HOSTS = 32
#: How far back a certificate's validity starts (clocks of clients differ a little).
BACKDATE = _dt.timedelta(minutes=5)


class ServingCertError(AttestationError, ValueError):
    """A CSR or host name that cannot be certified, and why."""


def serving_key() -> ec.EllipticCurvePrivateKey:
    """A fresh serving key: ECDSA P-256 (see the module docstring)."""
    return ec.generate_private_key(ec.SECP256R1())


def spki_der(key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a private or public key."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def general_name(host: str) -> x509.GeneralName:
    """A subject alternative name for *host*: an IP address, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not host or len(host) > 253 or any(c.isspace() or c in "/@:" for c in host):
        raise ServingCertError(f"{host!r} is not a DNS name or an IP address")
    return x509.DNSName(host)


def _subject(hosts: Sequence[str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])])


def _server_extensions(
    builder: x509.CertificateBuilder, names: Sequence[x509.GeneralName], key
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def self_signed(
    key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str],
    make_quote: QuoteMaker,
    *,
    lifetime: _dt.timedelta,
    now: _dt.datetime | None = None,
) -> x509.Certificate:
    """Issuer "self": a self-signed serving certificate for *key* naming *hosts*, with the TCG
    DICE evidence of a fresh quote (*make_quote*: 64 bytes of report data -> quote)."""
    if not hosts:
        raise ServingCertError("a serving certificate names at least one host")
    names = [general_name(h) for h in hosts]
    now = now or _dt.datetime.now(_dt.UTC)
    evidence = dice_evidence(spki_der(key), make_quote)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(hosts))
        .issuer_name(_subject(hosts))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.UnrecognizedExtension(DICE_OID, evidence), critical=False)
    )
    return _server_extensions(builder, names, key.public_key()).sign(key, hashes.SHA256())


def csr(key: ec.EllipticCurvePrivateKey, hosts: Sequence[str]) -> bytes:
    """The DER CSR an enclave sends for *key* and *hosts* (issuer "secret-server")."""
    if not hosts:
        raise ServingCertError("a serving certificate names at least one host")
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(hosts))
        .add_extension(
            x509.SubjectAlternativeName([general_name(h) for h in hosts]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- the issuing side


def _crypto_version() -> str:
    import cryptography

    return cryptography.__version__


def _der_utf8(text: str) -> bytes:
    data = text.encode()
    size = len(data)
    if size < 0x80:
        length = bytes([size])
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x0c" + length + data


def identity_extension(identity: EnclaveIdentity) -> x509.UnrecognizedExtension:
    if IDENTITY_OID is None:
        raise ServingCertError(
            f"cryptography {_crypto_version()} cannot write the identity extension's OID "
            f"{IDENTITY_OID_DOTTED}; the base images install cryptography 50"
        )
    text = json.dumps(dataclasses.asdict(identity), sort_keys=True, separators=(",", ":"))
    return x509.UnrecognizedExtension(IDENTITY_OID, _der_utf8(text))


def read_identity(cert: x509.Certificate) -> EnclaveIdentity | None:
    """The identity extension of an issued certificate, or None when it has none (or it does
    not parse). Informative only: the quote is what proves the identity."""
    if IDENTITY_OID is None:
        return None
    try:
        ext = cert.extensions.get_extension_for_oid(IDENTITY_OID).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    value = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    if len(value) < 2 or value[0] != 0x0C:
        return None
    first = value[1]
    offset = 2 + (first & 0x7F if first & 0x80 else 0)
    try:
        data = json.loads(value[offset:].decode())
        return EnclaveIdentity(
            data["mr_enclave"],
            data["mr_signer"],
            int(data["isv_prod_id"]),
            int(data["isv_svn"]),
            bool(data["debug"]),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def check_csr(
    csr_der: bytes, presented: x509.Certificate
) -> tuple[x509.CertificateSigningRequest, list[x509.GeneralName]]:
    """The CSR and the names it asks for, checked: it parses, its signature verifies, its key
    is the key of the RA-TLS certificate *presented* on the connection (whose quote binds that
    key), and it names 1..MAX_HOSTS DNS names or IP addresses. ServingCertError otherwise."""
    try:
        request = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise ServingCertError(f"the CSR does not parse: {exc}") from None
    if not request.is_signature_valid:
        raise ServingCertError("the CSR's signature does not verify")
    try:
        same_key = spki_der(request.public_key()) == spki_der(presented.public_key())
    except (ValueError, TypeError, AttributeError):
        same_key = False
    if not same_key:
        raise ServingCertError(
            "the CSR's public key is not the key of the RA-TLS certificate presented on "
            "this connection (the quote binds that key only)"
        )
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ServingCertError("the CSR names no host (no subject alternative names)") from None
    except ValueError as exc:
        raise ServingCertError(f"the CSR's extensions do not parse: {exc}") from None
    names = list(san)
    if not 1 <= len(names) <= MAX_HOSTS:
        raise ServingCertError(f"the CSR names {len(names)} hosts; allowed: 1 to {MAX_HOSTS}")
    for name in names:
        if not isinstance(name, (x509.DNSName, x509.IPAddress)):
            raise ServingCertError(
                f"the CSR asks for a {type(name).__name__}; only DNS names and IP addresses"
            )
        if isinstance(name, x509.DNSName):
            general_name(name.value)  # the same rules as the enclave's own
    return request, names


def issue(
    csr_der: bytes,
    presented: x509.Certificate,
    identity: EnclaveIdentity,
    ca_cert: x509.Certificate,
    ca_key,
    *,
    lifetime: _dt.timedelta,
    now: _dt.datetime,
) -> x509.Certificate:
    """Issuer "secret-server": the certificate the issuing CA gives an attested enclave for the
    key of *presented* (its verified RA-TLS certificate) and the names of *csr_der*; the
    evidence extension is copied from *presented* (it binds the same key). ServingCertError for
    a CSR that cannot be certified."""
    request, names = check_csr(csr_der, presented)
    try:
        evidence = presented.extensions.get_extension_for_oid(DICE_OID).value
    except x509.ExtensionNotFound:
        raise ServingCertError(
            "the presented RA-TLS certificate carries no TCG DICE evidence (only that format "
            "is copied into serving certificates)"
        ) from None
    assert isinstance(evidence, x509.UnrecognizedExtension)
    if not ca_cert.not_valid_before_utc <= now < ca_cert.not_valid_after_utc:
        raise ServingCertError(
            f"the issuing CA is not valid now (valid {ca_cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{ca_cert.not_valid_after_utc:%Y-%m-%d}): renew it (`enclave-build secrets tls`)"
        )
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    first = names[0]
    cn = first.value if isinstance(first, x509.DNSName) else str(first.value)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(request.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.UnrecognizedExtension(DICE_OID, evidence.value), critical=False)
        .add_extension(identity_extension(identity), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    return _server_extensions(builder, names, request.public_key()).sign(ca_key, hashes.SHA256())


def issuing_ca(
    name: str = "enclave-build serving-certificate issuer", *, days: int = 365
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new issuing CA (ECDSA P-256, path length 0, valid *days*): what `enclave-build secrets
    tls` writes as issuer-ca.pem / issuer-ca.key for the secret server's ``[issuer]``."""
    now = _dt.datetime.now(_dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def verify_issued(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether *cert* was signed by *ca_cert*'s key (its ECDSA signature verifies)."""
    key = ca_cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    except InvalidSignature:
        return False
    return cert.issuer == ca_cert.subject


__all__ = [
    "IDENTITY_OID",
    "IDENTITY_OID_DOTTED",
    "MAX_HOSTS",
    "ServingCertError",
    "serving_key",
    "spki_der",
    "general_name",
    "self_signed",
    "csr",
    "identity_extension",
    "read_identity",
    "check_csr",
    "issue",
    "issuing_ca",
    "verify_issued",
]
