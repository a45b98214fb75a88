"""Find private-key material in bytes and files: what must never reach an image in clear.

A :class:`KeyScanner` looks, anywhere in a file (streamed in chunks, never read whole), for

- PEM armor of any private key: ``-----BEGIN ... PRIVATE KEY-----`` (PKCS#8, encrypted PKCS#8,
  PKCS#1 ``RSA``, SEC1 ``EC``, ``DSA``, ``OPENSSH``, ...) followed by a body (optional
  headers, then base64; line breaks may be escaped, as in a JSON string);
- DER private keys: PKCS#8 ``PrivateKeyInfo``/``OneAsymmetricKey``, PKCS#1 ``RSAPrivateKey``
  (and OpenSSL's DSA form), SEC1 ``ECPrivateKey`` and ``EncryptedPrivateKeyInfo`` (PBES1/PBES2,
  PKCS#12 PBE, so also the key bags of a PKCS#12 file): a candidate is found from a short
  anchor (the version INTEGER, or the encryption OID) and must then be a complete, exactly
  sized DER structure of that shape;
- the binary OpenSSH private-key format (``openssh-key-v1\\0``);
- PGP private-key blocks (``-----BEGIN PGP PRIVATE KEY BLOCK-----``), PEM armor in UTF-16, and
  PEM wrapped in base64 (a Kubernetes Secret's ``tls.key: LS0t...``: decoded and scanned);
- each wrap key the scanner was given: its 16 raw bytes, and its text forms (hex in either
  case, Occlum's ``xx-xx-...`` form, base64 with or without padding, URL-safe base64).

The text forms (of wrap keys, and base64-wrapped or UTF-16 PEM) are looked for in the first
:data:`TEXT_SCAN_BYTES` of a file and in any later chunk that is all ASCII: they are what a
key file or a configuration holds, and looking for them across gigabytes of model weights
would halve the scan's speed.

It finds what is stored: a key inside a compressed archive (gzip, zip) is not seen. Encrypted
content (Gramine protected files) is ciphertext and need not be scanned.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: Bump when what is found changes: cached "clean" verdicts of older scanners are void.
SCANNER_VERSION = 2

_CHUNK = 4 << 20
#: Text forms of keys are looked for up to this far into a file (and in ASCII chunks after).
TEXT_SCAN_BYTES = 64 << 20
#: How far past an anchor a structure may reach (a PEM armor line, a DER key: an RSA-16384
#: PKCS#8 key is under 10 KiB); matches are examined once this much follows them.
_AHEAD = 64 << 10
#: How far before an anchor its start may be (a PEM armor's "-----BEGIN ...", DER headers).
_BEHIND = 128

_PEM = b"PRIVATE KEY-----"
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{0,40})\Z")
#: What follows a key's armor line: optional RFC 1421 headers (Proc-Type, DEK-Info), then at
#: least 64 base64 characters (an Ed25519 PKCS#8 key has exactly 64), line breaks raw or
#: escaped (a key inside a JSON, YAML or text-proto string). A library's bare armor string
#: (mbedTLS keeps "-----BEGIN RSA PRIVATE KEY-----" as a C string) has no body: no key.
_GAP = rb"(?:[ \t\r\n]|\\[rn])*"
_PEM_BODY = re.compile(
    _GAP + rb"(?:[A-Za-z-]+: ?[^\r\n\\]*(?:\r?\n|\\r?\\n)" + _GAP + rb")*"
    rb"(?:[A-Za-z0-9+/=]" + _GAP + rb"){64}"
)
_OPENSSH = b"openssh-key-v1\x00"
_PGP = b"-----BEGIN PGP PRIVATE KEY BLOCK-----"
_PEM_UTF16_BEGIN = "-----BEGIN ".encode("utf-16-le")
_PEM_UTF16_ANCHOR = "PRIVATE KEY-----".encode("utf-16-le")
#: base64 of "-----BEGIN" (a PEM document encoded once more, as in a Kubernetes Secret)
_B64_PEM = b"LS0tLS1CRUdJTi"
_B64_RUN = re.compile(rb"[A-Za-z0-9+/=\r\n]{16,16384}")
#: INTEGER 0 (a key's version) followed by INTEGER (PKCS#1, DSA) or SEQUENCE (PKCS#8), or
#: INTEGER 1 followed by OCTET STRING (SEC1) or SEQUENCE (PKCS#8 v2). The literal prefix keeps the regular expression on its fast path.
_DER_VERSION = re.compile(rb"\x02\x01(?:\x00[\x02\x30]|\x01[\x04\x30])")
#: Password-based encryption OIDs: 1.2.840.113549.1.5.* (PBES1, PBES2) and
#: 1.2.840.113549.1.12.1.* (PKCS#12 PBE), found by their content (one pass, literal prefix);
#: the OBJECT IDENTIFIER header (06 09 / 06 0a) is checked before it.
_PBE_OID = re.compile(rb"\x2a\x86\x48\x86\xf7\x0d\x01(?:\x05|\x0c\x01)")

_SEQUENCE, _INTEGER, _OCTETS, _OID = 0x30, 0x02, 0x04, 0x06


class Readable(Protocol):
    """What :meth:`KeyScanner.scan_stream` reads: a binary file, or a wrapper that counts."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class KeyFinding:
    """Key material at *offset* of *where* (a file, or the name given to scanned bytes)."""

    where: str
    offset: int
    what: str  # e.g. "a PEM private key (RSA PRIVATE KEY)", "wrap key 'svc-key'"

    def __str__(self) -> str:
        return f"{self.where}: {self.what} at byte {self.offset}"


