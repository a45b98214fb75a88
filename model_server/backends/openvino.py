"""The ``openvino`` backend: the OpenVINO runtime (PyPI ``openvino``) reading an IR model
(``.xml`` with its ``.bin`` next to it), an ``.onnx`` file or a ``.tflite`` file.

Options (``models[].options``): ``device`` (default ``"CPU"``) and ``config``, a dict of
OpenVINO properties passed to ``compile_model`` (``INFERENCE_NUM_THREADS`` defaults to the
model's ``threads``).

``import openvino`` sends a usage event to Google Analytics (``openvino.tools.ovc`` through
``openvino_telemetry``, in a forked process, unless a consent file in $HOME says no). A model
server must not phone home, and inside Gramine that fork checkpoints the whole process (seconds):
the telemetry package is blocked before the import, so OpenVINO uses its own no-op stub.
"""

from __future__ import annotations

import sys

import numpy as np

from . import Backend, BackendError, TensorSpec, from_numpy_dtype

_OPTIONS = {"device", "config"}


def _spec(port, fallback: str) -> TensorSpec:
    try:
        name = port.get_any_name()
    except RuntimeError:          # an unnamed port
        name = fallback
    shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
    return TensorSpec(name, from_numpy_dtype(port.get_element_type().to_dtype()), shape)


def _block_telemetry() -> None:
    """Make ``import openvino_telemetry`` fail (OpenVINO then falls back to its stub)."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


class OpenVINOBackend(Backend):
    platform = "openvino"

    def __init__(self, model, source) -> None:
        super().__init__(model, source)
        unknown = set(model.options) - _OPTIONS
        if unknown:
            raise BackendError(f"model {model.name}: unknown openvino option(s) "
                               f"{', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_OPTIONS))}")
        try:
            _block_telemetry()
            import openvino as ov
        except ImportError:
            raise BackendError("the openvino backend needs the openvino runtime (pip install "
                               "openvino)") from None
        core = ov.Core()
        path = str(source.path)
        config = {"INFERENCE_NUM_THREADS": max(1, model.threads)}
        config.update(model.options.get("config") or {})
        ov_model = core.read_model(path)
        self._compiled = core.compile_model(ov_model, model.options.get("device", "CPU"), config)
        self._request = self._compiled.create_infer_request()
        self._inputs = [_spec(p, f"input_{i}") for i, p in enumerate(self._compiled.inputs)]
        self._outputs = [_spec(p, f"output_{i}") for i, p in enumerate(self._compiled.outputs)]

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {i: inputs[spec.name] for i, spec in enumerate(self._inputs)}
        # share_inputs: no copy of the request bytes; the results are copied out below because
        # the request's output tensors are reused by the next inference on this instance
        result = self._request.infer(feed, share_inputs=True, share_outputs=False)
        return {spec.name: np.asarray(result[i]) for i, spec in enumerate(self._outputs)}
