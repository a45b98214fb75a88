"""The mark of a stand-in base: :data:`.names.STANDIN_MARKER` in its root filesystem.

A stand-in base (``enclave-build base standin DIR``, ``init --base standin``) has the layout of
a Gramine installation but placeholder binaries: a build on it measures and signs, and nothing
built on it boots. Its writer puts this file in the tree (:meth:`StandInBase.to_json`); the
builder reads it from a base or a built image's root (:meth:`StandInBase.parse`) to say so
plainly, without knowing anything else of the stand-in::

    {"kind": "enclave-build stand-in base", "gramine": "1.9", "runtimes": ["secret-server"]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ContractError
from .files import Locator, NoLocator, parse_json, raise_problems
from .names import STANDIN_MARKER
from .schema import Field, Problem, Section, validate_table

KIND = "enclave-build stand-in base"


class StandInBaseError(ContractError):
    """A stand-in base's marker is malformed."""


SCHEMA = Section(
    "",
    "the marker of a stand-in base (placeholder binaries in a Gramine layout)",
    (
        Field("kind", "str", "what the tree is", required=True, choices=(KIND,)),
        Field("gramine", "str", "the Gramine version whose layout it imitates", required=True),
        Field("runtimes", "list[str]", "the stand-in runtimes added (`--runtimes`)", default=[]),
    ),
)


@dataclass(frozen=True)
class StandInBase:
    gramine: str
    runtimes: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The file's text (the one writer)."""
        data = {"kind": KIND, "gramine": self.gramine, "runtimes": list(self.runtimes)}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(
        cls, data: Any, source: str = STANDIN_MARKER, locator: Locator = NoLocator()
    ) -> StandInBase:
        """Every problem of *data*, located, in one StandInBaseError."""
        problems: list[Problem] = []
        values = validate_table(SCHEMA, data, (), Path("."), problems, json=True)
        raise_problems(problems, source, locator, StandInBaseError)
        return cls(values["gramine"], tuple(values["runtimes"]))

    @classmethod
    def parse(cls, text: str, source: str = STANDIN_MARKER) -> StandInBase:
        """The one reader: the marker's text, checked (StandInBaseError naming FILE:LINE:KEY)."""
        data, locator = parse_json(text, source, StandInBaseError)
        return cls.from_dict(data, source, locator)


__all__ = ["KIND", "SCHEMA", "StandInBase", "StandInBaseError"]
