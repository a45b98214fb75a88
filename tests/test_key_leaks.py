"""Key material never reaches an image in clear: model paths that take keys along are refused
(naming models[N].path and the key), everything the build adds in clear is scanned for private
keys and this build's wrap keys, and a build that fails leaves no new wrap key behind."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_build.builder.hashing import HashCache
from enclave_build.builder.key_scan import KeyScanner
from enclave_build.builder.leak_guard import KeyMaterialError, scan_artifacts, scan_plan
from enclave_build.builder.plan import FileKind, PlanFile
from enclave_build.plugin import ArtifactFile

from .conftest import onnx_bytes, run_cli, write_spec

PROJECT_SPEC = """[service]
name = "ov"
framework = "openvino"

[[models]]
name = "face"
path = "."
encrypt = false

[[models]]
name = "owner"
path = "private/other.onnx"
key = "owner-key"

[secrets]
server = "localhost:4433"
ca = "tls/ca.pem"
keys_dir = "keys"

[signing]
key = "key.pem"
"""


def _pem_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _project(root: Path, signing_key: Path, spec: str = PROJECT_SPEC) -> Path:
    """The issue's project: the model directory is the project directory, which holds the
    keys_dir, the signing key, the secret server's TLS material and a synthetic PKI."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "face.onnx").write_bytes(onnx_bytes(bytes(300)))
    (root / "private").mkdir()
    (root / "private" / "other.onnx").write_bytes(onnx_bytes(b"owner" * 100))
    (root / "tls").mkdir()
    (root / "tls" / "ca.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    )
    (root / "tls" / "server.key").write_bytes(_pem_key())
    (root / "pki").mkdir()
    (root / "pki" / "root-ca.key").write_bytes(_pem_key())
    shutil.copy(signing_key, root / "key.pem")
    return write_spec(root, spec)


def _build(directory: Path, standin_root: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "../out",  # beside the project: an output inside a model directory is refused first
        *extra,
        cwd=directory,
    )


def _layers(out: Path) -> bytes:
    blobs = out / "oci" / "blobs" / "sha256"
    return b"".join(
        gzip.decompress(p.read_bytes())
        for p in blobs.iterdir()
        if p.read_bytes()[:2] == b"\x1f\x8b"
    )


def test_the_project_directory_as_model_is_refused_before_anything_is_written(
    tmp_path, standin_root, signing_key
):
    """Was: the build shipped keys/owner-key.key (made by this very build), key.pem,
    tls/server.key and pki/root-ca.key in clear in a layer."""
    project = tmp_path / "project"
    _project(project, signing_key)
    proc = _build(project, standin_root)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert f"spec.toml:7: models[0].path: {project.resolve()} contains" in err
    assert (
        f"contains the wrap keys' directory (secrets.keys_dir: {project.resolve() / 'keys'}, "
        "holding this build's owner-key.key)" in err
    )
    assert not (project.parent / "out").exists()
    assert not (project / "keys").exists()  # the wrap key was never written


def test_a_model_file_beside_the_keys_builds_and_ships_no_key(tmp_path, standin_root, signing_key):
    """The same project with the model moved out of the way builds, and its image holds no
    key: the refusal above is what stood between the keys and the layer."""
    project = tmp_path / "project"
    _project(project, signing_key, PROJECT_SPEC.replace('path = "."', 'path = "face.onnx"'))
    proc = _build(project, standin_root)
    assert proc.returncode == 0, proc.stderr.decode()
    layers = _layers(project.parent / "out")
    assert b"face.onnx" in layers
    for secret in [
        (project / "keys" / "owner-key.key").read_bytes(),
        (project / "key.pem").read_bytes()[40:80],
        (project / "tls" / "server.key").read_bytes()[40:80],
    ]:
        assert secret not in layers


@pytest.mark.parametrize(
    "spec_change,message",
    [
        # a model directory that holds the signing key (keys_dir elsewhere)
        (
            ('keys_dir = "keys"', 'keys_dir = "../keys"'),
            "contains the enclave signing key (signing.key: ",
        ),
        # a model inside keys_dir
        (
            ('path = "."', 'path = "keys/face.onnx"'),
            "is inside the wrap keys' directory (secrets.keys_dir: ",
        ),
    ],
)
def test_model_paths_that_hold_or_sit_in_secret_places(
    tmp_path, standin_root, signing_key, spec_change, message
):
    project = tmp_path / "project"
    _project(project, signing_key, PROJECT_SPEC.replace(*spec_change))
    (project / "keys").mkdir(exist_ok=True)
    (project / "keys" / "face.onnx").write_bytes(onnx_bytes())
    proc = _build(project, standin_root)
    assert proc.returncode == 2, proc.stderr.decode()
    assert "models[0].path" in proc.stderr.decode() and message in proc.stderr.decode()
    assert not (project.parent / "out").exists()


def test_model_directory_holding_the_tls_material_is_refused(tmp_path, standin_root, signing_key):
    project = tmp_path / "project"
    spec = (
        PROJECT_SPEC.replace('keys_dir = "keys"', 'keys_dir = "../keys"').replace(
            'key = "key.pem"', 'key = "../key.pem"'
        )
        + '\n[tls]\ncert = "tls/ca.pem"\nkey = "tls/server.key"\n'
    )
    _project(project, signing_key, spec.replace('path = "."', 'path = "tls"'))
    shutil.copy(signing_key, tmp_path / "key.pem")
    (project / "tls" / "m.onnx").write_bytes(onnx_bytes())
    proc = _build(project, standin_root)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert (
        f"models[0].path: {project.resolve() / 'tls'} is the directory of the [tls] key "
        "(tls.key: " in err
    )


def _clean_project(tmp_path: Path, signing_key: Path) -> Path:
    """A project whose model directory holds only the model (keys elsewhere)."""
    project = tmp_path / "project"
    spec = PROJECT_SPEC.replace('path = "."', 'path = "model"').replace(
        'keys_dir = "keys"', 'keys_dir = "../keys"'
    )
    _project(project, signing_key, spec)
    (project / "model").mkdir()
    (project / "model" / "face.onnx").write_bytes(onnx_bytes(bytes(300)))
    return project


def test_a_private_key_file_in_a_model_directory_is_refused(tmp_path, standin_root, signing_key):
    project = _clean_project(tmp_path, signing_key)
    shutil.copy(project / "tls" / "server.key", project / "model" / "notes.txt")
    proc = _build(project, standin_root)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "models[0].path: " in err
    assert (
        f"{project.resolve() / 'model' / 'notes.txt'}: a PEM private key (PRIVATE KEY) at "
        "byte 0" in err
    )


def test_der_key_deep_in_a_large_clear_model_is_refused(tmp_path, standin_root, signing_key):
    """Past the small-file check: the streaming scan of what ships in clear finds it."""
    project = _clean_project(tmp_path, signing_key)
    der = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    weights = bytearray(os.urandom(6 << 20))
    weights[5_000_000 : 5_000_000 + len(der)] = der
    (project / "model" / "weights.bin").write_bytes(bytes(weights))
    proc = _build(project, standin_root)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "weights.bin: a SEC1 EC private key (DER) at byte 5000000" in err


def test_a_wrap_key_of_this_build_inside_a_clear_model_is_refused(
    tmp_path, standin_root, signing_key
):
    project = _clean_project(tmp_path, signing_key)
    assert _build(project, standin_root).returncode == 0  # makes ../keys/owner-key.key
    key = (tmp_path / "keys" / "owner-key.key").read_bytes()
    (project / "model" / "weights.bin").write_bytes(os.urandom(3 << 20) + key + bytes(5))
    proc = _build(project, standin_root)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert (
        f"weights.bin: wrap key 'owner-key' of this build (its 16 raw bytes) at byte "
        f"{3 << 20}" in err
    )
    assert key.hex() not in err


def test_an_occlum_spec_is_checked_before_its_container_runs(tmp_path, signing_key):
    """Same refusal on the Occlum path, before any Docker engine is asked for."""
    project = tmp_path / "project"
    spec = (
        PROJECT_SPEC.replace('framework = "openvino"', 'framework = "openvino"\nlibos = "occlum"')
        + '\n[occlum]\nserver_measurements = ["sm.json"]\n'
    )
    _project(project, signing_key, spec)
    (project / "sm.json").write_text(
        '{"service": "s", "framework": "secret-server", "libos": "gramine", "mr_enclave": "'
        + "5e" * 32
        + '", "mr_signer": "'
        + "a1" * 32
        + '", "isv_prod_id": 1, "isv_svn": 1, '
        '"debug": false, "image": {"ref": null, "digest": null}}'
    )
    proc = run_cli(
        "build",
        "spec.toml",
        "--base",
        "dir:/nonexistent",
        "--output",
        "../out",
        cwd=project,
        env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "models[0].path" in err and "secrets.keys_dir" in err


# ------------------------------------------------------------------ wrap keys: made on success


ENCRYPTED_SPEC = PROJECT_SPEC.replace('path = "."', 'path = "model"').replace(
    'keys_dir = "keys"', 'keys_dir = "../keys"'
)


def test_a_failed_build_leaves_no_wrap_key_and_the_next_one_says_it_made_it(
    tmp_path, standin_root, signing_key
):
    """Was: the key was written when the build started, so a build that failed left it, and
    the next (successful) one never printed that it must be kept."""
    project = _clean_project(tmp_path, signing_key)
    failed = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{tmp_path / 'no-such-base'}",
        "--output",
        "out",
        cwd=project,
    )
    assert failed.returncode != 0
    assert not (tmp_path / "keys").exists()
    ok = _build(project, standin_root)
    assert ok.returncode == 0, ok.stderr.decode()
    key_file = tmp_path / "keys" / "owner-key.key"
    assert f"generated wrap key {key_file} (mode 0600): keep it".encode() in ok.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["owner-key.key"]  # no temp


def test_persist_refuses_a_key_made_meanwhile(tmp_path):
    from enclave_build.builder.build import WrapKeys
    from enclave_build.builder.errors import EnclaveBuildError

    path = tmp_path / "keys" / "k.key"
    keys = WrapKeys({"k": b"a" * 16}, {"k": path}, {"k": b"a" * 16})
    path.parent.mkdir()
    path.write_bytes(b"b" * 16)  # another build won the race
    with pytest.raises(EnclaveBuildError, match="another build created this wrap key"):
        keys.persist()
    assert path.read_bytes() == b"b" * 16
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.key"]


# ------------------------------------------------------------------ plan and artifact scans


def test_scan_plan_names_the_image_path_of_a_plugin_file(tmp_path, signing_key):
    from enclave_build.builder.build import load, make_plan

    project = _clean_project(tmp_path, signing_key)  # key.pem: checked at load, never signs
    spec, registry = load(project / "spec.toml")
    plan = make_plan(spec, registry)
    plan.files.append(PlanFile(None, "/etc/extra.pem", FileKind.TRUSTED, data=_pem_key()))
    with pytest.raises(KeyMaterialError) as info:
        scan_plan(spec, plan, KeyScanner())
    assert "/etc/extra.pem: a PEM private key (PRIVATE KEY) at byte 0" in str(info.value)
    assert info.value.exit_code == 2
    plan.files[-1] = PlanFile(
        None, "/enclave/secrets/extra.pem", FileKind.ENCRYPTED, key_name="k", data=_pem_key()
    )
    scan_plan(spec, plan, KeyScanner())  # encrypted: ships as ciphertext


def test_scan_artifacts_skips_ciphertext_and_what_the_plan_scan_saw(tmp_path):
    key = os.urandom(16)
    leaking = tmp_path / "instance.bin"
    leaking.write_bytes(b"x" * 100 + key)
    scanner = KeyScanner({"svc-key": key})
    with pytest.raises(KeyMaterialError, match=r"instance.bin: wrap key 'svc-key'"):
        scan_artifacts([ArtifactFile("/enclave/image/0", source=leaking)], scanner)
    scan_artifacts([ArtifactFile("/models/m", source=leaking, ciphertext=True)], scanner)
    scan_artifacts(
        [ArtifactFile("/enclave/image/0", source=leaking)], scanner, seen={leaking.resolve()}
    )


def test_clean_verdicts_are_cached_per_fingerprint(tmp_path):
    cache = HashCache(tmp_path / "h.sqlite")
    model = tmp_path / "weights.bin"
    key = os.urandom(16)
    model.write_bytes(os.urandom(1000) + key)
    plan_item = [ArtifactFile("/m", source=model)]
    scan_artifacts(plan_item, KeyScanner({"a": os.urandom(16)}), cache)  # clean: remembered
    assert (
        cache.clean_files(
            [(str(model.resolve()), model.stat())], KeyScanner({"a": os.urandom(16)}).fingerprint()
        )
        == set()
    )
    with pytest.raises(KeyMaterialError):  # another key: scanned again, and found
        scan_artifacts(plan_item, KeyScanner({"b": key}), cache)
    cache.close()


def test_non_utf8_file_name_in_a_model_directory_is_a_spec_error(
    tmp_path, standin_root, signing_key
):
    """Was: a UnicodeEncodeError traceback from the hash cache."""
    project = _clean_project(tmp_path, signing_key)
    (project / "model" / os.fsdecode(b"vocab-\xff.txt")).write_bytes(b"words")
    proc = _build(project, standin_root)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert "models[0].path: " in err and "vocab-\\udcff.txt" in err
    assert "the file name is not UTF-8" in err


def test_hash_cache_stores_non_utf8_paths(tmp_path):
    from enclave_build.builder.hashing import hash_files

    path = tmp_path / os.fsdecode(b"w-\xfe.bin")
    path.write_bytes(b"data")
    cache = HashCache(tmp_path / "h.sqlite")
    first = hash_files([path], cache=cache)
    assert hash_files([path], cache=cache) == first
    cache.close()


def test_non_utf8_name_in_the_base_is_named_not_a_traceback(tmp_path, standin_root, signing_key):
    """A trusted directory of the base holding a file whose name is not UTF-8."""
    from enclave_build.builder.build import build
    from enclave_build.builder.errors import EnclaveBuildError

    root = tmp_path / "rootfs"
    shutil.copytree(standin_root, root, symlinks=True)
    runtime = next((root / "usr/lib/x86_64-linux-gnu/gramine").glob("runtime/glibc"))
    (runtime / os.fsdecode(b"lib-\xff.so")).write_bytes(b"\x7fELF")
    project = _clean_project(tmp_path, signing_key)
    project.joinpath("spec.toml").write_text(
        (project / "spec.toml")
        .read_text()
        .replace('key = "owner-key"\n', "")
        .replace('path = "private/other.onnx"', 'path = "private/other.onnx"\nencrypt = false')
    )
    with pytest.raises(
        EnclaveBuildError,
        match=r"lib-\\udcff.so'?: a trusted file whose name "
        "is not UTF-8",
    ):
        build(project / "spec.toml", base=f"dir:{root}")


def test_a_build_failing_after_writing_its_key_says_so(tmp_path, standin_root, signing_key):
    """--load fails (no Docker engine) after the image was assembled and its new key written:
    the key stays (what was made may need it) and the build names it."""
    project = _clean_project(tmp_path, signing_key)
    proc = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        "--load",
        cwd=project,
        env={"DOCKER_HOST": "unix:///nonexistent.sock"},
    )
    assert proc.returncode != 0
    key_file = tmp_path / "keys" / "owner-key.key"
    assert key_file.exists()
    assert (
        f"warning: generated wrap key {key_file} (mode 0600) before the build failed: keep "
        "it".encode()
        in proc.stderr
    )
    assert not (project.parent / "out").exists()


