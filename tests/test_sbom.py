"""The enclave's SBOM: SPDX 2.3 that the SPDX project's validator accepts, listing every trusted
file with the manifest's digest, shipped in the image as a trusted file itself, deterministic."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

from enclave_build.builder.rootfs import RootFS
from enclave_build.builder.sbom.inventory import deb_owners, python_owners
from enclave_build.contract.sbom import SBOM_FILE, SBOM_PATH, Sbom

from .conftest import image_rootfs, run_cli, tflite_bytes, write_spec

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = {encrypt}

{secrets}
[build]
reproducible = {reproducible}

[signing]
key = "key.pem"
"""


def _project(directory: Path, signing_key: Path, encrypt: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 10))
    shutil.copy(signing_key, directory / "key.pem")
    secrets = ""
    if encrypt:
        (directory / "ca.pem").write_text(
            "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
        )
        secrets = '[secrets]\nserver = "localhost:4433"\nca = "ca.pem"\nkeys_dir = "../keys"\n'
    return write_spec(
        directory,
        SPEC.format(
            encrypt=str(encrypt).lower(), secrets=secrets, reproducible=str(encrypt).lower()
        ),
    )


def _build(directory: Path, standin_root: Path) -> Path:
    proc = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=directory
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return directory / "out"


def _manifest(out: Path) -> dict:
    root = image_rootfs(out)
    return tomllib.loads((root / "enclave" / "face.manifest.sgx").read_text())


def test_sbom_validates_lists_every_trusted_file_and_is_trusted_itself(
    tmp_path, standin_root, signing_key
):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    _project(tmp_path, signing_key)
    out = _build(tmp_path, standin_root)
    path = out / SBOM_FILE
    document = parse_file(str(path))
    assert validate_full_spdx_document(document) == []
    assert document.creation_info.spdx_version == "SPDX-2.3"

    manifest = _manifest(out)
    trusted = {t["uri"][len("file:") :]: t["sha256"] for t in manifest["sgx"]["trusted_files"]}
    # Its own hash is in the manifest, and the image holds the same bytes as the output.
    own = hashlib.sha256(path.read_bytes()).hexdigest()
    assert trusted.pop(SBOM_PATH) == own
    assert (image_rootfs(out) / SBOM_PATH.lstrip("/")).read_bytes() == path.read_bytes()

    sbom = Sbom.load(path)
    listed = sbom.by_image_path()
    assert set(listed) == set(trusted)
    for image_path, digest in trusted.items():
        assert listed[image_path].sha256 == digest, image_path
        content = (image_rootfs(out) / image_path.lstrip("/")).read_bytes()
        assert listed[image_path].sha1 == hashlib.sha1(content).hexdigest()
    # Paths are as the enclave sees them: Gramine's glibc is mounted at /lib.
    libc = next(f for f in sbom.files if f.image_path.endswith("/runtime/glibc/libc.so.6"))
    assert libc.path == "/lib/libc.so.6"

    kinds = {p.kind for p in sbom.packages}
    assert {"python", "enclave-build", "libos", "model"} <= kinds
    numpy = next(p for p in sbom.packages if p.kind == "python" and p.name == "numpy")
    assert numpy.version
    assert any(f.package == numpy for f in sbom.files)
    assert sbom.libos is not None and sbom.libos.name == "gramine"
    assert sbom.libos.version == "1.9"
    libpal = standin_root / "usr/lib/x86_64-linux-gnu/gramine/sgx/libpal.so"
    assert sbom.libos.libpal_sha256 == hashlib.sha256(libpal.read_bytes()).hexdigest()
    (model,) = sbom.models
    assert (model.name, model.version) == ("face", "1")
    assert (
        model.files[0].sha256
        == hashlib.sha256((tmp_path / "model.tflite").read_bytes()).hexdigest()
    )
    assert not model.files[0].encrypted


def test_sbom_is_deterministic_and_follows_the_files(tmp_path, standin_root, signing_key):
    first = _build(_project(tmp_path / "a", signing_key).parent, standin_root)
    second = _build(_project(tmp_path / "b", signing_key).parent, standin_root)
    assert (first / SBOM_FILE).read_bytes() == (second / SBOM_FILE).read_bytes()
    # A changed model changes the SBOM, hence the manifest and MRENCLAVE.
    (tmp_path / "b" / "model.tflite").write_bytes(tflite_bytes(b"other" * 100))
    third = _build(tmp_path / "b", standin_root)
    assert (first / SBOM_FILE).read_bytes() != (third / SBOM_FILE).read_bytes()
    mr = [json.loads((o / "measurements.json").read_text())["mr_enclave"] for o in (first, third)]
    assert mr[0] != mr[1]


def test_encrypted_model_lists_plaintext_and_ciphertext_in_reproducible_builds(
    tmp_path, standin_root, signing_key
):
    out = _build(_project(tmp_path / "p", signing_key, encrypt=True).parent, standin_root)
    (model,) = Sbom.load(out / SBOM_FILE).models
    (entry,) = model.files
    assert entry.encrypted
    assert (
        entry.sha256 == hashlib.sha256((tmp_path / "p" / "model.tflite").read_bytes()).hexdigest()
    )
    shipped = (image_rootfs(out) / entry.path.lstrip("/")).read_bytes()
    assert entry.encrypted_sha256 == hashlib.sha256(shipped).hexdigest()
    assert entry.encrypted_sha256 != entry.sha256


def test_debian_and_python_owners_come_from_the_base(tmp_path):
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n"
        "Description: GNU C Library\n continued line\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n"
    )
    (root / "var/lib/dpkg/info/libc6:amd64.list").write_text(
        "/.\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libc.so.6\n"
    )
    (root / "var/lib/dpkg/info/gone.list").write_text("/usr/bin/gone\n")
    site = root / "usr/lib/python3/dist-packages"
    (site / "demo-1.2.dist-info").mkdir(parents=True)
    (site / "demo-1.2.dist-info/METADATA").write_text(
        "Metadata-Version: 2.4\nName: demo\nVersion: 1.2\nLicense-Expression: MIT\n"
    )
    (site / "demo-1.2.dist-info/RECORD").write_text("demo/__init__.py,sha256=x,1\n")
    rootfs = RootFS(root)
    paths = [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",  # merged /usr: dpkg lists /lib/...
        "/usr/bin/gone",
        "/usr/lib/python3/dist-packages/demo/__init__.py",
    ]
    debs = deb_owners(rootfs, paths)
    assert set(debs) == {"/usr/lib/x86_64-linux-gnu/libc.so.6"}
    assert (debs[paths[0]].name, debs[paths[0]].version) == ("libc6", "2.36-9")
    owners = python_owners(rootfs, paths)
    assert owners[paths[2]].name == "demo" and owners[paths[2]].license == "MIT"
    # A base without a dpkg database (a stand-in) owns nothing and is no error.
    (root / "var/lib/dpkg/status").unlink()
    assert deb_owners(rootfs, paths) == {}
