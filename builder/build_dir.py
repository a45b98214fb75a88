"""The build output a command reads (``inspect``, ``run``, ``k8s``, ``plan-capacity``): a build
output directory (``DIR/oci`` and ``DIR/measurements.json``, what ``build --output DIR``
writes), or a project directory (``DIR/spec.toml``, what ``build`` and ``dev`` take) whose
default output ``DIR/out`` holds a build. Anything else is a usage problem
(:class:`~builder.errors.UsageError`, exit 2) saying what to give instead."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from enclave_build.contract.names import MEASUREMENTS_FILE

from .errors import UsageError
from .spec_file import SPEC_NAME

#: Where `build` writes when no --output is given: next to the spec.
DEFAULT_OUTPUT = "out"
_GIVE = "give the --output directory of `enclave-build build`, or the project directory"


def is_build_output(directory: Path, *, measurements: bool = True) -> bool:
    """Whether *directory* holds a build: ``oci/`` (and ``measurements.json``)."""
    return (directory / "oci").is_dir() and (
        not measurements or (directory / MEASUREMENTS_FILE).is_file()
    )


def build_output(
    path: str | Path,
    *,
    measurements: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The build output *path* names: *path* itself, or for a project directory its
    ``out/`` (said through *log*). *measurements* False accepts a build output without
    measurements.json (``inspect`` reads the image alone). UsageError otherwise."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such build directory ({_GIVE})")
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory ({_GIVE})")
    if is_build_output(path, measurements=measurements):
        return path
    if (path / SPEC_NAME).is_file() and not (path / "oci").exists():
        output = path / DEFAULT_OUTPUT
        if is_build_output(output, measurements=measurements):
            if log is not None:
                log(f"{path} is a project directory: reading its build output {output}")
            return output
        raise UsageError(
            f"{path} is a project directory ({SPEC_NAME}), and {output} holds no build: "
            f"`enclave-build build {path}` writes one there (for a build written elsewhere, "
            "give its --output directory)"
        )
    if not (path / "oci").is_dir():
        raise UsageError(
            f"{path / 'oci'}: no OCI image layout; is {path} the output directory of "
            f"`enclave-build build`? ({_GIVE})"
        )
    raise UsageError(
        f"{path / MEASUREMENTS_FILE}: not found; {path} is not a complete build output (the "
        "build's identity is missing: build again)"
    )


__all__ = ["build_output", "is_build_output", "DEFAULT_OUTPUT"]
