"""The ``openvino`` backend: the OpenVINO runtime (PyPI ``openvino``) reading an IR model
(``.xml`` with its ``.bin`` next to it), an ``.onnx`` file or a ``.tflite`` file.

Options (``models[].options``): ``device`` (default ``"CPU"``), ``config``, a dict of
OpenVINO properties passed to ``compile_model`` (``INFERENCE_NUM_THREADS`` defaults to the
model's ``threads``; ``INFERENCE_PRECISION_HINT`` to ``"f32"``, so a CPU with bfloat16 units does
not silently change the model's answers — set ``"bf16"`` there to trade accuracy for speed), and ``check_batch`` (default true: an output whose first dimension is
dynamic must have the first dimension of the inputs, when theirs is dynamic too; set false for a
model whose outputs are not batched that way, e.g. a variable number of detections).

Each instance keeps one ``InferRequest`` (creating one per call makes OpenVINO's CPU plugin
crash or answer wrongly after some dynamic shapes), but every call binds fresh tensors: new input
tensors over the request's arrays, and a new zero-filled (for a dynamic output: empty) output
tensor per output, so whatever the runtime does not write is that placeholder, never an earlier
request's result (a reused request otherwise keeps the previous outputs when an odd input makes
the runtime skip them, and those belong to another client). Outputs are copied out and checked
against the compiled model's output shapes and the batch (see above); a mismatch is refused as
the request's fault (HTTP 400 / INVALID_ARGUMENT). Zero-sized dimensions are refused.

Element types: a model is served only when every input and output has a numeric or boolean
type that maps one to one onto a KServe datatype (f32/f16/f64, i8-i64, u8-u64, boolean). A model
with a string tensor (KServe BYTES), bf16, or a packed type (u1, i4/u4, nf4, f8, f4) is refused
at start-up with the tensor's name: numpy has no dtype for those, so the runtime cannot take or
give them as arrays (a string input always failed, a dynamic string output crashes the
process), and advertising them as another datatype would mean answering wrong numbers.

``import openvino`` sends a usage event to Google Analytics (``openvino.tools.ovc`` through
``openvino_telemetry``, in a forked process, unless a consent file in $HOME says no). A model
server must not phone home, and inside Gramine that fork checkpoints the whole process (seconds):
the telemetry package is blocked before the import, so OpenVINO uses its own no-op stub.
"""

from __future__ import annotations

import sys

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

_OPTIONS = {"device", "config", "check_batch"}
#: OpenVINO element types served, each equal to a numpy dtype (and so to a KServe datatype).
SERVED_TYPES = (
    "f32",
    "f16",
    "f64",
    "i8",
    "i16",
    "i32",
    "i64",
    "u8",
    "u16",
    "u32",
    "u64",
    "boolean",
)


def _spec(port, fallback: str, model: str, kind: str) -> TensorSpec:
    try:
        name = port.get_any_name()
    except RuntimeError:  # an unnamed port
        name = fallback
    element = port.get_element_type()
    type_name = element.get_type_name()
    if type_name not in SERVED_TYPES:
        raise BackendError(
            f"model {model}: {kind} {name!r} has element type {type_name}, "
            "which the openvino backend does not serve (string tensors, i.e. "
            "KServe BYTES, bf16 and packed types cannot be passed as arrays); "
            f"served: {', '.join(SERVED_TYPES)}"
        )
    shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
    return TensorSpec(name, from_numpy_dtype(element.to_dtype()), shape)


def _block_telemetry() -> None:
    """Make ``import openvino_telemetry`` fail (OpenVINO then falls back to its stub)."""
    if "openvino" not in sys.modules:
        # a None entry makes the import fail (the documented way to block a module)
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


