"""`enclave-build diff A B`: two builds of the stand-in base that differ by one thing each (a file
of the base, a model, max_threads, an encrypted model) are named by exactly that cause; two
identical builds print `identical` (exit 0); usage errors exit 2. The builds are made once per
module."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from enclave_build.builder.compare.diff import value_changes
from enclave_build.builder.compare.facts import enclave_paths, flatten
from enclave_build.builder.compare.result import BuildDiff, FileChange, Side, ValueChange
from enclave_build.builder.compare.text import render
from enclave_build.builder.gramine.spec_keys import MANIFEST_TO_SPEC, spec_key

from .conftest import run_cli, tflite_bytes, write_spec

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = {encrypt}

[enclave]
size = "1G"
max_threads = {threads}

[signing]
key = "{key}"
"""
ENCRYPTED = """
[secrets]
server = "secrets.example.com:4433"
ca = "ca.pem"
keys_dir = "../keys"

[build]
reproducible = true
"""
CHANGED_BASE_FILE = "usr/lib/x86_64-linux-gnu/gramine/runtime/glibc/libm.so.6"
TOP_KEYS = {
    "identical",
    "mr_enclave_equal",
    "mr_signer_equal",
    "image_equal",
    "a",
    "b",
    "identity",
    "manifest",
    "trusted_files",
    "libos",
    "sigstruct",
    "occlum_config",
    "image_config",
    "image_files",
    "inputs",
    "notes",
}


# ------------------------------------------------------------------------------- unit tests


def test_value_changes_name_added_removed_changed_and_spec_keys():
    changes = value_changes(
        {"sgx.max_threads": 16, "sgx.debug": False, "loader.env.A": "1"},
        {"sgx.max_threads": 32, "sgx.debug": False, "loader.env.B": "2"},
        spec_key,
    )
    assert changes == (
        ValueChange("loader.env.A", "removed", "1", None),
        ValueChange("loader.env.B", "added", None, "2"),
        ValueChange("sgx.max_threads", "changed", 16, 32, "enclave.max_threads"),
    )
    assert value_changes(None, {"a": 1}) == ()


def test_flatten_keys_mounts_by_path_and_allowed_files_by_uri():
    flat = flatten(
        {
            "fs": {"mounts": [{"path": "/m", "type": "encrypted", "key_name": "k"}]},
            "sgx": {"allowed_files": ["file:/etc/hosts"], "max_threads": 4},
            "loader": {"argv": ["a", "b"]},
        }
    )
    assert flat == {
        "fs.mounts[/m].key_name": "k",
        "fs.mounts[/m].type": "encrypted",
        "sgx.allowed_files[file:/etc/hosts]": True,
        "sgx.max_threads": 4,
        "loader.argv": ["a", "b"],
    }


def test_trusted_files_are_named_by_their_path_in_the_enclave():
    convert = enclave_paths(
        {"fs": {"mounts": [{"path": "/lib", "uri": "file:/usr/lib/gramine/runtime/glibc"}]}}
    )
    assert convert("/usr/lib/gramine/runtime/glibc/libc.so.6") == "/lib/libc.so.6"
    assert convert("/usr/lib/gramine/runtime/glibcx") == "/usr/lib/gramine/runtime/glibcx"
    assert convert("/models/face/1/m.tflite") == "/models/face/1/m.tflite"


def _side(name: str, mr: str = "aa" * 32) -> Side:
    return Side(name, "build output", "gramine", mr, "bb" * 32, "sha256:" + "cc" * 32)


def test_json_shape_and_identical():
    same = BuildDiff(_side("a"), _side("b"))
    assert same.identical and render(same)[0] == "identical"
    data = same.to_json()
    assert set(data) == TOP_KEYS
    assert set(data["a"]) == {"source", "kind", "libos", "mr_enclave", "mr_signer", "image_digest"}
    changed = BuildDiff(
        _side("a"),
        _side("b", "dd" * 32),
        trusted_files=(FileChange("/lib/libm.so.6", "changed", "1" * 64, "2" * 64, "/x/libm"),),
    )
    assert not changed.identical and changed.mr_enclave_equal is False
    item = changed.to_json()["trusted_files"][0]
    assert item == {
        "path": "/lib/libm.so.6",
        "image_path": "/x/libm",
        "change": "changed",
        "a_sha256": "1" * 64,
        "b_sha256": "2" * 64,
        "a_package": None,
        "b_package": None,
    }
    assert render(changed)[0] == "different"


