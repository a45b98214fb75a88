"""What a model file of each format the builtin frameworks serve looks like, checked on the
build machine before anything is encrypted or written.

Each ``*_problem`` function answers why the file (or directory) is not of its format, or None
when it looks right; the checks read headers and structure, never run a model:

* TFLite (:func:`tflite_problem`): a FlatBuffer with the file identifier ``TFL3`` at bytes 4..8
  and a root table inside the file;
* ONNX (:func:`onnx_problem`): a protobuf ``ModelProto`` whose top-level fields parse to the
  end of the file, with ``ir_version`` and a ``graph``;
* OpenVINO IR (:func:`openvino_ir_problem`): an XML document whose root element is ``<net>``;
* TensorFlow SavedModel (:func:`saved_model_problem`): a directory holding ``saved_model.pb``
  (a protobuf) or ``saved_model.pbtxt``.

And what state a model keeps between requests (:func:`tflite_state`,
:func:`openvino_ir_state`): a model with state (variables it assigns while it runs) gives
different answers to the same request depending on the requests before; served by several
instances, each instance has its own state.

Plugins reach these through :mod:`enclave_build.plugin`. Standard library only.
"""

from __future__ import annotations

import mmap
import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelCheck:
    """A framework's verdict on one model of a spec (what ``enclave_build_check_model``
    returns).

    *accepted*: what the framework serves, in words, for the error ("a TFLite FlatBuffer
    file (.tflite)"); *problem*: why this model is not that, or None when it is; *stateful*:
    the state the model keeps between requests, in words ("TFLite resource variables: ops
    VAR_HANDLE, ASSIGN_VARIABLE"), or None for a stateless model (or one not examined)."""

    accepted: str
    problem: str | None = None
    stateful: str | None = None


# --------------------------------------------------------------------------- TFLite

#: The FlatBuffer file identifier of TFLite models (schema.fbs ``file_identifier``).
TFLITE_IDENTIFIER = b"TFL3"
#: Smaller than this is no TFLite model: root offset, identifier and at least a table.
TFLITE_MIN_SIZE = 32
#: BuiltinOperator codes (schema.fbs) of resource variables: a model using them keeps state.
_TFLITE_VARIABLE_OPS = {142: "VAR_HANDLE", 143: "READ_VARIABLE", 144: "ASSIGN_VARIABLE"}


def tflite_problem(path: Path) -> str | None:
    """Why *path* is not a TFLite model, or None."""
    path = Path(path)
    if path.is_dir():
        return "it is a directory, not a .tflite file"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if size < TFLITE_MIN_SIZE:
        return f"it has {size} bytes; a TFLite FlatBuffer has at least {TFLITE_MIN_SIZE}"
    if head[4:8] != TFLITE_IDENTIFIER:
        return (
            f"bytes 4..8 are {head[4:8]!r}, not the TFLite FlatBuffer identifier "
            f"{TFLITE_IDENTIFIER!r}: not a TFLite model (a TensorFlow SavedModel or a "
            "Keras file must be converted to .tflite first)"
        )
    root = struct.unpack_from("<I", head)[0]
    if not 8 <= root <= size - 4:
        return (
            f"its root table offset ({root}) lies outside the file ({size} bytes): a "
            "truncated or damaged TFLite file"
        )
    return None


class _FlatBuffer:
    """Bounds-checked reads of a FlatBuffer's tables (a malformed file raises ValueError)."""

    def __init__(self, data: bytes | mmap.mmap):
        self.data = data
        self.size = len(data)

    def _u32(self, at: int) -> int:
        if not 0 <= at <= self.size - 4:
            raise ValueError("offset out of bounds")
        return struct.unpack_from("<I", self.data, at)[0]

    def root(self) -> int:
        return self._table(0)

    def _table(self, at: int) -> int:
        return at + self._u32(at)

    def _field(self, table: int, index: int) -> int | None:
        vtable = table - struct.unpack("<i", struct.pack("<I", self._u32(table)))[0]
        if not 0 <= vtable <= self.size - 4:
            raise ValueError("vtable out of bounds")
        vsize = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        if vtable + slot + 2 > self.size:
            raise ValueError("vtable out of bounds")
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int) -> int:
        at = self._field(table, index)
        if at is None:
            return default
        if not 0 <= at <= self.size - struct.calcsize(fmt):
            raise ValueError("field out of bounds")
        return struct.unpack_from(fmt, self.data, at)[0]

    def tables(self, table: int, index: int, limit: int = 1 << 20) -> list[int]:
        at = self._field(table, index)
        if at is None:
            return []
        vector = self._table(at)
        count = self._u32(vector)
        if count > limit or vector + 4 + 4 * count > self.size:
            raise ValueError("vector out of bounds")
        return [self._table(vector + 4 + 4 * i) for i in range(count)]


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap]:
    with path.open("rb") as handle:
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def tflite_state(path: Path) -> str | None:
    """The state a TFLite model keeps between invocations: resource variables (VAR_HANDLE,
    READ_VARIABLE, ASSIGN_VARIABLE ops) and variable tensors (``is_variable``, e.g. the state
    of a stateful LSTM); None for none, or when the file cannot be read that far."""
    try:
        with _mapped(Path(path)) as data:
            fb = _FlatBuffer(data)
            model = fb.root()
            ops = set()
            for code in fb.tables(model, 1):  # Model.operator_codes
                builtin = max(fb.scalar(code, 0, "<b", 0), fb.scalar(code, 3, "<i", 0))
                if builtin in _TFLITE_VARIABLE_OPS:
                    ops.add(_TFLITE_VARIABLE_OPS[builtin])
            variables = 0
            for subgraph in fb.tables(model, 2):  # Model.subgraphs
                for tensor in fb.tables(subgraph, 0):  # SubGraph.tensors
                    variables += bool(fb.scalar(tensor, 5, "<B", 0))  # Tensor.is_variable
    except (OSError, ValueError, struct.error):
        return None
    found = []
    if ops:
        found.append("resource variables (ops " + ", ".join(sorted(ops)) + ")")
    if variables:
        found.append(f"{variables} variable tensor{'s' if variables > 1 else ''}")
    return "TFLite " + " and ".join(found) if found else None


