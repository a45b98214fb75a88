"""KServe v2 tensor datatypes, numpy dtypes, and the raw (binary) tensor encoding.

Tensors stay bytes end to end: a raw input becomes an array with ``numpy.frombuffer`` (no copy,
no per-element Python work) and an output array becomes bytes with one ``tobytes``. Only BYTES
tensors (length-prefixed strings) and JSON ``data`` lists need per-element work, and JSON is the
client's choice.

A request's shape is a number the client wrote: it is checked against the data actually sent
(bytes, or elements present) before anything is allocated, so no allocation is sized by a shape
alone. Both protocols decode through :func:`from_raw` and :func:`from_list`.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import ModelServerError

# KServe v2 datatype name -> little-endian numpy dtype (the raw encoding is little-endian).
_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_FROM_NUMPY: dict[str, str] = {
    "b": "BOOL",
    "u1": "UINT8",
    "u2": "UINT16",
    "u4": "UINT32",
    "u8": "UINT64",
    "i1": "INT8",
    "i2": "INT16",
    "i4": "INT32",
    "i8": "INT64",
    "f2": "FP16",
    "f4": "FP32",
    "f8": "FP64",
}

DATATYPES = tuple(_TO_NUMPY)

# gRPC typed contents field for each datatype (FP16 has none: raw only)
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class TensorError(ModelServerError, ValueError):
    """A tensor in a request does not fit what the model expects (a client error)."""


class TensorTooLarge(TensorError):
    """A tensor's shape implies more data than a request may carry (HTTP 413 /
    RESOURCE_EXHAUSTED rather than 400 / INVALID_ARGUMENT)."""


#: Most dimensions a tensor may have (numpy's own limit is 64).
MAX_RANK = 32
#: Largest nominal tensor size (elements x item size, zero dimensions counted as one) numpy can
#: describe; any larger shape is refused before numpy sees it.
_MAX_NOMINAL = 1 << 62
#: Fewest bytes one BYTES element takes in the raw encoding (its 4-byte length).
BYTES_ELEMENT_MIN = 4


def to_numpy_dtype(datatype: str) -> np.dtype:
    """numpy dtype for a KServe datatype name ("FP32" -> float32). BYTES -> object."""
    try:
        return _TO_NUMPY[datatype]
    except KeyError:
        raise TensorError(
            f"unsupported datatype {datatype!r}; supported: {', '.join(DATATYPES)}"
        ) from None


def from_numpy_dtype(dtype: Any) -> str:
    """KServe datatype name for a numpy dtype (or anything numpy.dtype() accepts)."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    key = "b" if dt.kind == "b" else f"{dt.kind}{dt.itemsize}"
    try:
        return _FROM_NUMPY[key]
    except KeyError:
        raise TensorError(f"numpy dtype {dt} has no KServe v2 datatype") from None


def element_count(shape: Iterable[int], itemsize: int = 1) -> int:
    """Elements of a tensor of *shape*, after checking the shape can describe an array at all:
    at most MAX_RANK integer dimensions, none negative, and a nominal size numpy can hold.
    Nothing is allocated; the caller checks the count against the bytes it actually received."""
    shape = list(shape)
    if len(shape) > MAX_RANK:
        raise TensorError(f"shape has {len(shape)} dimensions; at most {MAX_RANK} are supported")
    count = nominal = 1
    for d in shape:
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool):
            raise TensorError(f"shape {shape}: dimensions must be integers")
        if d < 0:
            raise TensorError(f"shape {shape} has a negative dimension")
        count *= d
        nominal *= max(int(d), 1)
        if nominal * max(itemsize, 1) > _MAX_NOMINAL:
            raise TensorError(f"shape {shape} is too large to describe an array")
    return count


def _check_max(count: int, per_element: int, datatype: str, shape, max_bytes: int | None) -> None:
    """TensorTooLarge when *count* elements need more than *max_bytes* at *per_element* each
    (the request could never carry them)."""
    if max_bytes is not None and count * per_element > max_bytes:
        raise TensorTooLarge(
            f"{datatype} tensor of shape {list(shape)} needs at least "
            f"{count * per_element} bytes, more than a request may carry "
            f"({max_bytes} bytes, limits.max_request_bytes)"
        )


_U32 = struct.Struct("<I").unpack_from