def test_every_mapped_manifest_key_holds_its_spec_keys_value(tmp_path, standin_root, signing_key):
    """MANIFEST_TO_SPEC is true of a real build: a spec giving each mapped key a value that is
    not its default finds that value under the manifest key."""
    from enclave_build.builder.build import build

    values = {
        "enclave.size": ('"2G"', "2G"),
        "enclave.max_threads": ("24", 24),
        "enclave.edmm": ("true", True),
        "enclave.debug": ("true", True),
        "enclave.isv_prod_id": ("7", 7),
        "enclave.isv_svn": ("5", 5),
        "enclave.log_level": ('"warning"', "warning"),
    }
    assert set(values) == set(MANIFEST_TO_SPEC.values())
    (tmp_path / "model.tflite").write_bytes(tflite_bytes(b"m" * 100))
    shutil.copy(signing_key, tmp_path / "key.pem")
    enclave = "".join(f"{key.split('.')[1]} = {text}\n" for key, (text, _) in values.items())
    spec = write_spec(
        tmp_path,
        SPEC.format(encrypt="false", threads=4, key="key.pem").split("[enclave]")[0]
        + "[enclave]\n"
        + enclave
        + '\n[signing]\nkey = "key.pem"\n',
    )
    with pytest.warns(UserWarning):  # a DEBUG enclave
        manifest = tomllib.loads(
            build(spec, base=f"dir:{standin_root}").artifacts.manifest.decode()
        )
    flat = flatten(manifest)
    for manifest_key, spec_name in MANIFEST_TO_SPEC.items():
        assert flat[manifest_key] == values[spec_name][1], manifest_key


# ----------------------------------------------------------------------- builds, compared


@pytest.fixture(scope="module")
def builds(tmp_path_factory, standin_root, signing_key):
    """Build outputs by name: ref; same (the same inputs in another directory); threads
    (max_threads 32); model (another clear model); base (one glibc file of the base changed);
    enc-a / enc-b (an encrypted model, reproducible mode, differing in the model)."""
    from enclave_build.builder.build import build

    top = tmp_path_factory.mktemp("diff-builds")
    base2 = top / "base2"
    shutil.copytree(standin_root, base2, symlinks=True)
    with open(base2 / CHANGED_BASE_FILE, "ab") as handle:
        handle.write(b"changed")
    shutil.copy(signing_key, top / "key.pem")
    cases = {
        "ref": (16, b"model", False, standin_root),
        "same": (16, b"model", False, standin_root),
        "threads": (32, b"model", False, standin_root),
        "model": (16, b"other", False, standin_root),
        "base": (16, b"model", False, base2),
        "enc-a": (16, b"model", True, standin_root),
        "enc-b": (16, b"other", True, standin_root),
    }
    outputs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(top / "cache"))
        for name, (threads, model, encrypt, base) in cases.items():
            project = top / name
            project.mkdir()
            (project / "model.tflite").write_bytes(tflite_bytes(model * 200))
            text = SPEC.format(encrypt=str(encrypt).lower(), threads=threads, key="../key.pem")
            if encrypt:
                (project / "ca.pem").write_text(
                    "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
                )
                text += ENCRYPTED
            spec = write_spec(project, text)
            build(spec, base=f"dir:{base}", output=project / "out")
            outputs[name] = project
    return outputs


def _diff(*args: Path | str, extra: tuple[str, ...] = ()):
    proc = run_cli("diff", *map(str, args), "--quiet", *extra)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _json(a: Path, b: Path) -> dict:
    code, out, err = _diff(a, b, extra=("--json",))
    assert code == 1, err
    data = json.loads(out)
    assert set(data) == TOP_KEYS
    return data


def _only(data: dict, *sections: str) -> None:
    """Every section but *sections* is empty (the side summaries aside)."""
    for name in TOP_KEYS - {"identical", "mr_enclave_equal", "mr_signer_equal"}:
        if name in ("a", "b", "image_equal", "notes") or name in sections:
            continue
        assert data[name] == [], (name, data[name])


@pytest.mark.integration
def test_identical_builds_say_identical(builds):
    code, out, err = _diff(builds["ref"], builds["same"])
    assert code == 0, out + err
    assert out.splitlines()[0] == "identical"
    # the same image read as an OCI layout is the same build too
    code, out, _ = _diff(builds["ref"] / "out", f"oci:{builds['same'] / 'out' / 'oci'}")
    assert code == 0 and out.startswith("identical\n"), out


