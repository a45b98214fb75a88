"""A model-server backend that does no inference: the face-detection model's signature (FP32
input ``input`` [1, 128, 128, 3], outputs ``regressors`` [1, 896, 16] and ``classificators``
[1, 896, 1]: 196 KB in, 61 KB out) with zero-filled outputs. It isolates what serving costs
from what inference costs. Served as ``"backend": "benchmarks.noop_backend:NoopBackend"`` by a
server whose PYTHONPATH holds the repository."""

from __future__ import annotations

import numpy as np

from enclave_build.model_server.backends import Backend, TensorSpec

INPUT = ("input", (1, 128, 128, 3))
OUTPUTS = (("regressors", (1, 896, 16)), ("classificators", (1, 896, 1)))


def noop_outputs() -> dict[str, np.ndarray]:
    """Fresh zero-filled outputs, as a model would write (the floor server makes the same)."""
    return {name: np.zeros(shape, np.float32) for name, shape in OUTPUTS}


class NoopBackend(Backend):
    platform = "noop"

    def inputs(self):
        return [TensorSpec(INPUT[0], "FP32", list(INPUT[1]))]

    def outputs(self):
        return [TensorSpec(name, "FP32", list(shape)) for name, shape in OUTPUTS]

    def infer(self, inputs):
        return noop_outputs()
