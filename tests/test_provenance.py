"""Signed build provenance: written by a build with [provenance] key, verified by the in-toto
library (not our code) and by `enclave-build verify-provenance`, refused when any signed byte
(payload type, payload, signature) changes, still valid when only its JSON layout does, and found attached to an image pushed to a real registry."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from enclave_build.contract.provenance import PROVENANCE_FILE, DsseEnvelope, Provenance
from enclave_build.contract.sbom import SBOM_FILE

from .conftest import run_cli, tflite_bytes, write_spec

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

[provenance]
key = "provenance.key"
"""


def _keys(directory: Path) -> Path:
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(directory / "provenance.key")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (directory / "provenance.key").chmod(0o600)
    subprocess.run(
        ["openssl", "pkey", "-in", str(directory / "provenance.key"), "-pubout",
         "-out", str(directory / "provenance.pub")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return directory / "provenance.pub"


def _project(directory: Path, signing_key: Path, spec: str = SPEC) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 10))
    shutil.copy(signing_key, directory / "key.pem")
    _keys(directory)
    return write_spec(directory, spec)


def _build(directory: Path, standin_root: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", *extra,
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory, standin_root, signing_key) -> Path:
    project = tmp_path_factory.mktemp("provenance")
    _project(project, signing_key)
    proc = _build(project, standin_root)
    assert proc.returncode == 0, proc.stderr.decode()
    return project


def test_in_toto_library_verifies_the_envelope(built):
    from cryptography.hazmat.primitives import serialization
    from in_toto.models.metadata import Envelope
    from securesystemslib.signer import SSlibKey

    public = serialization.load_pem_public_key((built / "provenance.pub").read_bytes())
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keyid = hashlib.sha256(der).hexdigest()  # the key id the format documents
    key = SSlibKey.from_crypto(public, keyid=keyid)
    raw = json.loads((built / "out" / PROVENANCE_FILE).read_text())
    envelope = Envelope.from_dict(raw)
    assert envelope.payload_type == "application/vnd.in-toto+json"
    assert set(envelope.verify([key], 1)) == {keyid}

    statement = json.loads(envelope.pae().split(b" ", 4)[4])
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    measurements = json.loads((built / "out" / "measurements.json").read_text())
    (subject,) = statement["subject"]
    assert "sha256:" + subject["digest"]["sha256"] == measurements["image"]["digest"]
    enclave = statement["predicate"]["buildDefinition"]["internalParameters"]["enclave"]
    assert enclave["mr_enclave"] == measurements["mr_enclave"]
    assert enclave["mr_signer"] == measurements["mr_signer"]
    assert (enclave["isv_prod_id"], enclave["isv_svn"]) == (4, 9)
    assert set(enclave["attributes"]) >= {"flags", "xfrm"}

    prov = Provenance.from_statement(base64.b64decode(raw["payload"]))
    assert prov.spec.sha256 == hashlib.sha256((built / "spec.toml").read_bytes()).hexdigest()
    (model,) = prov.models
    assert model.sha256 == hashlib.sha256((built / "model.tflite").read_bytes()).hexdigest()
    assert prov.sbom.sha256 == hashlib.sha256((built / "out" / SBOM_FILE).read_bytes()).hexdigest()
    assert prov.base_digest.startswith("sha256:") and prov.base_ref.startswith("dir:")


def test_verify_provenance_holds_for_the_output_and_its_file(built):
    proc = run_cli("verify-provenance", "out", "--key", "provenance.pub", cwd=built)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert b"provenance holds" in proc.stdout
    proc = run_cli(
        "verify-provenance", f"out/{PROVENANCE_FILE}", "--key", "provenance.pub", "--json",
        cwd=built,
    )  # fmt: skip
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["holds"] is True


