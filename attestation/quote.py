"""SGX DCAP quote v3: parsing and building the structure (no signature checks here).

Layout: a 48-byte header, the 384-byte ISV enclave report, a u32 signature-data length, then
the ECDSA-P256 signature over header+report, the attestation public key, the QE report, the
PCK's signature over the QE report, QE authentication data and certification data (type 5 =
the PEM PCK certificate chain).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import AttestationError

HEADER_LEN = 48
REPORT_LEN = 384
SIGNED_LEN = HEADER_LEN + REPORT_LEN  # what the attestation key signs
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_TYPE_PCK_CHAIN = 5

# attributes.flags bits
FLAG_INIT = 0x01
FLAG_DEBUG = 0x02
FLAG_MODE64BIT = 0x04
FLAG_PROVISION_KEY = 0x10
FLAG_EINITTOKEN_KEY = 0x20

_REPORT = struct.Struct("<16sI28s16s32s32s32s96sHH60s64s")
_HEADER = struct.Struct("<HHIHH16s20s")


class QuoteFormatError(AttestationError, ValueError):
    """The bytes are not a well-formed SGX DCAP v3 quote."""


@dataclass(frozen=True)
class EnclaveReport:
    cpu_svn: bytes
    misc_select: int
    attributes: bytes  # 16 bytes: flags (u64 LE) + xfrm (u64 LE)
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes

    @property
    def flags(self) -> int:
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def debug(self) -> bool:
        return bool(self.flags & FLAG_DEBUG)

    def to_bytes(self) -> bytes:
        return _REPORT.pack(
            self.cpu_svn,
            self.misc_select,
            bytes(28),
            self.attributes,
            self.mr_enclave,
            bytes(32),
            self.mr_signer,
            bytes(96),
            self.isv_prod_id,
            self.isv_svn,
            bytes(60),
            self.report_data,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EnclaveReport:
        if len(data) != REPORT_LEN:
            raise QuoteFormatError(f"enclave report is {len(data)} bytes, expected {REPORT_LEN}")
        (cpu_svn, misc, _, attributes, mr_enclave, _, mr_signer, _, prod, svn, _, report_data) = (
            _REPORT.unpack(data)
        )
        return cls(cpu_svn, misc, attributes, mr_enclave, mr_signer, prod, svn, report_data)


@dataclass(frozen=True)
class Quote:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    report: EnclaveReport
    signature: bytes  # r || s over header + report
    attestation_key: bytes  # X || Y
    qe_report: EnclaveReport
    qe_report_raw: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_type: int
    cert_data: bytes
    raw: bytes

    @classmethod
    def parse(cls, data: bytes) -> Quote:
        """Strict parse: every length field must agree with the total size."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise QuoteFormatError(f"a quote is bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) < SIGNED_LEN + 4:
            raise QuoteFormatError(f"{len(data)} bytes is too short for an SGX quote")
        version, key_type, tee_type, qe_svn, pce_svn, vendor, user = _HEADER.unpack_from(data)
        if version != 3 or tee_type != 0:
            raise QuoteFormatError(
                f"not an SGX DCAP v3 quote (version {version}, TEE type {tee_type:#x})"
            )
        if key_type != 2:
            raise QuoteFormatError(f"attestation key type {key_type} (only ECDSA-P256 = 2)")
        report = EnclaveReport.from_bytes(data[HEADER_LEN:SIGNED_LEN])
        (sig_len,) = struct.unpack_from("<I", data, SIGNED_LEN)
        if SIGNED_LEN + 4 + sig_len != len(data):
            raise QuoteFormatError(
                f"signature data length {sig_len} does not match the quote "
                f"size {len(data)} (truncated or extended)"
            )
        at = SIGNED_LEN + 4
        if at + 576 + 2 > len(data):
            raise QuoteFormatError(
                f"signature data of {sig_len} bytes is too short for the "
                "ECDSA signature, attestation key and QE report"
            )
        signature, key = data[at : at + 64], data[at + 64 : at + 128]
        qe_raw = data[at + 128 : at + 512]
        qe_sig = data[at + 512 : at + 576]
        at += 576
        (auth_len,) = struct.unpack_from("<H", data, at)
        auth = data[at + 2 : at + 2 + auth_len]
        at += 2 + auth_len
        if at + 6 > len(data):
            raise QuoteFormatError(
                "quote ends inside the QE authentication data or the certification data header"
            )
        cert_type, cert_len = struct.unpack_from("<HI", data, at)
        cert = data[at + 6 : at + 6 + cert_len]
        if at + 6 + cert_len != len(data):
            raise QuoteFormatError("certification data length does not match the quote size")
        return cls(
            version,
            key_type,
            tee_type,
            qe_svn,
            pce_svn,
            vendor,
            user,
            report,
            signature,
            key,
            EnclaveReport.from_bytes(qe_raw),
            qe_raw,
            qe_sig,
            auth,
            cert_type,
            cert,
            data,
        )

    def pem_chain(self) -> list[bytes]:
        """DER certificates of the embedded PCK chain (leaf first)."""
        if self.cert_type != CERT_TYPE_PCK_CHAIN:
            raise QuoteFormatError(
                f"certification data type {self.cert_type} (need 5, the PEM PCK chain)"
            )
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        text = self.cert_data[:-1] if self.cert_data.endswith(b"\0") else self.cert_data
        try:
            certs = x509.load_pem_x509_certificates(text)
            encoded = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
            ders = [c.public_bytes(Encoding.DER) for c in certs]
        except (ValueError, TypeError) as exc:
            raise QuoteFormatError(f"embedded PCK chain is not valid PEM: {exc}") from None
        # Canonical PEM only (what Intel's QE writes): otherwise bytes that PEM parsers ignore
        # (whitespace variants) could change without any check noticing.
        if encoded != text:
            raise QuoteFormatError("embedded PCK chain is not canonical PEM")
        return ders


def signed_part(report: EnclaveReport, qe_svn: int = 8, pce_svn: int = 13) -> bytes:
    """Header + ISV report: the bytes the attestation key signs."""
    return _HEADER.pack(3, 2, 0, qe_svn, pce_svn, INTEL_QE_VENDOR_ID, bytes(20)) + report.to_bytes()


def assemble_quote(
    signed: bytes,
    signature: bytes,
    attestation_key: bytes,
    qe_report: bytes,
    qe_report_signature: bytes,
    qe_auth_data: bytes,
    cert_data: bytes,
) -> bytes:
    tail = (
        signature
        + attestation_key
        + qe_report
        + qe_report_signature
        + struct.pack("<H", len(qe_auth_data))
        + qe_auth_data
        + struct.pack("<HI", CERT_TYPE_PCK_CHAIN, len(cert_data))
        + cert_data
    )
    return signed + struct.pack("<I", len(tail)) + tail
