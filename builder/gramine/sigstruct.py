"""SGX SIGSTRUCT: built from a final Gramine manifest and its MRENCLAVE, signed, parsed back.

Field offsets come from Gramine's offsets file (``SGX_ARCH_SIGSTRUCT_*``). The signed data is the
first 128 bytes of the structure plus the 128 bytes starting at MISC_SELECT (Intel SDM).
The date is stored as BCD-like hex digits (2026-01-01 -> year 0x2026, month 0x01, day 0x01), as
Gramine and Intel's sign tool do; ``0000-00-00`` gives all zeros, for reproducible signatures.
"""

from __future__ import annotations

import datetime as _dt
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from enclave_build.contract.identity import mr_signer_of

from ..errors import EnclaveBuildError
from .measure import EnclaveAttributes, parse_size
from .offsets import Offsets

HEADER = bytes.fromhex("06000000e10000000000010000000000")
HEADER2 = bytes.fromhex("01010000600000006000000001000000")
RSA_EXPONENT = 3
RSA_KEY_BYTES = 384

# Gramine 1.9's defaults for values the manifest may leave out (graminelibos.Manifest).
DEFAULT_MAX_THREADS = 4
DEFAULT_ENCLAVE_SIZE_NO_EDMM = "256M"
DEFAULT_ENCLAVE_SIZE_WITH_EDMM = "1024G"
_CPU_FEATURE_DEFAULTS = {
    "avx": "unspecified",
    "avx512": "unspecified",
    "amx": "unspecified",
    "mpx": "disabled",
    "pkru": "disabled",
}
_OPTIONAL_FEATURES = ("avx", "avx512", "amx")  # may be "unspecified"
_HARDENING_FEATURES = ("mpx", "pkru")  # must be "disabled" or "required"


class SigstructError(EnclaveBuildError):
    """A SIGSTRUCT cannot be built or parsed."""


@dataclass(frozen=True)
class SigDate:
    year: int
    month: int
    day: int

    @classmethod
    def parse(cls, text: str) -> SigDate:
        """``YYYY-MM-DD`` (a real calendar date) or ``0000-00-00``."""
        if text == "0000-00-00":
            return cls(0, 0, 0)
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise SigstructError(
                f"invalid SIGSTRUCT date {text!r}: expected YYYY-MM-DD or 0000-00-00"
            )
        try:
            day = _dt.date.fromisoformat(text)
        except ValueError as exc:
            raise SigstructError(f"invalid SIGSTRUCT date {text!r}: {exc}") from None
        return cls(day.year, day.month, day.day)

    @classmethod
    def today(cls) -> SigDate:
        day = _dt.date.today()
        return cls(day.year, day.month, day.day)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"


def _bcd(value: int) -> int:
    return int(str(value), 16)


def _unbcd(value: int) -> int:
    text = f"{value:x}"
    if not text.isdigit():
        raise SigstructError(f"misencoded SIGSTRUCT date field {value:#x}")
    return int(text)


@dataclass(frozen=True)
class SigstructBody:
    """The fields the signer commits to (everything but modulus, exponent, signature, q1, q2)."""

    enclave_hash: bytes
    date: SigDate
    isv_prod_id: int
    isv_svn: int
    attribute_flags: int
    attribute_xfrm: int
    attribute_flags_mask: int
    attribute_xfrm_mask: int
    misc_select: int
    misc_mask: int
    vendor: int = 0
    swdefined: int = 0


def enclave_attributes(sgx: Mapping[str, Any]) -> EnclaveAttributes:
    """Size, threads and EDMM from a manifest's ``[sgx]`` table, with Gramine's defaults."""
    edmm = bool(sgx.get("edmm_enable", False))
    default_size = DEFAULT_ENCLAVE_SIZE_WITH_EDMM if edmm else DEFAULT_ENCLAVE_SIZE_NO_EDMM
    threads = sgx.get("max_threads", DEFAULT_MAX_THREADS)
    if not isinstance(threads, int) or isinstance(threads, bool):
        raise SigstructError("sgx.max_threads must be an integer")
    return EnclaveAttributes(parse_size(sgx.get("enclave_size", default_size)), threads, edmm)


