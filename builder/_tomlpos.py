"""Find the line a TOML key is defined on, for error messages.

``tomllib`` reports positions only for syntax errors. Once a document parses, this scanner maps
key paths such as ``("enclave", "size")`` or ``("models", 1, "path")`` to the 1-based line that
defines them (table headers, ``[[array]]`` entries, ``key = value`` lines and dotted keys). Keys
inside inline tables or multi-line arrays resolve to the line of the enclosing key.
"""

from __future__ import annotations

import re

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"' + r"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY)

Path = tuple  # of str | int


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
        self._lines: dict[Path, int] = {}
        counts: dict[tuple, int] = {}
        current: tuple = ()
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
                rest = line[match.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote

    def line(self, path: Path) -> int | None:
        """Line of *path*, or of its nearest defined ancestor; None if nothing matches."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None
