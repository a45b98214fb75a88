"""builder.key_scan: private keys in every common encoding, and this build's wrap keys, are
found anywhere in a file (also across the scanner's chunk boundaries); ordinary data is not
taken for a key."""

from __future__ import annotations

import io
import os
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from enclave_build.builder.key_scan import KeyScanner, parses_as_private_key

Enc, Fmt = serialization.Encoding, serialization.PrivateFormat
NONE = serialization.NoEncryption()
PASSWORD = serialization.BestAvailableEncryption(b"correct horse")


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(65537, 2048),
        "ec": ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "dsa": dsa.generate_private_key(2048),
    }


def _encodings(keys) -> dict[str, bytes]:
    out = {}
    for name, key in keys.items():
        out[f"{name} pkcs8 pem"] = key.private_bytes(Enc.PEM, Fmt.PKCS8, NONE)
        out[f"{name} pkcs8 der"] = key.private_bytes(Enc.DER, Fmt.PKCS8, NONE)
        out[f"{name} pkcs8 encrypted pem"] = key.private_bytes(Enc.PEM, Fmt.PKCS8, PASSWORD)
        out[f"{name} pkcs8 encrypted der"] = key.private_bytes(Enc.DER, Fmt.PKCS8, PASSWORD)
        out[f"{name} openssh"] = (
            key.private_bytes(Enc.PEM, Fmt.OpenSSH, NONE)
            if name != "dsa"
            else key.private_bytes(Enc.PEM, Fmt.TraditionalOpenSSL, NONE)
        )
        if name != "ed25519":  # PKCS#1 (RSA), SEC1 (EC), OpenSSL's DSA form
            out[f"{name} traditional pem"] = key.private_bytes(
                Enc.PEM, Fmt.TraditionalOpenSSL, NONE
            )
            out[f"{name} traditional der"] = key.private_bytes(
                Enc.DER, Fmt.TraditionalOpenSSL, NONE
            )
            out[f"{name} traditional encrypted pem"] = key.private_bytes(
                Enc.PEM, Fmt.TraditionalOpenSSL, PASSWORD
            )
    out["pkcs12"] = pkcs12.serialize_key_and_certificates(b"x", keys["rsa"], None, None, PASSWORD)
    return out


def test_every_encoding_is_found_alone_and_embedded(keys):
    scanner = KeyScanner()
    rng = random.Random(7)
    for label, blob in _encodings(keys).items():
        assert scanner.scan_bytes(blob, label) is not None, label
        before = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 5000)))
        after = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 5000)))
        found = scanner.scan_bytes(before + blob + after, label)
        assert found is not None, f"{label} embedded"
        assert len(before) - 64 <= found.offset <= len(before) + len(blob), (label, found)


def test_keys_inside_strings_of_config_files_are_found(keys):
    """A key pasted into JSON or a text proto (newlines escaped), or with legacy headers."""
    scanner = KeyScanner()
    pem = keys["ec"].private_bytes(Enc.PEM, Fmt.PKCS8, NONE).decode()
    escaped = pem.replace("\n", "\\n")
    for text in (f'{{"tls": {{"key": "{escaped}"}}}}', f'server_key: "{escaped}"\n'):
        found = scanner.scan_bytes(text.encode(), "config")
        assert found is not None and found.what == "a PEM private key (PRIVATE KEY)", text[:40]
    legacy = keys["rsa"].private_bytes(Enc.PEM, Fmt.TraditionalOpenSSL, PASSWORD)
    assert b"Proc-Type: 4,ENCRYPTED" in legacy
    assert scanner.scan_bytes(legacy).what == "a PEM private key (RSA PRIVATE KEY)"


