"""What decoding a request and encoding its answer will allocate, in bytes, worked out before
it is done, so it can be reserved in the server's byte budget first (a request's bytes then cost
at most what the budget allows, never a multiple of it).

The estimates are upper bounds for CPython 3.11+ objects on 64-bit machines, checked against
tracemalloc by the tests for adversarial inputs (empty lists, nested lists, objects with many
keys, tiny strings):

* parsing JSON: every value is a Python object, counted from the characters that start one
  (``[``, ``{``, ``,``, ``:``, ``"``; counted even inside strings, which only overestimates),
  plus the text itself as str objects (the document and its string values: 1 byte a character
  for ASCII, up to 4 for text with a character outside the BMP);
* BYTES tensors: a Python ``bytes`` object and a pointer per element, plus the payload;
* answers: the output tensors' bytes once when written raw (copied into the message or body;
  twice for BYTES, encoded first), a Python number, a pointer and its text per element when
  written as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import ServeError

#: Bytes one JSON container or value may take once parsed, by the character that starts it: a
#: list (object, item array), a dict (object, hash table), a key (dict entry; the key string is
#: counted by its quotes), a value after a comma (a number object, a pointer, list growth), a
#: string (its object, counted per quote).
JSON_LIST, JSON_DICT, JSON_KEY, JSON_VALUE, JSON_QUOTE = 96, 240, 96, 40, 32
#: One BYTES element decoded: a bytes object (33 bytes + payload, rounded) and its pointer in
#: the object array (plus a 16-byte view while a protobuf message holds it).
BYTES_ELEMENT = 64
#: One element of an output tensor written as JSON: a Python number or string, its pointer in a
#: list, and its text (twice: the str, then the encoded body).
JSON_OUTPUT_ELEMENT = 112


def json_cost(text: bytes | memoryview) -> int:
    """Upper bound of what ``json.loads(text)`` allocates."""
    data = text if isinstance(text, bytes) else bytes(text)
    # text: the document as a str, and string values' contents (1 byte a character when ASCII,
    # up to 4 each when one character is outside the BMP), plus the text of the one number
    # being converted at a time
    per_byte = 2 if data.isascii() else 9
    return (
        JSON_LIST * data.count(b"[")
        + JSON_DICT * data.count(b"{")
        + JSON_KEY * data.count(b":")
        + JSON_VALUE * (data.count(b",") + 1)
        + JSON_QUOTE * data.count(b'"')
        + per_byte * len(data)
        + min(len(data), 1 << 16)
        + 256
    )


def bytes_tensor_cost(count: int, payload: int) -> int:
    """Decoding a BYTES tensor of *count* elements holding *payload* bytes in all."""
    return BYTES_ELEMENT * count + payload


def tensor_bytes(array: np.ndarray) -> int:
    """The bytes of an output tensor on the wire (BYTES: 4-byte lengths and payloads)."""
    if array.dtype.kind in ("O", "S", "U"):
        flat = array.reshape(-1)
        if array.dtype.kind == "O":
            payload = sum(len(x) if isinstance(x, (bytes, str)) else len(str(x)) for x in flat)
        else:
            payload = array.nbytes
        return 4 * flat.size + payload
    return array.nbytes


def answer_cost(
    result: dict[str, np.ndarray], outputs: Iterable[tuple[str, bool]], max_bytes: int
) -> int:
    """What encoding the answer will allocate; *outputs* are (name, raw?) in the order asked
    for. The outputs' tensor bytes must stay within *max_bytes* (``limits.max_response_bytes``),
    else ServeError TOO_LARGE, before anything is encoded."""
    size = cost = 0
    for name, raw in outputs:
        array = result[name]
        n = tensor_bytes(array)
        size += n
        if not raw:
            cost += JSON_OUTPUT_ELEMENT * array.size + 3 * n
        elif (
            array.dtype.kind in ("O", "S", "U")
            or not array.flags.c_contiguous
            or array.dtype.byteorder == ">"
        ):
            cost += 2 * n  # encoded (or made contiguous), then copied into the answer
        else:
            cost += n  # copied into the answer
    if size > max_bytes:
        raise ServeError(
            ServeError.TOO_LARGE,
            f"the answer's outputs hold {size} bytes, more "
            f"than an answer may (limits.max_response_bytes {max_bytes})",
        )
    return cost
