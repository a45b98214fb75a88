"""What ``enclave-build diff A B`` compares, from how it is named: a build output directory, a
project directory (its ``out/``), an OCI image layout, or an image reference with a transport
(``docker://HOST/NAME@sha256:...``, ``oci:DIR[:TAG]``, ``docker-archive:FILE``) or a registry
host (``HOST[:PORT]/NAME...``), or a provenance file (``provenance.dsse.json``). Anything else is a :class:`~builder.errors.UsageError` (exit
2) saying "no such ..." and what to give instead."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from ..build_dir import build_output
from ..cache import cache_root
from ..errors import UsageError
from ..hashing import HashCache
from ..image.blob_cache import BlobCache
from ..image.inspect import open_image
from ..image.reference import names_registry_host, parse_source
from ..image.unpack import unpacked_rootfs
from .diff import diff_facts
from .facts import BuildFacts, image_facts, load_provenance, provenance_facts
from .result import BuildDiff

ProgressTask = Callable[[str, "int | None"], Callable[[int], None]]
_GIVE = (
    "give a build output directory, a project directory, an OCI image layout, an image "
    "reference such as docker://HOST/NAME@sha256:... or oci:DIR, or a provenance file"
)
_TRANSPORTS = ("docker://", "oci:", "oci-archive:", "docker-archive:", "docker-daemon:")


def locate(text: str, log: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(what to read, the kind: ``build output``, ``image`` or ``provenance`` -- a ``.json``
    file, ``provenance.dsse.json``) for the argument *text*; UsageError when it names nothing
    that exists."""
    path = Path(text)
    if path.is_file() and path.name.endswith(".json"):
        return text, "provenance"
    if path.is_dir():
        if (path / "oci-layout").is_file():
            return text, "image"
        return str(build_output(path, needs=("oci",), log=log)), "build output"
    if text.startswith(_TRANSPORTS):
        source = parse_source(text)
        if source.transport != "docker" and source.transport != "docker-daemon":
            if not Path(source.location).exists():
                raise UsageError(f"{text}: no such image layout or archive ({source.location})")
        return text, "image"
    if names_registry_host(text) and not os.path.lexists(text):
        return text, "image"
    if os.path.lexists(text):
        raise UsageError(f"{text}: not a build output or an image ({_GIVE})")
    raise UsageError(f"{text}: no such build output, project directory or image ({_GIVE})")


def open_facts(
    text: str,
    kind: str,
    progress: ProgressTask | None = None,
    log: Callable[[str], None] | None = None,
) -> BuildFacts:
    """The facts of what *text* names: a provenance file's statement, or an image (unpacked
    into the cache, as `inspect` does)."""
    if kind == "provenance":
        return provenance_facts(text, load_provenance(Path(text)))
    image, measurements = open_image(text)
    advance = (
        progress(f"unpacking {text}", sum(layer.size for layer in image.layers))
        if progress
        else None
    )
    rootfs = unpacked_rootfs(
        image.store,
        image.layers,
        image.diff_ids,
        cache_root() / "rootfs",
        text,
        progress=advance,
        log=log,
    )
    directory = Path(text) if kind == "build output" else None
    return image_facts(text, kind, image, rootfs, measurements, directory)


def diff_builds(
    a: str,
    b: str,
    *,
    progress: ProgressTask | None = None,
    log: Callable[[str], None] | None = None,
    hash_cache: HashCache | None = None,
) -> BuildDiff:
    """Compare what *a* and *b* name (see the module docstring)."""
    where_a, kind_a = locate(a, log)
    where_b, kind_b = locate(b, log)
    with ExitStack() as stack:
        stack.enter_context(BlobCache(cache_root()).in_use())  # no prune while reading
        cache = hash_cache
        if cache is None:
            cache = HashCache()
            stack.callback(cache.close)
        left = open_facts(where_a, kind_a, progress, log)
        right = open_facts(where_b, kind_b, progress, log)
        return diff_facts(left, right, cache, progress)


__all__ = ["diff_builds", "locate", "open_facts"]
