"""Manifest rendering: golden manifests for the builtin frameworks, and the Gramine 1.9 schema."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from builder.gramine.manifest_schema import REMOVED, ManifestSchemaError, check_manifest

from .conftest import write_spec

GOLDEN = Path(__file__).parent / "golden"

SPECS = {
    "tfserving": '''[service]
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
''',
    "tflite": '''[service]
name = "lite"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[signing]
key = "key.pem"
''',
    "openvino": '''[service]
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
''',
}


def _model_files(directory: Path) -> None:
    (directory / "saved_model" / "variables").mkdir(parents=True)
    (directory / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01" + bytes(100))
    (directory / "saved_model" / "variables" / "variables.index").write_bytes(b"idx")
    (directory / "model.tflite").write_bytes(b"TFL3" + bytes(200))
    (directory / "ir").mkdir()
    (directory / "ir" / "model.xml").write_text("<net name='face'/>\n")
    (directory / "ir" / "model.bin").write_bytes(bytes(range(256)))


def build_manifest(framework: str, tmp_path: Path, standin_root: Path, signing_key: Path) -> bytes:
    from builder.build import build

    _model_files(tmp_path)
    (tmp_path / "key.pem").write_bytes(signing_key.read_bytes())
    spec = write_spec(tmp_path, SPECS[framework])
    result = build(spec, base=f"dir:{standin_root}")
    return result.artifacts.manifest


@pytest.mark.parametrize("framework", sorted(SPECS))
def test_golden_manifest(framework, tmp_path, standin_root, signing_key):
    manifest = build_manifest(framework, tmp_path, standin_root, signing_key)
    golden = GOLDEN / f"{framework}.manifest.sgx"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_bytes(manifest)
    assert manifest.decode() == golden.read_text()
    data = tomllib.loads(manifest.decode())
    check_manifest(data)
    assert all("sha256" in tf for tf in data["sgx"]["trusted_files"])
    assert isinstance(data["loader"]["entrypoint"], dict)


def _minimal() -> dict:
    return {"libos": {"entrypoint": "/app"},
            "loader": {"entrypoint": {"uri": "file:/libsysdb.so", "sha256": "0" * 64}},
            "fs": {"mounts": []}, "sgx": {"enclave_size": "1G"}}


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
    data = tomllib.loads(build_manifest("openvino", tmp_path, standin_root, signing_key).decode())
    assert data["sgx"]["isvprodid"] == 3 and data["sgx"]["isvsvn"] == 2
    assert data["sgx"]["enclave_size"] == "8G"          # framework default
    assert data["sgx"]["max_threads"] == 128            # framework default
    assert data["sgx"]["debug"] is False
    uris = [tf["uri"] for tf in data["sgx"]["trusted_files"]]
    assert "file:/models/face/1/model.xml" in uris and "file:/models/face/1/model.bin" in uris
    assert "file:/ovms/bin/ovms" in uris


def test_model_arguments_reach_argv(tmp_path, standin_root, signing_key):
    data = tomllib.loads(build_manifest("openvino", tmp_path, standin_root, signing_key).decode())
    argv = data["loader"]["argv"]
    assert argv[argv.index("--model_name") + 1] == "face"
    assert argv[argv.index("--model_path") + 1] == "/models/face"


def test_tfserving_several_models_get_a_trusted_model_config(tmp_path, standin_root, signing_key):
    from builder.build import build

    _model_files(tmp_path)
    (tmp_path / "key.pem").write_bytes(signing_key.read_bytes())
    text = SPECS["tfserving"].replace('[enclave]', '[[models]]\nname = "second"\npath = '
                                      '"saved_model"\nencrypt = false\nversion = 2\n\n[enclave]')
    result = build(write_spec(tmp_path, text), base=f"dir:{standin_root}")
    data = tomllib.loads(result.artifacts.manifest.decode())
    assert "--model_config_file=/enclave/tfserving-models.config" in data["loader"]["argv"]
    entry = next(tf for tf in data["sgx"]["trusted_files"]
                 if tf["uri"] == "file:/enclave/tfserving-models.config")
    config = next(f for f in result.artifacts.files if f.dest == "/enclave/tfserving-models.config")
    import hashlib
    assert entry["sha256"] == hashlib.sha256(config.data).hexdigest()
    assert b'name: "second"' in config.data
    uris = [tf["uri"] for tf in data["sgx"]["trusted_files"]]
    assert "file:/models/second/2/saved_model.pb" in uris
