"""`inspect --extract DIR` (the auditor's files) and the one output style of `inspect`,
`gramine sigstruct` and the other commands that print structured data (--json everywhere)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from enclave_build.builder.errors import UsageError
from enclave_build.builder.gramine.sigstruct import ARCH_LAYOUT
from enclave_build.builder.image.inspect import extract_image

from .conftest import image_rootfs, run_cli, tflite_bytes, write_spec

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[enclave]
isv_prod_id = 4
isv_svn = 9

[signing]
key = "key.pem"
"""

_REPR = re.compile(r"\b(True|False|None)\b")


@pytest.fixture(scope="module")
def built(tmp_path_factory, standin_root, signing_key) -> Path:
    """A stand-in build output (DIR/oci + measurements.json)."""
    directory = tmp_path_factory.mktemp("build")
    (directory / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 10))
    shutil.copy(signing_key, directory / "key.pem")  # copy2 keeps mode 0600
    write_spec(directory, SPEC)
    proc = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        "--quiet",
        cwd=directory,
        env={"XDG_CACHE_HOME": str(directory / "cache")},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return directory / "out"


def test_extract_from_a_build_dir(built, tmp_path):
    proc = run_cli("inspect", str(built), "--extract", str(tmp_path / "audit"))
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    audit = tmp_path / "audit"
    for name in ("face.manifest.sgx", "face.sig", "measurements.json"):
        assert f"wrote            {audit / name}" in out
    files = image_rootfs(built)
    assert (audit / "face.sig").read_bytes() == (files / "enclave/face.sig").read_bytes()
    assert (audit / "face.manifest.sgx").read_bytes() == (
        files / "enclave/face.manifest.sgx"
    ).read_bytes()
    assert (audit / "measurements.json").read_bytes() == (built / "measurements.json").read_bytes()
    assert sorted(p.name for p in audit.iterdir()) == [
        "face.manifest.sgx",
        "face.sig",
        "measurements.json",
    ]


def test_extract_from_an_image_writes_its_labels(built, tmp_path):
    result = extract_image(f"oci:{built / 'oci'}", tmp_path / "audit")
    assert result.inspection.agrees, result.inspection.problems
    assert sorted(p.name for p in result.written) == [
        "face.manifest.sgx",
        "face.sig",
        "labels.json",
    ]
    labels = json.loads((tmp_path / "audit/labels.json").read_text())
    measurements = json.loads((built / "measurements.json").read_text())
    assert labels["labels"]["org.enclave-build.mr_enclave"] == measurements["mr_enclave"]
    assert labels["digest"] == result.inspection.digest


def test_extract_never_overwrites(built, tmp_path):
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "face.sig").write_bytes(b"mine")
    with pytest.raises(UsageError) as refused:
        extract_image(str(built), audit)
    assert str(audit / "face.sig") in str(refused.value)
    assert sorted(p.name for p in audit.iterdir()) == ["face.sig"]  # nothing else written
    assert (audit / "face.sig").read_bytes() == b"mine"
    proc = run_cli("inspect", str(built), "--extract", str(audit))
    assert proc.returncode == 2 and "not overwriting" in proc.stderr.decode()


def test_a_mistyped_build_dir_is_named_when_the_registry_fails(built, monkeypatch):
    """`inspect my-model/ot` (for my-model/out) reads as the Docker Hub image my-model/ot; when
    that fails the error also says which build directory was probably meant."""
    from enclave_build.builder.image import inspect as inspect_module
    from enclave_build.builder.image.inspect import inspect_image
    from enclave_build.builder.image.registry import RegistryClient, RegistryError

    def unreachable(self, *args, **kwargs):
        raise RegistryError("cannot reach registry registry-1.docker.io: no network")

    monkeypatch.setattr(RegistryClient, "pull", unreachable)
    project = built.parent
    monkeypatch.chdir(project.parent)
    with pytest.raises(inspect_module.ImageError) as mistyped:
        inspect_image(f"{project.name}/ot")
    assert str(mistyped.value) == (
        "cannot reach registry registry-1.docker.io: no network; as a build directory, "
        f"{project.name}/ot does not exist: did you mean {project.name}/out?"
    )
    monkeypatch.chdir(project)
    with pytest.raises(inspect_module.ImageError) as bare:
        inspect_image("ot")
    assert str(bare.value).endswith("did you mean out?")
    with pytest.raises(inspect_module.ImageError) as unrelated:  # nothing near: as it was
        inspect_image("library-image")
    assert str(unrelated.value) == "cannot reach registry registry-1.docker.io: no network"


