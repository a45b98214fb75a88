"""Small model-server backends for tests, importable by a server process as
``"tests.ms_backends:Name"`` (cwd = the repository). Real backends: they compute their outputs
from the inputs; only the models are tiny."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from enclave_build.model_server.backends import Backend, TensorSpec
from enclave_build.model_server.keys import ModelSource

#: The source of a model whose backend reads no file.
NO_SOURCE = ModelSource("/none", Path("/none"))


class BytesLength(Backend):
    """BYTES input ``s`` of any length; output ``n``: the byte length of each element."""

    platform = "test_bytes"

    def inputs(self):
        return [TensorSpec("s", "BYTES", [-1])]

    def outputs(self):
        return [TensorSpec("n", "INT64", [-1])]

    def infer(self, inputs):
        return {"n": np.array([len(x) for x in inputs["s"]], dtype=np.int64)}


class SlowDouble(Backend):
    """``y = 2 x`` for FP32 ``x`` of shape [-1, 2], taking ``options["seconds"]`` (default 1 s)
    per request: a model slow enough to build a queue."""

    platform = "test_slow"

    def __init__(self, model, source) -> None:
        super().__init__(model, source)
        self.seconds = float(model.options.get("seconds", 1.0))

    def inputs(self):
        return [TensorSpec("x", "FP32", [-1, 2])]

    def outputs(self):
        return [TensorSpec("y", "FP32", [-1, 2])]

    def infer(self, inputs):
        time.sleep(self.seconds)
        return {"y": inputs["x"] * 2}
