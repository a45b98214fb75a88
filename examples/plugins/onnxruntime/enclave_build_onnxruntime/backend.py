"""The ``onnxruntime`` backend of enclave-build's model server.

Registered under the entry-point group ``enclave_model_server.backends``; inside the enclave the
framework plugin names the class directly (``enclave_build_onnxruntime.backend:OnnxRuntimeBackend``)
so no package metadata is needed there.

Options (``models[].options`` in the server config): ``graph_optimization`` — one of
``disabled``, ``basic``, ``extended``, ``all`` (default ``all``).
"""

from __future__ import annotations

import numpy as np

from enclave_build.model_server.backends import (
    Backend,
    BackendError,
    InferenceError,
    Runtime,
    TensorSpec,
)

#: ONNX Runtime's type names -> KServe v2 datatypes.
_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
}
_LEVELS = ("disabled", "basic", "extended", "all")


def _dims(shape) -> list[int]:
    """ONNX dimensions: ints stay, symbolic names and None become -1 (dynamic)."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


class OnnxRuntimeBackend(Backend):
    platform = "onnxruntime_onnx"
    #: Checked by the server before it fetches any key.
    runtimes = (Runtime(("onnxruntime",), "pip install onnxruntime"),)

    def __init__(self, model, source) -> None:
        super().__init__(model, source)
        import onnxruntime

        unknown = set(model.options) - {"graph_optimization"}
        if unknown:
            raise BackendError(
                f"model {model.name}: unknown onnxruntime option(s) "
                f"{', '.join(sorted(unknown))}; allowed: graph_optimization"
            )
        level = model.options.get("graph_optimization", "all")
        if level not in _LEVELS:
            raise BackendError(
                f"model {model.name}: graph_optimization {level!r} is not one of "
                f"{', '.join(_LEVELS)}"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, model.threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(
            onnxruntime.GraphOptimizationLevel,
            {
                "disabled": "ORT_DISABLE_ALL",
                "basic": "ORT_ENABLE_BASIC",
                "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL",
            }[level],
        )
        self._session = onnxruntime.InferenceSession(
            source.read_bytes(), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [self._spec(i) for i in self._session.get_inputs()]
        self._outputs = [self._spec(o) for o in self._session.get_outputs()]

    @staticmethod
    def _spec(arg) -> TensorSpec:
        datatype = _TYPES.get(arg.type)
        if datatype is None:
            raise BackendError(f"tensor {arg.name!r}: ONNX type {arg.type} is not supported")
        return TensorSpec(arg.name, datatype, _dims(arg.shape))

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._outputs]
        try:
            results = self._session.run(names, inputs)
        except Exception as exc:  # onnxruntime raises its own types for bad shapes
            if type(exc).__name__ in ("InvalidArgument", "Fail", "InvalidGraph"):
                raise InferenceError(str(exc).splitlines()[0]) from None
            raise
        return dict(zip(names, results, strict=True))

    def close(self) -> None:
        self._session = None
