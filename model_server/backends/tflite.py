"""The ``tflite`` backend: LiteRT (``ai-edge-litert``), or ``tflite-runtime`` where that is the
only wheel for the platform.

Options (``models[].options``): none yet; unknown options are refused so typos do not pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import (
    SERVE_EXTRA,
    Backend,
    BackendError,
    InferenceError,
    Runtime,
    TensorSpec,
    from_numpy_dtype,
)

#: Ops of TFLite resource variables: a model with them keeps state between invocations.
_VARIABLE_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise BackendError(
                "the tflite backend needs ai-edge-litert (or tflite-runtime); neither is installed"
            ) from None
    return Interpreter


class TFLiteBackend(Backend):
    platform = "tensorflowlite"
    runtimes = (Runtime(("ai_edge_litert", "tflite_runtime"), SERVE_EXTRA),)

    def __init__(self, model, source, *, interpreter: Callable[..., Any] | None = None) -> None:
        """*interpreter* makes the TFLite interpreter (``model_path=``, ``num_threads=``):
        ai-edge-litert's, or tflite-runtime's, unless given."""
        super().__init__(model, source)
        if model.options:
            raise BackendError(
                f"model {model.name}: the tflite backend takes no options "
                f"(got {', '.join(sorted(model.options))})"
            )
        make = interpreter if interpreter is not None else _interpreter_class()
        self._it = make(model_path=str(source.path), num_threads=max(1, model.threads))
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()
        self._shapes: dict[str, tuple[int, ...] | None] = {
            d["name"]: tuple(int(x) for x in d["shape"]) for d in self._in
        }

    def state(self) -> str | None:
        """Resource variables (their ops, as the interpreter lists them) and variable tensors
        (e.g. a stateful LSTM's)."""
        found = []
        try:
            ops = {d.get("op_name") for d in self._it._get_ops_details()}
        except (AttributeError, TypeError, ValueError):  # an interpreter without that listing
            ops = set()
        used = sorted(op for op in _VARIABLE_OPS if op in ops)
        if used:
            found.append(f"resource variables (ops {', '.join(used)})")
        return "TFLite " + " and ".join(found) if found else None

    @staticmethod
    def _spec(d) -> TensorSpec:
        sig = d.get("shape_signature")
        shape = sig if sig is not None and len(sig) else d["shape"]
        return TensorSpec(d["name"], from_numpy_dtype(d["dtype"]), [int(x) for x in shape])

    def inputs(self) -> list[TensorSpec]:
        return [self._spec(d) for d in self._in]

    def outputs(self) -> list[TensorSpec]:
        return [self._spec(d) for d in self._out]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self._it
        for d in self._in:
            if 0 in inputs[d["name"]].shape:
                raise InferenceError(
                    f"input {d['name']!r}: shape "
                    f"{list(inputs[d['name']].shape)} has a zero-sized "
                    "dimension"
                )
        try:
            resized = False
            for d in self._in:
                arr = inputs[d["name"]]
                if arr.shape != self._shapes[d["name"]]:
                    self._shapes[d["name"]] = None  # unknown until allocate_tensors succeeds
                    it.resize_tensor_input(d["index"], list(arr.shape))
                    resized = True
            if resized:
                it.allocate_tensors()
                for d in self._in:
                    self._shapes[d["name"]] = tuple(inputs[d["name"]].shape)
            for d in self._in:
                it.set_tensor(d["index"], inputs[d["name"]])
            it.invoke()
            # get_tensor returns a copy: safe to hand out after this instance serves the next
            # request
            out = {d["name"]: it.get_tensor(d["index"]) for d in self._out}
        except Exception:
            # a failed resize/allocate/set/invoke leaves the interpreter half-changed: force a
            # resize and allocation next time instead of invoking on stale tensors
            for name in self._shapes:
                self._shapes[name] = None
            raise
        return out
