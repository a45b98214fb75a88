"""The identity of an SGX enclave: what the CPU measured and who signed it.

One :class:`EnclaveIdentity` for everything that carries these five fields: a build's result
(``measurements.json``), a verified quote, the secret-server builds a model enclave trusts, the
policy's matching. :func:`mr_signer_of` is the one place MRSIGNER is computed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: How the fields look in every file: 64 lower-case hex digits; 16-bit ISV numbers.
HEX64 = r"[0-9a-f]{64}"
HEX64_DOC = "64 lower-case hex digits"
U16_MAX = 0xFFFF
#: Bytes of the SIGSTRUCT modulus: an SGX signing key is RSA-3072.
MODULUS_BYTES = 384

_HEX64 = re.compile(HEX64)

#: How one enclave may be required to be another: every field equal ("mr_enclave"), or the
#: signer's ("mr_signer": MRSIGNER and ISV_PROD_ID equal, ISV_SVN at least the expected one).
PINS = ("mr_enclave", "mr_signer")


@dataclass(frozen=True)
class EnclaveIdentity:
    """MRENCLAVE, MRSIGNER (lower-case hex), ISV_PROD_ID, ISV_SVN and the DEBUG attribute.

    *mr_enclave* is None only where a requirement pins the signer and deliberately names no
    MRENCLAVE (a model enclave's expected secret server with pin "mr_signer"); measured or
    attested identities always have it."""

    mr_enclave: str | None
    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    debug: bool = False

    def signer_pin(self) -> EnclaveIdentity:
        """This identity as a signer pin requires it: without MRENCLAVE."""
        return EnclaveIdentity(None, self.mr_signer, self.isv_prod_id, self.isv_svn, self.debug)


def is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def mr_signer_of(modulus: int) -> str:
    """MRSIGNER of an RSA signing key: SHA-256 of its modulus as the SIGSTRUCT holds it (384
    bytes, little-endian), lower-case hex."""
    size = max(MODULUS_BYTES, (modulus.bit_length() + 7) // 8)
    return hashlib.sha256(modulus.to_bytes(size, "little")).hexdigest()


__all__ = [
    "EnclaveIdentity",
    "HEX64",
    "HEX64_DOC",
    "PINS",
    "U16_MAX",
    "MODULUS_BYTES",
    "is_hex64",
    "mr_signer_of",
]
