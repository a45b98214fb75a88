"""The Occlum backend's build in Occlum's own container, against a STAND-IN toolchain image.

STAND-IN, NOT OCCLUM: the container steps (``occlum new --init-ra grpc_ratls``, ``copy_bom``,
``occlum build --sign-tool ... --image-key ...``, ``occlum print``, ``occlum package``) run in a
private Docker engine against an image built here FROM scratch whose ``occlum``, ``copy_bom``
and ``sgx_sign`` are tests/occlum_standin/standin.py: it takes the real tools' command lines,
checks its arguments and inputs and writes plausible outputs (see its docstring). The real
occlum/occlum image cannot be pulled here and there is no SGX. A real Occlum build needs it:

    docker pull occlum/occlum:0.31.0-ubuntu22.04
    enclave-build build spec.toml      # [service] libos = "occlum", [image] base = an Occlum
                                       # runtime base with the framework's runtimes

What is real: the backend's container handling, the scripts it runs in the container (driver
and sign tool), the signing exchange with the build's Signer, the package unpacking, image
assembly and the outputs (OCI layout, measurements.json, secrets-policy.toml).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from .conftest import run_cli, tflite_bytes, write_spec

pytestmark = pytest.mark.integration

MODEL = tflite_bytes(b"SECRET-WEIGHTS-" * 4000)

SPEC = """[service]
name = "face-detect"
framework = "tflite"
libos = "occlum"

[[models]]
name = "face_detection"
path = "model.tflite"
encrypt = {encrypt}

[enclave]
size = "1G"
max_threads = 32
isv_prod_id = 7
isv_svn = 3

[image]
base = "dir:{base}"
tag = "face-detect:occlum"

[secrets]
server = "secrets.example.com:4433"
ca = "ca.pem"
keys_dir = "../keys"

[occlum]
server_measurements = ["secret-server.json"]

[signing]
{signing}
"""


class Recorder:
    """A Progress that keeps what the backend shows: stages and container lines."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.lines: list[str] = []

    def task(self, description, total):
        self.stages.append(description)
        return lambda n: None

    def log(self, text):
        self.lines.append(text)


@pytest.fixture(scope="module")
def toolchain(dockerd, tmp_path_factory):
    """The stand-in Occlum toolchain image (FROM scratch), as the build image."""
    import docker

    from .occlum_standin.image import build_image

    tag = build_image(docker.from_env(), tmp_path_factory.mktemp("occlum-context"))
    previous = os.environ.get("ENCLAVE_BUILD_OCCLUM_IMAGE")
    os.environ["ENCLAVE_BUILD_OCCLUM_IMAGE"] = tag
    yield tag
    if previous is None:
        os.environ.pop("ENCLAVE_BUILD_OCCLUM_IMAGE", None)
    else:
        os.environ["ENCLAVE_BUILD_OCCLUM_IMAGE"] = previous


@pytest.fixture(scope="module")
def runtime_base(tmp_path_factory) -> Path:
    from .occlum_standin.image import make_runtime_base

    return make_runtime_base(tmp_path_factory.mktemp("occlum-runtime") / "rootfs")


