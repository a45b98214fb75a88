"""Manifest rendering: golden manifests for the builtin frameworks, and the Gramine 1.9 schema."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w

from enclave_build.builder.gramine.manifest_schema import (
    REMOVED,
    ManifestSchemaError,
    check_manifest,
)
from enclave_build.contract.sbom import SBOM_PATH
from enclave_build.plugin import SERVER_PYTHONPATH

from .conftest import tflite_bytes, write_spec

GOLDEN = Path(__file__).parent / "golden"

SPECS = {
    "tfserving": """[service]
name = "tfs"
framework = "tfserving"

[[models]]
name = "half_plus_two"
path = "saved_model"
encrypt = false

[enclave]
size = "8G"
max_threads = 64

[signing]
key = "key.pem"
""",
    "tflite": """[service]
name = "lite"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[signing]
key = "key.pem"
""",
    "openvino": """[service]
name = "ov"
framework = "openvino"

[[models]]
name = "face"
path = "ir"
encrypt = false

[enclave]
isv_prod_id = 3
isv_svn = 2

[signing]
key = "key.pem"
""",
    "ovms": """[service]
name = "ov"
framework = "openvino"

[[models]]
name = "face"
path = "ir"
encrypt = false

[enclave]
isv_prod_id = 3
isv_svn = 2

[signing]
key = "key.pem"

