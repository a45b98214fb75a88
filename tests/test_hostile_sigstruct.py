"""A SIGSTRUCT is checked from its own bytes, as EINIT checks it: a flip anywhere in the signed
ranges (0-127, 900-1027, reserved bytes included) or in Q1/Q2 makes `gramine sigstruct` and
`inspect` say INVALID."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from enclave_build.builder.gramine.sigstruct import ARCH_LAYOUT, SigDate, Sigstruct, SigstructBody
from enclave_build.builder.image.assemble import LABEL_PREFIX
from enclave_build.builder.image.inspect import inspect_image
from enclave_build.builder.image.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    BlobStore,
    Descriptor,
    canonical_json,
    oci_manifest,
)

from .conftest import run_cli

#: signed bytes no parsed field covers (the ranges the old re-serializing check ignored)
RESERVED_SIGNED = [44, 60, 100, 127, 912, 920, 931, 992, 1000, 1023]
#: signed bytes that are fields (the two headers are checked when parsing)
FIELD_SIGNED = [16, 20, 40, 900, 904, 928, 944, 960, 1024, 1026]
Q1, Q2 = ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_Q1, ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_Q2


@pytest.fixture(scope="module")
def signed() -> bytes:
    """A SIGSTRUCT signed here with a fresh RSA-3072, e = 3 key (no vectors needed)."""
    key = rsa.generate_private_key(public_exponent=3, key_size=3072)
    body = SigstructBody(
        hashlib.sha256(b"enclave").digest(),
        SigDate(2026, 1, 1),
        7,
        3,
        0x4,
        0x3,
        0xFFFFFFFFFFFFFFFD,
        0xFFFFFFFFFFFFFFFC,
        0,
        0xFFFFFFFF,
    )
    unsigned = Sigstruct(body)
    raw_sig = key.sign(unsigned.signing_data(ARCH_LAYOUT), padding.PKCS1v15(), hashes.SHA256())
    sig = unsigned.with_signature(
        key.public_key().public_numbers().n, int.from_bytes(raw_sig, "big")
    )
    data = sig.to_bytes(ARCH_LAYOUT)
    assert Sigstruct.from_bytes(data, ARCH_LAYOUT).signature_problem(ARCH_LAYOUT) is None
    return data


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("offset", RESERVED_SIGNED + FIELD_SIGNED)
def test_a_flip_in_the_signed_bytes_is_detected(signed, offset):
    sig = Sigstruct.from_bytes(_flip(signed, offset), ARCH_LAYOUT)
    assert (
        sig.signature_problem(ARCH_LAYOUT)
        == "the RSA signature does not verify over the signed bytes"
    )
    assert sig.signature_problem(ARCH_LAYOUT) is not None


@pytest.mark.parametrize(
    "offset,name", [(Q1, "Q1"), (Q1 + 200, "Q1"), (Q2, "Q2"), (Q2 + 383, "Q2")]
)
def test_wrong_q1_q2_are_detected(signed, offset, name):
    sig = Sigstruct.from_bytes(_flip(signed, offset), ARCH_LAYOUT)
    assert sig.signature_problem(ARCH_LAYOUT).startswith(f"{name} does not match")


def test_q1_q2_follow_the_einit_definition(signed):
    sig = Sigstruct.from_bytes(signed, ARCH_LAYOUT)
    s, m = sig.signature, sig.modulus
    q1 = int.from_bytes(signed[Q1 : Q1 + 384], "little")
    q2 = int.from_bytes(signed[Q2 : Q2 + 384], "little")
    assert q1 == s * s // m
    assert q2 == (s**3 - q1 * s * m) // m


@pytest.mark.parametrize("offset", [44, 912, 995, Q1 + 1])
def test_sigstruct_command_says_invalid(signed, tmp_path, offset):
    path = tmp_path / "bad.sig"
    path.write_bytes(_flip(signed, offset))
    proc = run_cli("gramine", "sigstruct", str(path), "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["signature_valid"] is False
    assert b"signature does not verify" in proc.stderr


def test_gramine_vectors_with_reserved_flips(sign_vectors, tmp_path):
    raw = (sign_vectors / "s2.sig").read_bytes()
    assert Sigstruct.from_bytes(raw, ARCH_LAYOUT).signature_problem(ARCH_LAYOUT) is None
    for offset in RESERVED_SIGNED:
        flipped = Sigstruct.from_bytes(_flip(raw, offset), ARCH_LAYOUT)
        assert flipped.signature_problem(ARCH_LAYOUT) is not None, offset


def _layout_with_sig(directory, sig: bytes, labels_from: bytes | None = None):
    """An OCI layout like enclave-build's output: /enclave/face.sig plus the labels (of
    *labels_from*, default *sig*)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("enclave/face.sig")
        info.size = len(sig)
        tar.addfile(info, io.BytesIO(sig))
    parsed = Sigstruct.from_bytes(labels_from or sig, ARCH_LAYOUT)
    labels = {
        f"{LABEL_PREFIX}service": "face",
        f"{LABEL_PREFIX}mr_enclave": parsed.body.enclave_hash.hex(),
        f"{LABEL_PREFIX}mr_signer": parsed.mr_signer.hex(),
        f"{LABEL_PREFIX}isv_prod_id": str(parsed.body.isv_prod_id),
        f"{LABEL_PREFIX}isv_svn": str(parsed.body.isv_svn),
        f"{LABEL_PREFIX}debug": "false",
    }
    store = BlobStore(directory / "blobs")
    layer_bytes = buf.getvalue()
    layer = Descriptor(OCI_LAYER, store.put_bytes(layer_bytes), len(layer_bytes))
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }
    )
    config_desc = Descriptor(OCI_CONFIG, store.put_bytes(config), len(config))
    manifest = oci_manifest(config_desc, [layer])
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": store.put_bytes(manifest),
                        "size": len(manifest),
                    }
                ],
            }
        )
    )
    return directory


def test_inspect_reports_a_tampered_sigstruct(signed, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    good = inspect_image(str(_layout_with_sig(tmp_path / "good", signed)))
    assert good.sigstruct["signature_valid"] is True
    assert not any("signature" in p for p in good.problems), good.problems
    # A SIGSTRUCT alone is not an enclave: with no manifest or Gramine to re-derive MRENCLAVE
    # from, the image cannot agree with it.
    assert not good.agrees
    assert "/enclave/face.manifest.sgx: not found in the image" in good.problems
    bad = inspect_image(str(_layout_with_sig(tmp_path / "bad", _flip(signed, 100))))
    assert bad.sigstruct["signature_valid"] is False
    assert not bad.agrees
    assert any("signature does not verify" in p for p in bad.problems), bad.problems


def test_inspect_reports_an_unreadable_sigstruct(signed, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    broken = bytearray(signed)
    broken[ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_DATE + 3] = 0xAB  # year 0xAB26: not a BCD date
    result = inspect_image(str(_layout_with_sig(tmp_path / "bad", bytes(broken), signed)))
    assert not result.agrees
    assert any("misencoded SIGSTRUCT date" in p for p in result.problems), result.problems
