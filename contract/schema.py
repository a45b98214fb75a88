"""Declarative schemas for every file enclave-build reads, with precise, located error lists.

spec.toml (core and plugin sections), model-server.json, service.json, measurements.json, the
secret-server policy fragment and secrets.toml are all described by :class:`Section` /
:class:`Field`, so every key, whoever owns it, gets the same checks: unknown keys (with a "did
you mean"), types, ranges, choices, patterns, sizes, nested tables, arrays of tables, and files
that must exist. Validation never stops at the first problem: it returns the converted values
and appends one :class:`Problem` per wrong key, which the file's reader locates (line) and
raises together. The same descriptions give the JSON Schemas (:mod:`.schemas`).

Standard library only: this module ships into every image that runs enclave-build's code.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .locate import KeyPath
from .size import SPEC_SIZE, Size, SizeError

_KINDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true or false)",
    "path": "a string (a file path)",
    "size": 'a size string such as "512M" or "4G"',
    "list[str]": "an array of strings",
    "table[str]": "a table of string values",
    "table[any]": "a table",
    "table": "a table",
    "list[table]": "an array of tables",
}


@dataclass(frozen=True)
class Field:
    """One key of a section.

    *kind* is one of ``str``, ``int``, ``float`` (an integer or a decimal number, kept as
    written), ``bool``, ``path`` (resolved against the file's directory), ``size`` (an integer
    with a K/M/G suffix, converted to bytes; a power of two unless *power_of_two* is false),
    ``list[str]``, ``table[str]`` (a table of strings), ``table[any]`` (a free-form table),
    ``table`` and ``list[table]`` (a nested *section*, one table or an array of them).

    *nullable*: JSON ``null`` is a value (None). *minimum*/*maximum* bound numbers (and
    *above* excludes its bound: "more than"); *min_items* bounds arrays. *item_pattern* /
    *item_choices* check each string of a ``list[str]``. *expect* replaces the kind's
    description in type errors ("expected EXPECT, got ..."), *item_expect* a ``list[str]``
    element's ("a string"). *default_doc* says what an absent key means when that depends on
    other keys (the reference shows it as the default).
    """

    name: str
    kind: str
    doc: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int | float | None = None
    maximum: int | float | None = None
    pattern: str | None = None
    pattern_doc: str = ""
    must_exist: bool = True  # for paths
    power_of_two: bool = True  # for sizes (enclave sizes must be; byte limits need not be)
    section: Section | None = None  # for table and list[table]
    nullable: bool = False
    above: float | None = None
    min_items: int = 0
    item_pattern: str | None = None
    item_doc: str = ""
    item_choices: tuple[str, ...] = ()
    expect: str = ""
    item_expect: str = ""
    default_doc: str = ""  # the default in words when it depends on other keys (for the reference)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown field kind {self.kind!r}")
        if (self.kind in ("table", "list[table]")) != (self.section is not None):
            raise ValueError(f"{self.name}: a section goes with kinds table and list[table]")


@dataclass(frozen=True)
class Section:
    """A ``[name]`` table, or with *array* an ``[[name]]`` array of tables. A file's top level
    is a section too (name ``""``)."""

    name: str
    doc: str
    fields: tuple[Field, ...]
    array: bool = False
    required: bool = False
    owner: str = "enclave-build"  # which plugin declared it, for `enclave-build plugins`

    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


@dataclass(frozen=True)
class Problem:
    """One validation problem: where, which key, what is wrong and what is allowed."""

    path: KeyPath  # key path, e.g. ("enclave", "size") or ("models", 0, "path")
    message: str
    line: int | None = None

    @property
    def key(self) -> str:
        return key_text(self.path)


def key_text(path: KeyPath) -> str:
    """``("models", 0, "path")`` -> ``models[0].path``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def did_you_mean(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}? " if match else ""


def describe(value: Any, json: bool = False) -> str:
    """How a wrong value reads in an error: ``integer 5``, ``string 'x'``, ``a table``."""
    if value is None:
        return "null"
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
        return "a JSON object" if json else "a table"
    return type(value).__name__


def parse_size(text: str) -> int | None:
    """``"4G"`` -> 4 GiB; None if *text* is not ``<positive integer><K|M|G>`` (spec sizes)."""
    try:
        return int(Size.parse(text, SPEC_SIZE))
    except SizeError:
        return None


@dataclass
class Context:
    """Where values are validated: the file's directory (relative paths), whether the file is
    JSON (its vocabulary: "JSON object", ``null``), and the problems found so far."""

    base_dir: Path
    problems: list[Problem]
    json: bool = False

    def add(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(path, message))

    def kind_text(self, kind: str) -> str:
        text = _KINDS[kind]
        return text.replace("a table", "a JSON object") if self.json else text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_ok(kind: str, value: Any) -> bool:
    if kind in ("str", "path", "size"):
        return isinstance(value, str)
    if kind == "int":
        return _is_int(value)
    if kind == "float":
        return _is_number(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list[str]":
        return isinstance(value, list)
    if kind == "table[str]":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if kind in ("table[any]", "table"):
        return isinstance(value, dict)
    if kind == "list[table]":
        return isinstance(value, list)
    return True


def _range_text(lo: Any, hi: Any, above: Any) -> str:
    if above is not None:
        return f"more than {above:g}" + (f" and at most {hi}" if hi is not None else "")
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def _too_few(f: Field, count: int) -> str:
    if f.expect:
        return f"expected {f.expect}, got {count} entr{'y' if count == 1 else 'ies'}"
    if f.min_items == 1:
        return "expected a non-empty array, got an empty one"
    return f"expected at least {f.min_items} entries, got {count}"


def check_value(f: Field, value: Any, path: KeyPath, ctx: Context) -> Any:
    """*value* of field *f* at *path*, converted; None (and a problem) when it is wrong."""
    kind = f.kind
    if value is None and f.nullable:
        return None
    if not _type_ok(kind, value):
        ctx.add(
            path, f"expected {f.expect or ctx.kind_text(kind)}, got {describe(value, ctx.json)}"
        )
        return None
    if kind == "table":
        assert f.section is not None
        return validate_table(f.section, value, path, ctx.base_dir, ctx.problems, json=ctx.json)
    if kind == "list[table]":
        assert f.section is not None
        out: list[dict[str, Any]] = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                required = ", ".join(x.name for x in f.section.fields if x.required)
                what = ("a JSON object" if ctx.json else f"a [[{key_text(path)}]] table") + (
                    f" ({required})" if required else ""
                )
                ctx.add(path + (index,), f"expected {what}, got {describe(item, ctx.json)}")
                out.append({})
                continue
            out.append(
                validate_table(
                    f.section, item, path + (index,), ctx.base_dir, ctx.problems, json=ctx.json
                )
            )
        if len(value) < f.min_items:
            ctx.add(path, _too_few(f, len(value)))
        return out
    if kind == "list[str]":
        if len(value) < f.min_items:
            ctx.add(path, _too_few(f, len(value)))
            return None
        good = True
        for index, item in enumerate(value):
            if not isinstance(item, str):
                ctx.add(
                    path + (index,),
                    f"expected {f.item_expect or 'a string'}, got {describe(item, ctx.json)}",
                )
                good = False
            elif f.item_choices and item not in f.item_choices:
                ctx.add(
                    path + (index,),
                    f"{item!r} is not allowed; "
                    f"{did_you_mean(item, list(f.item_choices))}allowed: "
                    f"{', '.join(f.item_choices)}",
                )
                good = False
            elif f.item_pattern and not re.fullmatch(f.item_pattern, item):
                ctx.add(
                    path + (index,),
                    f"{item!r} is not allowed; allowed: {f.item_doc or f.item_pattern}",
                )
                good = False
        return list(value) if good else None
    if f.choices and value not in f.choices:
        hint = did_you_mean(value, list(f.choices)) if isinstance(value, str) else ""
        ctx.add(path, f"{value!r} is not allowed; {hint}allowed: {', '.join(f.choices)}")
        return None
    if kind in ("int", "float"):
        lo, hi, above = f.minimum, f.maximum, f.above
        if (
            (lo is not None and value < lo)
            or (hi is not None and value > hi)
            or (above is not None and not value > above)
        ):
            ctx.add(path, f"{value} is out of range; allowed: {_range_text(lo, hi, above)}")
            return None
    if f.pattern and not re.fullmatch(f.pattern, value):
        ctx.add(path, f"{value!r} is not allowed; allowed: {f.pattern_doc or f.pattern}")
        return None
    if kind == "size":
        size = parse_size(value)
        if size is None:
            what = "a power of two" if f.power_of_two else "a positive integer"
            ctx.add(
                path,
                f"{value!r} is not a size; allowed: {what} with a K, M or G "
                'suffix, e.g. "512M" or "4G"',
            )
            return None
        if f.power_of_two and not Size(size).is_power_of_two:
            ctx.add(
                path,
                f"{value!r} is not a power of two; allowed: a power of two with a K, "
                'M or G suffix, e.g. "512M" or "4G"',
            )
            return None
        return size
    if kind == "path":
        if not value:
            ctx.add(path, "empty path")
            return None
        resolved = (
            (ctx.base_dir / value).resolve() if not Path(value).is_absolute() else Path(value)
        )
        if f.must_exist and not resolved.exists():
            ctx.add(
                path,
                f"file not found: {resolved} (relative paths are resolved against "
                f"the {'file' if ctx.json else 'spec'}'s directory)",
            )
            return None
        return resolved
    if kind in ("table[str]", "table[any]"):
        return dict(value)
    return value


def _default(f: Field, base_dir: Path) -> Any:
    """A missing key's value: its default, converted like a given value would be (a ``path``
    default is relative to the file's directory, as a written value is; no existence check)."""
    if f.kind == "path" and isinstance(f.default, str) and f.default:
        return (base_dir / f.default).resolve()
    if isinstance(f.default, (list, dict)):
        return type(f.default)(f.default)
    return f.default


def validate_table(
    section: Section,
    table: Any,
    path: KeyPath,
    base_dir: Path,
    problems: list[Problem],
    *,
    json: bool = False,
) -> dict[str, Any]:
    """Check one table against *section*; return converted values with defaults filled in
    (a key whose value is wrong maps to None)."""
    ctx = Context(base_dir, problems, json)
    if not isinstance(table, dict):
        problems.append(
            Problem(path, f"expected {ctx.kind_text('table')}, got {describe(table, json)}")
        )
        return {}
    out: dict[str, Any] = {}
    known = section.field_names()
    for key in table:
        if key not in known:
            problems.append(
                Problem(
                    path + (key,),
                    f"unknown key; {did_you_mean(str(key), known)}allowed: {', '.join(known)}",
                )
            )
    for f in section.fields:
        if f.name not in table:
            if f.required:
                problems.append(Problem(path + (f.name,), f"required key is missing ({f.doc})"))
            out[f.name] = _default(f, base_dir)
            continue
        out[f.name] = check_value(f, table[f.name], path + (f.name,), ctx)
    return out


def validate_section(section: Section, data: Any, base_dir: Path, problems: list[Problem]) -> Any:
    """A whole spec section: one table, or a list of tables for ``[[array]]`` sections."""
    path = (section.name,)
    if section.array:
        if data is None:
            return []
        if not isinstance(data, list):
            problems.append(
                Problem(
                    path,
                    f"expected [[{section.name}]] entries (an array of "
                    f"tables), got {describe(data)}",
                )
            )
            return []
        return [
            validate_table(section, item, path + (i,), base_dir, problems)
            for i, item in enumerate(data)
        ]
    if data is None:
        if section.required:
            problems.append(
                Problem(path, f"required section [{section.name}] is missing ({section.doc})")
            )
            return {f.name: f.default for f in section.fields}
        # An absent optional section: only its defaults, converted (paths resolved); its
        # required keys are required only when the section is given.
        defaults = {f.name: f.default for f in section.fields if f.default is not None}
        return validate_table(section, defaults, path, base_dir, [])
    return validate_table(section, data, path, base_dir, problems)


def bad(problems: list[Problem], *paths: KeyPath) -> bool:
    """Whether a problem was found at any of *paths* or inside them (cross-key checks skip
    keys already reported)."""
    return any(p.path[: len(path)] == path for p in problems for path in paths)


__all__ = [
    "Field",
    "Section",
    "Problem",
    "Context",
    "did_you_mean",
    "describe",
    "key_text",
    "parse_size",
    "check_value",
    "validate_table",
    "validate_section",
    "bad",
]
