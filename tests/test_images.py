"""Images against real parts: a Docker engine and docker-registry started on 127.0.0.1.

The base image is built here FROM scratch (the stand-in Gramine tree; with ../shared present,
its libpal.so and offsets file are the ones from the Gramine 1.9 conformance vectors), because
Docker Hub cannot be reached from this machine.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import optional_vectors, run_cli, tflite_bytes, write_spec
from .services import start_registry, stop

pytestmark = pytest.mark.integration

BASE_TAG = "eb-test/gramine-standin:1"

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"

[enclave]
size = "1G"
max_threads = 16
isv_prod_id = 5
isv_svn = 2

[image]
base = "docker-daemon:{base}"
tag = "face:test"

[secrets]
server = "secrets.example.com:4433"
ca = "ca.pem"
keys_dir = "{keys}"

[build]
reproducible = true

[signing]
key = "key.pem"
"""


@pytest.fixture(scope="session")
def base_image(dockerd, registry, tmp_path_factory) -> str:
    """The stand-in Gramine base, built FROM scratch in the engine and pushed to the registry."""
    import docker

    from enclave_build.builder.standin import PKGLIBDIR, PYDIR, make_standin_rootfs

    context = tmp_path_factory.mktemp("base-context")
    root = make_standin_rootfs(context / "rootfs")
    vectors = optional_vectors("sgx-sign")
    if vectors is not None:  # the real gramine-sgx-sign test PAL and offsets
        shutil.copyfile(vectors / "fakepal_a.so", root / PKGLIBDIR.lstrip("/") / "sgx/libpal.so")
        shutil.copyfile(
            vectors / "_graminelibos_offsets.py",
            root / PYDIR.lstrip("/") / "_graminelibos_offsets.py",
        )
    (context / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/bin:/bin LANG=C.UTF-8\n"
        "LABEL org.example.base=standin\n"
    )
    client = docker.from_env()
    client.images.build(path=str(context), tag=BASE_TAG, network_mode="host", rm=True)
    remote = f"{registry.address}/gramine-standin:1"
    client.images.get(BASE_TAG).tag(remote)
    for line in client.images.push(remote, stream=True, decode=True):
        assert "error" not in line, line
    return BASE_TAG


