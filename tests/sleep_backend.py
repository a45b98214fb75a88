"""A model-server backend for tests: ``y = x * 2`` after sleeping ``options["seconds"]`` (a slow
model whose speed the test chooses). Served as ``"backend": "tests.sleep_backend:SleepBackend"``
by a server whose PYTHONPATH holds the repository."""

from __future__ import annotations

import time

from enclave_build.model_server.backends import Backend, TensorSpec


class SleepBackend(Backend):
    platform = "sleep"

    def __init__(self, model, source) -> None:
        super().__init__(model, source)
        self.seconds = float(model.options.get("seconds", 0))

    def inputs(self):
        return [TensorSpec("x", "FP32", [-1])]

    def outputs(self):
        return [TensorSpec("y", "FP32", [-1])]

    def infer(self, inputs):
        time.sleep(self.seconds)
        return {"y": inputs["x"] * 2}
