"""The spec a command is given: a spec file, or a project directory holding ``spec.toml``
(what ``enclave-build init`` writes), so ``enclave-build build my-model`` works as well as
``enclave-build build my-model/spec.toml``."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError

SPEC_NAME = "spec.toml"


def spec_file(path: str | Path) -> Path:
    """*path* itself, or *path*/spec.toml when *path* is a directory (UsageError naming the
    directory when it holds none)."""
    path = Path(path)
    if not path.is_dir():
        return path
    candidate = path / SPEC_NAME
    if not candidate.is_file():
        others = sorted(p.name for p in path.glob("*.toml") if p.name != "pyproject.toml")
        hint = (
            f"; it holds {', '.join(others)}: give that file"
            if others
            else f"; `enclave-build init {path}` starts a project there"
        )
        raise UsageError(f"{path}: a directory without {SPEC_NAME}{hint}")
    return candidate


__all__ = ["spec_file", "SPEC_NAME"]
