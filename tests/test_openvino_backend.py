"""The openvino backend serves only element types that are KServe datatypes one to one: a
model with a string (BYTES) tensor used to be advertised as BYTES and then failed every request
with INTERNAL / 500; now it is refused at start-up naming the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from enclave_build.model_server.backends import BackendError
from enclave_build.model_server.config import ModelConfig

ov = pytest.importorskip("openvino")


class _Source:
    def __init__(self, path) -> None:
        self.path = path


def _identity(tmp_path, element, name: str):
    from openvino import opset13 as ops

    param = ops.parameter([-1], element, name=name)
    path = tmp_path / f"{name}.xml"
    ov.save_model(ov.Model([ops.result(param)], [param], name), str(path))
    return path


def _backend(path):
    from enclave_build.model_server.backends.openvino import OpenVINOBackend

    return OpenVINOBackend(ModelConfig("m", "1", "openvino", str(path)), _Source(path))


def test_a_string_tensor_model_is_refused_at_start_naming_the_tensor(tmp_path):
    with pytest.raises(
        BackendError,
        match=r"model m: input 'text' has element type string.*"
        r"BYTES",
    ):
        _backend(_identity(tmp_path, ov.Type.string, "text"))


def test_bf16_is_not_advertised_as_fp16(tmp_path):
    with pytest.raises(BackendError, match="input 'half' has element type bf16"):
        _backend(_identity(tmp_path, ov.Type.bf16, "half"))


def test_numeric_identity_is_served(tmp_path):
    backend = _backend(_identity(tmp_path, ov.Type.i32, "n"))
    assert [s.datatype for s in backend.inputs()] == ["INT32"]
    x = np.array([1, 2, 3], np.int32)
    assert backend.infer({"n": x})["n"].tolist() == [1, 2, 3]


@pytest.mark.integration
def test_the_server_refuses_to_serve_a_string_model(tmp_path):
    """As a user meets it: the server exits 2 at start, naming the tensor, instead of serving a
    model whose every request fails."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    path = _identity(tmp_path, ov.Type.string, "text")
    config = tmp_path / "server.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "service": "s",
                "grpc": {"host": "127.0.0.1", "port": 0},
                "rest": {"host": "127.0.0.1", "port": 0},
                "models": [{"name": "m", "backend": "openvino", "path": str(path)}],
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "enclave_build.model_server", "--config", str(config)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "input 'text' has element type string" in done.stderr
    assert "serving" not in done.stderr