def _project(
    directory: Path, signing_key: Path, keys: Path, model_size: int = 200_000, base: str = BASE_TAG
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * (model_size // 256)))
    (directory / "ca.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    )
    shutil.copy(signing_key, directory / "key.pem")
    return write_spec(directory, SPEC.format(base=base, keys=keys))


def _build(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("build", "spec.toml", *args, cwd=directory)


def test_build_push_pull_back_by_digest_and_inspect(
    base_image, registry, dockerd, tmp_path, signing_key
):
    import docker

    _project(tmp_path / "p", signing_key, tmp_path / "keys")
    target = f"{registry.address}/face:1"
    proc = _build(tmp_path / "p", "--tag", target, "--push", "--output", "../out")
    assert proc.returncode == 0, proc.stderr.decode()
    measurements = json.loads((tmp_path / "out/measurements.json").read_text())
    digest = measurements["image"]["digest"]
    pushed = f"{registry.address}/face@{digest}"
    assert proc.stdout.decode().strip().splitlines()[-1] == pushed
    assert measurements["image"]["ref"] == pushed

    # The engine pulls it back by digest; the labels and the SIGSTRUCT inside agree.
    client = docker.from_env()
    pulled = client.images.pull(f"{registry.address}/face", tag=digest)
    labels = pulled.labels
    assert labels["org.enclave-build.mr_enclave"] == measurements["mr_enclave"]
    assert labels["org.enclave-build.isv_prod_id"] == "5"
    assert pulled.attrs["Config"]["Entrypoint"] == ["gramine-sgx", "/enclave/face"]
    container = client.containers.create(pulled.id)
    try:
        stream, _ = container.get_archive("/enclave/face.sig")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            sig = tar.extractfile("face.sig").read()
        stream, _ = container.get_archive("/enclave/face.manifest.sgx")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            manifest = tar.extractfile("face.manifest.sgx").read()
    finally:
        container.remove()
    (tmp_path / "face.sig").write_bytes(sig)
    info = json.loads(run_cli("gramine", "sigstruct", str(tmp_path / "face.sig"), "--json").stdout)
    assert info["mr_enclave"] == measurements["mr_enclave"]

    vectors = optional_vectors("sgx-sign")
    if vectors is not None:
        # Independent cross-check: re-measure the manifest taken out of the pulled image with the
        # conformance vectors' PAL and offsets (which the base image carries).
        (tmp_path / "m.sgx").write_bytes(manifest)
        again = run_cli(
            "gramine",
            "sign",
            "--manifest",
            str(tmp_path / "m.sgx"),
            "--libpal",
            str(vectors / "fakepal_a.so"),
            "--offsets",
            str(vectors / "_graminelibos_offsets.py"),
            "--key",
            str(signing_key),
            "--date",
            "0000-00-00",
            "--sigfile",
            str(tmp_path / "again.sig"),
            "--json",
        )
        assert json.loads(again.stdout)["mr_enclave"] == measurements["mr_enclave"]
        assert (tmp_path / "again.sig").read_bytes() == sig

    check = run_cli("inspect", f"docker://{pushed}", "--json")
    assert check.returncode == 0, check.stderr.decode()
    assert json.loads(check.stdout)["agrees"] is True
    assert json.loads(check.stdout)["digest"] == digest


def test_every_base_transport_gives_the_same_enclave(
    base_image, registry, dockerd, tmp_path, signing_key
):
    import docker

    archive = tmp_path / "base.tar"
    with open(archive, "wb") as out:
        for chunk in docker.from_env().images.get(BASE_TAG).save(named=True):
            out.write(chunk)
    bases = [
        f"docker-daemon:{BASE_TAG}",
        f"docker://{registry.address}/gramine-standin:1",
        f"{registry.address}/gramine-standin:1",
        f"docker-archive:{archive}",
    ]
    results = {}
    for index, base in enumerate(bases):
        directory = tmp_path / f"p{index}"
        _project(directory, signing_key, tmp_path / "keys")
        proc = _build(directory, "--base", base, "--output", "out", "--json")
        assert proc.returncode == 0, f"{base}: {proc.stderr.decode()}"
        results[base] = json.loads(proc.stdout)
    # An OCI layout written by one build is itself a base for another (oci: and oci-archive:).
    layout = tmp_path / "p0/out/oci"
    with tarfile.open(tmp_path / "layout.tar", "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=path.relative_to(layout).as_posix(), recursive=False)
    for base in (f"oci:{layout}", f"oci-archive:{tmp_path / 'layout.tar'}"):
        directory = tmp_path / f"q{len(results)}"
        _project(directory, signing_key, tmp_path / "keys")
        proc = _build(directory, "--base", base, "--json")
        assert proc.returncode == 0, f"{base}: {proc.stderr.decode()}"
        results[base] = json.loads(proc.stdout)
    # Same base files through every transport: the same enclave (mr_signer would prove nothing:
    # it depends only on the key).
    assert len({r["mr_enclave"] for r in results.values()}) == 1, results
    # The same base bytes give the same image: `docker save` output by the engine or from a file,
    # one registry image named two ways, one OCI layout as a directory or a tar. (The registry
    # holds the engine's layers gzipped, so its digests differ from the engine's by design.)
    digest = {base: r["image"]["digest"] for base, r in results.items()}
    assert all(d and d.startswith("sha256:") for d in digest.values()), digest
    assert digest[bases[0]] == digest[bases[3]], digest
    assert digest[bases[1]] == digest[bases[2]], digest
    assert digest[f"oci:{layout}"] == digest[f"oci-archive:{tmp_path / 'layout.tar'}"], digest


def test_reproducible_digest_across_directories_and_time(
    base_image, dockerd, tmp_path, signing_key
):
    outputs = []
    for name in ("first", "second/nested"):
        _project(tmp_path / name, signing_key, tmp_path / "keys")
        proc = _build(tmp_path / name, "--output", "out", "--json")
        assert proc.returncode == 0, proc.stderr.decode()
        outputs.append(json.loads(proc.stdout))
        time.sleep(1.1)
    assert outputs[0]["image"]["digest"] == outputs[1]["image"]["digest"]
    assert outputs[0]["mr_enclave"] == outputs[1]["mr_enclave"]


def test_load_into_the_engine(base_image, dockerd, tmp_path, signing_key):
    import docker

    _project(tmp_path / "p", signing_key, tmp_path / "keys")
    proc = _build(tmp_path / "p", "--load", "--tag", "face:loaded", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    measurements = json.loads(proc.stdout)
    image = docker.from_env().images.get("face:loaded")
    assert image.labels["org.enclave-build.mr_signer"] == measurements["mr_signer"]
    assert "8000/tcp" in image.attrs["Config"]["ExposedPorts"]
    assert image.attrs["Config"]["Env"] == ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
    assert image.labels["org.example.base"] == "standin"  # base config kept


def test_sigkill_during_build_leaves_no_partial_output(base_image, dockerd, tmp_path, signing_key):
    project = tmp_path / "p"
    _project(project, signing_key, tmp_path / "keys", model_size=1000)
    assert _build(project, "--output", "../out").returncode == 0
    before = (tmp_path / "out/measurements.json").read_text()
    layout_before = sorted(p.name for p in (tmp_path / "out/oci/blobs/sha256").iterdir())

    (project / "model.tflite").write_bytes(
        tflite_bytes(os.urandom(400 << 20))
    )  # slow enough to be killed
    env = {**os.environ, "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
    victim = subprocess.Popen(
        [sys.executable, "-m", "enclave_build", "build", "spec.toml", "--output", "../out"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    staged = None
    while time.monotonic() < deadline and victim.poll() is None:
        staged = [
            p
            for p in Path(tempfile.gettempdir()).glob(f".enclave-build.tmp-{victim.pid}-*")
            if any(p.rglob("*.tflite"))
        ]
        if staged:
            break
        time.sleep(0.05)
    assert staged, "the build never reached encryption"
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert (tmp_path / "out/measurements.json").read_text() == before
    assert sorted(p.name for p in (tmp_path / "out/oci/blobs/sha256").iterdir()) == layout_before

    rerun = _build(project, "--output", "../out")
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert (tmp_path / "out/measurements.json").read_text() != before  # the new model
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert not list(Path(tempfile.gettempdir()).glob(f".enclave-build.tmp-{victim.pid}-*"))


def test_registry_authentication_errors_are_clear(base_image, dockerd, tmp_path, signing_key):
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("builder:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode())
    reg = start_registry(tmp_path / "auth-registry", htpasswd)
    try:
        _project(tmp_path / "p", signing_key, tmp_path / "keys")
        target = f"{reg.address}/face:1"
        empty = tmp_path / "no-creds"
        empty.mkdir()
        anonymous = run_cli(
            "build",
            "spec.toml",
            "--tag",
            target,
            "--push",
            cwd=tmp_path / "p",
            env={"DOCKER_CONFIG": str(empty)},
        )
        assert anonymous.returncode == 1
        assert (
            f"registry {reg.address} needs credentials for face: run `docker login "
            f"{reg.address}`".encode()
            in anonymous.stderr
        )

        wrong = tmp_path / "wrong"
        wrong.mkdir()
        (wrong / "config.json").write_text(
            json.dumps(
                {"auths": {reg.address: {"auth": base64.b64encode(b"builder:nope").decode()}}}
            )
        )
        refused = run_cli(
            "build",
            "spec.toml",
            "--tag",
            target,
            "--push",
            cwd=tmp_path / "p",
            env={"DOCKER_CONFIG": str(wrong)},
        )
        assert refused.returncode == 1
        assert f"registry {reg.address} refused the credentials for face".encode() in refused.stderr

        good = tmp_path / "good"
        good.mkdir()
        (good / "config.json").write_text(
            json.dumps(
                {"auths": {reg.address: {"auth": base64.b64encode(b"builder:s3cret").decode()}}}
            )
        )
        ok = run_cli(
            "build",
            "spec.toml",
            "--tag",
            target,
            "--push",
            cwd=tmp_path / "p",
            env={"DOCKER_CONFIG": str(good)},
        )
        assert ok.returncode == 0, ok.stderr.decode()
        assert ok.stdout.decode().strip().splitlines()[-1].startswith(f"{reg.address}/face@sha256:")
    finally:
        stop(reg.process)


def test_missing_base_images_are_clear_errors(dockerd, registry, tmp_path, signing_key):
    _project(tmp_path / "p", signing_key, tmp_path / "keys")
    daemon = _build(tmp_path / "p", "--base", "docker-daemon:no/such:image")
    assert daemon.returncode == 1
    assert b"the Docker engine has no image 'no/such:image'" in daemon.stderr
    remote = _build(tmp_path / "p", "--base", f"{registry.address}/no-such:1")
    assert remote.returncode == 1
    assert f"image {registry.address}/no-such:1: not found".encode() in remote.stderr
