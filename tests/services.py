"""Real services for integration tests: a Docker engine and `docker-registry` on 127.0.0.1.

Each is started by the tests themselves (nothing from the host is reused) and stopped at the end
of the session. Tests that need one skip with the reason when the binary is not installed
(scripts/test.sh installs docker.io and docker-registry from apt when run as root). Base images
are never pulled from Docker Hub: the tests build their own FROM scratch.
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
    host: str  # DOCKER_HOST value
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}


def dockerd_unavailable() -> str | None:
    """Why this machine cannot start a test engine (the skip reason), or None."""
    if shutil.which("dockerd") is None:
        return (
            "dockerd is not installed (apt-get install docker.io; scripts/test.sh installs "
            "it when run as root)"
        )
    if os.geteuid() != 0:
        return "starting dockerd needs root"
    return None


def start_dockerd(workdir: Path) -> Dockerd:
    """An engine whose data root, exec root and socket are all in *workdir* (keep its path
    short: a unix socket path has at most 107 bytes). Remove it with remove_tree after stop."""
    reason = dockerd_unavailable()
    if reason:
        pytest.skip(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "docker.sock"
    log = workdir / "dockerd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                "dockerd",
                "--storage-driver=vfs",
                "--iptables=false",
                "--bridge=none",
                "--data-root",
                str(workdir / "root"),
                "--exec-root",
                str(workdir / "exec"),
                "--pidfile",
                str(workdir / "dockerd.pid"),
                "-H",
                f"unix://{sock}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    host = f"unix://{sock}"

    def up() -> bool:
        import docker

        return docker.DockerClient(base_url=host).ping()

    try:
        _wait(up, "dockerd", 90, log)
    except BaseException:
        stop(process)
        raise
    return Dockerd(host, process)


def remove_tree(path: Path) -> None:
    """rm -r *path*, first unmounting what an engine left mounted under it (dockerd bind-mounts
    its data root onto itself and leaves it when killed). Warns instead of failing."""
    import warnings

    prefix = os.path.realpath(path) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        mounts = []
    for point in sorted((m for m in mounts if (m + "/").startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        warnings.warn(f"could not remove {path}", stacklevel=2)


@dataclass
class Registry:
    address: str  # 127.0.0.1:PORT
    process: subprocess.Popen


def start_registry(workdir: Path, htpasswd: Path | None = None) -> Registry:
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        pytest.skip(
            "docker-registry is not installed (apt-get install docker-registry; "
            "scripts/test.sh installs it when run as root)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = (
        f"auth:\n  htpasswd:\n    realm: enclave-build-test\n    path: {htpasswd}\n"
        if htpasswd
        else ""
    )
    config = workdir / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
        f"{workdir / 'data'}\n  delete:\n    enabled: true\nhttp:\n  addr: "
        f"127.0.0.1:{port}\n{auth}"
    )
    log = workdir / "registry.log"
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait(
            lambda: requests.get(f"http://{address}/v2/", timeout=2).status_code in (200, 401),
            "docker-registry",
            30,
            log,
        )
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