def test_another_key_or_another_image_does_not_hold(built, tmp_path, standin_root, signing_key):
    other = tmp_path / "other"
    other.mkdir()
    proc = run_cli("verify-provenance", str(built / "out"), "--key", str(_keys(other)))
    assert proc.returncode == 1 and b"signature" in proc.stdout
    # The same provenance against another build's image (another model): subject and identity.
    _project(other, signing_key)
    (other / "model.tflite").write_bytes(tflite_bytes(b"another model" * 30))
    assert _build(other, standin_root).returncode == 0
    proc = run_cli(
        "verify-provenance", str(built / "out" / PROVENANCE_FILE), "--image", str(other / "out"),
        "--key", str(built / "provenance.pub"),
    )  # fmt: skip
    assert proc.returncode == 1
    assert b"subject" in proc.stdout and b"mr_enclave" in proc.stdout


def test_a_flipped_byte_anywhere_fails(built):
    from enclave_build.builder.image.inspect import open_image
    from enclave_build.builder.provenance import check_provenance
    from enclave_build.builder.provenance_key import load_public_key
    from enclave_build.contract.provenance import ProvenanceError

    text = (built / "out" / PROVENANCE_FILE).read_bytes()
    key = load_public_key(built / "provenance.pub")
    image, _ = open_image(str(built / "out"))
    assert check_provenance(DsseEnvelope.parse(text), key, image).holds
    for at in range(len(text)):
        flipped = text[:at] + bytes([text[at] ^ 1]) + text[at + 1 :]
        try:
            envelope = DsseEnvelope.parse(flipped)
        except ProvenanceError:
            continue
        assert not check_provenance(envelope, key, image).holds, f"byte {at} flipped still holds"