def decode_bytes_tensor(raw: bytes | memoryview, count: int) -> np.ndarray:
    """BYTES raw encoding (per element: 4-byte little-endian length, then the bytes). The
    element count is checked against the data's size before anything is allocated: every
    element takes at least BYTES_ELEMENT_MIN bytes."""
    view = memoryview(raw)
    size = len(view)
    if count * BYTES_ELEMENT_MIN > size:
        raise TensorError(
            f"BYTES tensor of {count} elements needs at least "
            f"{count * BYTES_ELEMENT_MIN} bytes ({BYTES_ELEMENT_MIN} per element), "
            f"got {size}"
        )
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > size:
            raise TensorError("BYTES tensor data is shorter than its shape says")
        (n,) = _U32(view, pos)
        pos += 4
        if pos + n > size:
            raise TensorError("BYTES tensor element runs past the end of the data")
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != size:
        raise TensorError("BYTES tensor data is longer than its shape says")
    return out


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def from_raw(
    raw: bytes | memoryview, datatype: str, shape: list[int], *, max_bytes: int | None = None
) -> np.ndarray:
    """An array over raw tensor bytes (zero copy for numeric types; read-only). The shape is
    checked against the bytes received before anything is allocated; with *max_bytes*, a shape
    implying more than that many bytes is refused with :class:`TensorTooLarge`."""
    dtype = to_numpy_dtype(datatype)
    if datatype == "BYTES":
        count = element_count(shape, dtype.itemsize)
        _check_max(count, BYTES_ELEMENT_MIN, datatype, shape, max_bytes)
        return decode_bytes_tensor(raw, count).reshape(shape)
    count = element_count(shape, dtype.itemsize)
    _check_max(count, dtype.itemsize, datatype, shape, max_bytes)
    if len(raw) != count * dtype.itemsize:
        raise TensorError(
            f"{datatype} tensor of shape {list(shape)} needs "
            f"{count * dtype.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def raw_view(array: np.ndarray) -> bytes | memoryview:
    """The raw little-endian bytes of an array, without a copy where it is already so (a
    contiguous little-endian numeric array); for writing it out (``b"".join`` copies once)."""
    if array.dtype.kind in ("O", "S", "U"):
        return encode_bytes_tensor(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).data.cast("B")


def _bytes_elements(data: Any, count: int, shape) -> list[bytes]:
    """The elements of a BYTES ``data`` value (flat or nested lists of strings or bytes), as
    bytes, refusing anything else; stops as soon as there are more than *count*."""
    if not isinstance(data, (list, tuple)):
        raise TensorError(f"BYTES tensor data must be a list of strings, got {type(data).__name__}")
    out: list[bytes] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str):
                try:
                    out.append(item.encode())
                except UnicodeEncodeError:
                    raise TensorError(
                        "BYTES tensor data has a string that is not valid "
                        "Unicode (a lone surrogate)"
                    ) from None
            elif isinstance(item, (bytes, bytearray, memoryview)):
                out.append(bytes(item))
            elif isinstance(item, (list, tuple)):
                if len(stack) >= MAX_RANK:
                    raise TensorError(f"BYTES tensor data is nested more than {MAX_RANK} deep")
                stack.append(iter(item))
                break
            else:
                raise TensorError(f"BYTES tensor data must be strings, got {type(item).__name__}")
            if len(out) > count:
                raise TensorError(
                    f"BYTES tensor of shape {list(shape)} needs {count} elements, got more"
                )
        else:
            stack.pop()
    return out


def from_list(
    data: Any, datatype: str, shape: list[int], *, max_bytes: int | None = None
) -> np.ndarray:
    """An array from a JSON ``data`` value (flat or nested list) or a gRPC typed contents
    list. Only the elements present are converted: the shape is checked against their number
    before the array takes the shape's form. BYTES elements must be strings or bytes. With
    *max_bytes*, a shape implying more than that many bytes is refused with
    :class:`TensorTooLarge`."""
    dtype = to_numpy_dtype(datatype)
    if datatype == "BYTES":
        count = element_count(shape, dtype.itemsize)
        _check_max(count, 1, datatype, shape, max_bytes)
        items = _bytes_elements(data, count, shape)
        if len(items) != count:
            raise TensorError(
                f"BYTES tensor of shape {list(shape)} needs {count} elements, got {len(items)}"
            )
        return np.fromiter(items, dtype=object, count=count).reshape(shape)
    count = element_count(shape, dtype.itemsize)
    _check_max(count, dtype.itemsize, datatype, shape, max_bytes)
    _check_numbers(data, datatype)
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(data, dtype=dtype)
        if dtype.kind == "f" and array.size and not np.isfinite(array).all():
            # a finite JSON number that does not fit (1e39 as FP32) must not become inf
            wide = np.asarray(data, dtype=np.float64).reshape(array.shape)
            if (np.isfinite(wide) & ~np.isfinite(array)).any():
                raise TensorError(f"tensor data has a value out of range for {datatype}")
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, TensorError):
            raise
        raise TensorError(f"tensor data does not convert to {datatype}: {exc}") from None
    if array.size != count:
        raise TensorError(
            f"{datatype} tensor of shape {list(shape)} needs {count} elements, got {array.size}"
        )
    return array.reshape(shape)


