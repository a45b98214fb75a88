"""Who signs the SIGSTRUCT.

A :class:`Signer` turns the 256 bytes of SIGSTRUCT signing data into an RSA-3072 (e = 3)
PKCS#1 v1.5 / SHA-256 signature. Two kinds ship:

* :class:`PemSigner` — a local PEM private key (optionally passphrase-protected).
* :class:`DetachedSigner` — the two-step flow for HSMs and cloud KMSs: the build writes the bytes
  to sign, the key holder signs them elsewhere, and the build is finished with the detached
  signature and the public key. The private key never touches the build machine.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import EnclaveBuildError

KEY_BITS = 3072
PUBLIC_EXPONENT = 3
ALLOW_OPEN_KEY_ENV = "ENCLAVE_BUILD_ALLOW_OPEN_KEY"
EXPECTED = f"expected an RSA-{KEY_BITS} private key with public exponent {PUBLIC_EXPONENT} (as SGX requires)"


class SignerError(EnclaveBuildError):
    """The key or signature cannot be used for SGX."""


@dataclass(frozen=True)
class Signature:
    modulus: int
    signature: int
    exponent: int = PUBLIC_EXPONENT


class Signer(Protocol):
    def sign(self, data: bytes) -> Signature:
        """Sign SIGSTRUCT signing data (256 bytes)."""


def _check_public_key(key: object, source: str) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignerError(f"{source}: expected an RSA key, found {type(key).__name__}")
    if key.key_size != KEY_BITS:
        raise SignerError(
            f"{source}: SGX needs a {KEY_BITS}-bit RSA key, this one has {key.key_size}"
        )
    exponent = key.public_numbers().e
    if exponent != PUBLIC_EXPONENT:
        raise SignerError(f"{source}: SGX needs public exponent 3, this key has {exponent}")
    return key


class PemSigner:
    """Signs with a local PEM private key."""

    def __init__(self, private_key: rsa.RSAPrivateKey, source: str = "key"):
        _check_public_key(private_key.public_key(), source)
        self._key = private_key

    @classmethod
    def from_file(cls, path: str | Path, passphrase: bytes | None = None) -> PemSigner:
        path = Path(path)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise SignerError(f"{path}: cannot read signing key: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(pem, password=passphrase)
        except TypeError as exc:
            if passphrase is None:
                raise SignerError(f"{path}: the key is encrypted: give its passphrase") from exc
            raise SignerError(
                f"{path}: the key is not encrypted, but a passphrase was given"
            ) from exc
        except ValueError as exc:
            hint = "wrong passphrase, or " if passphrase is not None else ""
            raise SignerError(
                f"{path}: cannot load the signing key ({hint}not a PEM private key)"
            ) from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SignerError(f"{path}: {EXPECTED}, found {type(key).__name__}")
        signer = cls(key, str(path))
        check_key_permissions(path)
        return signer

    def sign(self, data: bytes) -> Signature:
        raw = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return Signature(self._key.public_key().public_numbers().n, int.from_bytes(raw, "big"))


class DetachedSigner:
    """Accepts a signature made elsewhere, checking it against the public key and the data."""

    def __init__(self, public_key: object, signature: bytes, source: str = "signature"):
        self._key = _check_public_key(public_key, "public key")
        if len(signature) != KEY_BITS // 8:
            raise SignerError(
                f"{source}: {len(signature)} bytes; an RSA-3072 signature is {KEY_BITS // 8} bytes "
                "(raw, big-endian, as `openssl dgst -sha256 -sign` writes it)"
            )
        self._signature = signature
        self._source = source

    @classmethod
    def from_files(cls, public_key: str | Path, signature: str | Path) -> DetachedSigner:
        public_key, signature = Path(public_key), Path(signature)
        try:
            pem = public_key.read_bytes()
            sig = signature.read_bytes()
        except OSError as exc:
            raise SignerError(f"{exc.filename}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise SignerError(f"{public_key}: not a PEM public key") from exc
        return cls(key, sig, str(signature))

    def sign(self, data: bytes) -> Signature:
        try:
            self._key.verify(self._signature, data, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise SignerError(
                f"{self._source}: the signature does not match the data to sign and the public "
                "key (was it made over this build's sigstruct.tbs, with SHA-256 and PKCS#1 v1.5?)"
            ) from None
        return Signature(self._key.public_numbers().n, int.from_bytes(self._signature, "big"))


def signing_key_problem(path: Path) -> str | None:
    """Why the file at *path* is no usable local SGX signing key (None: it is one), as far as
    can be told before signing: an encrypted key's type is checked when it is opened with its
    passphrase, and the file's permissions (:func:`check_key_permissions`) when it signs."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        return f"{path}: cannot read the signing key: {exc.strerror}"
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        key = None  # encrypted
    except ValueError:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            found = "a certificate"
        elif b"-----BEGIN PUBLIC KEY-----" in pem or b"-----BEGIN RSA PUBLIC KEY-----" in pem:
            found = "a public key (for external signing, set signing.public_key instead)"
        elif b"-----BEGIN " in pem:
            found = "a PEM file holding no private key this tool can read"
        else:
            found = "a file that is not PEM"
        return f"{path}: {EXPECTED}, found {found} (make one: enclave-build keygen --out FILE)"
    if key is not None:
        if not isinstance(key, rsa.RSAPrivateKey):
            return f"{path}: {EXPECTED}, found {type(key).__name__}"
        try:
            _check_public_key(key.public_key(), str(path))
        except SignerError as exc:
            return str(exc)
    return None


def check_key_permissions(path: Path, signs: str = "enclaves") -> None:
    """Refuse a private key file that users other than its owner can read (or write): whoever
    can read it can sign *signs* with this identity. ``ENCLAVE_BUILD_ALLOW_OPEN_KEY=1``
    accepts it with a warning."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise SignerError(f"{path}: cannot read signing key: {exc.strerror}") from exc
    if not mode & 0o077:
        return
    who = " and ".join(
        w for w, bits in (("its group", 0o070), ("other users", 0o007)) if mode & bits
    )
    problem = (
        f"{path}: the signing key is accessible to {who} (mode {mode:04o}); whoever reads "
        f"it can sign {signs} as you. Fix: chmod 600 {path}"
    )
    if os.environ.get(ALLOW_OPEN_KEY_ENV) == "1":
        warnings.warn(f"{problem} (used anyway: {ALLOW_OPEN_KEY_ENV}=1)", UserWarning, stacklevel=3)
        return
    raise SignerError(f"{problem}\n(or set {ALLOW_OPEN_KEY_ENV}=1 to use it anyway)")


def generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS)


def write_new_key(path: str | Path, passphrase: bytes | None = None) -> rsa.RSAPrivateKey:
    """Create a new SGX signing key at *path* (mode 0600); refuses to overwrite."""
    path = Path(path)
    if passphrase is not None and not passphrase:
        raise SignerError(
            f"{path}: empty passphrase: refusing to write the key unencrypted "
            "(give a passphrase, or none at all for an unencrypted key)"
        )
    key = generate_key()
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SignerError(f"{path}: already exists; not overwriting a key") from None
    except OSError as exc:
        raise SignerError(f"{path}: cannot create key file: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
