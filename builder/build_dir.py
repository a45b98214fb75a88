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


#: What a command reads of a build output, by default (``run``): the image and its identity.
IMAGE_AND_IDENTITY = ("oci", MEASUREMENTS_FILE)


def _present(directory: Path, name: str) -> bool:
    """``oci/`` is a directory, every other part of a build output a file."""
    return (directory / name).is_dir() if name == "oci" else (directory / name).is_file()


def is_build_output(directory: Path, needs: tuple[str, ...] = IMAGE_AND_IDENTITY) -> bool:
    """Whether *directory* holds what a command *needs* of a build."""
    return all(_present(directory, name) for name in needs)


def build_output(
    path: str | Path,
    *,
    needs: tuple[str, ...] = IMAGE_AND_IDENTITY,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The build output *path* names: *path* itself, or for a project directory its
    ``out/`` (said through *log*). *needs*: what the command reads of it (``oci``,
    ``measurements.json``, ``service.json``). UsageError otherwise."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such build directory ({_GIVE})")
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory ({_GIVE})")
    if is_build_output(path, needs):
        return path
    if (path / SPEC_NAME).is_file() and not (path / MEASUREMENTS_FILE).exists():
        output = path / DEFAULT_OUTPUT
        if is_build_output(output, needs):
            if log is not None:
                log(f"{path} is a project directory: reading its build output {output}")
            return output
        raise UsageError(
            f"{path} is a project directory ({SPEC_NAME}), and {output} holds no build: "
            f"`enclave-build build {path}` writes one there (for a build written elsewhere, "
            "give its --output directory)"
        )
    if "oci" in needs and not (path / "oci").is_dir():
        raise UsageError(
            f"{path / 'oci'}: no OCI image layout; is {path} the output directory of "
            f"`enclave-build build`? ({_GIVE})"
        )
    missing = next(name for name in needs if not _present(path, name))
    raise UsageError(
        f"{path / missing}: not found; is {path} the output directory of `enclave-build "
        f"build`? ({_GIVE})"
    )


__all__ = ["build_output", "is_build_output", "DEFAULT_OUTPUT", "IMAGE_AND_IDENTITY"]
