"""Ports and runtimes checked before any key is fetched: by the model server at start-up
(a real process) and by `enclave-build run` on the host before it starts anything.

Each used to be found after the key exchange: a port in use showed a raw gRPC C++ log line and
"cannot listen for gRPC on 127.0.0.1:8001" without naming the spec key (or that changing it
changes MRENCLAVE); a missing `[serve]` runtime was an ImportError after the keys arrived.
Here a stand-in secret server (a plain TCP listener) counts the connections the model server
makes: none, every time. A missing runtime is made by a `sitecustomize` that hides modules
from the import system (as if they were not installed).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from enclave_build.contract.server_config import KeysConfig, Listener, ModelConfig, ServerConfig
from enclave_build.model_server import preflight
from enclave_build.model_server.backends import Backend, BackendError, Runtime
from enclave_build.model_server.runtimes import serve_install_command

from .conftest import run_cli, write_spec
from .models import face_detection_tflite, stateful_tflite

REPO = Path(__file__).resolve().parent.parent
C_LOG = ("chttp2", "E0000", "Unable to configure socket", "Address already in use")


class KeyServerStandIn:
    """A listening socket where the secret server would be: counts connections, answers none."""

    def __enter__(self) -> KeyServerStandIn:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        return self

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def __exit__(self, *exc) -> None:
        self.sock.close()


def _busy_port(reuseport: bool = False) -> socket.socket:
    sock = socket.socket()
    if reuseport:  # as grpcio's own servers bind
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _hiding(tmp_path: Path, modules: tuple[str, ...]) -> dict[str, str]:
    """Environment for a Python whose import system does not find *modules*."""
    site = tmp_path / "hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"""import sys

