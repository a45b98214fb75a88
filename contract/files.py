"""Reading a contract file: its text, parsed (JSON or TOML) with a key locator, and the
problems found raised together, located (see :class:`.errors.ContractError`)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Protocol

from .errors import ContractError
from .locate import JsonLocator, KeyLocator, KeyPath
from .schema import Problem


class Locator(Protocol):
    def line(self, path: KeyPath) -> int | None: ...


class NoLocator:
    """For data that did not come from a file (nothing to locate)."""

    def line(self, path: KeyPath) -> int | None:
        return None


def read_text(path: str | Path, error: type[ContractError], what: str) -> str:
    """The file's text; *error* (not found / unreadable / not UTF-8) naming it otherwise."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(str(path), [Problem((), f"cannot read {what}: not found")]) from None
    except OSError as exc:
        raise error(
            str(path), [Problem((), f"cannot read {what}: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise error(
            str(path), [Problem((), f"cannot read {what}: not UTF-8 ({exc.reason})")]
        ) from None


def parse_json(text: str, source: str, error: type[ContractError]) -> tuple[Any, JsonLocator]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            source, [Problem((), f"not JSON ({exc.msg}, column {exc.colno})", exc.lineno)]
        ) from None
    except RecursionError:
        raise error(source, [Problem((), "not JSON (nested too deeply)")]) from None
    return data, JsonLocator(text)


def parse_toml(text: str, source: str, error: type[ContractError]) -> tuple[Any, KeyLocator]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        raise error(
            source, [Problem((), f"not TOML ({exc})", int(match.group(1)) if match else None)]
        ) from None
    return data, KeyLocator(text)


def raise_problems(
    problems: list[Problem], source: str, locator: Locator, error: type[ContractError]
) -> None:
    """Raise *error* with every problem, each located, if there is any."""
    if problems:
        raise error(
            source, [Problem(p.path, p.message, p.line or locator.line(p.path)) for p in problems]
        )


__all__ = ["Locator", "NoLocator", "read_text", "parse_json", "parse_toml", "raise_problems"]
