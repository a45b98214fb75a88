"""Backends: the runtimes that execute a model. This module is the public API for plugin authors.

Writing a backend
-----------------
Subclass :class:`Backend` (or just follow the same shape) in your own package::

    import numpy as np
    from enclave_build.model_server.backends import Backend, TensorSpec, from_numpy_dtype

    class OnnxRuntimeBackend(Backend):
        platform = "onnxruntime_onnx"          # reported in model metadata

        def __init__(self, model, source):
            super().__init__(model, source)
            import onnxruntime                 # import the runtime lazily, inside __init__
            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = model.threads
            self.session = onnxruntime.InferenceSession(source.read_bytes(), opts)

        def inputs(self):
            return [TensorSpec(i.name, ..., [d if isinstance(d, int) else -1 for d in i.shape])
                    for i in self.session.get_inputs()]

        def outputs(self): ...

        def infer(self, inputs):
            names = [o.name for o in self.outputs()]
            return dict(zip(names, self.session.run(names, inputs)))

and register it under the entry-point group ``enclave_model_server.backends``::

    [project.entry-points.enclave_model_server.backends]
    onnxruntime = "my_plugin.backend:OnnxRuntimeBackend"

A model whose config says ``"backend": "onnxruntime"`` is then served by it. ``"backend"`` may
also be written ``"package.module:Class"`` to name a class directly (no package metadata needed,
which is what an enclave image without ``.dist-info`` directories wants).

The contract
------------
* ``Backend(model, source)``: ``model`` is the :class:`~model_server.config.ModelConfig`
  (``name``, ``version``, ``path``, ``instances``, ``threads`` — use it for the runtime's thread
  count — and ``options``, a dict of backend-specific settings from the config); ``source`` is a
  :class:`~model_server.keys.ModelSource`: open ``source.path`` (a real file: decrypted already
  when the model was encrypted) or call ``source.read_bytes()``. Never open ``model.path``
  yourself: it is an image path, and in a simulation or for an encrypted model it is not the
  file to read. Raise any exception to refuse the model: the server then exits non-zero at start-up
  with your message.
* The server makes ``model.instances`` objects per model (one per pool slot). Each object is used
  by **one request at a time**, always from a worker thread (never the event loop), so ``infer``
  may block and need not be thread-safe; different objects run concurrently. Release the GIL in
  the runtime if you can (all mainstream runtimes do).
* ``inputs()`` / ``outputs()``: lists of :class:`TensorSpec` (name, KServe datatype such as
  ``"FP32"``, shape with ``-1`` for a dynamic dimension). They are called once after
  construction; the server validates every request against them (names, datatypes, ranks and
  fixed dimensions), so ``infer`` only sees well-formed inputs. A zero-sized value in a dynamic
  dimension is refused (INVALID_ARGUMENT / 400) unless the class sets ``accepts_empty = True``.
  What ``infer`` returns is checked against ``outputs()`` too (every output present, rank and
  fixed dimensions): a mismatch is answered INTERNAL / 500, never passed on.
* ``infer(inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]``: one array per input
  name, already of the spec's dtype and a matching shape. Arrays are **read-only views over the
  request bytes** (zero copy): copy before writing into one. Return every output (the server
  picks the ones a request asked for); the server converts each array's dtype to a datatype with
  :func:`from_numpy_dtype` and serializes it with one ``tobytes``. Returned arrays must not be
  reused by the backend for later requests (return copies of internal buffers), and must come
  from this call: a runtime object reused across calls (an infer request, an interpreter) can
  keep an earlier request's outputs when an odd input makes it write none, so bind fresh output
  buffers per call or check what came back.
* ``close()``: optional; called once at shutdown.
* ``runtimes``: a class attribute, the Python modules the backend imports at run time
  (:class:`Runtime`: import names, any one of which will do, and the command that installs
  them). The server checks them before it fetches any key, and stops with that command when
  one is missing (``runtimes = (Runtime(("onnxruntime",), "pip install onnxruntime"),)``).
* ``state()``: optional; what state the loaded model keeps between ``infer`` calls (variables
  it assigns), in words, or None. The server warns at start-up when such a model has more than
  one instance: each instance keeps its own state.
* Errors in ``infer``: raise :class:`InferenceError` for a problem with the request (the client
  gets INVALID_ARGUMENT / HTTP 400 with your message); any other exception is a server error
  (INTERNAL / 500), logged, and the server keeps serving.

Helpers exported here: :class:`TensorSpec`, :class:`Runtime`, :func:`to_numpy_dtype`,
:func:`from_numpy_dtype`, ``DATATYPES``, :class:`InferenceError`, :func:`load_backend_class`.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..datatypes import DATATYPES, TensorError, from_numpy_dtype, to_numpy_dtype
from ..errors import ModelServerError
from ..runtimes import SERVE_EXTRA, Runtime

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..keys import ModelSource

__all__ = [
    "Backend",
    "TensorSpec",
    "Runtime",
    "SERVE_EXTRA",
    "InferenceError",
    "BackendError",
    "ENTRY_POINT_GROUP",
    "BUILTINS",
    "DATATYPES",
    "to_numpy_dtype",
    "from_numpy_dtype",
    "load_backend_class",
]

ENTRY_POINT_GROUP = "enclave_model_server.backends"

# Builtins import directly (no package-metadata scan inside the enclave); they are also
# registered under the entry-point group like any third-party backend.
BUILTINS: dict[str, str] = {
    "tflite": "enclave_build.model_server.backends.tflite:TFLiteBackend",
    "openvino": "enclave_build.model_server.backends.openvino:OpenVINOBackend",
}


class InferenceError(TensorError):
    """Raised by a backend for a request it cannot run (reported to the client as its fault)."""


class BackendError(ModelServerError, RuntimeError):
    """A backend could not be found or loaded."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 name: "FP32", "INT64", "BYTES", ...
    shape: list[int] = field(default_factory=list)  # -1 marks a dynamic dimension

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise BackendError(
                f"tensor {self.name!r}: datatype {self.datatype!r} is not one of "
                f"{', '.join(DATATYPES)}"
            )
        object.__setattr__(self, "shape", [int(d) for d in self.shape])

    @property
    def dtype(self) -> np.dtype:
        return to_numpy_dtype(self.datatype)

    def accepts(self, shape: list[int] | tuple[int, ...]) -> bool:
        """Whether a concrete shape fits this spec (same rank, fixed dimensions equal)."""
        return len(shape) == len(self.shape) and all(
            want < 0 or want == got for want, got in zip(self.shape, shape, strict=True)
        )

    def as_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class Backend(abc.ABC):
    """Base class of a backend (see the module docstring for the full contract). A subclass
    that leaves out inputs, outputs or infer cannot be instantiated (TypeError at start-up)."""

    platform: ClassVar[str] = "unknown"
    #: The Python modules the backend imports at run time (checked before keys are fetched).
    runtimes: ClassVar[tuple[Runtime, ...]] = ()

    def __init__(self, model: ModelConfig, source: ModelSource) -> None:
        self.model = model
        self.source = source

    def state(self) -> str | None:
        """The state the loaded model keeps between calls, in words (None: none known)."""
        return None

    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """See the module docstring."""

    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """See the module docstring."""

    @abc.abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See the module docstring."""

    def close(self) -> None:  # noqa: B027 - optional: a backend holding nothing need not close
        pass


def _import_target(target: str):
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {target}: cannot import {module_name} ({exc})") from None
    obj = module
    for part in attr.split(".") if attr else []:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BackendError(f"backend {target}: {module_name} has no {attr}") from None
    return obj


def load_backend_class(name: str) -> type:
    """The class for a config ``backend`` value: a builtin, ``module:Class``, or an entry point."""
    if name in BUILTINS:
        return _import_target(BUILTINS[name])
    if ":" in name:
        return _import_target(name)
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = sorted(set(BUILTINS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
        raise BackendError(
            f"no backend named {name!r}; installed: {', '.join(known)} "
            f"(entry-point group {ENTRY_POINT_GROUP})"
        )
    try:
        return found[0].load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must name itself
        raise BackendError(f"backend {name!r} ({found[0].value}) failed to load: {exc}") from None
