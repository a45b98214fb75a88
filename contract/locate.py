"""Find the line a key is defined on, for error messages naming FILE:LINE:KEY.

``tomllib`` and ``json`` report positions only for syntax errors. Once a document parses, these
scanners map key paths such as ``("enclave", "size")`` or ``("models", 1, "path")`` to the
1-based line that defines them:

* :class:`KeyLocator` (TOML): table headers, ``[[array]]`` entries, ``key = value`` lines and
  dotted keys. Keys inside inline tables or multi-line arrays resolve to the line of the
  enclosing key.
* :class:`JsonLocator` (JSON): every object member and array element.

Both answer :meth:`line` with the line of the path, or of its nearest located ancestor.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"' + r"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY)

#: A key's path in a document: table names and array indices, e.g. ("models", 0, "path").
KeyPath = tuple[str | int, ...]

# Undocumented but part of the json module since Python 2.6: the string scanner the decoder
# uses (typeshed leaves it out), giving (decoded text, index after the closing quote).
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _split(dotted: str) -> list[str]:
    parts = []
    for match in _PART.finditer(dotted):
        text = match.group(0)
        if text[0] in "\"'":
            text = text[1:-1]
        parts.append(text)
    return parts


class KeyLocator:
    def __init__(self, text: str):
        self._lines: dict[KeyPath, int] = {}
        counts: dict[KeyPath, int] = {}
        current: KeyPath = ()
        in_multiline: str | None = None
        for lineno, line in enumerate(text.splitlines(), 1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if match := _ARRAY_HEADER.match(line):
                name = tuple(_split(match.group(1)))
                index = counts.get(name, 0)
                counts[name] = index + 1
                current = name + (index,)
                self._lines.setdefault(name, lineno)
                self._lines.setdefault(current, lineno)
            elif match := _TABLE_HEADER.match(line):
                current = tuple(_split(match.group(1)))
                self._lines.setdefault(current, lineno)
            elif match := _ASSIGN.match(line):
                key = current + tuple(_split(match.group(1)))
                for depth in range(len(current) + 1, len(key) + 1):
                    self._lines.setdefault(key[:depth], lineno)
                rest = line[match.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote

    def line(self, path: KeyPath) -> int | None:
        """Line of *path*, or of its nearest defined ancestor; None if nothing matches."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


_JSON_SCALAR = re.compile(
    r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null"
    r"|NaN|-?Infinity"
)
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class JsonLocator:
    """Lines of the members and elements of a JSON document (a malformed one locates what it
    can: the reader reports the syntax error itself)."""

    def __init__(self, text: str):
        self._text = text
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]
        self._lines: dict[KeyPath, int] = {}
        try:
            self._value(self._skip(0), ())
        except (ValueError, IndexError):
            pass

    def _at(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def _skip(self, pos: int) -> int:
        space = _JSON_SPACE.match(self._text, pos)
        assert space is not None  # the pattern matches the empty string
        return space.end()

    def _value(self, pos: int, path: KeyPath) -> int:
        text = self._text
        char = text[pos]
        if char == "{":
            pos = self._skip(pos + 1)
            if text[pos] == "}":
                return pos + 1
            while True:
                if text[pos] != '"':
                    raise ValueError("expected a member name")
                key, end = _scanstring(text, pos + 1)
                self._lines.setdefault(path + (key,), self._at(pos))
                pos = self._skip(end)
                if text[pos] != ":":
                    raise ValueError("expected ':'")
                pos = self._skip(self._value(self._skip(pos + 1), path + (key,)))
                if text[pos] == "}":
                    return pos + 1
                if text[pos] != ",":
                    raise ValueError("expected ','")
                pos = self._skip(pos + 1)
        if char == "[":
            pos = self._skip(pos + 1)
            if text[pos] == "]":
                return pos + 1
            index = 0
            while True:
                self._lines.setdefault(path + (index,), self._at(pos))
                pos = self._skip(self._value(pos, path + (index,)))
                if text[pos] == "]":
                    return pos + 1
                if text[pos] != ",":
                    raise ValueError("expected ','")
                pos = self._skip(pos + 1)
                index += 1
        if char == '"':
            return _scanstring(text, pos + 1)[1]
        match = _JSON_SCALAR.match(text, pos)
        if match is None:
            raise ValueError("not a JSON value")
        return match.end()

    def line(self, path: KeyPath) -> int | None:
        """Line of *path*, or of its nearest located ancestor; None if nothing matches."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None
