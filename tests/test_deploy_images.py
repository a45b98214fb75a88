"""The two images a Kubernetes deployment needs besides the enclave's (base_images/aesmd,
base_images/secret-server): their Dockerfiles parsed and held to what `enclave-build k8s`
generates (user ids, ports, paths, read-only root filesystem), pinned versions and no secrets.

They are built by the user. Intel's repository and Docker Hub are out of reach here, so the
aesmd image is checked structurally only; the secret-server image is also built for real on a
stand-in of its Python base and run as the Deployment runs it (integration)."""

from __future__ import annotations

import json
import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from enclave_build.base_images import BASES
from enclave_build.builder.k8s import deployment, secret_server
from enclave_build.builder.realbase.commands import RUNTIME_UID

from .conftest import REPO, run_cli
from .test_k8s import make_build, render

AESMD = BASES["aesmd"].directory / "Dockerfile"
SECRET_SERVER = BASES["secret-server"].directory / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), re.sub(r"\s+", " ", rest.strip())))
    return out


def args_of(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in instructions(path) if w == "ARG" and "=" in a)


def last(path: Path, word: str) -> str:
    return [a for w, a in instructions(path) if w == word][-1]


def exec_form(text: str) -> list[str]:
    return json.loads(text)


def _manifests(tmp_path):
    return render(make_build(tmp_path, "tflite"))


def _object(manifests, kind: str, component: str):
    return next(
        o
        for o in manifests.objects.values()
        if o["kind"] == kind
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == component
    )


@pytest.mark.parametrize("path", [AESMD, SECRET_SERVER], ids=["aesmd", "secret-server"])
def test_non_root_pinned_and_no_secrets(path):
    user = last(path, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), user  # numeric: runAsNonRoot
    args = args_of(path)
    (base,) = [a for w, a in instructions(path) if w == "FROM"]
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"[a-z0-9./-]+:[0-9][\w.-]*", resolved) and "latest" not in resolved
    for word, rest in instructions(path):
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.(pem|key|crt|p12|toml|json)\b|secret", rest, re.I), rest
            assert word == "COPY" and "--from" not in rest
        if word in ("ENV", "ARG"):
            assert not re.search(r"(KEY|PASSWORD|TOKEN|SECRET)\w*\s*=", rest), rest
    assert last(path, "HEALTHCHECK").startswith("--interval=")


def test_aesmd_pins_every_intel_package_and_the_repository_key():
    text = " ".join(a for w, a in instructions(AESMD) if w == "RUN")
    args = args_of(AESMD)
    installed = re.findall(r'"((?:lib)?sgx-[\w-]+)=\$\{(\w+)\}"', text)
    names = {name for name, _ in installed}
    assert {
        "sgx-aesm-service",
        "libsgx-aesm-ecdsa-plugin",
        "libsgx-aesm-pce-plugin",
        "libsgx-aesm-quote-ex-plugin",
        "libsgx-dcap-default-qpl",
        "libsgx-ae-qe3",
        "libsgx-ae-pce",
    } <= names
    # Every Intel package named anywhere in the install is pinned to one release.
    assert set(re.findall(r"\b(?:lib)?sgx-[a-z0-9-]+(?==)", text)) == names
    assert args["SGX_PSW_VERSION"] == "2.25.100.3-jammy1"
    assert args["SGX_DCAP_VERSION"] == "1.22.100.3-jammy1"
    assert re.fullmatch(r"[0-9A-F]{40}", args["INTEL_SGX_REPO_FINGERPRINT"])
    assert "https://download.01.org/intel-sgx/sgx_repo/ubuntu/intel-sgx-deb.key" in text
    assert (
        "signed-by=/etc/apt/keyrings/intel-sgx.gpg] "
        "https://download.01.org/intel-sgx/sgx_repo/ubuntu jammy main" in text
    )
    # The key's fingerprint is compared before the key is trusted, and the build stops if not.
    assert (
        text.index('"$found" != "${INTEL_SGX_REPO_FINGERPRINT}"')
        < text.index("gpg --dearmor")
        < text.index('"sgx-aesm-service=')
    )
    assert "exit 1" in text