def test_whole_file_parsing_accepts_every_private_key_and_no_public_one(keys):
    for label, blob in _encodings(keys).items():
        if label != "pkcs12":
            assert parses_as_private_key(blob), label
    public = (
        keys["rsa"]
        .public_key()
        .public_bytes(Enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert not parses_as_private_key(public)
    assert not parses_as_private_key(b"\x00" * 100)


def test_what_is_found_is_named(keys):
    scanner = KeyScanner()
    pem = keys["rsa"].private_bytes(Enc.PEM, Fmt.TraditionalOpenSSL, NONE)
    assert scanner.scan_bytes(b"x" * 10 + pem).what == "a PEM private key (RSA PRIVATE KEY)"
    der = keys["ec"].private_bytes(Enc.DER, Fmt.PKCS8, NONE)
    found = scanner.scan_bytes(b"\x01" * 33 + der, "model.bin")
    assert (found.where, found.offset, found.what) == (
        "model.bin",
        33,
        "a PKCS#8 private key (DER)",
    )
    assert (
        "SEC1"
        in scanner.scan_bytes(keys["ec"].private_bytes(Enc.DER, Fmt.TraditionalOpenSSL, NONE)).what
    )


def test_wrap_keys_anywhere_and_only_this_builds(tmp_path):
    key, other = os.urandom(16), os.urandom(16)
    scanner = KeyScanner({"svc-key": key})
    found = scanner.scan_bytes(os.urandom(1000) + key + os.urandom(7))
    assert (
        found.offset == 1000 and found.what == "wrap key 'svc-key' of this build (its 16 raw bytes)"
    )
    assert scanner.scan_bytes(os.urandom(1000) + other) is None
    assert KeyScanner({"a": key}).fingerprint() != KeyScanner({"a": other}).fingerprint()
    assert key.hex() not in KeyScanner({"a": key}).fingerprint()


@pytest.mark.parametrize(
    "at",
    [
        0,
        (4 << 20) - 9,
        (4 << 20) - 1,
        4 << 20,
        (4 << 20) + 3,
        (8 << 20) - (64 << 10) - 20,
        (8 << 20) - (64 << 10) + 5,
    ],
)
def test_streaming_finds_material_across_chunk_boundaries(tmp_path, keys, at):
    """Chunks are 4 MiB with 64 KiB examined late: a key straddling any boundary is found,
    whether it is a wrap key, a PEM armor line or a DER structure."""
    key = os.urandom(16)
    pem = keys["ec"].private_bytes(Enc.PEM, Fmt.PKCS8, NONE)
    der = keys["rsa"].private_bytes(Enc.DER, Fmt.PKCS8, NONE)
    for needle, expect in ((key, "wrap key"), (pem, "PEM"), (der, "PKCS#8")):
        data = bytearray(b"\x5a" * (9 << 20))
        data[at : at + len(needle)] = needle
        found = KeyScanner({"k": key}).scan_stream(io.BytesIO(bytes(data)), "big")
        assert found is not None and expect in found.what, (needle[:8], at)
        if expect != "PEM":
            assert found.offset == at


def test_ordinary_content_is_not_a_key(tmp_path, keys):
    """Random bytes, float weights, text, certificates and public keys hold no key."""
    import numpy as np

    scanner = KeyScanner({"k": os.urandom(16)})
    rng = np.random.default_rng(1)
    assert scanner.scan_bytes(rng.bytes(32 << 20)) is None
    assert scanner.scan_bytes(rng.standard_normal(4 << 20).astype(np.float32).tobytes()) is None
    assert scanner.scan_bytes(rng.integers(-128, 128, 8 << 20, dtype=np.int8).tobytes()) is None
    text = b"PRIVATE KEY-----" + b" a comment mentioning -----BEGIN CERTIFICATE----- " * 3
    assert scanner.scan_bytes(text) is None
    library = (
        b"\x00-----BEGIN RSA PRIVATE KEY-----\x00-----END RSA PRIVATE KEY-----\x00"
        b"-----BEGIN EC PRIVATE KEY-----\x00Proc-Type: 4,ENCRYPTED\x00"
    )  # C strings
    assert scanner.scan_bytes(b"\x7fELF" + bytes(100) + library + bytes(100)) is None
    public = keys["rsa"].public_key()
    for fmt in (serialization.PublicFormat.SubjectPublicKeyInfo, serialization.PublicFormat.PKCS1):
        assert scanner.scan_bytes(public.public_bytes(Enc.DER, fmt)) is None
        assert scanner.scan_bytes(public.public_bytes(Enc.PEM, fmt)) is None


def test_text_forms_of_a_wrap_key_are_found():
    """A wrap key written as text: hex in either case, Occlum's xx-xx-... form (its image key
    file), base64 with and without padding, URL-safe base64."""
    import base64

    key = bytes(range(250, 256)) + os.urandom(10)
    scanner = KeyScanner({"svc-key": key})
    hexed = key.hex()
    for form in (
        hexed,
        hexed.upper(),
        "-".join(hexed[i : i + 2] for i in range(0, 32, 2)),
        base64.b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
        base64.urlsafe_b64encode(key).decode(),
    ):
        found = scanner.scan_bytes(b'{"key": "' + form.encode() + b'"}')
        assert found is not None and found.offset == 9, form
        assert found.what.startswith("wrap key 'svc-key' of this build"), found.what
        assert hexed not in str(found)


def test_pgp_utf16_and_base64_wrapped_keys_are_found(keys):
    import base64

    pem = keys["ec"].private_bytes(Enc.PEM, Fmt.PKCS8, NONE)
    scanner = KeyScanner()
    k8s_secret = b"apiVersion: v1\nkind: Secret\ndata:\n  tls.key: " + base64.b64encode(pem) + b"\n"
    assert "base64" in scanner.scan_bytes(k8s_secret).what
    assert "UTF-16" in scanner.scan_bytes(b"\xff\xfe" + pem.decode().encode("utf-16-le")).what
    pgp = (
        b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF...\n-----END PGP PRIVATE KEY BLOCK-----\n"
    )
    assert scanner.scan_bytes(b"x" * 50 + pgp).what == "a PGP private key block"
    # base64 of a certificate or of ordinary text is no key
    cert_like = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n" + bytes(300))
    assert scanner.scan_bytes(cert_like) is None
