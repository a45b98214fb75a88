"""The contract package's one error root: a file that crosses a boundary is missing or wrong.

Every problem of a file is collected and raised together, each line ``FILE:LINE: KEY:
message`` (the line and key when known), the way spec.toml errors read.
"""

from __future__ import annotations

from .schema import Problem


class ContractError(ValueError):
    """A contract file failed to read or validate; carries every problem found."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for p in self.problems:
            where = f"{self.source}:{p.line}" if p.line else self.source
            key = f" {p.key}:" if p.path else ""
            out.append(f"{where}:{key} {p.message}")
        return out


__all__ = ["ContractError"]