def test_aesmd_is_what_the_generated_sidecar_expects(tmp_path):
    manifests = _manifests(tmp_path)
    model = _object(manifests, "Deployment", "model-server")
    pod = model["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "aesmd")
    context = sidecar["securityContext"]
    # The sidecar runs as the service's user, read-only: the image's user is that uid.
    uid, gid = (int(x) for x in last(AESMD, "USER").split(":"))
    assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid) == (RUNTIME_UID, 0)
    assert context["readOnlyRootFilesystem"] is True
    # What it writes is a volume in both: the socket directory and the data directory.
    volumes = set(exec_form(last(AESMD, "VOLUME")))
    mounted = {m["mountPath"] for m in sidecar["volumeMounts"] if not m.get("readOnly")}
    assert volumes == mounted == {deployment.AESMD_SOCKET_DIR, "/var/opt/aesmd"}
    # The same socket: the image's health check, the sidecar's startup probe, and the
    # directory the enclave container shares.
    socket = f"{deployment.AESMD_SOCKET_DIR}/aesm.socket"
    assert exec_form(last(AESMD, "HEALTHCHECK").split(" CMD ", 1)[1]) == ["test", "-S", socket]
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-S", socket]
    assert {"name": "aesmd-socket", "mountPath": deployment.AESMD_SOCKET_DIR} in pod["containers"][
        0
    ]["volumeMounts"]
    # The quote provider reads its PCCS from the file the ConfigMap is mounted at.
    assert any(
        m["mountPath"] == deployment.QCNL_CONFIG == "/etc/sgx_default_qcnl.conf"
        for m in sidecar["volumeMounts"]
    )
    assert exec_form(last(AESMD, "ENTRYPOINT"))[1:] == ["--no-daemon", "--no-syslog"]


