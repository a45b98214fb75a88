"""Read a base image from any transport into the local blob store.

Every source becomes an :class:`~builder.image.oci.Image` whose blobs are in the cache's blob
store, plus (on demand) its unpacked root filesystem. ``dir:PATH`` bases (a bare root filesystem
without image metadata) become a one-layer image made deterministically from the directory.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_root
from ..errors import UsageError
from ..hashing import HashCache
from ..rootfs import RootFS
from .layers import LayerEntry, directory_entries, write_layer
from .oci import (
    DOCKER_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    BlobStore,
    Descriptor,
    Image,
    ImageError,
    canonical_json,
    parse_config,
    parse_index,
    parse_json_object,
    parse_manifest,
    sha256_digest,
)
from .reference import ImageSource, parse_source
from .registry import RegistryClient
from .unpack import unpacked_rootfs

ProgressTask = Callable[[str, "int | None"], Callable[[int], None]]


@dataclass
class BaseImage:
    """A base image and a way to read its files."""

    image: Image
    rootfs: RootFS
    source: ImageSource


def open_base(
    text: str,
    progress: ProgressTask | None = None,
    cache: Path | None = None,
    hash_cache: HashCache | None = None,
) -> BaseImage:
    source = parse_source(text)
    cache = cache or cache_root()
    store = BlobStore(cache / "blobs")
    if source.transport == "dir":
        root = Path(source.location).resolve()
        rootfs = RootFS(root, text)
        return BaseImage(
            _image_from_directory(root, store, text, hash_cache, progress), rootfs, source
        )
    if source.transport == "docker":
        assert source.registry is not None
        image = RegistryClient(source.registry.host).pull(source.registry, store, progress)
    elif source.transport == "oci":
        image = read_oci_layout(Path(source.location), source.tag, store, text)
    elif source.transport == "oci-archive":
        image = _read_oci_archive(Path(source.location), source.tag, store, text)
    elif source.transport == "docker-archive":
        image = read_docker_archive(Path(source.location), store, text)
    elif source.transport == "docker-daemon":
        image = _read_daemon(source.location, store, text)
    else:  # pragma: no cover - parse_source only returns the above
        raise UsageError(f"unsupported transport {source.transport}")
    advance = (
        progress("unpacking base image", sum(d.size for d in image.layers)) if progress else None
    )
    rootfs = unpacked_rootfs(store, image.layers, image.diff_ids, cache / "rootfs", text, advance)
    return BaseImage(image, rootfs, source)


def _image_from_directory(
    root: Path,
    store: BlobStore,
    text: str,
    hash_cache: HashCache | None = None,
    progress: ProgressTask | None = None,
) -> Image:
    """A one-layer image of *root* (deterministic: same tree, same digests)."""
    entries = directory_entries(root)
    advance = (
        progress(
            "reading base directory",
            sum(e.source.stat().st_size for e in entries if e.source)
            + sum(len(e.data) for e in entries if e.data),
        )
        if progress
        else None
    )
    layer = write_layer(entries, store, hash_cache, progress=advance)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        # Never the directory's path: the same tree elsewhere must give the same digest.
        "history": [{"created_by": "enclave-build: root filesystem from a dir: base"}],
    }
    raw = canonical_json(config)
    desc = Descriptor(OCI_CONFIG, store.put_bytes(raw), len(raw))
    return Image(store, config, desc, [layer.descriptor], None, text)


def _pick_manifest(manifests: list[Descriptor], tag: str | None, source: str) -> Descriptor:
    if tag is not None:
        manifests = [
            m
            for m in manifests
            if (m.annotations or {}).get("org.opencontainers.image.ref.name") == tag
        ]
        if not manifests:
            raise ImageError(f"{source}: no image tagged {tag!r} in the layout")
    if not manifests:
        raise ImageError(f"{source}: the layout's index.json lists no images")
    if len(manifests) > 1:
        amd64 = [m for m in manifests if (m.platform or {}).get("architecture") == "amd64"]
        if len(amd64) == 1:
            return amd64[0]
        raise ImageError(f"{source}: several images in the layout; name one as oci:DIR:TAG")
    return manifests[0]


def _read_verified(local: BlobStore, digest: str, source: str, what: str) -> bytes:
    data = local.read(digest)
    if sha256_digest(data) != digest:
        raise ImageError(f"{source}: {what} blob does not match its digest {digest}")
    return data


def read_oci_layout(directory: Path, tag: str | None, store: BlobStore, source: str) -> Image:
    try:
        layout = parse_json_object((directory / "oci-layout").read_bytes(), f"{source}: oci-layout")
        index = parse_json_object((directory / "index.json").read_bytes(), f"{source}: index.json")
    except FileNotFoundError as exc:
        raise ImageError(
            f"{source}: not an OCI image layout (missing {Path(exc.filename).name})"
        ) from None
    except OSError as exc:
        raise ImageError(f"{source}: cannot read the layout: {exc.strerror or exc}") from None
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise ImageError(
            f"{source}: unsupported imageLayoutVersion {layout.get('imageLayoutVersion')!r}"
        )
    local = BlobStore(directory / "blobs")
    chosen = _pick_manifest(parse_index(index, f"{source}: index.json"), tag, source)
    manifest_bytes = _read_verified(local, chosen.digest, source, "manifest")
    manifest = parse_json_object(manifest_bytes, f"{source}: manifest {chosen.digest}")
    if chosen.media_type in (OCI_INDEX, DOCKER_LIST) or "manifests" in manifest:
        nested = _pick_manifest(
            parse_index(manifest, f"{source}: index {chosen.digest}"), None, source
        )
        manifest_bytes = _read_verified(local, nested.digest, source, "manifest")
        manifest = parse_json_object(manifest_bytes, f"{source}: manifest {nested.digest}")
    config_desc, layers = parse_manifest(manifest, f"{source}: manifest")
    for desc in [config_desc, *layers]:
        try:
            handle = open(local.path(desc.digest), "rb")
        except OSError:
            raise ImageError(f"{source}: blob {desc.digest} is missing from the layout") from None
        with handle:
            store.put_stream(handle, expected=desc.digest)
    config = parse_config(store.read(config_desc.digest), f"{source}: config")
    return Image(store, config, config_desc, layers, manifest_bytes, source)


def _read_oci_archive(path: Path, tag: str | None, store: BlobStore, source: str) -> Image:
    with tempfile.TemporaryDirectory(prefix="enclave-build-oci-") as tmp:
        _safe_extract(path, Path(tmp), source)
        return read_oci_layout(Path(tmp), tag, store, source)


def _archive_member(top: Path, name: object, source: str, what: str) -> Path:
    """The file *name* (from an archive's manifest.json) inside the extracted archive *top*:
    a relative path without ``..`` that stays inside *top* after resolving links."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ImageError(f"{source}: manifest.json {what} {name!r} is not a file name")
    if name.startswith("/") or ".." in name.split("/"):
        raise ImageError(f"{source}: manifest.json {what} {name!r} points outside the archive")
    path = (top / name).resolve()
    if not path.is_relative_to(top.resolve()) or not path.is_file():
        raise ImageError(f"{source}: manifest.json {what} {name!r} is not a file in the archive")
    return path


def read_docker_archive(path: Path, store: BlobStore, source: str) -> Image:
    """A `docker save` tar: manifest.json names the config and the layer files."""
    with tempfile.TemporaryDirectory(prefix="enclave-build-docker-") as tmp:
        top = Path(tmp)
        _safe_extract(path, top, source)
        try:
            entries = json.loads((top / "manifest.json").read_bytes())
        except (OSError, ValueError, RecursionError):
            raise ImageError(
                f"{source}: not a docker-archive (no readable manifest.json)"
            ) from None
        if not isinstance(entries, list):
            raise ImageError(f"{source}: manifest.json is not a list of images")
        if len(entries) != 1:
            raise ImageError(f"{source}: holds {len(entries)} images; save exactly one")
        entry = entries[0]
        if not isinstance(entry, dict) or not isinstance(entry.get("Layers"), list):
            raise ImageError(f"{source}: manifest.json entry lacks Config or Layers")
        with open(_archive_member(top, entry.get("Config"), source, "Config"), "rb") as handle:
            config_digest, config_size = store.put_stream(handle)
        layers = []
        for index, name in enumerate(entry["Layers"]):
            with open(_archive_member(top, name, source, f"Layers[{index}]"), "rb") as handle:
                gzipped = handle.read(2) == b"\x1f\x8b"
                handle.seek(0)
                digest, size = store.put_stream(handle)
            layers.append(Descriptor(OCI_LAYER_GZIP if gzipped else OCI_LAYER, digest, size))
    config = parse_config(store.read(config_digest), f"{source}: config")
    return Image(
        store, config, Descriptor(OCI_CONFIG, config_digest, config_size), layers, None, source
    )


def _read_daemon(name: str, store: BlobStore, source: str) -> Image:
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.from_env()
        image = client.images.get(name)
        with tempfile.NamedTemporaryFile(prefix="enclave-build-save-", suffix=".tar") as tmp:
            for chunk in image.save(named=True):
                tmp.write(chunk)
            tmp.flush()
            return read_docker_archive(Path(tmp.name), store, source)
    except ImageNotFound:
        recipe = _recipe_named(name)
        make = (
            f"make it with `enclave-build base build {recipe}` (base_images/{recipe})"
            if recipe
            else f"`docker pull {name}` or `docker build -t {name} ...` first"
        )
        raise ImageError(
            f"{source}: the Docker engine has no image {name!r}; {make}, or build "
            "without it on an unpacked root filesystem: --base dir:ROOTFS"
        ) from None
    except DockerException as exc:
        recipe = _recipe_named(name)
        later = (
            f"; with an engine running, `enclave-build base build {recipe}` makes this base"
            if recipe
            else ""
        )
        raise ImageError(
            f"{source}: cannot talk to the Docker engine ({exc}); is it running, "
            "and is DOCKER_HOST right? Without an engine, build on an unpacked "
            "root filesystem with --base dir:ROOTFS (`enclave-build base gramine "
            "ROOTFS` makes a real Gramine one; `enclave-build base standin DIR` a stand-in), or "
            f"pull from a registry with --base docker://HOST/NAME:TAG{later}"
        ) from None


def _recipe_named(name: str) -> str | None:
    """The base_images/ recipe whose `base build` tag is *name* (the frameworks' default
    bases), or None."""
    from enclave_build.base_images import BASES

    bare = name.removeprefix("docker.io/")
    return next((recipe.name for recipe in BASES.values() if recipe.tag == bare), None)


def _safe_extract(archive: Path, target: Path, source: str) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except FileNotFoundError:
        raise ImageError(f"{source}: {archive} not found") from None
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"{source}: cannot read {archive}: {exc}") from None


def copy_blobs(image: Image, target: BlobStore) -> None:
    for desc in [image.config_descriptor, *image.layers]:
        image.store.copy_into(target, desc.digest)


__all__ = [
    "BaseImage",
    "open_base",
    "read_oci_layout",
    "read_docker_archive",
    "copy_blobs",
    "LayerEntry",
]