def test_one_output_style_for_sigstruct_and_inspect(built, tmp_path):
    run_cli("inspect", str(built), "--extract", str(tmp_path / "audit"))
    sig = tmp_path / "audit/face.sig"
    good = run_cli("gramine", "sigstruct", str(sig))
    assert good.returncode == 0
    text = good.stdout.decode()
    assert not _REPR.search(text), text
    assert re.search(r"^debug\s+false$", text, re.M)
    assert re.search(r"^signature\s+valid$", text, re.M)
    assert "mode64bit=true" in text

    as_json = json.loads(run_cli("gramine", "sigstruct", str(sig), "--json").stdout)
    assert set(as_json) == {
        "mr_enclave",
        "mr_signer",
        "isv_prod_id",
        "isv_svn",
        "date",
        "debug",
        "attributes",
        "signature_valid",
        "signature_problem",
    }
    assert as_json["signature_valid"] is True and as_json["signature_problem"] is None
    inspected = json.loads(run_cli("inspect", str(built), "--json").stdout)
    assert inspected["sigstruct"] == as_json
    assert set(inspected) == {
        "image",
        "digest",
        "labels",
        "sigstruct",
        "rederived",
        "agrees",
        "problems",
    }
    assert inspected["rederived"]["mr_enclave"] == as_json["mr_enclave"]
    inspect_text = run_cli("inspect", str(built)).stdout.decode()
    assert not _REPR.search(inspect_text)
    assert re.search(r"^signature\s+valid, date 0000-00-00$", inspect_text, re.M)

    tampered = bytearray(sig.read_bytes())
    tampered[ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_ISV_SVN] ^= 1
    (tmp_path / "bad.sig").write_bytes(bytes(tampered))
    bad = run_cli("gramine", "sigstruct", str(tmp_path / "bad.sig"))
    assert bad.returncode == 1
    assert re.search(
        r"^signature\s+INVALID: the RSA signature does not verify", bad.stdout.decode(), re.M
    )
    assert b"signature does not verify" in bad.stderr
    bad_json = json.loads(
        run_cli("gramine", "sigstruct", str(tmp_path / "bad.sig"), "--json").stdout
    )
    assert (
        bad_json["signature_valid"] is False and "does not verify" in bad_json["signature_problem"]
    )


def test_json_on_commands_that_print_structured_data(tmp_path):
    from enclave_build.base_images import BASES

    listing = json.loads(run_cli("base", "list", "--json").stdout)
    assert [(b["name"], b["tag"]) for b in listing] == [(r.name, r.tag) for r in BASES.values()]
    assert all(set(b) == {"name", "tag", "description"} for b in listing)

    plugins = json.loads(run_cli("plugins", "--json").stdout)
    assert {"tflite", "tfserving", "openvino"} <= {f for p in plugins for f in p["frameworks"]}

    tls = run_cli("secrets", "tls", str(tmp_path / "tls"), "--host", "10.0.0.5", "--json")
    assert tls.returncode == 0, tls.stderr.decode()
    info = json.loads(tls.stdout)
    assert set(info) == {"ca", "cert", "key", "hosts", "days", "server", "issuer_ca", "issuer_key"}
    assert info["server"] == "10.0.0.5:4433" and Path(info["key"]).is_file()

    pki = run_cli("secrets", "simulate-pki", str(tmp_path / "pki"), "--json")
    assert pki.returncode == 0, pki.stderr.decode()
    info = json.loads(pki.stdout)
    assert set(info) == {"written", "root_ca", "collateral", "synthetic"}
    assert info["synthetic"] is True and Path(info["root_ca"]).is_file()
    assert b"SYNTHETIC TEST root" in pki.stderr  # the warning stays, on stderr