def test_secret_server_is_what_the_generated_deployment_expects(tmp_path):
    manifests = _manifests(tmp_path)
    deploy = _object(manifests, "Deployment", "secret-server")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    context = container["securityContext"]
    uid, gid = (int(x) for x in last(SECRET_SERVER, "USER").split(":"))
    assert (
        (context["runAsUser"], context["runAsGroup"])
        == (uid, gid)
        == (secret_server.USER, secret_server.USER)
    )
    assert context["readOnlyRootFilesystem"] is True
    # The port: EXPOSEd, the container port, what the health check dials.
    assert (
        last(SECRET_SERVER, "EXPOSE")
        == str(secret_server.PORT)
        == str(container["ports"][0]["containerPort"])
    )
    health = " ".join(exec_form(last(SECRET_SERVER, "HEALTHCHECK").split(" CMD ", 1)[1]))
    assert f"('127.0.0.1', {secret_server.PORT})" in health
    # Its command is the image's entrypoint with the generated config path; the default CMD
    # names the same file.
    entry = exec_form(last(SECRET_SERVER, "ENTRYPOINT"))
    config = f"{secret_server.CONFIG_DIR}/secrets.toml"
    assert container["command"] == entry + ["--config", config]
    assert exec_form(last(SECRET_SERVER, "CMD")) == ["--config", config]
    # The only writable place is /tmp: a volume in the image, an emptyDir in the pod.
    assert exec_form(last(SECRET_SERVER, "VOLUME")) == ["/tmp"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    env = dict(
        a.split("=", 1)
        for w, rest in instructions(SECRET_SERVER)
        if w == "ENV"
        for a in shlex.split(rest)
    )
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_secret_server_installs_the_wheel_with_exactly_the_pinned_dependencies():
    """requirements.txt is enclave-build's whole run-time closure, each at constraints.txt's
    version; the Dockerfile installs it without a resolver and checks it."""
    pins = {}
    for line in (BASES["secret-server"].directory / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    constraints = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.split(";")[0].strip().partition("==")
            constraints[canonicalize_name(name)] = version
    assert {n: constraints.get(n) for n in pins} == pins
    closure: set[str] = set()
    todo = ["enclave-build"]
    while todo:
        for text in metadata.distribution(todo.pop()).requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name not in closure:
                closure.add(name)
                todo.append(req.name)
    assert set(pins) == closure
    run = " ".join(a for w, a in instructions(SECRET_SERVER) if w == "RUN")
    assert "--no-deps --only-binary=:all: -r /tmp/enclave-build/requirements.txt" in run
    assert "--no-deps /tmp/enclave-build/enclave_build-*.whl" in run
    assert "pip check" in run
    copies = [a for w, a in instructions(SECRET_SERVER) if w == "COPY"]
    assert copies == [
        "requirements.txt /tmp/enclave-build/requirements.txt",
        "*.whl /tmp/enclave-build/",
    ]


def test_base_build_secret_server_needs_an_enclave_build_wheel(tmp_path):
    proc = run_cli("base", "build", "secret-server")
    assert proc.returncode == 2 and b"pass --wheel FILE" in proc.stderr
    bogus = tmp_path / "other-1.0-py3-none-any.whl"
    bogus.write_bytes(b"PK")
    proc = run_cli("base", "build", "secret-server", "--wheel", str(bogus))
    assert proc.returncode == 2 and b"not an enclave-build wheel" in proc.stderr
    proc = run_cli("base", "build", "aesmd", "--wheel", str(bogus))
    assert proc.returncode == 2 and b"does not install enclave-build" in proc.stderr


def test_the_deploy_images_ship_in_the_package():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["enclave_build.base_images"]
    assert "*/Dockerfile" in globs and "*/requirements.txt" in globs
    assert AESMD.is_file() and SECRET_SERVER.is_file()


@pytest.fixture(scope="module")
def python_standin_image(dockerd, tmp_path_factory):
    """What the secret-server Dockerfile builds FROM (python:3.11-slim-bookworm, on Docker Hub,
    out of reach here), stood in by Debian 12's own Python 3.11 with pip: made by mmdebstrap
    and imported into the test engine. Like a user's base on their network, it trusts the
    certificate authorities this machine trusts (its pip reaches PyPI through them)."""
    import os
    import shutil
    import subprocess

    import docker

    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.skip("needs root and mmdebstrap to make a Python base image")
    tar = tmp_path_factory.mktemp("python-image") / "rootfs.tar"
    proc = subprocess.run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            "--include=python3.11,python3-pip",
            '--customize-hook=rm -f "$1/usr/lib/python3.11/EXTERNALLY-MANAGED"',
            '--customize-hook=ln -sf /usr/bin/python3.11 "$1/usr/local/bin/python"',
            "--customize-hook=install -m 0644 /etc/ssl/certs/ca-certificates.crt "
            '"$1/etc/ssl/certs/build-host-ca.crt"',
            '--customize-hook=printf "[global]\\ncert = /etc/ssl/certs/build-host-ca.crt\\n" '
            '> "$1/etc/pip.conf"',
            "bookworm",
            str(tar),
            "http://deb.debian.org/debian",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot make the Python base (Debian mirror?): {proc.stderr[-500:]}")
    client = docker.DockerClient(base_url=dockerd.host)
    client.api.import_image_from_file(str(tar), repository="eb-test/python", tag="3.11-standin")
    return "eb-test/python:3.11-standin"


@pytest.mark.integration
def test_the_secret_server_image_builds_and_serves_non_root_on_a_read_only_root(
    dockerd, python_standin_image, tmp_path
):
    """The real Dockerfile, built by `base build secret-server --wheel` (pip takes the pinned
    wheels from PyPI), run as the generated Deployment runs it: its user, a read-only root,
    /tmp a tmpfs, the configuration mounted read-only at the path the YAML mounts it. It
    serves on 4433 and the image's own health check passes."""
    import os
    import subprocess
    import sys
    import time

    import docker

    from .attest_env import make_env

    wheels = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("enclave_build-*.whl")
    proc = run_cli(
        "base",
        "build",
        "secret-server",
        "--wheel",
        str(wheel),
        "--tag",
        "eb-test/secret-server:test",
        "--build-arg",
        f"PYTHON_IMAGE={python_standin_image}",
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode().startswith("eb-test/secret-server:test sha256:")

    env = make_env(tmp_path / "config")
    config = env.config.read_text().replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{secret_server.PORT}"'
    )
    env.config.write_text(config.replace('audit_log = "audit.jsonl"', 'audit_log = "-"'))
    for path in [env.directory, *env.directory.rglob("*")]:
        os.chown(path, secret_server.USER, secret_server.USER)
    client = docker.DockerClient(base_url=dockerd.host)
    image = client.images.get("eb-test/secret-server:test")
    assert image.attrs["Config"]["User"] == "10001:10001"
    container = client.containers.run(
        image.id,
        detach=True,
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": ""},
        volumes={str(env.directory): {"bind": f"{secret_server.CONFIG_DIR}", "mode": "ro"}},
    )
    try:
        deadline = time.monotonic() + 60
        while b"serving on" not in container.logs() and time.monotonic() < deadline:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()
            time.sleep(0.5)
        logs = container.logs().decode()
        assert f"serving on 127.0.0.1:{secret_server.PORT}" in logs, logs
        health = image.attrs["Config"]["Healthcheck"]["Test"]
        assert health[0] == "CMD"
        code, out = container.exec_run(health[1:])
        assert code == 0, out
        assert container.exec_run(
            ["python", "-c", "import os; print(os.getuid(), os.getgid())"]
        ).output.split() == [b"10001", b"10001"]
        code, out = container.exec_run(["python", "-c", "open('/etc/x', 'w')"])
        assert code != 0 and b"Read-only file system" in out
    finally:
        container.remove(force=True)