@pytest.mark.integration
def test_max_threads_is_named_as_its_spec_key(builds):
    code, out, _ = _diff(builds["ref"], builds["threads"])
    assert code == 1
    assert "mr_enclave  DIFFERS" in out
    assert "~ enclave.max_threads (sgx.max_threads): 16 -> 32" in out
    data = _json(builds["ref"], builds["threads"])
    assert data["mr_enclave_equal"] is False and data["identical"] is False
    assert data["manifest"] == [
        {
            "key": "sgx.max_threads",
            "spec_key": "enclave.max_threads",
            "change": "changed",
            "a": 16,
            "b": 32,
        }
    ]
    _only(data, "manifest")


@pytest.mark.integration
def test_a_changed_model_is_named_with_both_hashes(builds):
    import hashlib

    data = _json(builds["ref"], builds["model"])
    assert data["mr_enclave_equal"] is False
    [item] = data["trusted_files"]
    assert item["path"] == "/models/face/1/model.tflite" and item["change"] == "changed"
    assert item["a_sha256"] == hashlib.sha256(tflite_bytes(b"model" * 200)).hexdigest()
    assert item["b_sha256"] == hashlib.sha256(tflite_bytes(b"other" * 200)).hexdigest()
    assert item["a_package"] == item["b_package"] == "model face 1"  # from the SBOM
    # the SBOM lists the model's digest, so it differs too: named as following from it
    assert any("/enclave/sbom.spdx.json" in note for note in data["notes"])
    _only(data, "trusted_files")


@pytest.mark.integration
def test_a_changed_base_file_is_named_by_its_enclave_path(builds):
    code, out, _ = _diff(builds["ref"], builds["base"])
    assert code == 1
    assert "/lib/libm.so.6 (image /" + CHANGED_BASE_FILE + ")" in out
    data = _json(builds["ref"], builds["base"])
    [item] = data["trusted_files"]
    assert item["path"] == "/lib/libm.so.6"
    assert item["image_path"] == "/" + CHANGED_BASE_FILE
    assert item["a_sha256"] != item["b_sha256"]
    _only(data, "trusted_files")


@pytest.mark.integration
def test_an_encrypted_model_differs_outside_the_measurement(builds):
    """An encrypted model is not measured: its file differs outside the measurement, and
    MRENCLAVE differs only through the SBOM (a trusted file) that records its digests."""
    data = _json(builds["enc-a"], builds["enc-b"])
    assert data["image_equal"] is False
    [item] = data["image_files"]
    assert item["path"] == "/models/face/1/model.tflite"
    assert item["a_package"] == item["b_package"] == "model face 1"
    assert [i["path"] for i in data["trusted_files"]] == ["/enclave/sbom.spdx.json"]
    _only(data, "image_files", "trusted_files")


@pytest.mark.integration
def test_differing_encrypted_models_get_the_reproducible_hint(builds):
    data = _json(builds["enc-a"], builds["enc-b"])
    assert any("[build] reproducible = true" in note for note in data["notes"]), data["notes"]
    code, out, _ = _diff(builds["enc-a"], builds["enc-b"])
    assert code == 1
    assert "note: encrypted model files differ" in out and "reproducible = true" in out
    # clear models are measured: no such hint
    _, out, _ = _diff(builds["ref"], builds["model"])
    assert "reproducible" not in out


@pytest.mark.integration
def test_usage_errors_exit_2_saying_no_such(builds, tmp_path):
    code, _, err = _diff(tmp_path / "nowhere", builds["ref"])
    assert code == 2 and "nowhere: no such build" in err, err
    code, _, err = _diff(builds["ref"], "oci:" + str(tmp_path / "nolayout"))
    assert code == 2 and "no such image layout" in err, err
    code, _, err = _diff(builds["ref"], builds["ref"] / "spec.toml")
    assert code == 2 and "not a build output or an image" in err, err
    empty = tmp_path / "project"
    empty.mkdir()
    (empty / "spec.toml").write_text("")
    code, _, err = _diff(empty, builds["ref"])
    assert code == 2 and "holds no build" in err, err
    code, _, err = _diff(builds["ref"])
    assert code == 2 and "Missing argument" in err, err
