"""`enclave-build verify-build PROVENANCE --spec SPEC` on a published build of the stand-in base
(an encrypted model, reproducible mode): the rebuild holds; a changed model is named before
anything is built; an input the provenance does not digest (the secret server's CA, a trusted
file) makes the rebuild differ, and the diff names it. The published build is made once."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_build import __version__
from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.provenance import (
    PAYLOAD_TYPE,
    PROVENANCE_FILE,
    Digested,
    DsseEnvelope,
    DsseSignature,
    ModelDigest,
    Provenance,
    SgxAttributes,
)

from .conftest import image_rootfs, run_cli, tflite_bytes, write_spec

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
"""
CA = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
MODEL = tflite_bytes(b"published model " * 40)


def write_provenance(out: Path, spec: Path, base: str, result) -> Path:
    """A signed provenance of the build *result* written to *out* (DSSE, in-toto Statement v1,
    SLSA v1), made with the contract types as the build's own writer makes it."""
    from enclave_build.builder.gramine.identity import read_sigstruct
    from enclave_build.builder.image.sources import open_base
    from enclave_build.builder.provenance import base_digest_of

    files = image_rootfs(out)
    manifest = (files / "enclave/face.manifest.sgx").read_bytes()
    _sig, info, problems = read_sigstruct((files / "enclave/face.sig").read_bytes())
    assert info is not None and not problems
    attributes = info["attributes"]
    statement = Provenance(
        image_name=result.plan.image_tag,
        image_digest=result.measurements.image.digest,
        service="face",
        framework="tflite",
        libos="gramine",
        image_tag=result.plan.image_tag,
        reproducible=True,
        identity=EnclaveIdentity(
            info["mr_enclave"], info["mr_signer"], info["isv_prod_id"], info["isv_svn"]
        ),
        attributes=SgxAttributes(
            *(
                int(attributes[k], 16)
                for k in ("flags", "xfrm", "flags_mask", "xfrm_mask", "misc_select", "misc_mask")
            )
        ),
        manifest=Digested("/enclave/face.manifest.sgx", hashlib.sha256(manifest).hexdigest()),
        sbom=Digested(
            "/enclave/sbom.spdx.json",
            hashlib.sha256((files / "enclave/sbom.spdx.json").read_bytes()).hexdigest(),
        ),
        spec=Digested("spec.toml", hashlib.sha256(spec.read_bytes()).hexdigest()),
        base_ref=base,
        base_digest=base_digest_of(open_base(base).image),
        models=(
            ModelDigest(
                "face", "1", "/models/face/1/model.tflite", hashlib.sha256(MODEL).hexdigest()
            ),
        ),
        enclave_build_version=__version__,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = statement.statement_bytes()
    unsigned = DsseEnvelope(PAYLOAD_TYPE, payload, ())
    signature = key.sign(unsigned.pae(), ec.ECDSA(hashes.SHA256()))
    envelope = DsseEnvelope(
        PAYLOAD_TYPE, payload, (DsseSignature(hashlib.sha256(spki).hexdigest(), signature),)
    )
    path = out / PROVENANCE_FILE
    path.write_text(envelope.to_json())
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory, standin_root, signing_key):
    """(top directory, the project, its provenance): project/ (spec, model, CA), keys/ beside
    it, the build output project/out with its provenance."""
    from enclave_build.builder.build import build

    top = tmp_path_factory.mktemp("published")
    shutil.copy(signing_key, top / "key.pem")
    project = top / "project"
    project.mkdir()
    (project / "model.tflite").write_bytes(MODEL)
    (project / "ca.pem").write_text(CA)
    spec = write_spec(project, SPEC)
    base = f"dir:{standin_root}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(top / "cache"))
        result = build(spec, base=base, output=project / "out")
        provenance = write_provenance(project / "out", spec, base, result)
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
