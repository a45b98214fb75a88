"""Bases on a machine without a Docker engine, or without the image a base names: the error
says how to build without one (`--base dir:ROOTFS`, the stand-in) and which `base build`
makes that base once an engine runs."""

from __future__ import annotations

import pytest

from enclave_build.builder.image.oci import ImageError
from enclave_build.builder.image.sources import open_base

from .conftest import run_cli, tflite_bytes, write_spec


def test_no_engine_names_dir_and_base_build(monkeypatch, tmp_path):
    """The frameworks' default bases are docker-daemon: images; with no engine the error says
    how to build without one, and which `base build` makes that base once one runs."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ImageError) as caught:
        open_base("docker-daemon:enclave-build/gramine-python:1.9-3.11", cache=tmp_path)
    message = str(caught.value)
    assert "cannot talk to the Docker engine" in message
    assert "--base dir:ROOTFS" in message and "enclave-build base standin DIR" in message
    assert "`enclave-build base build gramine-python` makes this base" in message
    with pytest.raises(ImageError) as other:
        open_base("docker-daemon:someone/else:1", cache=tmp_path)
    assert "--base dir:ROOTFS" in str(other.value) and "base build" not in str(other.value)


def test_missing_engine_image_names_the_base_build_that_makes_it(monkeypatch, tmp_path):
    import docker
    from docker.errors import ImageNotFound

    class Images:
        def get(self, name):
            raise ImageNotFound(f"No such image: {name}")

    class Client:
        images = Images()

    monkeypatch.setattr(docker, "from_env", lambda: Client())
    with pytest.raises(
        ImageError,
        match=r"has no image 'enclave-build/gramine-tfserving:"
        r"1\.9-2\.15\.1'; make it with `enclave-build base build "
        r"gramine-tfserving`.*--base dir:ROOTFS",
    ):
        open_base("docker-daemon:enclave-build/gramine-tfserving:1.9-2.15.1", cache=tmp_path)
    with pytest.raises(ImageError, match=r"has no image 'my/own:2'; `docker pull my/own:2`"):
        open_base("docker-daemon:my/own:2", cache=tmp_path)


def test_base_build_without_an_engine_points_at_doctor(monkeypatch, tmp_path):
    from enclave_build.builder.image.base_build import build_base

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(
        ImageError,
        match=r"cannot talk to the Docker engine.*`enclave-build "
        r"doctor` says how to start one.*--base dir:ROOTFS",
    ):
        build_base("gramine-python", None, None, ())


def test_cli_build_on_the_default_base_without_an_engine(tmp_path, signing_key):
    """The first command of the quick start: a spec without --base, and no engine."""
    (tmp_path / "m.tflite").write_bytes(tflite_bytes(bytes(64)))
    spec = write_spec(
        tmp_path,
        f"""
[service]
name = "face"
framework = "tflite"
[[models]]
name = "m"
path = "m.tflite"
encrypt = false
[signing]
key = "{signing_key}"
""",
    )
    proc = run_cli("build", str(spec), env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "--base dir:ROOTFS" in err and "enclave-build base build gramine-python" in err
    assert not (tmp_path / "out").exists()
