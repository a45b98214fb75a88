"""Declarative schemas for spec.toml sections, with precise error messages.

Core sections and plugin-declared sections use the same :class:`Section` / :class:`Field`
description, so every key in a spec, whoever owns it, gets the same checks: unknown keys (with a
"did you mean"), types, ranges, choices, patterns, sizes, and files that must exist.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KINDS = {
    "str": "a string",
    "int": "an integer",
    "bool": "a boolean (true or false)",
    "path": "a string (a file path)",
    "size": 'a size string such as "512M" or "4G"',
    "list[str]": "an array of strings",
    "table[str]": "a table of string values",
}

_SIZE = re.compile(r"^([1-9][0-9]*)([KMG])\Z")
_SCALE = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class Field:
    """One key of a section.

    *kind* is one of ``str``, ``int``, ``bool``, ``path`` (resolved against the spec's
    directory), ``size`` (an integer with a K/M/G suffix, converted to bytes; a power of two
    unless *power_of_two* is false),
    ``list[str]`` and ``table[str]`` (a table of strings).
    """

    name: str
    kind: str
    doc: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    pattern_doc: str = ""
    must_exist: bool = True  # for paths
    power_of_two: bool = True  # for sizes (enclave sizes must be; byte limits need not be)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown field kind {self.kind!r}")


@dataclass(frozen=True)
class Section:
    """A ``[name]`` table, or with *array* an ``[[name]]`` array of tables."""

    name: str
    doc: str
    fields: tuple[Field, ...]
    array: bool = False
    required: bool = False
    owner: str = "enclave-build"  # which plugin declared it, for `enclave-build plugins`

    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]


@dataclass(frozen=True)
class Problem:
    """One validation problem: where, which key, what is wrong and what is allowed."""

    path: tuple  # key path, e.g. ("enclave", "size") or ("models", 0, "path")
    message: str
    line: int | None = None

    @property
    def key(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out


def did_you_mean(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}? " if match else ""


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def parse_size(text: str) -> int | None:
    """``"4G"`` -> 4 GiB; None if *text* is not ``<positive integer><K|M|G>``."""
    match = _SIZE.match(text)
    if not match:
        return None
    return int(match.group(1)) * _SCALE[match.group(2)]


def _check_value(f: Field, value: Any, base_dir: Path) -> tuple[Any, str | None]:
    """Return (converted value, problem message or None)."""
    kind = f.kind
    if kind in ("str", "path", "size"):
        if not isinstance(value, str):
            return None, f"expected {_KINDS[kind]}, got {_describe(value)}"
    elif kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            return None, f"expected {_KINDS[kind]}, got {_describe(value)}"
    elif kind == "bool":
        if not isinstance(value, bool):
            return None, f"expected {_KINDS[kind]}, got {_describe(value)}"
    elif kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"expected {_KINDS[kind]}, got {_describe(value)}"
    elif kind == "table[str]":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return None, f"expected {_KINDS[kind]}, got {_describe(value)}"

    if f.choices and value not in f.choices:
        hint = did_you_mean(value, list(f.choices)) if isinstance(value, str) else ""
        return None, f"{value!r} is not allowed; {hint}allowed: {', '.join(f.choices)}"
    if kind == "int":
        lo, hi = f.minimum, f.maximum
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            allowed = (f"{lo} to {hi}" if lo is not None and hi is not None
                       else f"at least {lo}" if lo is not None else f"at most {hi}")
            return None, f"{value} is out of range; allowed: {allowed}"
    if f.pattern and not re.fullmatch(f.pattern, value):
        return None, f"{value!r} is not allowed; allowed: {f.pattern_doc or f.pattern}"
    if kind == "size":
        size = parse_size(value)
        if size is None:
            what = "a power of two" if f.power_of_two else "a positive integer"
            return None, (f"{value!r} is not a size; allowed: {what} with a K, M or G "
                          'suffix, e.g. "512M" or "4G"')
        if f.power_of_two and size & (size - 1):
            return None, (f"{value!r} is not a power of two; allowed: a power of two with a K, M "
                          'or G suffix, e.g. "512M" or "4G"')
        return size, None
    if kind == "path":
        if not value:
            return None, "empty path"
        path = (base_dir / value).resolve() if not Path(value).is_absolute() else Path(value)
        if f.must_exist and not path.exists():
            return None, (f"file not found: {path} (relative paths are resolved against the "
                          "spec's directory)")
        return path, None
    return value, None


def _default(f: Field, base_dir: Path) -> Any:
    """A missing key's value: its default, converted like a given value would be (a ``path``
    default is relative to the spec's directory, as a written value is; no existence check)."""
    if f.kind == "path" and isinstance(f.default, str) and f.default:
        return (base_dir / f.default).resolve()
    return f.default


def validate_table(section: Section, table: Any, path: tuple, base_dir: Path,
                   problems: list[Problem]) -> dict[str, Any]:
    """Check one table against *section*; return converted values with defaults filled in."""
    if not isinstance(table, dict):
        problems.append(Problem(path, f"expected a table, got {_describe(table)}"))
        return {}
    out: dict[str, Any] = {}
    known = section.field_names()
    for key in table:
        if key not in known:
            problems.append(Problem(path + (key,),
                                    f"unknown key; {did_you_mean(key, known)}"
                                    f"allowed: {', '.join(known)}"))
    for f in section.fields:
        if f.name not in table:
            if f.required:
                problems.append(Problem(path + (f.name,), f"required key is missing ({f.doc})"))
            out[f.name] = _default(f, base_dir)
            continue
        value, problem = _check_value(f, table[f.name], base_dir)
        if problem:
            problems.append(Problem(path + (f.name,), problem))
        out[f.name] = value
    return out


def validate_section(section: Section, data: Any, base_dir: Path,
                     problems: list[Problem]) -> Any:
    """A whole section: one table, or a list of tables for ``[[array]]`` sections."""
    path = (section.name,)
    if section.array:
        if data is None:
            return []
        if not isinstance(data, list):
            problems.append(Problem(path, f"expected [[{section.name}]] entries (an array of "
                                          f"tables), got {_describe(data)}"))
            return []
        return [validate_table(section, item, path + (i,), base_dir, problems)
                for i, item in enumerate(data)]
    if data is None:
        if section.required:
            problems.append(Problem(path, f"required section [{section.name}] is missing "
                                          f"({section.doc})"))
            return {f.name: f.default for f in section.fields}
        # An absent optional section: only its defaults, converted (paths resolved); its
        # required keys are required only when the section is given.
        defaults = {f.name: f.default for f in section.fields if f.default is not None}
        return validate_table(section, defaults, path, base_dir, [])
    return validate_table(section, data, path, base_dir, problems)

