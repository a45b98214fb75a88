"""The primary-key fingerprints of an OpenPGP keyring (RFC 4880, version 4 keys), so an apt
signing key fetched over the network can be checked against the fingerprint its publisher
documents before apt is told to trust it.

Only the packet framing and the public-key packets are read: a v4 fingerprint is the SHA-1 of
0x99, the packet body's length (two bytes, big-endian) and the body. Binary keyrings (``.gpg``)
and ASCII-armored ones (``.asc``) are accepted; signatures are not checked here (apt checks
what the key signs; subkeys are bound to their primary key by signatures only it can
make). Anything that is not a well-formed sequence of packets is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from ..errors import EnclaveBuildError

PUBLIC_KEY = 6
#: Keyrings larger than this are refused before parsing (an apt repository key is < 10 KiB).
MAX_KEYRING = 1 << 20

_ARMOR = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY "
    rb"BLOCK-----",
    re.S,
)


class OpenPGPError(EnclaveBuildError):
    """Not a keyring this module can read (the message says why)."""


@dataclass(frozen=True)
class Packet:
    tag: int
    body: bytes


def dearmor(data: bytes) -> bytes:
    """The binary packets of *data*: itself when binary, decoded when ASCII-armored."""
    if len(data) > MAX_KEYRING:
        raise OpenPGPError(
            f"{len(data)} bytes: larger than any signing keyring ({MAX_KEYRING} at most)"
        )
    match = _ARMOR.search(data)
    if match is None:
        if data.lstrip().startswith(b"-----BEGIN"):
            raise OpenPGPError("ASCII armor, but not a PGP PUBLIC KEY BLOCK")
        return data
    lines = match.group(1).replace(b"\r", b"").split(b"\n")
    if b"" in lines:  # armor headers end at the first empty line
        lines = lines[lines.index(b"") + 1 :]
    body = b"".join(
        line.strip() for line in lines if line.strip() and not line.startswith(b"=")
    )  # "=XXXX": the CRC-24
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise OpenPGPError(f"ASCII armor with bad base64: {exc}") from None


def packets(data: bytes) -> list[Packet]:
    """The packets of a binary keyring, framing checked; no partial or indeterminate lengths
    (a key packet never has them)."""
    out: list[Packet] = []
    i = 0
    while i < len(data):
        head = data[i]
        if not head & 0x80:
            raise OpenPGPError(f"offset {i}: not an OpenPGP packet (byte {head:#04x})")
        if head & 0x40:  # new format
            tag = head & 0x3F
            if i + 1 >= len(data):
                raise OpenPGPError(f"offset {i}: truncated packet header")
            first = data[i + 1]
            if first < 192:
                length, start = first, i + 2
            elif first < 224:
                if i + 2 >= len(data):
                    raise OpenPGPError(f"offset {i}: truncated packet header")
                length, start = ((first - 192) << 8) + data[i + 2] + 192, i + 3
            elif first == 255:
                length, start = int.from_bytes(data[i + 2 : i + 6], "big"), i + 6
            else:
                raise OpenPGPError(f"offset {i}: partial body length in a keyring")
        else:  # old format
            tag, kind = (head >> 2) & 0x0F, head & 0x03
            if kind == 3:
                raise OpenPGPError(f"offset {i}: indeterminate length in a keyring")
            width = 1 << kind
            length, start = int.from_bytes(data[i + 1 : i + 1 + width], "big"), i + 1 + width
        end = start + length
        if end > len(data):
            raise OpenPGPError(
                f"offset {i}: packet of {length} bytes runs past the end ({len(data)} bytes)"
            )
        out.append(Packet(tag, data[start:end]))
        i = end
    return out


def fingerprint(body: bytes) -> str:
    """The fingerprint of a public-key packet body (upper-case hex)."""
    if not body:
        raise OpenPGPError("empty public-key packet")
    if body[0] != 4:
        raise OpenPGPError(f"a version {body[0]} public key; only version 4 keys are read")
    if len(body) > 0xFFFF:
        raise OpenPGPError("public-key packet too large")
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()


def primary_fingerprints(keyring: bytes) -> list[str]:
    """Fingerprints of the primary keys of *keyring* (binary or armored), in order."""
    found = [fingerprint(p.body) for p in packets(dearmor(keyring)) if p.tag == PUBLIC_KEY]
    if not found:
        raise OpenPGPError("no public key in it")
    return found


def spaced(fpr: str) -> str:
    """``EA3C 2D62 ...``: how fingerprints are printed for people."""
    return " ".join(fpr[i : i + 4] for i in range(0, len(fpr), 4))


__all__ = ["OpenPGPError", "dearmor", "packets", "fingerprint", "primary_fingerprints", "spaced"]
