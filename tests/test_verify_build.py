"""`enclave-build verify-build PROVENANCE --spec SPEC` on a published build of the stand-in base
(an encrypted model, reproducible mode, the provenance the build itself signs with its
``[provenance] key``): the rebuild holds; a changed model is named before
anything is built; an input the provenance does not digest (the secret server's CA, a trusted
file) makes the rebuild differ, and the diff names it. The published build is made once."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_build.contract.provenance import PROVENANCE_FILE

from .conftest import run_cli, tflite_bytes, write_spec

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"

[enclave]
size = "1G"
max_threads = 16

[signing]
key = "../key.pem"

[secrets]
server = "secrets.example.com:4433"
ca = "ca.pem"
keys_dir = "../keys"

[build]
reproducible = true

[provenance]
key = "../provenance.pem"
"""
CA = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
MODEL = tflite_bytes(b"published model " * 40)


@pytest.fixture(scope="module")
def published(tmp_path_factory, standin_root, signing_key):
    """(top directory, the project, its provenance): project/ (spec, model, CA), keys/ and the
    provenance key beside it, the build output project/out with the provenance the build
    itself wrote and signed."""
    from enclave_build.builder.build import build

    top = tmp_path_factory.mktemp("published")
    shutil.copy(signing_key, top / "key.pem")
    provenance_key = ec.generate_private_key(ec.SECP256R1())
    (top / "provenance.pem").write_bytes(
        provenance_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (top / "provenance.pem").chmod(0o600)
    project = top / "project"
    project.mkdir()
    (project / "model.tflite").write_bytes(MODEL)
    (project / "ca.pem").write_text(CA)
    spec = write_spec(project, SPEC)
    base = f"dir:{standin_root}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(top / "cache"))
        build(spec, base=base, output=project / "out")
    provenance = project / "out" / PROVENANCE_FILE
    assert provenance.is_file(), "the build wrote no provenance"
    return top, project, provenance


def _copy(top: Path, project: Path, name: str) -> Path:
    """The project copied beside it (the same keys_dir), without its output."""
    copy = top / name
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("out", ".enclave-build"))
    return copy


def _verify(provenance: Path, spec: Path, *extra: str):
    proc = run_cli("verify-build", str(provenance), "--spec", str(spec), "--quiet", *extra)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@pytest.mark.integration
def test_the_published_build_is_reproduced(published):
    top, project, provenance = published
    code, out, err = _verify(provenance, project / "spec.toml")
    assert code == 0, out + err
    assert out.splitlines()[-1] == "holds"
    code, out, err = _verify(provenance, project / "spec.toml", "--json")
    data = json.loads(out)
    assert code == 0 and data["holds"] is True and data["mismatches"] == [] and data["diff"] is None
    assert data["rebuilt"]["image_digest"] == data["provenance"]["image_digest"]
    # a clean rebuild: nothing new in the project (no output, no build stamp, no key)
    assert sorted(p.name for p in project.iterdir()) == [
        ".enclave-build",  # the published build's own stamp
        "ca.pem",
        "model.tflite",
        "out",
        "spec.toml",
    ]
    assert len(list((project / ".enclave-build" / "builds").iterdir())) == 1
    assert len(list((top / "keys").iterdir())) == 1  # the published build's key only


@pytest.mark.integration
def test_a_changed_model_is_named_before_building(published):
    top, project, provenance = published
    copy = _copy(top, project, "changed-model")
    (copy / "model.tflite").write_bytes(tflite_bytes(b"another model " * 40))
    code, out, err = _verify(provenance, copy / "spec.toml")
    assert code == 1, out + err
    assert "input differs: model face /models/face/1/model.tflite" in out
    assert f"the provenance names sha256:{hashlib.sha256(MODEL).hexdigest()}" in out
    assert "mr_enclave  rebuilt" not in out  # nothing was built
    assert out.splitlines()[-1] == "does not hold"


@pytest.mark.integration
def test_a_changed_spec_is_named(published):
    top, project, provenance = published
    copy = _copy(top, project, "changed-spec")
    write_spec(copy, SPEC.replace("max_threads = 16", "max_threads = 32"))
    code, out, _ = _verify(provenance, copy / "spec.toml")
    assert code == 1 and f"input differs: spec {copy / 'spec.toml'}: is sha256:" in out


@pytest.mark.integration
def test_an_undigested_input_that_changed_fails_with_the_diff(published):
    """The CA certificate is no resolved dependency, but a trusted file: the inputs match, the
    rebuild differs, and the diff against the published output names it."""
    top, project, provenance = published
    copy = _copy(top, project, "changed-ca")
    (copy / "ca.pem").write_text(CA.replace("CA", "ANOTHER CA"))
    code, out, err = _verify(provenance, copy / "spec.toml")
    assert code == 1, out + err
    assert "input differs" not in out
    assert "mr_enclave  DIFFERS" in out
    assert "~ /enclave/secret-server-ca.pem" in out
    assert out.splitlines()[-1] == "does not hold"
    code, out, _ = _verify(provenance, copy / "spec.toml", "--json")
    data = json.loads(out)
    assert code == 1 and data["holds"] is False
    assert [f["path"] for f in data["diff"]["trusted_files"]] == ["/enclave/secret-server-ca.pem"]


@pytest.mark.integration
def test_usage_errors(published, tmp_path):
    _, project, provenance = published
    code, _, err = _verify(tmp_path / "nope.json", project / "spec.toml")
    assert code == 2 and "no such provenance file" in err, err
    code, _, err = _verify(provenance, tmp_path / "nospec.toml")
    assert code == 2 and "no such spec file" in err, err
    bad = tmp_path / "bad.json"
    bad.write_text('{"payloadType": "x"}')
    code, _, err = _verify(bad, project / "spec.toml")
    assert code == 2 and "bad.json" in err, err