IR_SPEC = """[service]
name = "ir"
framework = "openvino"

[[models]]
name = "fd"
path = "m/face.xml"
encrypt = {encrypt}

[secrets]
server = "localhost:4433"
ca = "ca.pem"
keys_dir = "../keys"

[signing]
key = "key.pem"
"""


def _ir_project(tmp_path: Path, signing_key: Path, encrypt: bool) -> Path:
    project = tmp_path / "project"
    (project / "m").mkdir(parents=True)
    (project / "m" / "face.xml").write_text("<net/>")
    (project / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    shutil.copy(signing_key, project / "key.pem")
    write_spec(project, IR_SPEC.format(encrypt=str(encrypt).lower()))
    return project


@pytest.mark.parametrize("encrypt", [True, False])
def test_ir_weights_that_are_a_symbolic_link_are_refused(
    tmp_path, standin_root, signing_key, encrypt
):
    """X.xml brings X.bin along; a link there used to ship its target (the signing key inside
    the encrypted model, readable by whoever holds the model's key; /etc/passwd in clear)."""
    project = _ir_project(tmp_path, signing_key, encrypt)
    os.symlink("../key.pem" if encrypt else "/etc/passwd", project / "m" / "face.bin")
    proc = _build(project, standin_root)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "spec.toml:7: models[0].path: " in err
    assert "the weights face.bin of the IR graph face.xml are a symbolic link" in err
    assert not (project.parent / "out").exists()


def test_a_key_as_the_weights_of_an_encrypted_model_is_refused(tmp_path, standin_root, signing_key):
    """Encrypted models are scanned too (before encryption): whoever holds the model's key
    could read a private key that shipped inside it."""
    project = _ir_project(tmp_path, signing_key, True)
    (project / "m" / "face.bin").write_bytes(os.urandom(2 << 20) + _pem_key())
    proc = _build(project, standin_root)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "models[0].path: " in err and "face.bin: a PEM private key" in err
    assert not (project.parent / "out").exists()


def test_scan_plan_covers_labels_environment_and_command_line(tmp_path):
    """Image labels reach the image's configuration blob in clear (no manifest holds them)."""
    from enclave_build.builder.plan import EnclaveResources, ServicePlan

    for where in ("label", "env", "argv"):
        plan = ServicePlan(
            service="s",
            framework="f",
            libos="gramine",
            base_image="b",
            image_tag="s:latest",
            entrypoint="/bin/x",
            argv=["/bin/x"],
            enclave=EnclaveResources(size=1 << 30, max_threads=8),
        )
        key = _pem_key().decode()
        if where == "label":
            plan.labels["org.example.key"] = key
        elif where == "env":
            plan.env["TOKEN"] = key
        else:
            plan.argv.append(key)
        with pytest.raises(KeyMaterialError, match="PEM private key"):
            scan_plan(SimpleNamespace(models=()), plan, KeyScanner({}))
