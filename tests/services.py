"""Real services for integration tests: a Docker engine and `docker-registry` on 127.0.0.1.

Each is started by the tests themselves (nothing from the host is reused) and stopped at the end
of the session. Tests that need one skip with the reason when the binary is not installed (CI
installs docker.io and docker-registry from apt). Base images are never pulled from Docker Hub:
the tests build their own FROM scratch.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, timeout: float = 60.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s\n{tail}")


@dataclass
class Dockerd:
    host: str          # DOCKER_HOST value
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}


def start_dockerd(workdir: Path) -> Dockerd:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (apt-get install docker.io); .ci/run installs it")
    if os.geteuid() != 0:
        pytest.skip("starting dockerd needs root")
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "docker.sock"
    log = workdir / "dockerd.log"
    process = subprocess.Popen(
        ["dockerd", "--storage-driver=vfs", "--iptables=false", "--bridge=none",
         "--data-root", str(workdir / "root"), "--exec-root", str(workdir / "exec"),
         "--pidfile", str(workdir / "dockerd.pid"), "-H", f"unix://{sock}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    host = f"unix://{sock}"

    def up() -> bool:
        import docker
        return docker.DockerClient(base_url=host).ping()

    try:
        _wait(up, "dockerd", 90, log)
    except RuntimeError:
        process.terminate()
        raise
    return Dockerd(host, process)


@dataclass
class Registry:
    address: str       # 127.0.0.1:PORT
    process: subprocess.Popen


def start_registry(workdir: Path, htpasswd: Path | None = None) -> Registry:
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry); "
                    ".ci/run installs it")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = (f"auth:\n  htpasswd:\n    realm: enclave-build-test\n    path: {htpasswd}\n"
            if htpasswd else "")
    config = workdir / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{workdir / 'data'}\n  delete:\n    enabled: true\nhttp:\n  addr: "
                      f"127.0.0.1:{port}\n{auth}")
    log = workdir / "registry.log"
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        _wait(lambda: requests.get(f"http://{address}/v2/", timeout=2).status_code in (200, 401),
              "docker-registry", 30, log)
    except RuntimeError:
        process.terminate()
        raise
    return Registry(address, process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
