"""Gramine protected files: conformance with files made by gramine-sgx-pf-crypt 1.9, structure
of our own files, tamper resistance, reproducible mode and the `pf` commands."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_build.attestation.protected_files import Layout
from enclave_build.builder.gramine import protected_files as pf

from .conftest import run_cli, vectors_dir

SIZES = [0, 1, 3072, 3073, 7168, 400000, 2097152]


@pytest.fixture(scope="module")
def pf_vectors() -> Path:
    return vectors_dir("pf")


@pytest.fixture(scope="module")
def vkey(pf_vectors) -> bytes:
    return (pf_vectors / "wrap-key").read_bytes()


def walk(data: bytes, key: bytes) -> tuple[str, bytes, dict]:
    """Independent, non-streaming reader written from the format description: returns
    (embedded path, plaintext, stats) and asserts every structural rule on the way."""
    assert len(data) % 4096 == 0 and data
    file_id, major, minor, nonce, tag, flags = struct.unpack_from("<QBB32s16sB", data)
    assert (file_id, major, minor, flags) == (0x46505F5346415247, 2, 0, 0)
    assert data[59 + 3884 : 4096] == bytes(153)
    cmac = CMAC(algorithms.AES(key))
    cmac.update(struct.pack("<I64s32sI", 1, b"SGX-PROTECTED-FS-METADATA-KEY", nonce, 128))
    meta = AESGCM(cmac.finalize()).decrypt(bytes(12), data[59 : 59 + 3884] + tag, None)
    path = meta[:772].split(b"\0")[0].decode()
    size, root_key, root_tag = struct.unpack_from("<Q16s16s", meta, 772)
    plain = bytearray(meta[772 + 40 : 772 + 40 + min(size, 3072)])
    nodes = len(data) // 4096
    stats = {"nodes": nodes, "mht": 0, "data": 0}
    if size <= 3072:
        assert nodes == 1
        return path, bytes(plain), stats

    def node(i: int) -> bytes:
        return data[i * 4096 : (i + 1) * 4096]

    mhts = {0: AESGCM(root_key).decrypt(bytes(12), node(1) + root_tag, None)}
    n_data = -(-(size - 3072) // 4096)
    n_mht = -(-n_data // 96)
    assert nodes == 1 + n_mht + n_data
    for m in range(1, n_mht):
        parent = mhts[(m - 1) // 32]
        entry = parent[96 * 32 + ((m - 1) % 32) * 32 :][:32]
        mhts[m] = AESGCM(entry[:16]).decrypt(bytes(12), node(1 + 97 * m) + entry[16:], None)
    for m in range(n_mht, n_mht + 40):  # unused child slots stay zero
        if (m - 1) // 32 in mhts:
            assert mhts[(m - 1) // 32][96 * 32 + ((m - 1) % 32) * 32 :][:32] == bytes(32)
    for d in range(n_data):
        entry = mhts[d // 96][(d % 96) * 32 :][:32]
        plain += AESGCM(entry[:16]).decrypt(bytes(12), node(d + 2 + d // 96) + entry[16:], None)
    stats.update(mht=n_mht, data=n_data)
    return path, bytes(plain[:size]), stats


# ----------------------------------------------------------------------- Gramine's files


@pytest.mark.parametrize("size", SIZES)
def test_gramine_files_decrypt(pf_vectors, vkey, tmp_path, size):
    name = f"f{size}.bin"
    out = tmp_path / "plain"
    meta = pf.decrypt_file(vkey, pf_vectors / "models" / name, out, expected_path=f"models/{name}")
    assert meta.path == f"models/{name}" and meta.size == size
    assert out.read_bytes() == (pf_vectors / "plain" / name).read_bytes()


@pytest.mark.parametrize("size", SIZES)
def test_independent_walker_agrees_with_gramine_layout(pf_vectors, vkey, size):
    name = f"f{size}.bin"
    path, plain, _ = walk((pf_vectors / "models" / name).read_bytes(), vkey)
    assert path == f"models/{name}"
    assert plain == (pf_vectors / "plain" / name).read_bytes()


def _refused(tmp_path, key, data: bytes, expected_path=None) -> str:
    src = tmp_path / "in.pf"
    src.write_bytes(data)
    dst = tmp_path / "out.bin"
    with pytest.raises(pf.PFError) as info:
        pf.decrypt_file(key, src, dst, expected_path)
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.bin")]
    return str(info.value)


@pytest.mark.parametrize("size", [1, 3073, 400000])
def test_every_region_of_a_gramine_file_is_tamper_evident(pf_vectors, vkey, tmp_path, size):
    data = (pf_vectors / "models" / f"f{size}.bin").read_bytes()
    offsets = [0, 8, 9, 10, 30, 50, 58, 59, 500, 3942, 4000, 4095]
    offsets += list(range(4096, len(data), 4096 * 7 + 123))  # every few nodes, varying offset
    for offset in offsets:
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        _refused(tmp_path, vkey, bytes(tampered))


def test_refusal_messages(pf_vectors, vkey, tmp_path):
    data = (pf_vectors / "models" / "f400000.bin").read_bytes()
    assert "wrong wrap key, or the metadata node was modified" in _refused(
        tmp_path, bytes(16), data
    )
    assert "embedded path is 'models/f400000.bin', expected 'models/other.bin'" in _refused(
        tmp_path, vkey, data, "models/other.bin"
    )
    assert "it was truncated or extended" in _refused(tmp_path, vkey, data[:-4096])
    assert "it was truncated or extended" in _refused(tmp_path, vkey, data + bytes(4096))
    assert "is not a multiple of 4096" in _refused(tmp_path, vkey, data[:-1])
    flipped = bytearray(data)
    flipped[4096 * 50 + 7] ^= 0x80
    assert "data node 50 failed its integrity check" in _refused(tmp_path, vkey, bytes(flipped))
    swapped = bytearray(data)
    swapped[4096 * 2 : 4096 * 3], swapped[4096 * 3 : 4096 * 4] = (
        data[4096 * 3 : 4096 * 4],
        data[4096 * 2 : 4096 * 3],
    )
    assert "failed its integrity check" in _refused(tmp_path, vkey, bytes(swapped))
    assert "not a Gramine protected file" in _refused(tmp_path, vkey, b"\0" * 8192)


# ----------------------------------------------------------------------- our files


@pytest.mark.parametrize("size", SIZES + [2097152 + 4096 * 96 * 33])  # > 32 child MHT nodes
def test_our_files_have_gramines_structure(tmp_path, size):
    key = os.urandom(16)
    plain = os.urandom(size)
    (tmp_path / "p").write_bytes(plain)
    pf.encrypt_file(key, tmp_path / "p", tmp_path / "e", path="/models/m/1/model.bin")
    data = (tmp_path / "e").read_bytes()
    layout = Layout(size)
    assert len(data) == layout.file_size
    path, got, stats = walk(data, key)
    assert (path, got) == ("/models/m/1/model.bin", plain)
    assert stats["nodes"] == layout.nodes
    expected_nodes = {0: 1, 1: 1, 3072: 1, 3073: 3, 7168: 3, 400000: 100, 2097152: 519}
    if size in expected_nodes:
        assert stats["nodes"] == expected_nodes[size]  # the same counts as Gramine's files
    out = tmp_path / "d"
    assert pf.decrypt_file(key, tmp_path / "e", out, "/models/m/1/model.bin").size == size
    assert out.read_bytes() == plain


def test_default_embedded_path_is_output_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("p").write_bytes(b"x" * 5000)
    key = os.urandom(16)
    pf.encrypt_file(key, "p", "enc.bin")
    assert pf.decrypt_file(key, "enc.bin", "out").path == "enc.bin"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(min_size=0, max_size=3 * 4096 + 10) | st.integers(0, 500_000).map(os.urandom),
    flip=st.integers(min_value=0),
    bit=st.integers(0, 7),
)
def test_property_roundtrip_and_any_flip_is_refused(tmp_path, data, flip, bit):
    key = os.urandom(16)
    (tmp_path / "p").write_bytes(data)
    pf.encrypt_file(key, tmp_path / "p", tmp_path / "e", path="/x")
    encrypted = (tmp_path / "e").read_bytes()
    out = tmp_path / "d"
    pf.decrypt_file(key, tmp_path / "e", out, "/x")
    assert out.read_bytes() == data
    out.unlink()
    tampered = bytearray(encrypted)
    tampered[flip % len(tampered)] ^= 1 << bit
    (tmp_path / "t").write_bytes(bytes(tampered))
    with pytest.raises(pf.PFError):
        pf.decrypt_file(key, tmp_path / "t", out, "/x")
    assert not out.exists()


def test_reproducible_mode_is_deterministic_and_random_mode_is_not(tmp_path):
    key = os.urandom(16)
    plain = os.urandom(500_000)
    (tmp_path / "p").write_bytes(plain)
    outs = {}
    for name, repro, path in [
        ("r1", True, "/m/a"),
        ("r2", True, "/m/a"),
        ("r3", True, "/m/b"),
        ("n1", False, "/m/a"),
        ("n2", False, "/m/a"),
    ]:
        pf.encrypt_file(key, tmp_path / "p", tmp_path / name, path=path, reproducible=repro)
        outs[name] = (tmp_path / name).read_bytes()
        assert walk(outs[name], key)[1] == plain
    assert outs["r1"] == outs["r2"]
    assert outs["r1"] != outs["r3"]  # the path is an input
    assert outs["n1"] != outs["n2"]  # random keys and nonce by default
    other = os.urandom(16)
    pf.encrypt_file(other, tmp_path / "p", tmp_path / "k", path="/m/a", reproducible=True)
    assert (tmp_path / "k").read_bytes() != outs["r1"]  # so is the key


def test_wrap_key_files(tmp_path):
    path = tmp_path / "k"
    key = pf.write_wrap_key(path)
    assert len(key) == 16 and path.stat().st_mode & 0o777 == 0o600
    assert pf.read_wrap_key(path) == key
    with pytest.raises(pf.PFError, match="already exists"):
        pf.write_wrap_key(path)
    (tmp_path / "bad").write_bytes(b"0123456789abcdef\n")
    with pytest.raises(pf.PFError, match="exactly 16 raw bytes, this file has 17"):
        pf.read_wrap_key(tmp_path / "bad")


def test_pf_commands(pf_vectors, tmp_path):
    key = pf_vectors / "wrap-key"
    plain = pf_vectors / "plain" / "f3073.bin"
    enc = tmp_path / "enc.bin"
    r = run_cli(
        "pf",
        "encrypt",
        "--wrap-key",
        str(key),
        "--input",
        str(plain),
        "--output",
        str(enc),
        "--path",
        "/models/x.bin",
    )
    assert r.returncode == 0, r.stderr
    info = run_cli("pf", "info", str(enc), "--json")
    assert info.returncode == 0
    import json

    header = json.loads(info.stdout)
    assert header["version"] == "2.0" and header["nodes"] == 3 and "path" not in header
    full = json.loads(run_cli("pf", "info", str(enc), "--wrap-key", str(key), "--json").stdout)
    assert full["path"] == "/models/x.bin" and full["plaintext_size"] == 3073
    r = run_cli(
        "pf",
        "decrypt",
        "--wrap-key",
        str(key),
        "--input",
        str(enc),
        "--output",
        str(tmp_path / "out"),
        "--path",
        "/models/x.bin",
    )
    assert r.returncode == 0 and (tmp_path / "out").read_bytes() == plain.read_bytes()
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o600
    bad = run_cli(
        "pf",
        "decrypt",
        "--wrap-key",
        str(key),
        "--input",
        str(enc),
        "--output",
        str(tmp_path / "out2"),
        "--path",
        "/models/y.bin",
    )
    assert bad.returncode == 1
    assert b"embedded path is '/models/x.bin', expected '/models/y.bin'" in bad.stderr
    assert not (tmp_path / "out2").exists()
    gk = run_cli("pf", "keygen", "--out", str(tmp_path / "new.key"))
    assert gk.returncode == 0 and (tmp_path / "new.key").stat().st_size == 16
