"""KServe v2 tensor datatypes, numpy dtypes, and the raw (binary) tensor encoding.

Tensors stay bytes end to end: a raw input becomes an array with ``numpy.frombuffer`` (no copy,
no per-element Python work) and an output array becomes bytes with one ``tobytes``. Only BYTES
tensors (length-prefixed strings) and JSON ``data`` lists need per-element work, and JSON is the
client's choice.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

import numpy as np

# KServe v2 datatype name -> little-endian numpy dtype (the raw encoding is little-endian).
_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_FROM_NUMPY: dict[str, str] = {
    "b": "BOOL", "u1": "UINT8", "u2": "UINT16", "u4": "UINT32", "u8": "UINT64",
    "i1": "INT8", "i2": "INT16", "i4": "INT32", "i8": "INT64",
    "f2": "FP16", "f4": "FP32", "f8": "FP64",
}

DATATYPES = tuple(_TO_NUMPY)

# gRPC typed contents field for each datatype (FP16 has none: raw only)
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class TensorError(ValueError):
    """A tensor in a request does not fit what the model expects (a client error)."""


def to_numpy_dtype(datatype: str) -> np.dtype:
    """numpy dtype for a KServe datatype name ("FP32" -> float32). BYTES -> object."""
    try:
        return _TO_NUMPY[datatype]
    except KeyError:
        raise TensorError(f"unsupported datatype {datatype!r}; "
                          f"supported: {', '.join(DATATYPES)}") from None


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


def element_count(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        if d < 0:
            raise TensorError(f"shape {list(shape)} has a negative dimension")
        n *= d
    return n


def decode_bytes_tensor(raw: bytes | memoryview, count: int) -> np.ndarray:
    """BYTES raw encoding (per element: 4-byte little-endian length, then the bytes)."""
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise TensorError("BYTES tensor data is shorter than its shape says")
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + n > len(view):
            raise TensorError("BYTES tensor element runs past the end of the data")
        out[i] = bytes(view[pos:pos + n])
        pos += n
    if pos != len(view):
        raise TensorError("BYTES tensor data is longer than its shape says")
    return out


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def from_raw(raw: bytes | memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    """An array over raw tensor bytes (zero copy for numeric types; read-only)."""
    dtype = to_numpy_dtype(datatype)
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(raw, count).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise TensorError(f"{datatype} tensor of shape {list(shape)} needs "
                          f"{count * dtype.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of an array (one copy for numeric types)."""
    if array.dtype.kind in ("O", "S", "U"):
        return encode_bytes_tensor(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def from_list(data: Any, datatype: str, shape: list[int]) -> np.ndarray:
    """An array from a JSON ``data`` value (flat or nested list)."""
    dtype = to_numpy_dtype(datatype)
    count = element_count(shape)
    try:
        if datatype == "BYTES":
            flat = np.empty(count, dtype=object)
            items = np.asarray(data, dtype=object).reshape(-1)
            if items.size != count:
                raise TensorError(f"BYTES tensor of shape {list(shape)} needs {count} "
                                  f"elements, got {items.size}")
            for i, item in enumerate(items):
                flat[i] = item.encode() if isinstance(item, str) else bytes(item)
            return flat.reshape(shape)
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
        raise TensorError(f"{datatype} tensor of shape {list(shape)} needs {count} elements, "
                          f"got {array.size}")
    return array.reshape(shape)


def to_list(array: np.ndarray) -> list:
    """A flat JSON-able list (BYTES elements as UTF-8 strings)."""
    flat = array.reshape(-1)
    if array.dtype.kind in ("O", "S"):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    return flat.tolist()