def _tlv(buf: bytes, i: int, end: int) -> tuple[int, int, int] | None:
    """(tag, content start, content end) of the DER element at *i*, ending by *end*; None if
    it is not one (short or minimal long-form length, at most 4 length bytes)."""
    if i + 2 > end:
        return None
    tag, first = buf[i], buf[i + 1]
    if first < 0x80:
        start, length = i + 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or i + 2 + count > end:
            return None
        raw = buf[i + 2 : i + 2 + count]
        length = int.from_bytes(raw, "big")
        if raw[0] == 0 or length < 0x80:  # not minimal: not DER
            return None
        start = i + 2 + count
    if start + length > end:
        return None
    return tag, start, start + length


def _children(
    buf: bytes, start: int, end: int, limit: int = 12
) -> list[tuple[int, int, int]] | None:
    """The elements that exactly fill [start, end); None if they do not (or more than *limit*)."""
    out: list[tuple[int, int, int]] = []
    i = start
    while i < end:
        if len(out) == limit:
            return None
        item = _tlv(buf, i, end)
        if item is None:
            return None
        out.append(item)
        i = item[2]
    return out


def _is_integer(item: tuple[int, int, int]) -> bool:
    return item[0] == _INTEGER and item[2] > item[1]


def _der_shape(buf: bytes, children: list[tuple[int, int, int]]) -> str | None:
    """The private-key format a SEQUENCE with these *children* has, if any."""
    if len(children) < 2 or children[0][0] != _INTEGER or children[0][2] - children[0][1] != 1:
        return None
    version = buf[children[0][1]]
    second = children[1]
    if version == 0 and len(children) in (6, 9) and all(_is_integer(c) for c in children[1:]):
        if second[2] - second[1] >= 32:
            return (
                "a PKCS#1 RSA private key (DER)"
                if len(children) == 9
                else "a DSA private key (DER)"
            )
    if version in (0, 1) and second[0] == _SEQUENCE and 3 <= len(children) <= 5:
        algorithm = _children(buf, second[1], second[2], 3)
        key = children[2]
        if (
            algorithm
            and algorithm[0][0] == _OID
            and key[0] == _OCTETS
            and key[2] - key[1] >= 16
            and all(c[0] in (0xA0, 0xA1, 0x81) for c in children[3:])
        ):
            return "a PKCS#8 private key (DER)"
    if (
        version == 1
        and second[0] == _OCTETS
        and 16 <= second[2] - second[1] <= 66
        and len(children) <= 4
        and all(c[0] in (0xA0, 0xA1) for c in children[2:])
    ):
        return "a SEC1 EC private key (DER)"
    return None


def _sequence_before(buf: bytes, anchor: int) -> tuple[int, int] | None:
    """(start, end) of a SEQUENCE whose content starts exactly at *anchor*."""
    for back in range(2, 7):
        start = anchor - back
        if start < 0 or buf[start] != _SEQUENCE:
            continue
        item = _tlv(buf, start, len(buf))
        if item is not None and item[1] == anchor:
            return start, item[2]
    return None


