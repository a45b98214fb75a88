"""Directories a command replaces as a whole, checked before anything is written.

``enclave-build build --output DIR`` (and ``dev``, which builds into the same place) swaps a
new output in for DIR, and ``enclave-build k8s --output DIR`` rewrites DIR's generated part:
whatever else DIR held would be lost. So DIR may be replaced only when it is

* new, or an empty directory;
* what the same command wrote there before, recognised by its files (a build output:
  ``measurements.json`` and ``oci/`` with an ``oci-layout``, besides them only the files a
  build writes -- ``secrets-policy.toml``, ``service.json``; a ``k8s`` output: its marker
  file);

and never when it is, or contains, one of the command's inputs (the spec's directory, a model,
``[secrets] keys_dir``, the CA and TLS files, the signing key), or lies inside a model
directory. Anything else is refused with a :class:`~builder.errors.UsageError` (exit 2) naming
the directory and why; nothing is removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from enclave_build.contract.names import MEASUREMENTS_FILE, POLICY_FILE, SERVICE_FILE
from enclave_build.contract.provenance import PROVENANCE_FILE
from enclave_build.contract.sbom import SBOM_FILE

from .errors import EnclaveBuildError, UsageError

#: Every name a build output directory holds (builder.build.write_output).
BUILD_OUTPUT_NAMES = frozenset(
    {"oci", MEASUREMENTS_FILE, POLICY_FILE, SERVICE_FILE, SBOM_FILE, PROVENANCE_FILE}
)
#: How many foreign entries a refusal names.
_NAMED = 3


@dataclass(frozen=True)
class Protected:
    """An input the output directory must not be or contain: *what* names it in the message
    ("models[0].path"); with *inside_too* the output may not lie inside it either (a model
    directory: the output would become part of the model)."""

    what: str
    path: Path
    inside_too: bool = False


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def build_output_problem(directory: Path) -> str | None:
    """Why *directory* (an existing, non-empty directory) is not an earlier build output, or
    None when it is one."""
    names = _entries(directory)
    foreign = [n for n in names if n not in BUILD_OUTPUT_NAMES]
    if foreign:
        shown = ", ".join(foreign[:_NAMED]) + (
            f" and {len(foreign) - _NAMED} more" if len(foreign) > _NAMED else ""
        )
        return f"it holds {shown}, which no build output holds"
    if (
        not (directory / "oci" / "oci-layout").is_file()
        or not (directory / MEASUREMENTS_FILE).is_file()
    ):
        return f"it is not a complete build output (no {MEASUREMENTS_FILE} and oci/ image layout)"
    return None


def check_replaceable(
    target: Path,
    *,
    option: str,
    written_by: str,
    problem: Callable[[Path], str | None],
    protected: Iterable[Protected] = (),
    error: type[EnclaveBuildError] = UsageError,
) -> None:
    """Refuse (*error*, exit 2) to replace *target* as *option* unless it is new, empty, or
    what *written_by* (a command, for the message) wrote: *problem* says why an existing,
    non-empty directory is not (None: it is). *protected* are the inputs it must not be or
    contain (see the module doc)."""
    resolved = target.resolve()
    for item in protected:
        path = item.path.resolve()
        if _within(path, resolved):
            where = "is" if path == resolved else "contains"
            raise error(
                f"{option} {target}: it {where} {item.what} ({item.path}); the output "
                "directory is replaced as a whole: give another directory"
            )
        if item.inside_too and _within(resolved, path):
            raise error(
                f"{option} {target}: it lies inside {item.what} ({item.path}), which it would "
                "change: give a directory outside it"
            )
    if not os.path.lexists(resolved):
        return
    if not resolved.is_dir():
        raise error(f"{option} {target}: exists and is not a directory")
    if not _entries(resolved):
        return
    reason = problem(resolved)
    if reason is not None:
        raise error(
            f"{option} {target}: not replacing this directory: {reason}. It is replaced as a "
            f"whole, so it must be new, empty or an earlier output of {written_by}: give "
            "another directory (or empty this one yourself)"
        )


__all__ = ["BUILD_OUTPUT_NAMES", "Protected", "build_output_problem", "check_replaceable"]
