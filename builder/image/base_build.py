"""`enclave-build base build`: build a base image's Dockerfile with the Docker engine."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import UsageError
from .oci import ImageError


def build_base(name: str | None, directory: Path | None, tag: str | None,
               build_args: tuple[str, ...], network: str = "host",
               log: Callable[[str], None] = lambda line: None) -> tuple[str, str]:
    """Build and tag; returns (image id, tag)."""
    from enclave_build.base_images import BASES

    if (name is None) == (directory is None):
        raise UsageError("give a base NAME or --dir DIRECTORY (not both); "
                         f"names: {', '.join(BASES)}")
    if name is not None:
        recipe = BASES.get(name)
        if recipe is None:
            raise UsageError(f"unknown base {name!r}; known: {', '.join(BASES)}")
        directory, tag = recipe.directory, tag or recipe.tag
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

    import docker
    from docker.errors import APIError, BuildError, DockerException

    try:
        client = docker.from_env()
        stream = client.api.build(path=str(directory), tag=tag, buildargs=args, rm=True,
                                  network_mode=network, decode=True)
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
        raise ImageError(f"cannot talk to the Docker engine ({exc}); is it running, and is "
                         "DOCKER_HOST right? (`enclave-build doctor` says how to start one; "
                         "without an engine, build on --base dir:ROOTFS)") from None
    if image_id is None:
        image_id = client.images.get(tag).id
    if image_id is None:
        raise ImageError(f"building {tag}: the Docker engine reports no image id for it")
    return image_id, tag