def _der_key_at(buf: bytes, anchor: int) -> tuple[int, str] | None:
    """A DER private key whose version INTEGER is at *anchor*: (start, format)."""
    found = _sequence_before(buf, anchor)
    if found is None:
        return None
    start, end = found
    children = _children(buf, anchor, end)
    if children is None:
        return None
    what = _der_shape(buf, children)
    return (start, what) if what else None


def _encrypted_key_at(buf: bytes, oid: int) -> int | None:
    """Start of an EncryptedPrivateKeyInfo whose algorithm OID is at *oid*:
    SEQUENCE { SEQUENCE { OID, params }, OCTET STRING }."""
    algorithm = _sequence_before(buf, oid)
    if algorithm is None:
        return None
    outer = _sequence_before(buf, algorithm[0])
    if outer is None:
        return None
    children = _children(buf, algorithm[0], outer[1], 2)
    if (
        not children
        or len(children) != 2
        or children[1][0] != _OCTETS
        or children[1][2] - children[1][1] < 16
    ):
        return None
    return outer[0]


class KeyScanner:
    """Scans bytes and files for private keys and for the given wrap keys (name -> 16 bytes)."""

    def __init__(self, wrap_keys: Mapping[str, bytes] | None = None):
        self._wrap = [(name, bytes(key)) for name, key in sorted((wrap_keys or {}).items()) if key]
        self._wrap_forms = [
            (name, form, what)
            for name, key in self._wrap
            for form, what in _wrap_key_forms(key)[1:]
        ]  # (raw: always)

    def fingerprint(self) -> str:
        """Identifies what this scanner finds (its version and wrap keys) without revealing
        the keys: a clean verdict is reusable only by a scanner with the same fingerprint."""
        h = hashlib.sha256(f"enclave-build key scan v{SCANNER_VERSION}\n".encode())
        for name, key in self._wrap:
            h.update(hashlib.sha256(name.encode() + b"\0" + key).digest())
        return h.hexdigest()

    def scan_bytes(self, data: bytes, where: str = "data") -> KeyFinding | None:
        return self._scan_window(data, 0, len(data), 0, where)

    def scan_file(self, path: Path | str, where: str | None = None) -> KeyFinding | None:
        """The first key material in the file at *path* (streamed; never followed through a
        symbolic link by the caller's choice of path)."""
        with open(path, "rb") as handle:
            return self.scan_stream(handle, where or os.fsdecode(path))

    def scan_stream(self, handle: Readable, where: str) -> KeyFinding | None:
        carry = b""
        carry_at = 0  # offset in the stream of carry[0]
        done = 0  # offsets below this were examined
        while True:
            chunk = handle.read(_CHUNK)
            buf = carry + chunk if carry else chunk
            last = not chunk
            limit = len(buf) if last else max(0, len(buf) - _AHEAD)
            text = carry_at < TEXT_SCAN_BYTES or buf.isascii()
            found = self._scan_window(buf, done - carry_at, limit, carry_at, where, text)
            if found is not None or last:
                return found
            done = carry_at + limit
            keep_from = max(0, limit - _BEHIND)
            carry = buf[keep_from:]
            carry_at += keep_from

    def _scan_window(
        self, buf: bytes, lo: int, hi: int, base: int, where: str, text: bool = True
    ) -> KeyFinding | None:
        """Matches starting in [lo, hi) of *buf* (whose byte 0 is at *base* in the stream)."""
        if hi <= lo:
            return None
        hits: list[tuple[int, str]] = []
        for name, key in self._wrap:
            i = buf.find(key, lo, hi + len(key) - 1)
            if i >= 0:
                hits.append((i, f"wrap key {name!r} of this build (its 16 raw bytes)"))
        i = buf.find(_PGP, lo, hi + len(_PGP) - 1)
        if i >= 0:
            hits.append((i, "a PGP private key block"))
        if text:
            hits += self._text_forms(buf, lo, hi)
        i = lo
        while (i := buf.find(_PEM, i, hi + len(_PEM) - 1)) >= 0:
            line_start = buf.rfind(b"\n", max(0, i - 64), i) + 1
            armor = _PEM_BEGIN.search(buf, line_start, i)
            if armor is not None and _PEM_BODY.match(buf, i + len(_PEM)):
                label = (armor.group(1) + b"PRIVATE KEY").decode("ascii")
                hits.append((armor.start(), f"a PEM private key ({label})"))
                break
            i += 1
        i = buf.find(_OPENSSH, lo, hi + len(_OPENSSH) - 1)
        if i >= 0:
            hits.append((i, "an OpenSSH private key (binary)"))
        for match in _DER_VERSION.finditer(buf, lo, min(len(buf), hi + 3)):
            if match.start() >= hi:
                break
            found = _der_key_at(buf, match.start())
            if found is not None:
                hits.append(found)
                break
        for match in _PBE_OID.finditer(buf, max(0, lo + 2), min(len(buf), hi + 11)):
            oid = match.start() - 2  # the OBJECT IDENTIFIER tag and length
            if oid >= hi:
                break
            length = match.end() - match.start() + 1  # the OID's content length
            if oid < lo or buf[oid] != _OID or buf[oid + 1] != length:
                continue
            start = _encrypted_key_at(buf, oid)
            if start is not None:
                hits.append((start, "an encrypted PKCS#8 private key (DER)"))
                break
        if not hits:
            return None
        offset, what = min(hits)
        return KeyFinding(where, base + offset, what)

    def _text_forms(self, buf: bytes, lo: int, hi: int) -> list[tuple[int, str]]:
        hits = []
        for name, form, what in self._wrap_forms:
            i = buf.find(form, lo, hi + len(form) - 1)
            if i >= 0:
                hits.append((i, f"wrap key {name!r} of this build ({what})"))
        i = buf.find(_PEM_UTF16_ANCHOR, lo, hi + len(_PEM_UTF16_ANCHOR) - 1)
        if i >= 0 and _PEM_UTF16_BEGIN in buf[max(0, i - 96) : i]:
            hits.append((i, "a PEM private key (UTF-16 text)"))
        i = lo
        while (i := buf.find(_B64_PEM, i, hi + len(_B64_PEM) - 1)) >= 0:
            run = _B64_RUN.match(buf, i)
            if run is not None and self._base64_holds_key(run.group(0)):
                hits.append((i, "a PEM private key, base64-encoded"))
                break
            i += 1
        return hits

    def _base64_holds_key(self, text: bytes) -> bool:
        import base64
        import binascii

        body = re.sub(rb"[\r\n]", b"", text)
        body = body[: len(body) - len(body) % 4]
        try:
            decoded = base64.b64decode(body)
        except (binascii.Error, ValueError):
            return False
        plain = KeyScanner()  # one level: the decoded text is scanned for PEM and DER
        return plain._scan_window(decoded, 0, len(decoded), 0, "") is not None


