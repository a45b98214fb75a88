"""The provenance signing key: an ECDSA P-256 PEM key; DSSE signatures (DER ECDSA over SHA-256
of the pre-authentication encoding) made and checked with it; its key id."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_build.contract.provenance import DsseEnvelope, DsseSignature

from .errors import EnclaveBuildError, UsageError
from .gramine.signer import SignerError, check_key_permissions

CURVE = "secp256r1"


class ProvenanceKeyError(UsageError):
    """A provenance key or public key cannot be used."""


def key_problem(path: Path) -> str | None:
    """Why the file at *path* is no usable provenance signing key (None: it is one)."""
    try:
        load_private_key(path)
    except (ProvenanceKeyError, SignerError) as exc:
        return str(exc)
    return None


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ProvenanceKeyError(f"{path}: cannot read the key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ProvenanceKeyError(
            f"{path}: the key is encrypted; the provenance key must be an unencrypted PEM "
            "(protect it with mode 0600)"
        ) from None
    except ValueError:
        raise ProvenanceKeyError(
            f"{path}: not a PEM private key (make one: openssl genpkey -algorithm EC "
            "-pkeyopt ec_paramgen_curve:P-256 -out provenance.key)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE:
        found = (
            key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        )
        raise ProvenanceKeyError(f"{path}: an ECDSA P-256 key is required, found {found}")
    check_key_permissions(path, signs="provenance statements")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from a PEM file (a public key, or a certificate's)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ProvenanceKeyError(f"{path}: cannot read the public key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ProvenanceKeyError(f"{path}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != CURVE:
        raise ProvenanceKeyError(f"{path}: an ECDSA P-256 public key is required")
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the key's DER SubjectPublicKeyInfo."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def sign_envelope(
    payload_type: str, payload: bytes, key: ec.EllipticCurvePrivateKey
) -> DsseEnvelope:
    unsigned = DsseEnvelope(payload_type, payload, ())
    sig = key.sign(unsigned.pae(), ec.ECDSA(hashes.SHA256()))
    return DsseEnvelope(payload_type, payload, (DsseSignature(key_id(key.public_key()), sig),))


def verify_envelope(envelope: DsseEnvelope, key: ec.EllipticCurvePublicKey) -> None:
    """Raise EnclaveBuildError unless a signature of *envelope* made with *key* (its keyid
    names the key) verifies."""
    wanted = key_id(key)
    for signature in envelope.signatures:
        if signature.keyid != wanted:
            continue
        try:
            key.verify(signature.sig, envelope.pae(), ec.ECDSA(hashes.SHA256()))
            return
        except InvalidSignature:
            continue
    raise EnclaveBuildError(
        f"no signature of the envelope verifies with the key {wanted} "
        f"(keyids present: {', '.join(s.keyid or '(none)' for s in envelope.signatures)})"
    )