def body_from_manifest(
    sgx: Mapping[str, Any], mr_enclave: bytes, date: SigDate, offs: Offsets
) -> SigstructBody:
    """The SIGSTRUCT fields a manifest's ``[sgx]`` table implies."""
    flags = offs.SGX_FLAGS_MODE64BIT
    if sgx.get("debug") is True:
        flags |= offs.SGX_FLAGS_DEBUG
    misc = offs.SGX_MISCSELECT_EXINFO if sgx.get("use_exinfo") is True else 0

    xfrm, mask = offs.SGX_XFRM_LEGACY, offs.SGX_XFRM_MASK_CONST
    features = {**_CPU_FEATURE_DEFAULTS, **sgx.get("cpu_features", {})}
    bits = {
        "avx": offs.SGX_XFRM_AVX,
        "avx512": offs.SGX_XFRM_AVX512,
        "amx": offs.SGX_XFRM_AMX,
        "mpx": offs.SGX_XFRM_MPX,
        "pkru": offs.SGX_XFRM_PKRU,
    }
    # Order matters: AVX512's bits include AVX's, so "avx = disabled, avx512 = required" keeps AVX.
    for name in _OPTIONAL_FEATURES + _HARDENING_FEATURES:
        value = features[name]
        if value == "required":
            xfrm |= bits[name]
            mask |= bits[name]
        elif value == "disabled":
            xfrm &= ~bits[name]
            mask |= bits[name]
        elif value != "unspecified" or name in _HARDENING_FEATURES:
            allowed = (
                "'required' or 'disabled'"
                if name in _HARDENING_FEATURES
                else "'unspecified', 'required' or 'disabled'"
            )
            raise SigstructError(f"sgx.cpu_features.{name} = {value!r}: expected {allowed}")

    for key in ("isvprodid", "isvsvn"):
        value = sgx.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
            raise SigstructError(f"sgx.{key} must be an integer from 0 to 65535")

    return SigstructBody(
        enclave_hash=mr_enclave,
        date=date,
        isv_prod_id=sgx.get("isvprodid", 0),
        isv_svn=sgx.get("isvsvn", 0),
        attribute_flags=flags,
        attribute_xfrm=xfrm,
        attribute_flags_mask=offs.SGX_FLAGS_MASK_CONST,
        attribute_xfrm_mask=mask,
        misc_select=misc,
        misc_mask=offs.SGX_MISCSELECT_MASK_CONST,
    )