#: The strings a float tensor's JSON data may hold (JSON has no literal for these numbers).
NONFINITE_STRINGS = frozenset(("NaN", "Infinity", "-Infinity"))
_NUMBERS = frozenset((int, float))
_BOOLS = frozenset((bool, int))


def _check_numbers(data: Any, datatype: str) -> None:
    """JSON data of a numeric tensor holds numbers only (BOOL: booleans, or the integers numpy
    reads as such), and float tensors also the strings "NaN", "Infinity", "-Infinity": null,
    true/false and other strings are refused rather than read as NaN, 1 or 0."""
    if isinstance(data, list) and (not data or not isinstance(data[0], list)):
        leaves: Any = data  # flat (the usual case)
    else:
        try:
            leaves = np.array(data, dtype=object).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise TensorError(f"tensor data does not convert to {datatype}: {exc}") from None
    kinds = set(map(type, leaves))
    allowed = _BOOLS if datatype == "BOOL" else _NUMBERS
    if kinds <= allowed:
        return
    if str in kinds and datatype in ("FP16", "FP32", "FP64") and kinds <= allowed | {str}:
        bad = next((x for x in leaves if type(x) is str and x not in NONFINITE_STRINGS), None)
        if bad is None:
            return
        raise TensorError(
            f"tensor data does not convert to {datatype}: it holds the string "
            f'{bad[:40]!r}; the only strings allowed are "NaN", "Infinity" '
            'and "-Infinity"'
        )
    names = {
        bool: "a boolean",
        type(None): "null",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    odd = next(k for k in kinds if k not in allowed)
    raise TensorError(
        f"tensor data does not convert to {datatype}: it holds "
        f"{names.get(odd, odd.__name__)}; expected "
        + ("booleans" if datatype == "BOOL" else "numbers")
    )


def from_repeated(values, datatype: str, shape: list[int]) -> np.ndarray:
    """An array from a gRPC typed contents field (a protobuf repeated field of the datatype's
    element type): its length is checked against the shape first, then the values are read
    into the array directly (no Python list of per-element objects)."""
    dtype = to_numpy_dtype(datatype)
    count = element_count(shape, dtype.itemsize)
    if len(values) != count:
        raise TensorError(
            f"{datatype} tensor of shape {list(shape)} needs {count} elements, got {len(values)}"
        )
    try:
        if count <= _REPEATED_CHUNK:
            return np.fromiter(values, dtype=dtype, count=count).reshape(shape)
        # in chunks: numpy holds the interpreter lock for a whole fromiter call (a 15 M element
        # field: a quarter of a second in which no other thread runs)
        out = np.empty(count, dtype=dtype)
        items = iter(values)
        for start in range(0, count, _REPEATED_CHUNK):
            n = min(_REPEATED_CHUNK, count - start)
            out[start : start + n] = np.fromiter(itertools.islice(items, n), dtype=dtype, count=n)
        return out.reshape(shape)
    except (OverflowError, ValueError, TypeError) as exc:
        raise TensorError(f"tensor data does not convert to {datatype}: {exc}") from None


#: Elements of a typed contents field read in one go.
_REPEATED_CHUNK = 1 << 16


#: JSON has no literal for these: written as strings (the protobuf JSON mapping's names), which
#: :func:`from_list` (and numpy, e.g. in tritonclient's ``as_numpy``) reads back.
NONFINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def to_list(array: np.ndarray) -> list:
    """A flat JSON-able list (BYTES elements as UTF-8 strings; NaN and infinities of float
    tensors as the strings "NaN", "Infinity", "-Infinity", since JSON has no such numbers)."""
    flat = array.reshape(-1)
    if array.dtype.kind in ("O", "S"):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    if array.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if math.isfinite(v) else NONFINITE_NAMES[repr(v)] for v in flat.tolist()]
    return flat.tolist()