class OpenVINOBackend(Backend):
    platform = "openvino"
    runtimes = (Runtime(("openvino",), SERVE_EXTRA),)

    def __init__(self, model, source) -> None:
        super().__init__(model, source)
        unknown = set(model.options) - _OPTIONS
        if unknown:
            raise BackendError(
                f"model {model.name}: unknown openvino option(s) "
                f"{', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_OPTIONS))}"
            )
        try:
            _block_telemetry()
            import openvino as ov
        except ImportError:
            raise BackendError(
                "the openvino backend needs the openvino runtime (pip install openvino)"
            ) from None
        self._ov = ov
        self._core = ov.Core()
        self._device = model.options.get("device", "CPU")
        # f32 unless the model's options say otherwise: on CPUs with bf16 units (AVX512_BF16,
        # AMX) OpenVINO's CPU plugin otherwise computes in bfloat16, and the answers then differ
        # from the model's by far more than rounding (seen: 1.8 on face-detection regressors).
        self._config = {
            "INFERENCE_NUM_THREADS": max(1, model.threads),
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self._config.update(model.options.get("config") or {})
        self._check_batch = bool(model.options.get("check_batch", True))
        self._ov_model = self._core.read_model(str(source.path))
        self._compiled = self._compile()
        # one request per instance: creating and dropping requests per call makes OpenVINO's
        # CPU plugin crash or answer wrongly after some dynamic shapes
        self._request = self._compiled.create_infer_request()
        self._inputs = [
            _spec(p, f"input_{i}", model.name, "input") for i, p in enumerate(self._compiled.inputs)
        ]
        self._outputs = [
            _spec(p, f"output_{i}", model.name, "output")
            for i, p in enumerate(self._compiled.outputs)
        ]
        self._batched_in = [i for i, s in enumerate(self._inputs) if s.shape[:1] == [-1]]
        self._batched_out = [i for i, s in enumerate(self._outputs) if s.shape[:1] == [-1]]

    def state(self) -> str | None:
        """The variables of the infer request (ReadValue/Assign pairs), as OpenVINO lists them."""
        try:
            names = sorted(s.name for s in self._request.query_state())
        except (AttributeError, RuntimeError):
            return None
        return f"OpenVINO variables ({', '.join(names)})" if names else None

    def _compile(self):
        return self._core.compile_model(self._ov_model, self._device, self._config)

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def _run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        ov, request = self._ov, self._request
        # fresh output bindings: what the runtime does not write stays this placeholder (zeros,
        # or an empty shape for a dynamic output), never an earlier request's result
        for i, (port, spec) in enumerate(zip(self._compiled.outputs, self._outputs, strict=True)):
            shape = [0] * len(spec.shape) if -1 in spec.shape else spec.shape
            request.set_output_tensor(
                i, ov.Tensor(np.zeros(shape, port.get_element_type().to_dtype()))
            )
        feed = {i: inputs[spec.name] for i, spec in enumerate(self._inputs)}
        # share_inputs: new input tensors over the request's bytes (no copy); the outputs are
        # copied out, the placeholders above are dropped at the next call
        result = request.infer(feed, share_inputs=True, share_outputs=False)
        return [np.array(result[i], copy=True) for i in range(len(self._outputs))]

    def _mismatch(self, inputs: dict[str, np.ndarray], outs: list[np.ndarray]) -> str | None:
        batch = None
        if self._check_batch and self._batched_in:
            sizes = {inputs[self._inputs[i].name].shape[0] for i in self._batched_in}
            batch = sizes.pop() if len(sizes) == 1 else None
        for i, (spec, arr) in enumerate(zip(self._outputs, outs, strict=True)):
            if -1 in spec.shape and arr.shape == (0,) * len(spec.shape):
                return (
                    f"the runtime produced no output {spec.name!r} for input shape(s) "
                    f"{', '.join(str(list(a.shape)) for a in inputs.values())} (is the "
                    "input too small for this model?)"
                )
            if not spec.accepts(arr.shape):
                return (
                    f"output {spec.name!r} has shape {list(arr.shape)}, the model declares "
                    f"{spec.shape}"
                )
            if batch is not None and i in self._batched_out and arr.shape[0] != batch:
                return (
                    f"output {spec.name!r} has shape {list(arr.shape)} for a batch of "
                    f"{batch} (is the input too small for this model?)"
                )
        return None

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec in self._inputs:
            if 0 in inputs[spec.name].shape:
                raise InferenceError(
                    f"input {spec.name!r}: shape "
                    f"{list(inputs[spec.name].shape)} has a zero-sized "
                    "dimension"
                )
        outs = self._run(inputs)
        problem = self._mismatch(inputs, outs)
        if problem is not None:
            raise InferenceError(problem)
        return {spec.name: arr for spec, arr in zip(self._outputs, outs, strict=True)}
