"""What parsing a ModelInferRequest will allocate, read from its wire bytes before it is parsed.

protobuf's parser (upb) keeps large byte fields as views of the message, but every element of a
repeated field costs memory of its own: a 2-byte empty sub-message becomes a message object of
~90 bytes, a 2-byte empty ``bytes`` element a 16-byte view, a 1-byte packed varint an 8-byte
integer. A message of N bytes could so take 40 x N once parsed. :func:`parse_cost` walks the
fields of the request, its tensors and their typed contents (never a payload byte by byte),
refuses what no client sends (more than :data:`MAX_FIELDS` fields, names longer than
:data:`MAX_NAME`, shapes of more than ``MAX_RANK`` dimensions) and returns an upper bound of what
the parse allocates, to be reserved in the byte budget first. Typed contents with more elements
than the walk reads (one field per ``bytes_contents`` element) are charged at the worst rate for
the rest of their bytes (:data:`REST_OF_CONTENTS`).
"""

from __future__ import annotations

from .datatypes import MAX_RANK
from .errors import ServeError

#: Fields read in one request (all levels); a request with more is refused.
MAX_FIELDS = 65536
#: Longest model name, version, request id, tensor name or datatype, in bytes.
MAX_NAME = 4096
#: What one parsed element costs (repeated fields grow by doubling, so twice the element): a
#: sub-message (tensor, requested output, parameter), a bytes/string element of a repeated field
#: (a 16-byte view), an unpacked numeric element.
MESSAGE, VIEW, NUMBER = 256, 40, 16
#: Bytes of typed contents left when the walk stops reading their fields, charged per byte:
#: the worst case, a 2-byte empty bytes element kept as a view.
REST_OF_CONTENTS = VIEW // 2
#: Typed contents fields (InferTensorContents): number -> bytes in memory per wire byte when
#: packed (varints: an element takes at least one byte; twice the element size, for growth;
#: fixed-size floats: as many bytes as on the wire).
_PACKED_VARINT = {1: 2, 2: 8, 3: 16, 4: 8, 5: 16}
_PACKED_FIXED = (6, 7)


class _Walk:
    """One request's walk: a count of the fields read, shared by every level."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_FIELDS

    def fields(self, data: bytes, start: int, end: int, where: str):
        """(field number, wire type, value start, value end) for each field in data[start:end];
        a varint's value is (start, end) of its bytes."""
        pos = start
        while pos < end:
            self.left -= 1
            if self.left < 0:
                raise ServeError(
                    ServeError.INVALID, f"ModelInferRequest has more than {MAX_FIELDS} fields"
                )
            key, pos = _varint(data, pos, end, where)
            number, wire = key >> 3, key & 7
            if wire == 2:
                size, pos = _varint(data, pos, end, where)
                if size > end - pos:
                    raise _truncated(where)
                yield number, wire, pos, pos + size
                pos += size
            elif wire == 0:
                value = pos
                while pos < end and data[pos] & 0x80:
                    pos += 1
                pos += 1
                if pos > end:
                    raise _truncated(where)
                yield number, wire, value, pos
            elif wire == 5 or wire == 1:
                value, pos = pos, pos + (4 if wire == 5 else 8)
                if pos > end:
                    raise _truncated(where)
                yield number, wire, value, pos
            else:  # groups (3, 4) and reserved wire types: not in this protocol
                raise ServeError(
                    ServeError.INVALID, f"malformed ModelInferRequest: wire type {wire} in {where}"
                )


def _varint(data: bytes, pos: int, end: int, where: str) -> tuple[int, int]:
    if pos < end:
        b = data[pos]
        if b < 0x80:
            return b, pos + 1
    value = shift = 0
    while pos < end and shift < 64:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    raise _truncated(where)


def _truncated(where: str) -> ServeError:
    return ServeError(ServeError.INVALID, f"malformed ModelInferRequest: {where} is truncated")


def _name(start: int, end: int, what: str) -> None:
    if end - start > MAX_NAME:
        raise ServeError(ServeError.INVALID, f"{what} is longer than {MAX_NAME} bytes")


def parse_cost(raw: bytes, raw_inputs: list[tuple[int, int]] | None = None) -> int:
    """Upper bound of the bytes ``ModelInferRequest.FromString(raw)`` allocates beyond *raw*,
    or ServeError (INVALID) for a request no client sends. With *raw_inputs*, the (start, end)
    of each ``raw_input_contents`` element in *raw* is appended to it, in order (what the
    parsed message's elements are: ``raw[start:end]``), so the tensors can be read in place."""
    walk = _Walk()
    cost = 0
    for number, wire, start, end in walk.fields(raw, 0, len(raw), "the request"):
        if wire != 2:
            continue
        if number == 7:  # raw_input_contents: a view each
            cost += VIEW
            if raw_inputs is not None:
                raw_inputs.append((start, end))
        elif number == 5:  # inputs
            cost += MESSAGE + _tensor(walk, raw, start, end)
        elif number == 6:  # outputs: name, parameters
            cost += MESSAGE
            for n, _w, s, e in walk.fields(raw, start, end, "a requested output"):
                if n == 1:
                    _name(s, e, "an output name")
                elif n == 2:
                    cost += MESSAGE
        elif number == 4:  # parameters (map entries)
            cost += MESSAGE
        elif number in (1, 2, 3):  # model_name, model_version, id
            _name(start, end, ("model_name", "model_version", "id")[number - 1])
    return cost


def _tensor(walk: _Walk, raw: bytes, start: int, end: int) -> int:
    cost = dims = 0
    for number, wire, s, e in walk.fields(raw, start, end, "an input tensor"):
        if number == 3:  # shape: int64, packed or not
            dims += e - s if wire == 2 else 1
            if dims > MAX_RANK * 10:
                raise ServeError(
                    ServeError.INVALID, f"an input's shape has more than {MAX_RANK} dimensions"
                )
            cost += NUMBER * (e - s if wire == 2 else 1)
        elif wire != 2:
            continue
        elif number in (1, 2):
            _name(s, e, "an input name" if number == 1 else "a datatype")
        elif number == 4:
            cost += MESSAGE
        elif number == 5:
            cost += _contents(walk, raw, s, e)
    return cost


#: Fields of one tensor's typed contents read one by one; the rest is charged by size.
CONTENTS_FIELDS = 65536


def _contents(walk: _Walk, raw: bytes, start: int, end: int) -> int:
    cost = 0
    read = 0
    for number, wire, s, e in walk.fields(raw, start, end, "typed contents"):
        read += 1
        if wire == 2:
            if number in _PACKED_VARINT:
                cost += _PACKED_VARINT[number] * (e - s)
            elif number in _PACKED_FIXED:  # (sized from the length: no growth)
                cost += e - s + MESSAGE
            else:  # bytes_contents element (or unknown)
                cost += VIEW
        else:
            cost += NUMBER
        if walk.left < 1 or read >= CONTENTS_FIELDS:
            return cost + REST_OF_CONTENTS * (end - e)
    return cost
