"""Where each key of a spec is, carried in the plan so that backends can name it in errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from enclave_build.contract.locate import KeyLocator

from .plan import SpecOrigin


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _walk(value: Any, path: tuple, out: list[tuple]) -> None:
    out.append(path)
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, path + (key,), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            _walk(item, path + (index,), out)


def spec_origin(path: Path) -> SpecOrigin | None:
    """The line of every key in the spec file at *path* (shown relative to the working
    directory when it is below it); None when the file cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    try:
        source = str(path.relative_to(Path.cwd()))
    except ValueError:
        source = str(path)
    locator = KeyLocator(text)
    keys: list[tuple] = []
    _walk(data, (), keys)
    lines = {}
    for key in keys[1:]:
        line = locator.line(key)
        if line is not None:
            lines[_dotted(key)] = line
    return SpecOrigin(source, lines)
