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


def _keyless(published, tmp_path: Path) -> tuple[Path, Path]:
    """What a third party holds: the project (spec, model, CA), the wrap keys and the published
    output, copied to a fresh directory with neither the provenance key nor the enclave signing
    key (only the signing key's public half). (the copied project, its provenance)"""
    top, project, _ = published
    fresh = tmp_path / "third-party"
    copy = fresh / "project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".enclave-build"))
    shutil.copytree(top / "keys", fresh / "keys")
    key = serialization.load_pem_private_key((top / "key.pem").read_bytes(), None)
    (fresh / "key.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert not (fresh / "key.pem").exists() and not (fresh / "provenance.pem").exists()
    return copy, copy / "out" / PROVENANCE_FILE


@pytest.mark.integration
def test_the_published_build_is_reproduced_without_any_private_key(published, tmp_path):
    """No [provenance] key, no enclave signing key: the published SIGSTRUCT goes into the
    rebuild, and MRENCLAVE and the image digest are the published ones."""
    _, _, original = published
    project, provenance = _keyless(published, tmp_path)
    expected = json.loads(
        (original.parent / "measurements.json").read_text()
    )  # the published identity
    code, out, err = _verify(provenance, project / "spec.toml", "--json")
    assert code == 0, out + err
    data = json.loads(out)
    assert data["holds"] is True and data["mismatches"] == [] and data["diff"] is None
    assert data["rebuilt"]["mr_enclave"] == data["provenance"]["mr_enclave"]
    assert data["rebuilt"]["image_digest"] == data["provenance"]["image_digest"]
    assert data["rebuilt"]["mr_enclave"] == expected["mr_enclave"]
    assert data["signature"].startswith("the published SIGSTRUCT (")
    assert "its RSA signature verifies and it signs the rebuilt MRENCLAVE" in data["signature"]
    code, out, err = _verify(provenance, project / "spec.toml")
    assert code == 0, out + err
    assert "sigstruct   the published SIGSTRUCT" in out
    assert out.splitlines()[-1] == "holds"
    # still nothing of the keys appeared, and nothing was written into the project
    assert not (tmp_path / "third-party" / "key.pem").exists()
    assert not (tmp_path / "third-party" / "provenance.pem").exists()
    assert sorted(p.name for p in project.iterdir()) == [
        "ca.pem",
        "model.tflite",
        "out",
        "spec.toml",
    ]


@pytest.mark.integration
def test_without_keys_a_changed_input_fails_with_the_diff(published, tmp_path):
    """Keyless, an input the provenance does not digest changed: the published SIGSTRUCT does
    not sign the rebuild, which is signed with a throwaway key only to be compared; the diff
    names the file and not the signer."""
    project, provenance = _keyless(published, tmp_path)
    (project / "ca.pem").write_text(CA.replace("CA", "ANOTHER CA"))
    code, out, err = _verify(provenance, project / "spec.toml")
    assert code == 1, out + err
    assert "mr_enclave  DIFFERS" in out
    assert "~ /enclave/secret-server-ca.pem" in out
    assert "sigstruct   signed with a throwaway key, not the published SIGSTRUCT" in out
    assert "signing.key" not in out  # the signer is not reported as a cause
    assert out.splitlines()[-1] == "does not hold"
    code, out, _ = _verify(provenance, project / "spec.toml", "--json")
    data = json.loads(out)
    assert code == 1 and data["holds"] is False
    assert [f["path"] for f in data["diff"]["trusted_files"]] == ["/enclave/secret-server-ca.pem"]
    assert data["diff"]["identity"] == []


@pytest.mark.integration
def test_without_keys_a_changed_model_is_named(published, tmp_path):
    project, provenance = _keyless(published, tmp_path)
    (project / "model.tflite").write_bytes(tflite_bytes(b"another model " * 40))
    code, out, err = _verify(provenance, project / "spec.toml")
    assert code == 1, out + err
    assert "input differs: model face /models/face/1/model.tflite" in out


@pytest.mark.integration
def test_without_the_signing_key_a_published_image_is_needed(published, tmp_path):
    """Keyless, with the provenance taken out of its build output (and a subject that was
    never pushed): no SIGSTRUCT to put in, a usage error saying what to give; --image gives
    it."""
    project, provenance = _keyless(published, tmp_path)
    alone = tmp_path / "provenance.dsse.json"
    shutil.copy(provenance, alone)
    code, out, err = _verify(alone, project / "spec.toml")
    assert code == 2, out + err
    assert "the enclave signing key is not here" in err and "--image" in err, err
    code, out, err = _verify(alone, project / "spec.toml", "--image", str(project / "out"))
    assert code == 0, out + err


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
