"""secrets-policy.toml: the secret-server policy fragment a build writes.

Each build with encrypted content writes it next to its ``measurements.json``: the measurements
it refers to, the build's keys directory, and one ``[[secrets]]`` rule per key (the same rule
type as secrets.toml's, :class:`.secrets_config.SecretRule`)::

    # Secret-server policy fragment for service 'face-detect', written by enclave-build.
    # ...
    measurements = ["measurements.json"]
    keys_dir = "../keys"

    # face-detect-key: decrypts /models/face/1
    [[secrets]]
    name = "face-detect-key"
    file = "../keys/face-detect-key.key"
    allow = ["face-detect"]

`enclave-build secrets config` merges fragments into a secrets.toml, the secret-server
framework bakes their rules into its image, and `enclave-build k8s` writes the in-cluster
secrets.toml from one. The writer (:meth:`PolicyFragment.to_toml`) writes paths as given
(relative to the fragment's directory) with the comments; the reader
(:meth:`PolicyFragment.load`) resolves them against the fragment's directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ContractError
from .files import Locator, NoLocator, parse_toml, raise_problems, read_text
from .names import POLICY_FILE
from .schema import Field, Problem, Section, validate_table
from .secrets_config import RULE, SecretRule


class PolicyFragmentError(ContractError):
    """A policy fragment is missing or malformed."""


#: A fragment's rules always name their key file.
FRAGMENT_RULE = dataclasses.replace(
    RULE,
    fields=tuple(
        dataclasses.replace(f, required=True, doc="the key file, relative to this file")
        if f.name == "file"
        else f
        for f in RULE.fields
    ),
)
SCHEMA = Section(
    "",
    "secrets-policy.toml: which key of a build goes to which enclave",
    (
        Field(
            "measurements",
            "list[str]",
            "the build's measurements.json (relative to this file)",
            default=[],
            expect="an array of measurements.json paths",
            item_expect="a measurements.json path (a string)",
        ),
        Field(
            "keys_dir",
            "str",
            "the build's [secrets] keys_dir (relative to this file): its key files are there",
            expect="the build's keys directory (a string)",
        ),
        Field(
            "secrets",
            "list[table]",
            "one rule per key",
            default=[],
            section=FRAGMENT_RULE,
            expect="an array of [[secrets]] tables",
        ),
    ),
)


@dataclass(frozen=True)
class PolicyFragment:
    #: Where it was read from; None for one being written.
    path: Path | None
    measurements: tuple[str, ...]
    secrets: tuple[SecretRule, ...]
    #: The build's keys directory (None: the fragment's own directory).
    keys_dir: Path | None = None
    #: The writer's comments: lines above the values, and one note above each rule (a reader
    #: leaves them empty).
    header: tuple[str, ...] = field(default=(), compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def directory(self) -> Path:
        assert self.path is not None
        return self.path.parent

    def to_toml(self) -> str:
        """The file's text (the one writer; tomli-w writes the data, only the comments are
        ours: characters a comment cannot hold become '?')."""
        import tomli_w

        top: dict[str, Any] = {"measurements": list(self.measurements)}
        if self.keys_dir is not None:
            top["keys_dir"] = str(self.keys_dir)
        parts = [_comment(self.header) + tomli_w.dumps(top)]
        for index, rule in enumerate(self.secrets):
            note = self.notes[index : index + 1]
            parts.append(_comment(note) + tomli_w.dumps({"secrets": [rule.to_dict()]}))
        return "\n".join(parts)

    @classmethod
    def from_dict(cls, data: Any, path: Path, locator: Locator = NoLocator()) -> PolicyFragment:
        """*data* (a fragment's, relative paths against *path*'s directory) checked: every
        problem, located, in one PolicyFragmentError naming *path*."""
        problems: list[Problem] = []
        if isinstance(data, dict):
            for key in data:
                if key not in SCHEMA.field_names():
                    problems.append(
                        Problem(
                            (key,),
                            "not part of a policy fragment (only "
                            "measurements, keys_dir and [[secrets]])",
                        )
                    )
            data = {k: v for k, v in data.items() if k in SCHEMA.field_names()}
        v = validate_table(SCHEMA, data, (), path.parent, problems)
        raise_problems(problems, str(path), locator, PolicyFragmentError)
        base = path.parent
        return cls(
            path,
            tuple(_absolute(base, m) for m in v["measurements"]),
            tuple(
                SecretRule(
                    r["name"],
                    Path(_absolute(base, r["file"])),
                    tuple(r["allow"]),
                    r["match"],
                    r["encoding"],
                    r["requested_as"],
                )
                for r in v["secrets"]
            ),
            base / v["keys_dir"] if v["keys_dir"] is not None else None,
        )

    @classmethod
    def load(cls, path: str | Path) -> PolicyFragment:
        """The one reader: the fragment at *path* (or in the build directory *path*), checked
        (PolicyFragmentError naming FILE:LINE:KEY)."""
        path = Path(path)
        if path.is_dir():
            path = path / POLICY_FILE
        text = read_text(path, PolicyFragmentError, "the policy fragment")
        data, locator = parse_toml(text, str(path), PolicyFragmentError)
        return cls.from_dict(data, path, locator)


def _absolute(base: Path, value: str) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else (base / path).resolve())


def _comment(lines: tuple[str, ...] | list[str]) -> str:
    """TOML comment lines; characters a comment cannot hold (newlines, controls) become '?'."""
    return "".join(
        "# " + "".join(c if c.isprintable() else "?" for c in line) + "\n" for line in lines
    )


__all__ = ["PolicyFragment", "PolicyFragmentError", "SCHEMA", "FRAGMENT_RULE"]