# --------------------------------------------------------------------------- protobuf / ONNX


def _varint(data: bytes | mmap.mmap, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def protobuf_fields(data: bytes | mmap.mmap) -> dict[int, int]:
    """The top-level fields of a protobuf message: field number -> wire type (the last seen).
    ValueError when the bytes are not one well-formed message to their end."""
    fields: dict[int, int] = {}
    at, end = 0, len(data)
    while at < end:
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if number == 0 or number >= 1 << 29:
            raise ValueError(f"field number {number} at byte {at}")
        if wire == 0:
            _, at = _varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 2:
            length, at = _varint(data, at)
            at += length
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"wire type {wire} at byte {at}")
        if at > end:
            raise ValueError("a field runs past the end")
        fields[number] = wire
    return fields


def onnx_problem(path: Path) -> str | None:
    """Why *path* is not an ONNX model (a protobuf ``ModelProto`` with ``ir_version`` (1) and
    a ``graph`` (7)), or None."""
    path = Path(path)
    if path.is_dir():
        return "it is a directory, not an .onnx file"
    try:
        if path.stat().st_size == 0:
            return "it is empty"
        with _mapped(path) as data:
            fields = protobuf_fields(data)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    except ValueError as exc:
        return f"not a protobuf message ({exc}): not an ONNX model"
    if fields.get(1) != 0 or fields.get(7) != 2:
        return "a protobuf message without ir_version and graph: not an ONNX ModelProto"
    return None


# --------------------------------------------------------------------------- OpenVINO IR


def openvino_ir_problem(path: Path) -> str | None:
    """Why *path* is not an OpenVINO IR graph (XML whose root element is ``<net>``), or None.
    Its weights (the .bin of the same name) are checked by the framework."""
    path = Path(path)
    if path.is_dir():
        return "it is a directory, not an IR .xml file"
    try:
        for _, element in ElementTree.iterparse(path, events=("start",)):
            if element.tag != "net":
                return f"its root element is <{element.tag}>, not <net>: not an OpenVINO IR"
            return None
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    except ElementTree.ParseError as exc:
        return f"not XML ({exc}): not an OpenVINO IR"
    return "no XML element in it: not an OpenVINO IR"


#: IR layer types that keep state between inferences (a variable read and assigned).
_IR_STATE_LAYERS = ("ReadValue", "Assign")


def openvino_ir_state(path: Path) -> str | None:
    """The state an OpenVINO IR keeps between inferences: its ReadValue/Assign layers (the
    variables OpenVINO reports as the infer request's states); None for none or unreadable."""
    counts = dict.fromkeys(_IR_STATE_LAYERS, 0)
    try:
        for _, element in ElementTree.iterparse(Path(path), events=("end",)):
            if element.tag == "layer":
                kind = element.get("type")
                if kind in counts:
                    counts[kind] += 1
                element.clear()
    except (OSError, ElementTree.ParseError):
        return None
    if not any(counts.values()):
        return None
    return (
        "OpenVINO variables ("
        + ", ".join(f"{n} {kind} layer{'s' if n > 1 else ''}" for kind, n in counts.items() if n)
        + ")"
    )


# --------------------------------------------------------------------------- SavedModel

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def saved_model_problem(path: Path) -> str | None:
    """Why *path* is not a TensorFlow SavedModel directory (one version of a model, holding
    ``saved_model.pb`` or ``saved_model.pbtxt``), or None. A model's base directory (holding
    version directories ``1/``, ``2/``) is refused naming the version to give instead."""
    path = Path(path)
    if not path.is_dir():
        kind = path.suffix or "file"
        return (
            f"it is a file ({kind}), not a SavedModel directory (a directory holding "
            "saved_model.pb and variables/)"
        )
    if (path / "saved_model.pbtxt").is_file():
        return None
    pb = path / "saved_model.pb"
    if pb.is_file():
        try:
            with pb.open("rb") as handle:
                head = handle.read(1)
        except OSError as exc:
            return f"cannot read saved_model.pb: {exc.strerror or exc}"
        # A SavedModel message starts with field 1 (schema version, varint) or 2 (a graph).
        if head not in (b"\x08", b"\x12"):
            return "its saved_model.pb is not a SavedModel protobuf"
        return None
    versions = sorted(
        (
            p.name
            for p in path.iterdir()
            if p.is_dir()
            and p.name.isdigit()
            and any((p / name).is_file() for name in SAVED_MODEL_FILES)
        ),
        key=int,
    )
    if versions:
        return (
            f"it holds version directories ({', '.join(versions)}); name one version's "
            f"directory as path (e.g. {path / versions[-1]}) and its number as version: "
            "the build lays it out as /models/NAME/VERSION itself"
        )
    return "no saved_model.pb (or saved_model.pbtxt) in it: not a SavedModel directory"


__all__ = [
    "ModelCheck",
    "TFLITE_IDENTIFIER",
    "TFLITE_MIN_SIZE",
    "SAVED_MODEL_FILES",
    "tflite_problem",
    "tflite_state",
    "onnx_problem",
    "protobuf_fields",
    "openvino_ir_problem",
    "openvino_ir_state",
    "saved_model_problem",
]
