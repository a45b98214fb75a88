"""`enclave-build gramine sign` reproduces gramine-sgx-sign 1.9 byte for byte."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from enclave_build.builder.gramine.measure import PalImage
from enclave_build.builder.gramine.offsets import Offsets
from enclave_build.builder.gramine.sign import ManifestNotFinalError, sign_manifest
from enclave_build.builder.gramine.signer import PemSigner
from enclave_build.builder.gramine.sigstruct import ARCH_LAYOUT, SigDate, Sigstruct

from .conftest import run_cli

CASES = ["s1", "s2", "s3", "s4"]


def _meta(vectors, case):
    return json.loads((vectors / f"{case}.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_cli_sign_matches_gramine_byte_for_byte(sign_vectors, tmp_path, case):
    meta = _meta(sign_vectors, case)
    out = tmp_path / f"{case}.sig"
    proc = run_cli(
        "gramine",
        "sign",
        "--manifest",
        str(sign_vectors / f"{case}.manifest.sgx"),
        "--libpal",
        str(sign_vectors / meta["libpal"]),
        "--offsets",
        str(sign_vectors / "_graminelibos_offsets.py"),
        "--key",
        str(sign_vectors / "test-enclave-key.pem"),
        "--date",
        meta["date"],
        "--sigfile",
        str(out),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.read_bytes() == (sign_vectors / f"{case}.sig").read_bytes()
    assert json.loads(proc.stdout) == {
        k: meta[k] for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")
    }


@pytest.mark.parametrize("case", CASES)
def test_sigstruct_command_reads_gramine_sigfile(sign_vectors, case):
    meta = _meta(sign_vectors, case)
    proc = run_cli("gramine", "sigstruct", str(sign_vectors / f"{case}.sig"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(proc.stdout)
    assert info["mr_enclave"] == meta["mr_enclave"]
    assert info["mr_signer"] == meta["mr_signer"]
    assert (info["isv_prod_id"], info["isv_svn"]) == (meta["isv_prod_id"], meta["isv_svn"])
    assert info["date"] == meta["date"]
    assert info["signature_valid"] is True
    manifest = (sign_vectors / f"{case}.manifest.sgx").read_text()
    assert info["debug"] == ("debug = true" in manifest)
    assert info["attributes"]["mode64bit"] is True


def test_sigstruct_roundtrip_and_tamper_detection(sign_vectors, tmp_path):
    raw = (sign_vectors / "s2.sig").read_bytes()
    sig = Sigstruct.from_bytes(raw, ARCH_LAYOUT)
    assert sig.to_bytes(ARCH_LAYOUT) == raw
    tampered = bytearray(raw)
    tampered[ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_ISV_SVN] ^= 1
    (tmp_path / "bad.sig").write_bytes(bytes(tampered))
    proc = run_cli("gramine", "sigstruct", str(tmp_path / "bad.sig"))
    assert proc.returncode == 1
    assert b"signature does not verify" in proc.stderr


def test_one_flipped_manifest_byte_changes_mrenclave(sign_vectors):
    offs = Offsets.load(sign_vectors / "_graminelibos_offsets.py")
    pal = PalImage.load(sign_vectors / "fakepal_a.so")
    signer = PemSigner.from_file(sign_vectors / "test-enclave-key.pem")
    manifest = (sign_vectors / "s1.manifest.sgx").read_bytes()
    changed = manifest.replace(b'log_level = "error"', b'log_level = "debug"')
    a = sign_manifest(manifest, pal, offs, signer, SigDate.parse("2026-01-01"))
    b = sign_manifest(changed, pal, offs, signer, SigDate.parse("2026-01-01"))
    assert a.mr_enclave.hex() == _meta(sign_vectors, "s1")["mr_enclave"]
    assert a.mr_enclave != b.mr_enclave


def test_other_libpal_changes_mrenclave(sign_vectors):
    offs = Offsets.load(sign_vectors / "_graminelibos_offsets.py")
    signer = PemSigner.from_file(sign_vectors / "test-enclave-key.pem")
    manifest = (sign_vectors / "s1.manifest.sgx").read_bytes()
    date = SigDate.parse("2026-01-01")
    a = sign_manifest(manifest, PalImage.load(sign_vectors / "fakepal_a.so"), offs, signer, date)
    b = sign_manifest(manifest, PalImage.load(sign_vectors / "fakepal_b.so"), offs, signer, date)
    assert a.mr_enclave != b.mr_enclave


def test_manifest_without_hashes_is_refused(sign_vectors, tmp_path):
    text = (sign_vectors / "s1.manifest.sgx").read_text()
    text = text.replace(
        'sha256 = "762f891243fbf4ac23698261a10e9f49a0226bed54c2a985e90e2f5df35c835c"\n', ""
    )
    path = tmp_path / "app.manifest.sgx"
    path.write_text(text)
    proc = run_cli(
        "gramine",
        "sign",
        "--manifest",
        str(path),
        "--libpal",
        str(sign_vectors / "fakepal_a.so"),
        "--offsets",
        str(sign_vectors / "_graminelibos_offsets.py"),
        "--key",
        str(sign_vectors / "test-enclave-key.pem"),
        "--sigfile",
        str(tmp_path / "out.sig"),
    )
    assert proc.returncode == 1
    assert (
        f"error: {path}: sgx.trusted_files[0] ('file:app.bin') has no sha256: the manifest is "
        "not final"
    ).encode() in proc.stderr
    assert not (tmp_path / "out.sig").exists()


def test_string_loader_entrypoint_is_refused(sign_vectors):
    text = (sign_vectors / "s3.manifest.sgx").read_text()
    start = text.index("[loader.entrypoint]")
    end = text.index("[fs]")
    text = text[:start] + text[end:]
    text = text.replace("[libos]", '[loader]\nentrypoint = "file:libsysdb.so"\n\n[libos]')
    offs = Offsets.load(sign_vectors / "_graminelibos_offsets.py")
    with pytest.raises(ManifestNotFinalError, match="must be a table"):
        sign_manifest(
            text.encode(),
            PalImage.load(sign_vectors / "fakepal_a.so"),
            offs,
            PemSigner.from_file(sign_vectors / "test-enclave-key.pem"),
            SigDate(0, 0, 0),
        )


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_two_step_external_signing_with_openssl_matches_gramine(sign_vectors, tmp_path):
    """Step one writes the bytes to sign; openssl (standing in for an HSM) signs them with the
    private key the build never sees; step two assembles a SIGSTRUCT identical to Gramine's."""
    meta = _meta(sign_vectors, "s2")
    common = [
        "gramine",
        "sign",
        "--manifest",
        str(sign_vectors / "s2.manifest.sgx"),
        "--libpal",
        str(sign_vectors / meta["libpal"]),
        "--offsets",
        str(sign_vectors / "_graminelibos_offsets.py"),
        "--date",
        meta["date"],
    ]
    tbs = tmp_path / "sigstruct.tbs"
    step1 = run_cli(*common, "--tbs-out", str(tbs))
    assert step1.returncode == 0, step1.stderr.decode()
    assert tbs.stat().st_size == 256
    key = sign_vectors / "test-enclave-key.pem"
    subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-sign",
            str(key),
            "-out",
            str(tmp_path / "sig.bin"),
            str(tbs),
        ],
        check=True,
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(tmp_path / "pub.pem")],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "s2.sig"
    step2 = run_cli(
        *common,
        "--public-key",
        str(tmp_path / "pub.pem"),
        "--signature",
        str(tmp_path / "sig.bin"),
        "--sigfile",
        str(out),
    )
    assert step2.returncode == 0, step2.stderr.decode()
    assert out.read_bytes() == (sign_vectors / "s2.sig").read_bytes()

    # A signature over other bytes is refused, and nothing is written.
    (tmp_path / "other.tbs").write_bytes(b"x" * 256)
    subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-sign",
            str(key),
            "-out",
            str(tmp_path / "bad.bin"),
            str(tmp_path / "other.tbs"),
        ],
        check=True,
    )
    bad_out = tmp_path / "bad.sig"
    step2b = run_cli(
        *common,
        "--public-key",
        str(tmp_path / "pub.pem"),
        "--signature",
        str(tmp_path / "bad.bin"),
        "--sigfile",
        str(bad_out),
    )
    assert step2b.returncode == 1
    assert b"the signature does not match the data to sign" in step2b.stderr
    assert not bad_out.exists()
