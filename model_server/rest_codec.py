"""KServe v2 REST inference bodies: JSON tensors and the binary tensor data extension, as
tritonclient.http sends them.

Request: header ``Inference-Header-Content-Length: N``, the first N body bytes the JSON
request, then each input with ``parameters.binary_data_size`` in input order (without the
header, the whole body is JSON). Response: outputs are binary when asked for
(``parameters.binary_data`` per output, or the request's ``parameters.binary_data_output``),
written after the JSON response the same way. Bodies may be gzip/deflate encoded.

JSON has no NaN or infinities: float outputs holding them are written as the strings "NaN",
"Infinity" and "-Infinity" (the protobuf JSON mapping's names), which numpy and
``from_list`` read back; anything else non-finite never reaches the wire (the encoder refuses
it rather than writing invalid JSON).

Decoding that can take long (a large JSON document, many BYTES elements, decompression) is
reported by :func:`decode_work` / :func:`encode_work` so the server can run it off its event loop;
what it will allocate (:func:`decode_cost`, and :mod:`.costs`) is reserved in the byte budget
before it is done.
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core import Hold, LoadedModel, ServeError
from .costs import bytes_tensor_cost
from .datatypes import (
    BYTES_ELEMENT_MIN,
    TensorError,
    TensorTooLarge,
    element_count,
    from_list,
    from_numpy_dtype,
    from_raw,
    raw_view,
    to_list,
    to_numpy_dtype,
)

#: Work (in bytes of JSON, BYTES tensor data or compressed body) below which decoding runs on
#: the event loop; more runs in a worker thread.
INLINE_WORK_BYTES = 64 << 10


def json_bytes(obj) -> bytes:
    """Compact, strictly valid JSON (a NaN or infinity raises ValueError)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def decompress(
    body: bytes | bytearray | memoryview, encoding: str, limit: int
) -> bytes | bytearray | memoryview:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServeError(ServeError.INVALID, f"unsupported Content-Encoding {encoding!r}")
    d = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServeError(ServeError.INVALID, f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise ServeError(
            ServeError.TOO_LARGE,
            f"decompressed body exceeds {limit} bytes (limits.max_request_bytes)",
        )
    return out


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_resume = False


@contextlib.contextmanager
def gc_paused(pause: bool = True):
    """Python's cyclic garbage collector off while a large JSON document is parsed: json.loads
    makes a container per list or object, and the collections those allocations trigger (each
    scanning every container made so far) would multiply the parse time, all of it holding
    the interpreter lock. Nested pauses (two decode threads) count; the collector is back on
    after the last (if it was on before the first)."""
    global _gc_pauses, _gc_resume
    if not pause:
        yield
        return
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                gc.enable()


@dataclass
class InferBody:
    """A request body split into its JSON request and the binary tensor data after it."""

    request: dict
    binary: memoryview


def split_body(
    body: bytes | memoryview, header_len: int | None
) -> tuple[bytes | memoryview, memoryview]:
    if header_len is None:
        return body, memoryview(b"")
    if not 0 <= header_len <= len(body):
        raise ServeError(
            ServeError.INVALID,
            f"Inference-Header-Content-Length {header_len} "
            f"does not fit a body of {len(body)} bytes",
        )
    view = memoryview(body)
    return view[:header_len], view[header_len:]


def parse_body(body: bytes | memoryview, header_len: int | None) -> InferBody:
    head, binary = split_body(body, header_len)
    try:
        with gc_paused(len(head) > INLINE_WORK_BYTES):
            req = json.loads(bytes(head) if isinstance(head, memoryview) else head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServeError(ServeError.INVALID, f"request is not JSON: {exc}") from None
    except RecursionError:
        raise ServeError(ServeError.INVALID, "request JSON is nested too deeply") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ServeError(ServeError.INVALID, "request must be a JSON object with an 'inputs' list")
    if "id" in req and not isinstance(req["id"], str):
        raise ServeError(ServeError.INVALID, "'id' must be a string")
    return InferBody(req, binary)


def decode_work(parsed: InferBody) -> int:
    """Bytes of per-element decoding the inputs ask for beyond the JSON already parsed: the
    binary data of BYTES inputs (numeric binary inputs are views, no work)."""
    work = 0
    for t in parsed.request["inputs"]:
        if isinstance(t, dict) and t.get("datatype") == "BYTES":
            params = t.get("parameters")
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if isinstance(size, int):
                work += max(0, size)
    return work


def decode_cost(parsed: InferBody, json_len: int) -> int:
    """Upper bound of what decoding the inputs allocates beyond the parsed JSON: arrays for JSON
    data (and a pointer per element while their types are checked), a bytes object per BYTES
    element; binary numeric inputs are views (nothing). Element counts come from the data
    actually sent (binary bytes, JSON characters), never from a shape alone."""
    cost = 0
    for t in parsed.request["inputs"]:
        if not isinstance(t, dict):
            continue
        datatype, shape = t.get("datatype"), t.get("shape")
        try:
            dtype = to_numpy_dtype(str(datatype))
            count = element_count(shape if isinstance(shape, list) else [])
        except (TensorError, TypeError):
            continue  # refused by decode_inputs
        params = t.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if isinstance(size, int) and not isinstance(size, bool):
            if datatype == "BYTES":
                cost += bytes_tensor_cost(
                    min(count, max(0, size) // BYTES_ELEMENT_MIN), max(0, size)
                )
        elif datatype == "BYTES":  # each element at least '"",'
            cost += bytes_tensor_cost(min(count, json_len // 3 + 1), json_len)
        else:  # each element at least 'N,'
            cost += min(count, json_len // 2 + 1) * (dtype.itemsize + 16)
    return cost


def decode_inputs(
    model: LoadedModel, parsed: InferBody, max_bytes: int | None = None
) -> tuple[dict[str, np.ndarray], list[tuple[str, bool]]]:
    """The input arrays and the requested outputs (name, binary?)."""
    req, binary = parsed.request, parsed.binary
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    try:
        for t in req["inputs"]:
            if not isinstance(t, dict):
                raise ServeError(ServeError.INVALID, "each input must be an object")
            name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
            if (
                not isinstance(name, str)
                or not isinstance(datatype, str)
                or not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            ):
                raise ServeError(
                    ServeError.INVALID,
                    "each input needs name (string), datatype "
                    "(string) and shape (list of integers)",
                )
            model.check_input(name, datatype, shape)
            if name in arrays:
                raise ServeError(ServeError.INVALID, f"input {name!r} given twice")
            params = t.get("parameters") or {}
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if size is not None:
                if not isinstance(size, int) or isinstance(size, bool):
                    raise ServeError(
                        ServeError.INVALID,
                        f"input {name!r}: binary_data_size {size!r} is not an integer",
                    )
                if size < 0 or offset + size > len(binary):
                    raise ServeError(
                        ServeError.INVALID,
                        f"input {name!r}: binary_data_size "
                        f"{size!r} does not fit the {len(binary) - offset} binary "
                        "bytes left",
                    )
                arrays[name] = from_raw(
                    binary[offset : offset + size], datatype, shape, max_bytes=max_bytes
                )
                offset += size
            elif "data" in t:
                arrays[name] = from_list(t["data"], datatype, shape, max_bytes=max_bytes)
            else:
                raise ServeError(
                    ServeError.INVALID, f"input {name!r} has neither data nor binary_data_size"
                )
    except TensorTooLarge as exc:
        raise ServeError(ServeError.TOO_LARGE, str(exc)) from None
    except TensorError as exc:
        raise ServeError(ServeError.INVALID, str(exc)) from None
    except RecursionError:
        raise ServeError(ServeError.INVALID, "tensor data is nested too deeply") from None
    if offset != len(binary):
        raise ServeError(
            ServeError.INVALID, f"{len(binary) - offset} binary bytes after the last input"
        )
    return arrays, requested_outputs(model, req)


def requested_outputs(model: LoadedModel, req: dict) -> list[tuple[str, bool]]:
    params = req.get("parameters") or {}
    default_binary = (
        bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    )
    wanted = req.get("outputs")
    if wanted is None:
        return [(n, default_binary) for n in model.output_names]
    if not isinstance(wanted, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
    ):
        raise ServeError(ServeError.INVALID, "'outputs' must be a list of {name, parameters}")
    model.check_outputs(o["name"] for o in wanted)
    outputs = []
    for o in wanted:
        op = o.get("parameters") or {}
        outputs.append(
            (
                o["name"],
                bool(op.get("binary_data", default_binary))
                if isinstance(op, dict)
                else default_binary,
            )
        )
    return outputs


def decode_infer(
    model: LoadedModel,
    body: bytes | memoryview,
    header_len: int | None,
    max_bytes: int | None = None,
    hold: Hold | None = None,
) -> tuple[dict, dict[str, np.ndarray], list[tuple[str, bool]]]:
    """The JSON request, the input arrays and the requested outputs, in one call; with *hold*,
    what decoding the inputs allocates is reserved first (:func:`decode_cost`)."""
    parsed = parse_body(body, header_len)
    if hold is not None:
        json_len = len(body) if header_len is None else header_len
        hold.grow(decode_cost(parsed, json_len), "decoding the inputs")
    arrays, outputs = decode_inputs(model, parsed, max_bytes)
    return parsed.request, arrays, outputs


def encode_work(result: dict[str, np.ndarray], outputs: list[tuple[str, bool]]) -> int:
    """Bytes of tensor data to be written as JSON (binary outputs cost one copy, no work)."""
    return sum(result[name].nbytes for name, binary in outputs if not binary)


def encode_infer(
    model: LoadedModel, req: dict, result: dict[str, np.ndarray], outputs: list[tuple[str, bool]]
) -> tuple[bytes, str, dict]:
    """(body, content type, extra headers)."""
    out_meta = []
    blobs = []
    for name, binary in outputs:
        arr = result[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": from_numpy_dtype(arr.dtype),
            "shape": list(arr.shape),
        }
        if binary:
            raw = raw_view(arr)  # (copied once, into the body)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = to_list(arr)
        out_meta.append(entry)
    resp = {"model_name": model.name, "model_version": model.version, "outputs": out_meta}
    if "id" in req:
        resp["id"] = req["id"]
    head = json_bytes(resp)
    if not blobs:
        return head, "application/json", {}
    return (
        b"".join([head, *blobs]),
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(len(head))},
    )