def test_reformatted_envelope_still_verifies_a_changed_payload_does_not(built, tmp_path):
    # What docs/how-to/verify-a-build.md says is signed: PAE(payloadType, payload), not the JSON.
    envelope = json.loads((built / "out" / PROVENANCE_FILE).read_text())
    reformatted = tmp_path / "reformatted.json"
    reformatted.write_text(json.dumps(dict(reversed(envelope.items())), indent=7) + "\n\n")
    key = str(built / "provenance.pub")
    image = str(built / "out")
    proc = run_cli("verify-provenance", str(reformatted), "--image", image, "--key", key)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    payload = base64.b64decode(envelope["payload"])
    changed = tmp_path / "changed.json"
    changed.write_text(
        json.dumps(envelope | {"payload": base64.b64encode(payload + b" ").decode()})
    )
    proc = run_cli("verify-provenance", str(changed), "--image", image, "--key", key)
    assert proc.returncode == 1 and b"does NOT hold" in proc.stdout
    doc = (Path(__file__).parents[1] / "docs/how-to/verify-a-build.md").read_text()
    assert "Any changed byte of\nthe envelope" not in doc
    assert "re-formatting the file (whitespace, key order) leaves\nit valid" in doc


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nosuch", "no such file, build output or image: nosuch"),
        ("nosuch:1.0", "no such file, build output or image: nosuch:1.0"),
        ("nosuch/", "nosuch/: no such file or directory"),
        ("./nosuch", "./nosuch: no such file or directory"),
        ("/nonexistent/out", "/nonexistent/out: no such file or directory"),
        ("oci:nosuch", "only in a registry"),
    ],
)
def test_a_target_that_names_nothing_is_a_usage_error(tmp_path, target, message):
    key = _keys(tmp_path)
    proc = run_cli("verify-provenance", target, "--key", str(key), cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert message in err
    assert "registry-1.docker.io" not in err and "dir:" not in err


def test_a_missing_image_option_is_a_usage_error(built):
    proc = run_cli(
        "verify-provenance", f"out/{PROVENANCE_FILE}", "--image", "nosuch", "--key",
        "provenance.pub", cwd=built,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no such file, build output or image: nosuch (--image" in proc.stderr.decode()


def test_an_unreachable_registry_is_an_error_not_a_verdict(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = _keys(tmp_path)
    proc = run_cli(
        "verify-provenance", f"127.0.0.1:{port}/face@sha256:{'0' * 64}", "--key", str(key)
    )
    assert proc.returncode == 1
    assert f"cannot reach registry 127.0.0.1:{port}" in proc.stderr.decode()
    assert b"does NOT hold" not in proc.stdout


def test_diff_of_two_provenance_files_says_why_mr_enclave_differs(
    built, tmp_path, standin_root, signing_key
):
    other = tmp_path / "other"
    _project(other, signing_key, SPEC.replace("isv_svn = 9", "isv_svn = 9\nmax_threads = 64"))
    assert _build(other, standin_root).returncode == 0
    proc = run_cli(
        "diff", str(built / "out" / PROVENANCE_FILE), str(other / "out" / PROVENANCE_FILE),
        "--quiet",
    )  # fmt: skip
    out = proc.stdout.decode()
    assert proc.returncode == 1, proc.stderr.decode()
    assert "~ manifest /enclave/" in out
    assert "no measured input compared here does" not in out
    assert "MRENCLAVE differs, as does the digest of the manifest /enclave/" in out
    assert "diff the build outputs or images" in out


def test_a_provenance_key_open_to_others_says_what_it_signs(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key)
    (tmp_path / "provenance.key").chmod(0o644)
    proc = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out",
        cwd=tmp_path, env={"ENCLAVE_BUILD_ALLOW_OPEN_KEY": ""},
    )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "provenance.key:" in err and "can sign provenance statements as you" in err
    assert "sign enclaves" not in err
    assert not (tmp_path / "out").exists()


def test_a_key_that_is_no_p256_key_is_a_located_spec_error(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key, SPEC.replace('key = "provenance.key"', 'key = "key.pem"'))
    proc = _build(tmp_path, standin_root)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "spec.toml:18: provenance.key:" in err and "P-256" in err
    assert not (tmp_path / "out").exists()


def test_without_provenance_section_no_provenance_is_written(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key, SPEC.split("[provenance]")[0])
    assert _build(tmp_path, standin_root).returncode == 0
    assert not (tmp_path / "out" / PROVENANCE_FILE).exists()
    assert (tmp_path / "out" / SBOM_FILE).exists()


@pytest.mark.integration
def test_pushed_provenance_is_the_images_attestation(registry, tmp_path, standin_root, signing_key):
    import requests

    project = tmp_path / "p"
    _project(project, signing_key)
    target = f"{registry.address}/face:1"
    proc = _build(project, standin_root, "--tag", target, "--push")
    assert proc.returncode == 0, proc.stderr.decode()
    digest = json.loads((project / "out" / "measurements.json").read_text())["image"]["digest"]
    hex_ = digest.split(":")[1]
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json, "
              "application/vnd.oci.image.index.v1+json"}  # fmt: skip

    # cosign's layout: tag sha256-<hex>.att, one DSSE layer with cosign's annotations.
    att = requests.get(
        f"http://{registry.address}/v2/face/manifests/sha256-{hex_}.att", headers=accept, timeout=10
    )
    assert att.status_code == 200
    (layer,) = att.json()["layers"]
    assert layer["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    assert layer["annotations"] == {
        "dev.cosignproject.cosign/signature": "",
        "predicateType": "https://slsa.dev/provenance/v1",
    }
    blob = requests.get(
        f"http://{registry.address}/v2/face/blobs/{layer['digest']}", timeout=10
    ).content
    assert blob == (project / "out" / PROVENANCE_FILE).read_bytes()

    # OCI 1.1 referrer: this registry has no referrers API, so the fallback tag lists it.
    index = requests.get(
        f"http://{registry.address}/v2/face/manifests/sha256-{hex_}", headers=accept, timeout=10
    ).json()
    (entry,) = index["manifests"]
    assert entry["artifactType"] == "application/vnd.in-toto+json"
    referrer = requests.get(
        f"http://{registry.address}/v2/face/manifests/{entry['digest']}", headers=accept, timeout=10
    ).json()
    assert referrer["subject"]["digest"] == digest

    for via in ("cosign", "referrers"):
        proc = run_cli(
            "verify-provenance", f"{registry.address}/face@{digest}", "--key",
            str(project / "provenance.pub"), "--via", via,
        )  # fmt: skip
        assert proc.returncode == 0, (via, proc.stdout.decode(), proc.stderr.decode())
    # Another image in the same repository has no provenance attached.
    proc = run_cli(
        "verify-provenance", f"{registry.address}/face@sha256:{'0' * 64}", "--key",
        str(project / "provenance.pub"),
    )  # fmt: skip
    assert proc.returncode != 0