HIDDEN = {set(modules)!r}


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
""")
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def _config(
    tmp_path: Path,
    model: Path,
    *,
    grpc: Listener,
    rest: Listener,
    keys: str | None = None,
    instances: int = 1,
) -> Path:
    config = ServerConfig(
        "svc",
        (ModelConfig("fd", "1", "tflite", str(model), "k" if keys else None, instances),),
        grpc=grpc,
        rest=rest,
        keys=KeysConfig(keys, str(tmp_path / "ca.pem"), ("k",), 2) if keys else None,
    )
    path = tmp_path / "model-server.json"
    path.write_text(config.to_json())
    return path


def _server(config: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enclave_build.model_server", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "ENCLAVE_BUILD_SIMULATED_QUOTER": "",
            **(env or {}),
        },
    )


# --------------------------------------------------------------------------- the model server


@pytest.mark.parametrize("reuseport", [False, True])
def test_a_grpc_port_in_use_stops_the_server_before_any_key(tmp_path, reuseport):
    """Also when the holder is a gRPC server (SO_REUSEPORT), which grpcio would otherwise
    share the port with, silently."""
    busy = _busy_port(reuseport)
    port = busy.getsockname()[1]
    with busy, KeyServerStandIn() as keys:
        config = _config(
            tmp_path,
            face_detection_tflite(),
            grpc=Listener("127.0.0.1", port, "tflite.grpc_port"),
            rest=Listener("127.0.0.1", 0, "tflite.rest_port"),
            keys=keys.address,
        )
        proc = _server(config)
        assert keys.connections() == 0
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [
        f"model_server: not starting (no key was fetched): cannot listen for gRPC on "
        f"127.0.0.1:{port}: the address is already in use (another process listens there); it "
        "is [tflite] grpc_port in the spec, measured into the enclave: another port changes "
        "MRENCLAVE (rebuild with it), or stop what holds this one"
    ]
    assert not any(word in proc.stderr.replace("already in use (another", "") for word in C_LOG)


def test_a_rest_port_in_use_names_its_key(tmp_path):
    with _busy_port() as busy, KeyServerStandIn() as keys:
        port = busy.getsockname()[1]
        config = _config(
            tmp_path,
            face_detection_tflite(),
            grpc=Listener("127.0.0.1", 0, "onnxruntime.grpc_port"),
            rest=Listener("127.0.0.1", port, "onnxruntime.rest_port"),
            keys=keys.address,
        )
        proc = _server(config)
        assert keys.connections() == 0
    assert proc.returncode == 1
    assert f"cannot listen for REST on 127.0.0.1:{port}" in proc.stderr
    assert "it is [onnxruntime] rest_port in the spec" in proc.stderr


@pytest.mark.parametrize(
    "hidden, words",
    [
        (
            ("ai_edge_litert", "tflite_runtime"),
            "the tflite backend (models: fd) needs the Python module ai_edge_litert (or "
            "tflite_runtime), which is not installed where the server runs: "
            + serve_install_command(),
        ),
        (
            ("httptools",),
            "the REST listener needs the Python module httptools, which is not "
            "installed where the server runs: " + serve_install_command(),
        ),
        (("grpc",), "the gRPC listener needs the Python module grpc"),
    ],
)
def test_a_missing_runtime_stops_the_server_before_any_key(tmp_path, hidden, words):
    with KeyServerStandIn() as keys:
        config = _config(
            tmp_path,
            face_detection_tflite(),
            grpc=Listener("127.0.0.1", 0),
            rest=Listener("127.0.0.1", 0),
            keys=keys.address,
        )
        proc = _server(config, _hiding(tmp_path, hidden))
        assert keys.connections() == 0
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("model_server: not starting (no key was fetched): ")
    assert words in proc.stderr


def test_a_stateful_model_with_two_instances_is_warned_about_at_start(tmp_path):
    model = tmp_path / "state.tflite"
    model.write_bytes(stateful_tflite())
    config = _config(
        tmp_path, model, grpc=Listener("127.0.0.1", 0), rest=Listener("127.0.0.1", 0), instances=2
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave_build.model_server", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "model_server: serving" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    said = "".join(lines)
    assert (
        "model_server: warning: model fd keeps state between requests (TFLite resource "
        "variables (ops ASSIGN_VARIABLE, READ_VARIABLE, VAR_HANDLE)); each of its 2 "
        "instances keeps its own"
    ) in said, said


# --------------------------------------------------------------------------- `enclave-build run`


def _tflite_build(tmp_path: Path, standin_root: Path, signing_key: Path, port: int) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(face_detection_tflite(), project / "face.tflite")
    shutil.copy(signing_key, project / "key.pem")
    write_spec(
        project,
        f"""[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "face.tflite"
encrypt = false

[signing]
key = "key.pem"

[tflite]
grpc_port = {port}
rest_port = {port + 1 if port < 65535 else port - 1}
""",
    )
    built = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=project
    )
    assert built.returncode == 0, built.stderr.decode()
    return project / "out"


def test_run_refuses_a_port_in_use_before_starting_anything(tmp_path, standin_root, signing_key):
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        out = _tflite_build(tmp_path, standin_root, signing_key, port)
        proc = run_cli("run", str(out), "--simulate", cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert (
        f"error: not started: cannot listen for gRPC on 127.0.0.1:{port}: the address is "
        "already in use"
    ) in err
    assert (
        "it is [tflite] grpc_port in the spec, measured into the enclave: another port "
        "changes MRENCLAVE" in err
    )
    assert "SIMULATION" not in err and "quoter" not in err  # nothing was started


def test_run_refuses_a_missing_runtime_with_the_install_line(tmp_path, standin_root, signing_key):
    with _busy_port() as probe:
        port = probe.getsockname()[1]
    out = _tflite_build(tmp_path, standin_root, signing_key, port)
    proc = run_cli(
        "run",
        str(out),
        "--simulate",
        cwd=tmp_path,
        env=_hiding(tmp_path, ("ai_edge_litert", "tflite_runtime")),
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert (
        "error: not started: the tflite backend (models: face) needs the Python module "
        "ai_edge_litert (or tflite_runtime), which is not installed where the server runs: "
        f"{sys.executable} -m pip install 'grpcio"
    ) in err
    # the serve extra's own distributions (enclave-build is not on PyPI), all of them
    assert serve_install_command() in err and "ai-edge-litert" in serve_install_command()
    assert "enclave-build[serve]" not in err
    assert "SIMULATION" not in err


# --------------------------------------------------------------------------- units


def test_spec_keys_read_as_the_spec_writes_them():
    assert preflight.spec_key_text("tflite.grpc_port") == "[tflite] grpc_port"
    assert preflight.spec_key_text("secret-server.port") == "[secret-server] port"
    assert preflight.spec_key_text(None) == ""
    failure = preflight.port_failure("gRPC", Listener("::1", 9, None), "busy")
    assert failure.message.startswith(
        "cannot listen for gRPC on [::1]:9: busy; it is the gRPC "
        "port of model-server.json, measured into the enclave"
    )


def test_two_listeners_on_one_port_are_found():
    with _busy_port() as probe:
        port = probe.getsockname()[1]
    config = ServerConfig(
        "svc",
        (),
        grpc=Listener("127.0.0.1", port, "tflite.grpc_port"),
        rest=Listener("127.0.0.1", port, "tflite.rest_port"),
    )
    failures = preflight.port_failures(config)
    assert len(failures) == 1 and "[tflite] rest_port" in failures[0].message
    assert preflight.listen_problem("127.0.0.1", port) is None  # nothing kept open
    with socket.socket() as again:  # free again at once
        again.bind(("127.0.0.1", port))
    assert (
        preflight.port_failures(ServerConfig("svc", (), grpc=Listener("127.0.0.1", 0), rest=None))
        == []
    )


def test_runtime_failures_follow_the_backends_declarations():
    class Declared(Backend):
        runtimes = (Runtime(("not_a_module_here",), "pip install my-runtime"),)

    def backend(name: str) -> type:
        if name == "broken":
            raise BackendError("backend 'broken' failed to load: boom")
        return Declared

    config = ServerConfig(
        "svc",
        (
            ModelConfig("a", "1", "mine", "/a"),
            ModelConfig("b", "1", "mine", "/b"),
            ModelConfig("c", "1", "broken", "/c"),
        ),
        rest=None,
    )
    failures = preflight.runtime_failures(config, backend)
    assert [f.message for f in failures] == [
        "backend 'broken' failed to load: boom (models: c)",
        "the mine backend (models: a, b) needs the Python module not_a_module_here, which is "
        "not installed where the server runs: pip install my-runtime",
    ]
    assert all(f.exit_code == 2 for f in failures)
    everything = preflight.runtime_failures(config, backend, find=lambda name: object())
    assert [f.message for f in everything] == ["backend 'broken' failed to load: boom (models: c)"]


def test_the_builtin_backends_declare_their_runtimes():
    from enclave_build.model_server.backends import load_backend_class

    assert load_backend_class("tflite").runtimes == (Runtime(("ai_edge_litert", "tflite_runtime")),)
    assert load_backend_class("openvino").runtimes == (Runtime(("openvino",)),)
    assert Runtime(("a", "b", "c")).describe() == "a (or b, c)"
    assert not Runtime(("os",)).missing() and Runtime(("no_such_module_xyz",)).missing()