def _wrap_key_forms(key: bytes) -> list[tuple[bytes, str]]:
    """The byte strings a wrap key may be written as: raw, and its usual text forms."""
    import base64

    hexed = key.hex()
    forms = [
        (key, "its 16 raw bytes"),
        (hexed.encode(), "in hex"),
        (hexed.upper().encode(), "in hex"),
        (
            "-".join(hexed[i : i + 2] for i in range(0, len(hexed), 2)).encode(),
            "in Occlum's xx-xx-... form",
        ),
        (base64.b64encode(key).rstrip(b"="), "in base64"),
        (base64.urlsafe_b64encode(key).rstrip(b"="), "in base64"),
    ]
    out: list[tuple[bytes, str]] = []
    for form, what in forms:
        if all(form != f for f, _ in out):
            out.append((form, what))
    return out


def parses_as_private_key(data: bytes) -> bool:
    """Whether *data* as a whole is a private key cryptography can read (PEM, DER or OpenSSH;
    an encrypted one counts: it asks for a password)."""
    from cryptography.hazmat.primitives import serialization

    loaders = (
        serialization.load_pem_private_key,
        serialization.load_der_private_key,
        serialization.load_ssh_private_key,
    )
    for load in loaders:
        try:
            load(data, None)
            return True
        except TypeError:  # "password was not given but private key is encrypted"
            return True
        except Exception:  # noqa: BLE001 - any other failure: not this format
            continue
    return False
