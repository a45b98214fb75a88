"""`enclave-build base build`: build a base image's Dockerfile with the Docker engine."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from .oci import ImageError

#: enclave_build-VERSION-py3-none-any.whl (PEP 427 names; the version has no "-").
_WHEEL = re.compile(r"enclave_build-(?P<version>[^-]+)-[^-]+-[^-]+-[^-]+\.whl")


def wheel_version(wheel: Path) -> str:
    """The version in an enclave-build wheel's file name; UsageError for anything else."""
    match = _WHEEL.fullmatch(wheel.name)
    if match is None or not wheel.is_file():
        raise UsageError(
            f"--wheel {wheel}: not an enclave-build wheel file "
            "(enclave_build-VERSION-py3-none-any.whl)"
        )
    return match["version"]


def build_base(
    name: str | None,
    directory: Path | None,
    tag: str | None,
    build_args: tuple[str, ...],
    network: str = "host",
    log: Callable[[str], None] = lambda line: None,
    wheel: Path | None = None,
) -> tuple[str, str]:
    """Build and tag; returns (image id, tag). A recipe that installs enclave-build (the
    secret server) is built from a private copy of its directory with *wheel* added."""
    from enclave_build.base_images import BASES

    if (name is None) == (directory is None):
        raise UsageError(
            f"give a base NAME or --dir DIRECTORY (not both); names: {', '.join(BASES)}"
        )
    if name is not None:
        recipe = BASES.get(name)
        if recipe is None:
            raise UsageError(f"unknown base {name!r}; known: {', '.join(BASES)}")
        directory, tag = recipe.directory, tag or recipe.tag
        if recipe.needs_wheel and wheel is None:
            raise UsageError(
                f"{name} installs enclave-build from a wheel: pass --wheel FILE "
                "(in a clone: `pip wheel --no-deps -w dist .`; or `pip download "
                "--no-deps --only-binary=:all: enclave-build==VERSION -d dist`)"
            )
        if recipe.needs_wheel and wheel is not None:
            version = wheel_version(wheel)
            if tag == recipe.tag:
                tag = f"{recipe.tag.rsplit(':', 1)[0]}:{version}"
        elif wheel is not None:
            raise UsageError(f"--wheel: base {name} does not install enclave-build")
    elif wheel is not None:
        raise UsageError(
            "--wheel goes with a named base that installs enclave-build (secret-server)"
        )
    assert directory is not None
    if not (directory / "Dockerfile").is_file():
        raise UsageError(f"{directory}: no Dockerfile")
    if tag is None:
        raise UsageError("--tag is required with --dir")
    args = {}
    for item in build_args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--build-arg {item!r}: expected NAME=VALUE")
        args[key] = value

    if wheel is not None:
        with tempfile.TemporaryDirectory(prefix="enclave-build-context-") as context:
            shutil.copytree(
                directory,
                context,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.whl"),
            )
            shutil.copy2(wheel, Path(context) / wheel.name)
            return _docker_build(Path(context), tag, args, network, log)
    return _docker_build(directory, tag, args, network, log)


def _docker_build(
    directory: Path, tag: str, args: dict[str, str], network: str, log: Callable[[str], None]
) -> tuple[str, str]:
    import docker
    from docker.errors import APIError, BuildError, DockerException

    try:
        client = docker.from_env()
        stream = client.api.build(
            path=str(directory), tag=tag, buildargs=args, rm=True, network_mode=network, decode=True
        )
        image_id = None
        for chunk in stream:
            if "stream" in chunk and chunk["stream"].strip():
                log(chunk["stream"].rstrip())
            if "error" in chunk:
                raise ImageError(f"building {tag} failed: {chunk['error'].strip()}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except (BuildError, APIError) as exc:
        raise ImageError(f"building {tag} failed: {exc}") from None
    except DockerException as exc:
        raise ImageError(
            f"cannot talk to the Docker engine ({exc}); is it running, and is "
            "DOCKER_HOST right? (`enclave-build doctor` says how to start one; "
            "without an engine, build on --base dir:ROOTFS)"
        ) from None
    if image_id is None:
        image_id = client.images.get(tag).id
    if image_id is None:
        raise ImageError(f"building {tag}: the Docker engine reports no image id for it")
    return image_id, tag
