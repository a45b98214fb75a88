"""RA-TLS certificates in the three formats: evidence extraction and key binding."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from enclave_build.attestation.ratls import (
    DICE_OID,
    DICE_TAG,
    FORMATS,
    EvidenceError,
    create_certificate,
    extract_evidence,
)
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.attestation.verify import verify_quote

ME, MS = hashlib.sha256(b"e").digest(), hashlib.sha256(b"s").digest()


@pytest.fixture(scope="module")
def pki():
    return SyntheticPKI()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_binds_and_verifies(pki, fmt):
    cert, key = create_certificate(fmt, lambda rd: pki.quote(ME, MS, rd))
    evidence = extract_evidence(cert)
    assert evidence.format == fmt
    assert (
        verify_quote(evidence.quote, pki.collateral_json(), root_ca_der=pki.root_der).mr_enclave
        == ME.hex()
    )
    expected_key = rsa.RSAPrivateKey if fmt == "cczoo" else ec.EllipticCurvePrivateKey
    assert isinstance(key, expected_key)
    if fmt != "cczoo":
        assert cert.subject.rfc4514_string() == "C=US,O=GramineDevelopers,CN=RATLS"


def test_legacy_oid_has_gramines_exact_bytes(pki):
    cert, _ = create_certificate("gramine-legacy", lambda rd: pki.quote(ME, MS, rd))
    der = cert.public_bytes(serialization.Encoding.DER)
    # Gramine writes 06 09 2A 86 48 86 F8 4D 8A 39 06 *as the OID's content*.
    assert bytes.fromhex("060b06092a864886f84d8a3906") in der


@pytest.mark.parametrize("fmt", FORMATS)
def test_quote_for_another_key_is_not_bound(pki, fmt):
    """A quote lifted from one certificate into another with a different key."""
    donor, _ = create_certificate(fmt, lambda rd: pki.quote(ME, MS, rd))
    stolen = extract_evidence(donor).quote
    if fmt == "tcg-dice":
        value = donor.extensions.get_extension_for_oid(DICE_OID).value.value
        make = lambda rd: stolen
        thief, _ = create_certificate(fmt, make)
        with pytest.raises(EvidenceError, match="does not bind the TCG DICE claims"):
            extract_evidence(thief)
        assert value  # the donor's evidence itself is fine
    else:
        thief, _ = create_certificate(fmt, lambda rd: stolen)
        with pytest.raises(EvidenceError, match="does not bind the certificate's public key"):
            extract_evidence(thief)


def _cert_with(oid: x509.ObjectIdentifier, value: bytes) -> x509.Certificate:
    import datetime as dt

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "RATLS")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(oid, value), False)
        .sign(key, hashes.SHA256())
    )


def test_invalid_dice_evidence_is_refused_without_fallback(pki):
    """A DICE extension that is present but wrong is fatal, even next to a valid legacy one."""
    good, _ = create_certificate("gramine-legacy", lambda rd: pki.quote(ME, MS, rd))
    with pytest.raises(EvidenceError, match="not CBOR tag 60000"):
        extract_evidence(_cert_with(DICE_OID, cbor2.dumps([b"x", b"y"])))
    with pytest.raises(EvidenceError, match="lack a valid pubkey-hash"):
        extract_evidence(
            _cert_with(
                DICE_OID,
                cbor2.dumps(cbor2.CBORTag(DICE_TAG, [b"quote", cbor2.dumps({"other": 1})])),
            )
        )
    assert extract_evidence(good).format == "gramine-legacy"


def test_plain_certificate_has_no_evidence():
    with pytest.raises(EvidenceError, match="no SGX evidence"):
        extract_evidence(_cert_with(x509.ObjectIdentifier("1.2.3.4"), b"nothing"))
