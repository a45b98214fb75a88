"""Editing a spec.toml in place: a few keys of one ``[[models]]`` table set to new string values,
every other byte of the file (comments, order, other keys) as it was.

A line edit, checked: the key must be on a line of its own in that table (``path = "..."``, as
``enclave-build init`` writes it, a comment after the value is kept), and the edited file must
parse to the same data but for the keys set. A spec written another way is refused with a
:class:`~builder.errors.UsageError` saying to edit it by hand; nothing is written here.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError

_MODELS_HEADER = re.compile(r"^\s*\[\[\s*models\s*\]\]\s*(#.*)?$")
_HEADER = re.compile(r"^\s*\[")
#: KEY = "basic string" or 'literal string', then an optional comment.
_STRING_VALUE = r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*')(?P<rest>\s*(?:#.*)?)$"""


def _key_line(key: str) -> re.Pattern[str]:
    return re.compile(rf"^(?P<head>\s*{re.escape(key)}\s*=\s*){_STRING_VALUE}")


def set_model_keys(
    text: str, values: Mapping[str, str], *, index: int = 0, source: str | Path = "spec.toml"
) -> str:
    """*text* with the string keys *values* of its ``[[models]]`` table number *index* set
    (see the module doc). UsageError naming *source* when the file cannot be edited so."""
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: invalid TOML: {exc}") from None
    lines = text.splitlines(keepends=True)
    table = -1
    inside = False
    found: dict[str, int] = {}
    for number, line in enumerate(lines):
        if _MODELS_HEADER.match(line):
            table += 1
            inside = table == index
            continue
        if _HEADER.match(line):
            inside = False
            continue
        if not inside:
            continue
        for key in values:
            if key not in found and _key_line(key).match(line.rstrip("\r\n")):
                found[key] = number
    missing = [k for k in values if k not in found]
    if missing:
        raise UsageError(
            f'{source}: no line `{missing[0]} = "..."` in [[models]] number {index + 1}; '
            f"set models[{index}].{missing[0]} by hand"
        )
    for key, number in found.items():
        line = lines[number]
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        match = _key_line(key).match(body)
        assert match is not None  # found above
        lines[number] = (
            f"{match['head']}{json.dumps(values[key], ensure_ascii=False)}{match['rest']}{ending}"
        )
    edited = "".join(lines)
    expected: dict[str, Any] = {**before, "models": [dict(m) for m in before.get("models", [])]}
    try:
        expected["models"][index].update(values)
        after = tomllib.loads(edited)
    except (IndexError, AttributeError, tomllib.TOMLDecodeError):
        after = None
    if after != expected:
        raise UsageError(
            f"{source}: cannot set models[{index}] {', '.join(values)} in place (the file is "
            "written in a way this edit does not handle); set them by hand"
        )
    return edited