def _project(
    directory: Path,
    base: Path,
    signing_key: Path | None,
    *,
    encrypt: bool = True,
    public_key: Path | None = None,
) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.tflite").write_bytes(MODEL)
    (directory / "ca.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    )
    (directory / "secret-server.json").write_text(
        json.dumps(
            {
                "service": "kms",
                "framework": "secret-server",
                "libos": "gramine",
                "mr_enclave": "ab" * 32,
                "mr_signer": "cd" * 32,
                "isv_prod_id": 1,
                "isv_svn": 1,
                "debug": False,
                "image": {"ref": None, "digest": None},
            }
        )
    )
    if public_key is not None:
        shutil.copy(public_key, directory / "public.pem")
        signing = 'public_key = "public.pem"'
    else:
        assert signing_key is not None
        shutil.copy(signing_key, directory / "key.pem")
        os.chmod(directory / "key.pem", 0o600)
        signing = 'key = "key.pem"'
    return write_spec(
        directory, SPEC.format(encrypt="true" if encrypt else "false", base=base, signing=signing)
    )


def _layers(output: Path) -> list[bytes]:
    """Every blob of the output's OCI layout, gunzipped when it is a layer."""
    out = []
    for blob in sorted((output / "oci" / "blobs" / "sha256").iterdir()):
        data = blob.read_bytes()
        out.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return out


def _image_files(output: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for data in _layers(output):
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar:
                    if member.isfile():
                        files["/" + member.name.lstrip("./")] = tar.extractfile(member).read()
        except tarfile.TarError:
            continue
    return files


def _owners(output: Path) -> dict[str, tuple[int, int]]:
    owners: dict[str, tuple[int, int]] = {}
    for data in _layers(output):
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar:
                    owners["/" + member.name.lstrip("./").rstrip("/")] = (member.uid, member.gid)
        except tarfile.TarError:
            continue
    return owners


def _secret_needles(signing_key: Path) -> dict[str, bytes]:
    from cryptography.hazmat.primitives import serialization

    pem = signing_key.read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    d = key.private_numbers().d
    body = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return {
        "PEM line": body[3],
        "private exponent (BE)": d.to_bytes(384, "big")[:48],
        "private exponent (LE)": d.to_bytes(384, "little")[:48],
        "prime p": key.private_numbers().p.to_bytes(192, "big")[:48],
    }


@pytest.fixture(scope="module")
def encrypted_build(toolchain, runtime_base, signing_key, tmp_path_factory):
    """One end-to-end build of the tflite service with libos = "occlum" and an encrypted model,
    through the Python API with a recording progress; records every container job and scans
    what each bind mount held for the signing key."""
    from enclave_build.builder import build as pipeline
    from enclave_build.builder.occlum import container

    root = tmp_path_factory.mktemp("occlum-e2e")
    spec = _project(root / "project", runtime_base, signing_key)
    needles = _secret_needles(signing_key)
    jobs, leaks = [], []
    original = container.run_job

    def recording(client, job, *args, **kwargs):
        outcome = original(client, job, *args, **kwargs)
        jobs.append(job)
        for bind in job.binds:
            if bind.target == "/eb/rootfs":
                continue
            for path in Path(bind.host).rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    leaks.extend((str(path), n) for n, v in needles.items() if v in data)
        return outcome

    container.run_job = recording
    progress = Recorder()
    try:
        result = pipeline.build(spec, output=root / "out", progress=progress)
    finally:
        container.run_job = original
    return {
        "result": result,
        "out": root / "out",
        "progress": progress,
        "jobs": jobs,
        "leaks": leaks,
        "needles": needles,
        "root": root,
        "spec": spec,
    }


def test_tflite_occlum_build_end_to_end(encrypted_build, signing_key):
    from cryptography.hazmat.primitives import serialization

    out = encrypted_build["out"]
    measurements = json.loads((out / "measurements.json").read_text())
    assert measurements["libos"] == "occlum" and measurements["framework"] == "tflite"
    assert (measurements["isv_prod_id"], measurements["isv_svn"], measurements["debug"]) == (
        7,
        3,
        False,
    )
    modulus = (
        serialization.load_pem_private_key(signing_key.read_bytes(), None)
        .private_numbers()
        .public_numbers.n
    )
    assert measurements["mr_signer"] == hashlib.sha256(modulus.to_bytes(384, "little")).hexdigest()
    assert measurements["image"]["digest"].startswith("sha256:")

    policy = (out / "secrets-policy.toml").read_text()
    assert measurements["mr_enclave"] in policy and 'name = "face-detect-key"' in policy
    # Occlum's init asks for the image key as "image_key", in its text form; the model key raw.
    from enclave_build.contract.policy_fragment import PolicyFragment

    rules = {r.name: r for r in PolicyFragment.load(out).secrets}
    assert rules["face-detect-key@image_key"].requested_as == "image_key"
    assert rules["face-detect-key@image_key"].encoding == "hex-dashes"
    assert rules["face-detect-key"].encoding == "raw"  # the default: not written
    assert rules["face-detect-key"].file == rules["face-detect-key@image_key"].file

    files = _image_files(out)
    signed = files["/enclave/build/lib/libocclum-libos.signed.so"]
    sigstruct = signed[-1808:]  # the stand-in catsig appends the SIGSTRUCT
    assert sigstruct[0x3C0:0x3E0].hex() == measurements["mr_enclave"]
    assert int.from_bytes(sigstruct[0x80:0x200], "little") == modulus
    occlum_json = json.loads(files["/enclave/Occlum.json"])
    assert occlum_json["metadata"]["product_id"] == 7
    # Occlum takes the command line from the host: the measured launcher is the only entry.
    assert occlum_json["entry_points"] == ["/opt/enclave-build/occlum/launch.py"]
    # Symbolic links of the package became the files they reach.
    assert (
        files["/enclave/build/lib/libocclum-pal.so.0"]
        == files["/enclave/build/lib/libocclum-pal.so.0.31.0"]
    )
    assert files["/enclave/build/bin/occlum-run"].startswith(b"#!/bin/sh\necho 'stand-in")
    assert not any(p.startswith("/enclave/run/") for p in files)
    # Occlum writes its status file and run/ at start: /enclave belongs to the runtime user.
    owners = _owners(out)
    assert owners["/enclave"] == owners["/enclave/.__occlum_status"] == (10001, 10001)
    assert owners["/enclave/build/lib/libocclum-libos.signed.so"] == (0, 0)

    index = json.loads(
        next(
            d for d in _layers(out) if b'"mediaType"' in d and b'"config"' in d and b'"layers"' in d
        )
    )
    config = json.loads(
        (out / "oci/blobs" / index["config"]["digest"].replace(":", "/")).read_bytes()
    )
    entry = config["config"]["Entrypoint"]
    assert entry[:2] == ["/bin/sh", "-c"] and "/opt/occlum/build/bin/occlum run" in entry[2]
    assert entry[4:] == ["/opt/enclave-build/occlum/launch.py"]
    assert config["config"]["WorkingDir"] == "/enclave"
    assert config["config"]["Labels"]["org.enclave-build.mr_enclave"] == measurements["mr_enclave"]


def test_progress_and_container_output_are_shown(encrypted_build):
    progress = encrypted_build["progress"]
    stages = [s for s in progress.stages if s.startswith("occlum: ")]
    assert stages == [
        "occlum: occlum new",
        "occlum: configure",
        "occlum: copy_bom",
        "occlum: occlum build",
        "occlum: occlum print",
        "occlum: occlum package",
    ]
    text = "\n".join(progress.lines)
    assert "occlum | Built the Occlum image and enclave successfully" in text
    assert "occlum | Enclave sign-tool: /eb/config/sign-tool" in text
    assert "occlum | Enclave sign-key: /dev/null" in text  # no key in the container
    assert not any(line.startswith("occlum | @@enclave-build") for line in progress.lines)


def test_image_key_used_and_model_never_in_clear(encrypted_build):
    out = encrypted_build["out"]
    jobs = encrypted_build["jobs"]
    assert len(jobs) == 1
    binds = {b.target: b for b in jobs[0].binds}
    assert binds["/eb/secrets"].read_only and binds["/eb/rootfs"].read_only
    assert binds["/eb/stage"].read_only and not binds["/eb/work"].read_only
    text = "\n".join(encrypted_build["progress"].lines)
    assert "Image encryption key: /eb/secrets/image_key" in text
    assert "init_ra_conf.json: kms_server secrets.example.com:4433, 1 key(s)" in text
    key = (encrypted_build["root"] / "keys" / "face-detect-key.key").read_bytes()
    key_text = "-".join(f"{b:02x}" for b in key).encode()
    blobs = _layers(out)
    for data in blobs:
        assert MODEL[4:200] not in data, "the model is in an image layer in clear"
        assert key not in data and key_text not in data, "the image key is in an image layer"
    files = _image_files(out)
    assert b'"image_type": "encrypted"' in files["/enclave/build/initfs/__ROOT/metadata"]


def test_signing_key_never_in_a_layer_nor_in_the_container(encrypted_build):
    assert encrypted_build["leaks"] == [], "the signing key reached a bind-mounted directory"
    for data in _layers(encrypted_build["out"]):
        for name, needle in encrypted_build["needles"].items():
            assert needle not in data, f"the signing key's {name} is in an image layer"
    assert all(b.host.name != "key.pem" for b in encrypted_build["jobs"][0].binds)


def test_clear_model_builds_an_integrity_only_image_without_init_ra(
    toolchain, runtime_base, signing_key, tmp_path
):
    """The negative of the test above: without encryption the model IS in the image's SEFS
    stand-in in clear (so that check can fail), no --image-key, plain `occlum new`."""
    from enclave_build.builder import build as pipeline

    spec = _project(tmp_path / "project", runtime_base, signing_key, encrypt=False)
    progress = Recorder()
    result = pipeline.build(spec, output=tmp_path / "out", progress=progress)
    text = "\n".join(progress.lines)
    assert "Image encryption key" not in text and "GRPC RATLS" not in text
    assert not (tmp_path / "out" / "secrets-policy.toml").exists()
    files = _image_files(tmp_path / "out")
    assert MODEL[4:200] in files["/enclave/build/mount/__ROOT/metadata"]
    assert b'"image_type": "integrity-only"' in files["/enclave/build/initfs/__ROOT/metadata"]
    assert result.measurements.mr_enclave != ""


def test_failing_step_names_it_quotes_its_output_and_writes_nothing(
    toolchain, runtime_base, signing_key, tmp_path, monkeypatch
):
    """A staged model that changed after planning: copy_bom's hash check fails in the
    container; the error names the step and its last lines; no output directory appears."""
    from enclave_build.builder import build as pipeline
    from enclave_build.builder.occlum import backend
    from enclave_build.builder.occlum.container import StepFailed

    spec = _project(tmp_path / "project", runtime_base, signing_key)
    original = backend.stage_plan_files

    def tampered(plan, stage, generated=()):
        original(plan, stage, generated)
        victim = next(stage.rglob("model.tflite"))
        victim.write_bytes(victim.read_bytes() + b"changed")

    monkeypatch.setattr(backend, "stage_plan_files", tampered)
    with pytest.raises(StepFailed) as caught:
        pipeline.build(spec, output=tmp_path / "out", progress=Recorder())
    message = str(caught.value)
    assert caught.value.step == "copy_bom"
    assert "Occlum build step 'copy_bom' failed (exit code 1)" in message
    assert "model.tflite does not match its hash" in message
    assert "  | " in message
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_two_step_external_signing(toolchain, runtime_base, signing_key, tmp_path):
    """Step one stops after `occlum build` with the bytes to sign (as for Gramine); the key
    holder signs them elsewhere; step two finishes with --signature. A signature over other
    bytes is refused."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    private = serialization.load_pem_private_key(signing_key.read_bytes(), None)
    public = tmp_path / "public.pem"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    spec = _project(tmp_path / "project", runtime_base, None, public_key=public)

    first = run_cli("build", str(spec), "--output", str(tmp_path / "out"))
    assert first.returncode == 3, first.stderr.decode()
    tbs = tmp_path / "project" / "face-detect.sigstruct.tbs"
    data = tbs.read_bytes()
    assert len(data) == 256
    assert "external signing: MRENCLAVE " + data[188:220].hex() in first.stderr.decode()
    assert not (tmp_path / "out").exists()

    wrong = tmp_path / "wrong.sig"
    other = bytearray(data)
    other[200] ^= 1  # a different MRENCLAVE
    wrong.write_bytes(private.sign(bytes(other), padding.PKCS1v15(), hashes.SHA256()))
    refused = run_cli(
        "build", str(spec), "--output", str(tmp_path / "out"), "--signature", str(wrong)
    )
    assert refused.returncode != 0
    assert "signature does not match" in refused.stderr.decode()
    assert not (tmp_path / "out").exists()

    signature = tmp_path / "enclave.sig"
    signature.write_bytes(private.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    second = run_cli(
        "build", str(spec), "--output", str(tmp_path / "out"), "--signature", str(signature)
    )
    assert second.returncode == 0, second.stderr.decode()
    measurements = json.loads((tmp_path / "out" / "measurements.json").read_text())
    assert measurements["mr_enclave"] == data[188:220].hex()
    assert (
        measurements["mr_signer"]
        == hashlib.sha256(
            private.public_key().public_numbers().n.to_bytes(384, "little")
        ).hexdigest()
    )
    err = second.stderr.decode()
    assert "occlum: occlum package: 1 step in" in err  # a progress line per step
    assert "occlum | The package occlum_instance.tar.gz is generated successfully" in err


def test_no_docker_engine_says_what_to_run(runtime_base, signing_key, tmp_path):
    spec = _project(tmp_path / "project", runtime_base, signing_key)
    proc = run_cli(
        "build",
        str(spec),
        "--output",
        str(tmp_path / "out"),
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "ENCLAVE_BUILD_OCCLUM_IMAGE": ""},
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "need a Docker engine, and none is reachable" in err
    assert "docker pull occlum/occlum:0.31.0-ubuntu22.04" in err
    assert f"enclave-build build {spec}" in err
    assert not (tmp_path / "out").exists()


def test_a_gramine_base_is_refused_for_occlum(signing_key, tmp_path, standin_root):
    spec = _project(tmp_path / "project", standin_root, signing_key)
    proc = run_cli("build", str(spec), "--output", str(tmp_path / "out"))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "image.base: the base image" in err and "/opt/occlum/build/bin/occlum" in err
    assert "occlum/occlum:0.31.0-rt-ubuntu20.04" in err and "base build occlum-python" in err


def test_the_refusal_names_the_base_actually_read(
    runtime_base, signing_key, tmp_path, standin_root
):
    """`--base` overrides [image] base: the refusal names the base that was read, not the
    spec's; a runtime base without the framework's program says so, naming image.base."""
    spec = _project(tmp_path / "project", runtime_base, signing_key)
    proc = run_cli(
        "build", str(spec), "--output", str(tmp_path / "out"), "--base", f"dir:{standin_root}"
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert f"the base image dir:{standin_root} has no /opt/occlum/build/bin/occlum" in err
    assert str(runtime_base) not in err

    bare = tmp_path / "occlum-runtime-only"
    shutil.copytree(runtime_base, bare, symlinks=True)
    python = next(p for p in (bare / "usr/bin").glob("python3*") if not p.is_symlink())
    for path in (bare / "usr/bin").glob("python3*"):
        path.unlink()
    proc = run_cli("build", str(spec), "--output", str(tmp_path / "out"), "--base", f"dir:{bare}")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "image.base: the base image" in err and f"has no /usr/bin/{python.name}" in err
    assert "framework's runtimes" in err and "base build occlum-python" in err
    assert not (tmp_path / "out").exists()


def test_inspect_and_run_say_plainly_they_do_not_handle_occlum_builds(encrypted_build):
    """inspect reads Gramine's SIGSTRUCT only and `run --simulate` runs Gramine builds only:
    for an Occlum build both say so (not "no SIGSTRUCT ... rebuild"), and neither claims the
    identity agrees."""
    out = encrypted_build["out"]
    inspected = run_cli("inspect", str(out), "--json")
    assert inspected.returncode == 1
    report = json.loads(inspected.stdout)
    assert report["agrees"] is False and report["labels"]["libos"] == "occlum"
    assert report["problems"] == [
        p for p in report["problems"] if "libos = 'occlum'" in p and "Gramine's SIGSTRUCT" in p
    ]
    assert len(report["problems"]) == 1
    ran = run_cli("run", str(out), "--simulate")
    err = ran.stderr.decode()
    assert ran.returncode == 1, err
    assert "built with libos = 'occlum'; `run --simulate` runs Gramine builds only" in err
    assert "disagree" not in err
