"""The contract package's one error root: a file that crosses a boundary is missing or wrong,
or a value in one of its notations (a size) is.

Every problem of a file is collected and raised together, each line ``FILE:LINE: KEY:
message`` (the line and key when known), the way spec.toml errors read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schema import Problem


class ContractError(ValueError):
    """A contract file failed to read or validate; carries every problem found.

    ``ContractError(source, problems)``: the problems of the file *source*.
    ``ContractError(message)``: one problem that belongs to no file (e.g. a size given on the
    command line); the message is the error's text as it is."""

    def __init__(self, source: str, problems: list[Problem] | None = None):
        self.source = source
        self.problems = list(problems or ())
        super().__init__(source if problems is None else "\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for p in self.problems:
            where = f"{self.source}:{p.line}" if p.line else self.source
            key = f" {p.key}:" if p.path else ""
            out.append(f"{where}:{key} {p.message}")
        return out


__all__ = ["ContractError"]