_TABLE_HEADER = r"^\s*\[\s*{name}\s*\]\s*(#.*)?$"
#: KEY = a string, integer or boolean value, then an optional comment.
_ANY_VALUE = (
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[+-]?\d[\d_]*|true|false)(?P<rest>\s*(?:#.*)?)$"""
)


def _table_lines(
    text: str, table: str, source: str | Path
) -> tuple[dict[str, Any], list[str], str, int, int]:
    """(the parsed spec, its lines, its newline, the line of ``[TABLE]``'s header, the line
    after the table), the header appended when the table is missing."""
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: invalid TOML: {exc}") from None
    header = re.compile(_TABLE_HEADER.format(name=re.escape(table)))
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    start = next((i for i, line in enumerate(lines) if header.match(line.rstrip("\r\n"))), None)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += newline
        lines += [newline, f"[{table}]{newline}"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
    return before, lines, newline, start, end


def _checked(
    lines: list[str], expected: dict[str, Any], what: str, pronoun: str, source: str | Path
) -> str:
    """The edited text, when it parses to *expected*; else UsageError saying to set *what* by
    hand."""
    edited = "".join(lines)
    try:
        after = tomllib.loads(edited)
    except tomllib.TOMLDecodeError:
        after = None
    if after != expected:
        raise UsageError(
            f"{source}: cannot set {what} in place (the file is written in a way this edit "
            f"does not handle); set {pronoun} by hand"
        )
    return edited


def set_table_keys(
    text: str,
    table: str,
    values: Mapping[str, str | int],
    comment: str,
    *,
    source: str | Path = "spec.toml",
) -> str:
    """*text* with keys of the plain table ``[TABLE]`` set to *values* (strings or integers),
    each edited line preceded by ``# COMMENT (was OLD)``; a key the table lacks is added
    after its header, a missing table at the end. Every other byte stays; the result must
    parse to the same data but for those keys (UsageError naming *source* otherwise)."""
    before, lines, newline, start, end = _table_lines(text, table, source)
    inserts: list[str] = []
    for key, value in values.items():
        rendered = json.dumps(value, ensure_ascii=False)
        pattern = re.compile(rf"^(?P<head>\s*{re.escape(key)}\s*=\s*){_ANY_VALUE}")
        number = next(
            (i for i in range(start + 1, end) if pattern.match(lines[i].rstrip("\r\n"))), None
        )
        if number is None:
            inserts += [f"# {comment}{newline}", f"{key} = {rendered}{newline}"]
            continue
        body = lines[number].rstrip("\r\n")
        match = pattern.match(body)
        assert match is not None
        indent = re.match(r"\s*", body)[0]  # type: ignore[index]
        lines[number] = (
            f"{indent}# {comment} (was {match['value']}){newline}"
            f"{match['head']}{rendered}{match['rest']}{lines[number][len(body) :]}"
        )
    lines[start + 1 : start + 1] = inserts
    expected = {**before, table: {**(before.get(table) or {}), **values}}
    return _checked(lines, expected, f"[{table}] {', '.join(values)}", "them", source)


def _value_end(lines: list[str], number: int, key: str) -> int | None:
    """The line after the value of ``KEY = ...`` starting at line *number* (a value can span
    lines: a multi-line array); None when no prefix of the lines parses as that key."""
    for end in range(number + 1, len(lines) + 1):
        try:
            tomllib.loads("".join(lines[number:end]))
        except tomllib.TOMLDecodeError:
            continue
        return end
    return None


def set_table_list(
    text: str,
    table: str,
    key: str,
    items: list[str],
    comment: str,
    *,
    source: str | Path = "spec.toml",
) -> str:
    """*text* with ``[TABLE] KEY`` set to the array of strings *items*, written one per line
    under ``# COMMENT (was N entries)`` (the old value may span lines); a missing key is added
    after the table's header, a missing table at the end. Every other byte stays; UsageError
    naming *source* when the result would not parse to the same data but for that key."""
    before, lines, newline, start, end = _table_lines(text, table, source)
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    number = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
    body = "".join(f"    {json.dumps(item, ensure_ascii=False)},{newline}" for item in items)
    rendered = f"{key} = [{newline}{body}]{newline}" if items else f"{key} = []{newline}"
    old = (before.get(table) or {}).get(key)
    was = f" (was {len(old)} entries)" if isinstance(old, list) else ""
    block = [f"# {comment}{was}{newline}", rendered]
    if number is None:
        lines[start + 1 : start + 1] = block
    else:
        stop = _value_end(lines, number, key)
        if stop is None or stop > end:
            raise UsageError(
                f"{source}: cannot set [{table}] {key} in place (its value is written in a way "
                "this edit does not handle); set it by hand"
            )
        lines[number:stop] = block
    expected = {**before, table: {**(before.get(table) or {}), key: list(items)}}
    return _checked(lines, expected, f"[{table}] {key}", "it", source)


__all__ = ["set_model_keys", "set_table_keys", "set_table_list"]
