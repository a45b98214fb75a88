"""The SHA-256 of every model file a plan ships, by the path the enclave opens it at: what a
provenance records under its resolved dependencies (``kind = "model"``) and what
``verify-build`` checks the given models against before rebuilding.

A model given as a directory contributes each regular file under it (its path below the
model's image directory); digests are of the plaintext, whether the build encrypts it or not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .hashing import HashCache, hash_files
from .plan import ServicePlan
from .spec import Spec


@dataclass(frozen=True)
class ModelFile:
    model: str  # the model's name
    version: str
    path: str  # in the enclave
    source: Path  # on the build machine
    sha256: str


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def model_files(spec: Spec, plan: ServicePlan, cache: HashCache | None = None) -> list[ModelFile]:
    """Every file of *spec*'s models the plan adds, sorted by enclave path."""
    found: list[tuple[str, str, str, Path]] = []
    for item in plan.files:
        if item.source is None:
            continue
        source = Path(item.source).resolve()
        model = next(
            (m for m in spec.models if _within(source, Path(m.path).resolve())),
            None,
        )
        if model is None:
            continue
        if source.is_dir():
            for root, dirs, names in os.walk(source):
                dirs.sort()
                for name in sorted(names):
                    host = Path(root) / name
                    if host.is_file() and not host.is_symlink():
                        inner = host.relative_to(source).as_posix()
                        dest = item.dest.rstrip("/") + "/" + inner
                        found.append((model.name, str(model.version), dest, host))
        else:
            found.append((model.name, str(model.version), item.dest, source))
    digests = hash_files([host for *_, host in found], cache)
    return sorted(
        (
            ModelFile(name, version, dest, host, digests[host])
            for name, version, dest, host in found
        ),
        key=lambda f: f.path,
    )


__all__ = ["ModelFile", "model_files"]