@dataclass(frozen=True)
class Sigstruct:
    """A SIGSTRUCT: the body plus (once signed) the RSA-3072 public key and signature."""

    body: SigstructBody
    modulus: int = 0
    signature: int = 0
    exponent: int = 0
    #: the bytes this was parsed from (None when built here): verification uses them, never a
    #: re-serialization, so every byte the signature covers is checked as the CPU would.
    raw: bytes | None = field(default=None, compare=False, repr=False)

    # ----------------------------------------------------------------------- serialization

    def to_bytes(self, offs: Offsets) -> bytes:
        b = self.body
        buf = bytearray(offs.SGX_ARCH_SIGSTRUCT_SIZE)
        buf[offs.SGX_ARCH_SIGSTRUCT_HEADER : offs.SGX_ARCH_SIGSTRUCT_HEADER + 16] = HEADER
        struct.pack_into("<L", buf, offs.SGX_ARCH_SIGSTRUCT_VENDOR, b.vendor)
        date = offs.SGX_ARCH_SIGSTRUCT_DATE
        struct.pack_into("<BBH", buf, date, _bcd(b.date.day), _bcd(b.date.month), _bcd(b.date.year))
        buf[offs.SGX_ARCH_SIGSTRUCT_HEADER2 : offs.SGX_ARCH_SIGSTRUCT_HEADER2 + 16] = HEADER2
        struct.pack_into("<L", buf, offs.SGX_ARCH_SIGSTRUCT_SWDEFINED, b.swdefined)
        struct.pack_into("<L", buf, offs.SGX_ARCH_SIGSTRUCT_MISC_SELECT, b.misc_select)
        struct.pack_into("<L", buf, offs.SGX_ARCH_SIGSTRUCT_MISC_MASK, b.misc_mask)
        struct.pack_into(
            "<QQ", buf, offs.SGX_ARCH_SIGSTRUCT_ATTRIBUTES, b.attribute_flags, b.attribute_xfrm
        )
        struct.pack_into(
            "<QQ",
            buf,
            offs.SGX_ARCH_SIGSTRUCT_ATTRIBUTE_MASK,
            b.attribute_flags_mask,
            b.attribute_xfrm_mask,
        )
        h = offs.SGX_ARCH_SIGSTRUCT_ENCLAVE_HASH
        buf[h : h + 32] = b.enclave_hash
        struct.pack_into("<H", buf, offs.SGX_ARCH_SIGSTRUCT_ISV_PROD_ID, b.isv_prod_id)
        struct.pack_into("<H", buf, offs.SGX_ARCH_SIGSTRUCT_ISV_SVN, b.isv_svn)
        if self.modulus:
            q1, q2 = _q1_q2(self.signature, self.modulus)
            for field, value in (
                (offs.SGX_ARCH_SIGSTRUCT_MODULUS, self.modulus),
                (offs.SGX_ARCH_SIGSTRUCT_SIGNATURE, self.signature),
                (offs.SGX_ARCH_SIGSTRUCT_Q1, q1),
                (offs.SGX_ARCH_SIGSTRUCT_Q2, q2),
            ):
                buf[field : field + RSA_KEY_BYTES] = value.to_bytes(RSA_KEY_BYTES, "little")
            struct.pack_into("<L", buf, offs.SGX_ARCH_SIGSTRUCT_EXPONENT, self.exponent)
        return bytes(buf)

    @classmethod
    def from_bytes(cls, data: bytes, offs: Offsets, source: str = "SIGSTRUCT") -> Sigstruct:
        if len(data) != offs.SGX_ARCH_SIGSTRUCT_SIZE:
            raise SigstructError(
                f"{source}: {len(data)} bytes; a SIGSTRUCT is {offs.SGX_ARCH_SIGSTRUCT_SIZE}"
            )
        if (
            data[offs.SGX_ARCH_SIGSTRUCT_HEADER : offs.SGX_ARCH_SIGSTRUCT_HEADER + 16] != HEADER
            or data[offs.SGX_ARCH_SIGSTRUCT_HEADER2 : offs.SGX_ARCH_SIGSTRUCT_HEADER2 + 16]
            != HEADER2
        ):
            raise SigstructError(f"{source}: not a SIGSTRUCT (header mismatch)")

        def u(fmt: str, off: int) -> Any:
            return struct.unpack_from(fmt, data, off)

        def big(off: int) -> int:
            return int.from_bytes(data[off : off + RSA_KEY_BYTES], "little")

        day, month, year = u("<BBH", offs.SGX_ARCH_SIGSTRUCT_DATE)
        flags, xfrm = u("<QQ", offs.SGX_ARCH_SIGSTRUCT_ATTRIBUTES)
        flags_mask, xfrm_mask = u("<QQ", offs.SGX_ARCH_SIGSTRUCT_ATTRIBUTE_MASK)
        h = offs.SGX_ARCH_SIGSTRUCT_ENCLAVE_HASH
        body = SigstructBody(
            enclave_hash=bytes(data[h : h + 32]),
            date=SigDate(_unbcd(year), _unbcd(month), _unbcd(day)),
            isv_prod_id=u("<H", offs.SGX_ARCH_SIGSTRUCT_ISV_PROD_ID)[0],
            isv_svn=u("<H", offs.SGX_ARCH_SIGSTRUCT_ISV_SVN)[0],
            attribute_flags=flags,
            attribute_xfrm=xfrm,
            attribute_flags_mask=flags_mask,
            attribute_xfrm_mask=xfrm_mask,
            misc_select=u("<L", offs.SGX_ARCH_SIGSTRUCT_MISC_SELECT)[0],
            misc_mask=u("<L", offs.SGX_ARCH_SIGSTRUCT_MISC_MASK)[0],
            vendor=u("<L", offs.SGX_ARCH_SIGSTRUCT_VENDOR)[0],
            swdefined=u("<L", offs.SGX_ARCH_SIGSTRUCT_SWDEFINED)[0],
        )
        return cls(
            body,
            big(offs.SGX_ARCH_SIGSTRUCT_MODULUS),
            big(offs.SGX_ARCH_SIGSTRUCT_SIGNATURE),
            u("<L", offs.SGX_ARCH_SIGSTRUCT_EXPONENT)[0],
            bytes(data),
        )

    # ----------------------------------------------------------------------- signing

    def signing_data(self, offs: Offsets) -> bytes:
        """The 256 bytes an RSA signer signs (PKCS#1 v1.5 over SHA-256)."""
        raw = self.to_bytes(offs)
        misc = offs.SGX_ARCH_SIGSTRUCT_MISC_SELECT
        return raw[:128] + raw[misc : misc + 128]

    def with_signature(
        self, modulus: int, signature: int, exponent: int = RSA_EXPONENT
    ) -> Sigstruct:
        if exponent != RSA_EXPONENT:
            raise SigstructError(f"SGX requires RSA public exponent 3, got {exponent}")
        if modulus.bit_length() != RSA_KEY_BYTES * 8:
            raise SigstructError(f"SGX requires an RSA-3072 key, got {modulus.bit_length()} bits")
        return replace(self, modulus=modulus, signature=signature, exponent=exponent, raw=None)

    def signed_bytes(self, offs: Offsets) -> bytes:
        """The 256 signed bytes: from the parsed file itself when there is one (bytes 0-127 and
        the 128 from MISC_SELECT), so reserved bytes no field models are covered too."""
        if self.raw is None:
            return self.signing_data(offs)
        misc = offs.SGX_ARCH_SIGSTRUCT_MISC_SELECT
        return self.raw[:128] + self.raw[misc : misc + 128]

    def signature_problem(self, offs: Offsets) -> str | None:
        """Why EINIT would refuse this SIGSTRUCT's signature, or None if it verifies: exponent
        3, a 3072-bit modulus, the signature below it, PKCS#1 v1.5 / SHA-256 over the signed
        bytes, and Q1 = floor(S^2 / M), Q2 = floor((S^3 - Q1*S*M) / M) as stored."""
        if not self.modulus:
            return "the SIGSTRUCT is not signed (no modulus)"
        if self.exponent != RSA_EXPONENT:
            return f"public exponent is {self.exponent}, SGX requires 3"
        if self.modulus.bit_length() != RSA_KEY_BYTES * 8 or not self.modulus & 1:
            return "the modulus is not an odd 3072-bit number"
        if not 0 < self.signature < self.modulus:
            return "the signature is not below the modulus"
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        try:
            key = rsa.RSAPublicNumbers(self.exponent, self.modulus).public_key()
            key.verify(
                self.signature.to_bytes(RSA_KEY_BYTES, "big"),
                self.signed_bytes(offs),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return "the RSA signature does not verify over the signed bytes"
        if self.raw is not None:
            q1, q2 = _q1_q2(self.signature, self.modulus)
            for name, off, want in (
                ("Q1", offs.SGX_ARCH_SIGSTRUCT_Q1, q1),
                ("Q2", offs.SGX_ARCH_SIGSTRUCT_Q2, q2),
            ):
                if int.from_bytes(self.raw[off : off + RSA_KEY_BYTES], "little") != want:
                    return f"{name} does not match the signature and modulus (EINIT would fail)"
        return None

    @property
    def mr_signer(self) -> bytes:
        if not self.modulus:
            raise SigstructError("SIGSTRUCT is not signed: no MRSIGNER")
        return bytes.fromhex(mr_signer_of(self.modulus))


def _q1_q2(signature: int, modulus: int) -> tuple[int, int]:
    """The two helper values SGX's EINIT uses to check the signature without division."""
    square = signature * signature
    q1 = square // modulus
    q2 = (signature * square - q1 * signature * modulus) // modulus
    return q1, q2


#: SIGSTRUCT field offsets and attribute bits fixed by the SGX architecture (Intel SDM Vol. 3D,
#: "Enclave Signature Structure"); used to read a SIGSTRUCT when no offsets file is at hand.
ARCH_LAYOUT = Offsets(
    {
        "SGX_ARCH_SIGSTRUCT_HEADER": 0,
        "SGX_ARCH_SIGSTRUCT_VENDOR": 16,
        "SGX_ARCH_SIGSTRUCT_DATE": 20,
        "SGX_ARCH_SIGSTRUCT_HEADER2": 24,
        "SGX_ARCH_SIGSTRUCT_SWDEFINED": 40,
        "SGX_ARCH_SIGSTRUCT_MODULUS": 128,
        "SGX_ARCH_SIGSTRUCT_EXPONENT": 512,
        "SGX_ARCH_SIGSTRUCT_SIGNATURE": 516,
        "SGX_ARCH_SIGSTRUCT_MISC_SELECT": 900,
        "SGX_ARCH_SIGSTRUCT_MISC_MASK": 904,
        "SGX_ARCH_SIGSTRUCT_ATTRIBUTES": 928,
        "SGX_ARCH_SIGSTRUCT_ATTRIBUTE_MASK": 944,
        "SGX_ARCH_SIGSTRUCT_ENCLAVE_HASH": 960,
        "SGX_ARCH_SIGSTRUCT_ISV_PROD_ID": 1024,
        "SGX_ARCH_SIGSTRUCT_ISV_SVN": 1026,
        "SGX_ARCH_SIGSTRUCT_Q1": 1040,
        "SGX_ARCH_SIGSTRUCT_Q2": 1424,
        "SGX_ARCH_SIGSTRUCT_SIZE": 1808,
        "SGX_FLAGS_DEBUG": 0x2,
        "SGX_FLAGS_MODE64BIT": 0x4,
        "SGX_MISCSELECT_EXINFO": 0x1,
    },
    "SGX architecture (Intel SDM)",
)


def summarize(sig: Sigstruct, layout: Offsets = ARCH_LAYOUT) -> dict[str, Any]:
    """:func:`describe` plus the signature check: ``signature_valid`` (bool) and
    ``signature_problem`` (why it does not verify, or None). The stable JSON of `gramine
    sigstruct --json` and of the ``sigstruct`` object of `inspect --json`."""
    problem = sig.signature_problem(layout)
    return {
        **describe(sig, layout),
        "signature_valid": problem is None,
        "signature_problem": problem,
    }


def describe(sig: Sigstruct, layout: Offsets = ARCH_LAYOUT) -> dict[str, Any]:
    """The fields a user checks: identity, date, debug and attributes."""
    body = sig.body
    return {
        "mr_enclave": body.enclave_hash.hex(),
        "mr_signer": sig.mr_signer.hex() if sig.modulus else None,
        "isv_prod_id": body.isv_prod_id,
        "isv_svn": body.isv_svn,
        "date": str(body.date),
        "debug": bool(body.attribute_flags & layout.SGX_FLAGS_DEBUG),
        "attributes": {
            "flags": f"{body.attribute_flags:#018x}",
            "xfrm": f"{body.attribute_xfrm:#018x}",
            "flags_mask": f"{body.attribute_flags_mask:#018x}",
            "xfrm_mask": f"{body.attribute_xfrm_mask:#018x}",
            "misc_select": f"{body.misc_select:#010x}",
            "misc_mask": f"{body.misc_mask:#010x}",
            "mode64bit": bool(body.attribute_flags & layout.SGX_FLAGS_MODE64BIT),
            "exinfo": bool(body.misc_select & layout.SGX_MISCSELECT_EXINFO),
        },
    }