[openvino]
mode = "ovms"
""",
}


def _model_files(directory: Path) -> None:
    (directory / "saved_model" / "variables").mkdir(parents=True)
    (directory / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01" + bytes(100))
    (directory / "saved_model" / "variables" / "variables.index").write_bytes(b"idx")
    (directory / "model.tflite").write_bytes(tflite_bytes(bytes(200)))
    (directory / "ir").mkdir()
    (directory / "ir" / "model.xml").write_text("<net name='face'/>\n")
    (directory / "ir" / "model.bin").write_bytes(bytes(range(256)))


def build_manifest(framework: str, tmp_path: Path, standin_root: Path, signing_key: Path) -> bytes:
    from enclave_build.builder.build import build

    _model_files(tmp_path)
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    spec = write_spec(tmp_path, SPECS[framework])
    result = build(spec, base=f"dir:{standin_root}")
    return result.artifacts.manifest


def golden_view(manifest: bytes) -> bytes:
    """The manifest without the entries of our own server code, whose bytes change with every
    edit of model_server/ (those are checked against the installed files instead), and of the
    SBOM, which lists them (tests/test_sbom.py checks it against the manifest)."""
    data = tomllib.loads(manifest.decode())
    data["sgx"]["trusted_files"] = [
        tf
        for tf in data["sgx"]["trusted_files"]
        if not tf["uri"].startswith(f"file:{SERVER_PYTHONPATH}/")
        and tf["uri"] != f"file:{SBOM_PATH}"
    ]
    return tomli_w.dumps(data).encode()


def check_golden(name: str, content: bytes) -> None:
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_bytes(content)
    assert content.decode() == golden.read_text()


@pytest.mark.parametrize("framework", sorted(SPECS))
def test_golden_manifest(framework, tmp_path, standin_root, signing_key):
    manifest = build_manifest(framework, tmp_path, standin_root, signing_key)
    check_golden(f"{framework}.manifest.sgx", golden_view(manifest))
    data = tomllib.loads(manifest.decode())
    check_manifest(data)
    assert all("sha256" in tf for tf in data["sgx"]["trusted_files"])
    assert isinstance(data["loader"]["entrypoint"], dict)


def _minimal() -> dict:
    return {
        "libos": {"entrypoint": "/app"},
        "loader": {"entrypoint": {"uri": "file:/libsysdb.so", "sha256": "0" * 64}},
        "fs": {"mounts": []},
        "sgx": {"enclave_size": "1G"},
    }


def test_minimal_manifest_passes():
    check_manifest(_minimal())


@pytest.mark.parametrize("key", sorted(REMOVED))
def test_every_removed_key_is_rejected(key):
    manifest = _minimal()
    table = manifest
    *parents, last = key.split(".")
    for part in parents:
        table = table.setdefault(part, {})
    table[last] = 1
    with pytest.raises(ManifestSchemaError, match=f"{key}: removed in Gramine 1.9: "):
        check_manifest(manifest)


def test_string_loader_entrypoint_and_bool_attestation_rejected():
    manifest = _minimal()
    manifest["loader"]["entrypoint"] = "file:/libsysdb.so"
    manifest["sgx"]["remote_attestation"] = True
    with pytest.raises(ManifestSchemaError) as info:
        check_manifest(manifest)
    text = str(info.value)
    assert "loader.entrypoint: a string is no longer accepted (Gramine 1.9)" in text
    assert 'sgx.remote_attestation: booleans were removed: use "none" or "dcap"' in text


def test_unknown_keys_and_bad_values_rejected():
    manifest = _minimal()
    manifest["sgx"]["thread_count"] = 4
    manifest["sgx"]["remote_attestation"] = "epid"
    manifest["fs"]["mounts"] = [{"path": "/m", "uri": "file:/m", "type": "overlay"}]
    manifest["sgx"]["edmm_enable"] = True
    manifest["sgx"]["preheat_enclave"] = True
    with pytest.raises(ManifestSchemaError) as info:
        check_manifest(manifest)
    text = str(info.value)
    assert "sgx.thread_count: unknown key (Gramine 1.9 rejects unknown keys)" in text
    assert "sgx.remote_attestation: 'epid' is not allowed; allowed: none, dcap" in text
    assert "fs.mounts[0].type: 'overlay' is not allowed" in text
    assert "sgx.preheat_enclave: conflicts with sgx.edmm_enable" in text


def test_manifest_values_come_from_the_spec(tmp_path, standin_root, signing_key):
    data = tomllib.loads(build_manifest("ovms", tmp_path, standin_root, signing_key).decode())
    assert data["sgx"]["isvprodid"] == 3 and data["sgx"]["isvsvn"] == 2
    assert data["sgx"]["enclave_size"] == "8G"  # framework default
    assert data["sgx"]["max_threads"] == 128  # framework default
    assert data["sgx"]["debug"] is False
    uris = [tf["uri"] for tf in data["sgx"]["trusted_files"]]
    assert "file:/models/face/1/model.xml" in uris and "file:/models/face/1/model.bin" in uris
    assert "file:/ovms/bin/ovms" in uris


def test_model_arguments_reach_argv(tmp_path, standin_root, signing_key):
    data = tomllib.loads(build_manifest("ovms", tmp_path, standin_root, signing_key).decode())
    argv = data["loader"]["argv"]
    assert argv[argv.index("--model_name") + 1] == "face"
    assert argv[argv.index("--model_path") + 1] == "/models/face"


def test_tfserving_several_models_get_a_trusted_model_config(tmp_path, standin_root, signing_key):
    from enclave_build.builder.build import build

    _model_files(tmp_path)
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    text = SPECS["tfserving"].replace(
        "[enclave]",
        '[[models]]\nname = "second"\npath = '
        '"saved_model"\nencrypt = false\nversion = 2\n\n[enclave]',
    )
    result = build(write_spec(tmp_path, text), base=f"dir:{standin_root}")
    data = tomllib.loads(result.artifacts.manifest.decode())
    assert "--model_config_file=/enclave/tfserving-models.config" in data["loader"]["argv"]
    entry = next(
        tf
        for tf in data["sgx"]["trusted_files"]
        if tf["uri"] == "file:/enclave/tfserving-models.config"
    )
    config = next(f for f in result.artifacts.files if f.dest == "/enclave/tfserving-models.config")
    import hashlib

    assert entry["sha256"] == hashlib.sha256(config.data).hexdigest()
    assert b'name: "second"' in config.data
    uris = [tf["uri"] for tf in data["sgx"]["trusted_files"]]
    assert "file:/models/second/2/saved_model.pb" in uris


def _build_text(tmp_path, standin_root, signing_key, text):
    from enclave_build.builder.build import build

    _model_files(tmp_path)
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    return build(write_spec(tmp_path, text), base=f"dir:{standin_root}")


def _second_model(text: str) -> str:
    return text.replace(
        "[enclave]",
        '[[models]]\nname = "second"\npath = "ir"\nencrypt = false\nversion = 2\n\n[enclave]',
        1,
    )


@pytest.mark.parametrize("framework", sorted(SPECS))
def test_every_manifest_has_tmpfs_sigterm_stack_and_home(
    framework, tmp_path, standin_root, signing_key
):
    data = tomllib.loads(build_manifest(framework, tmp_path, standin_root, signing_key).decode())
    assert {"path": "/tmp", "type": "tmpfs"} in data["fs"]["mounts"]
    assert data["sys"]["enable_sigterm_injection"] is True
    assert data["sys"]["stack"]["size"] == "8M"
    assert data["loader"]["env"]["HOME"] == "/tmp"
    assert data["fs"]["mounts"][0] == {
        "path": "/lib",
        "uri": "file:/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc",
    }


@pytest.mark.parametrize("framework", ["tflite", "openvino"])
def test_python_server_manifest(framework, tmp_path, standin_root, signing_key):
    """Python-server plans: our server from the installed package, the simulated-quoter
    variable passed through, no provisioning constructor, a config the server accepts."""
    from enclave_build.model_server.config import parse_config

    result = _build_text(tmp_path, standin_root, signing_key, SPECS[framework])
    data = tomllib.loads(result.artifacts.manifest.decode())
    env = data["loader"]["env"]
    assert data["loader"]["argv"] == [
        "/usr/bin/python3.11",
        "-m",
        "enclave_build.model_server",
        "--config",
        "/enclave/model-server.json",
    ]
    assert env["ENCLAVE_BUILD_SIMULATED_QUOTER"] == {"passthrough": True}
    assert env["PYTHONPATH"] == SERVER_PYTHONPATH and "LD_PRELOAD" not in env
    trusted = {tf["uri"]: tf["sha256"] for tf in data["sgx"]["trusted_files"]}
    from enclave_build import model_server

    package = Path(model_server.__file__).parent
    shipped = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    assert shipped
    for path in shipped:
        uri = (
            f"file:{SERVER_PYTHONPATH}/enclave_build/model_server/"
            f"{path.relative_to(package).as_posix()}"
        )
        assert trusted[uri] == hashlib.sha256(path.read_bytes()).hexdigest(), uri
    # the enclave runtime ships whole, under the one namespace
    for module in (
        "__init__.py",
        "attestation/__init__.py",
        "attestation/ratls.py",
        "attestation/protected_files.py",
    ):
        assert f"file:{SERVER_PYTHONPATH}/enclave_build/{module}" in trusted, module
    assert not any(
        uri.startswith(
            (
                f"file:{SERVER_PYTHONPATH}/model_server/",
                f"file:{SERVER_PYTHONPATH}/attestation/",
                f"file:{SERVER_PYTHONPATH}/enclave_build/builder/",
            )
        )
        for uri in trusted
    )
    config = next(f for f in result.artifacts.files if f.dest == "/enclave/model-server.json")
    assert trusted["file:/enclave/model-server.json"] == hashlib.sha256(config.data).hexdigest()
    parsed = parse_config(json.loads(config.data))
    assert [m.backend for m in parsed.models] == [framework]
    assert parsed.keys is None  # clear-text model: nothing to fetch


def test_loader_env_tables_follow_gramine_syntax():
    manifest = _minimal()
    manifest["loader"]["env"] = {"A": "x", "B": {"value": "y"}, "C": {"passthrough": True}}
    check_manifest(manifest)
    manifest["loader"]["env"] = {
        "D": {"passthrough": False},
        "E": {"value": 1},
        "F": {"value": "a", "passthrough": True},
        "G": {"from": "x"},
    }
    with pytest.raises(ManifestSchemaError) as info:
        check_manifest(manifest)
    text = str(info.value)
    assert "loader.env.D.passthrough: only true is allowed" in text
    assert "loader.env.E.value: expected a string" in text
    assert "loader.env.F: give exactly one of value and passthrough" in text
    assert "loader.env.G.from: unknown key; allowed: value, passthrough" in text


def test_ovms_several_models_get_a_trusted_config_json(tmp_path, standin_root, signing_key):
    result = _build_text(tmp_path, standin_root, signing_key, _second_model(SPECS["ovms"]))
    data = tomllib.loads(result.artifacts.manifest.decode())
    argv = data["loader"]["argv"]
    assert argv[argv.index("--config_path") + 1] == "/enclave/ovms-config.json"
    assert "--model_name" not in argv
    config = next(f for f in result.artifacts.files if f.dest == "/enclave/ovms-config.json")
    entry = next(
        tf for tf in data["sgx"]["trusted_files"] if tf["uri"] == "file:/enclave/ovms-config.json"
    )
    assert entry["sha256"] == hashlib.sha256(config.data).hexdigest()
    check_golden("ovms-config.json", config.data)
    assert json.loads(config.data) == {
        "model_config_list": [
            {"config": {"name": "face", "base_path": "/models/face", "target_device": "CPU"}},
            {"config": {"name": "second", "base_path": "/models/second", "target_device": "CPU"}},
        ]
    }
    uris = [tf["uri"] for tf in data["sgx"]["trusted_files"]]
    assert "file:/models/second/2/model.xml" in uris


def test_tfserving_model_config_golden(tmp_path, standin_root, signing_key):
    text = SPECS["tfserving"].replace(
        "[enclave]",
        '[[models]]\nname = "second"\npath = '
        '"saved_model"\nencrypt = false\nversion = 2\n\n[enclave]',
    )
    result = _build_text(tmp_path, standin_root, signing_key, text)
    config = next(f for f in result.artifacts.files if f.dest == "/enclave/tfserving-models.config")
    check_golden("tfserving-models.config", config.data)


@pytest.mark.parametrize("framework", ["tfserving", "ovms"])
def test_binary_frameworks_trust_the_elf_closure_not_whole_directories(
    framework, tmp_path, standin_root, signing_key
):
    data = tomllib.loads(build_manifest(framework, tmp_path, standin_root, signing_key).decode())
    uris = {tf["uri"] for tf in data["sgx"]["trusted_files"]}
    arch = "file:/usr/lib/x86_64-linux-gnu"
    assert {f"{arch}/libstdc++.so.6", f"{arch}/libgcc_s.so.1"} <= uris
    assert f"{arch}/libunused.so.1" not in uris  # in the directory, needed by nothing
    assert not any(u.startswith("file:/usr/lib/python3") for u in uris)
    if framework == "ovms":
        assert {
            f"{arch}/libssl.so.3",
            f"{arch}/libcrypto.so.3",  # via libovms_shared.so
            "file:/ovms/lib/libopenvino_intel_cpu_plugin.so",
        } <= uris
    else:
        assert f"{arch}/libz.so.1" in uris
