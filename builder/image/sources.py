"""Read a base image from any transport into the local blob store.

Every source becomes an :class:`~builder.image.oci.Image` whose blobs are in the cache's blob
store, plus (on demand) its unpacked root filesystem. ``dir:PATH`` bases (a bare root filesystem
without image metadata) become a one-layer image made deterministically from the directory.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..cache import cache_root
from ..errors import UsageError
from ..hashing import HashCache
from ..rootfs import RootFS
from .layers import LayerEntry, directory_entries, write_layer
from .oci import (DOCKER_LIST, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP, BlobStore,
                  Descriptor, Image, ImageError, canonical_json, sha256_digest)
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


def open_base(text: str, progress: ProgressTask | None = None,
              cache: Path | None = None, hash_cache: HashCache | None = None) -> BaseImage:
    source = parse_source(text)
    cache = cache or cache_root()
    store = BlobStore(cache / "blobs")
    if source.transport == "dir":
        root = Path(source.location).resolve()
        rootfs = RootFS(root, text)
        return BaseImage(_image_from_directory(root, store, text, hash_cache), rootfs, source)
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
    advance = progress("unpacking base image", sum(d.size for d in image.layers)) \
        if progress else None
    rootfs = unpacked_rootfs(store, image.layers, image.diff_ids, cache / "rootfs", text, advance)
    return BaseImage(image, rootfs, source)


def _image_from_directory(root: Path, store: BlobStore, text: str,
                          hash_cache: HashCache | None = None) -> Image:
    """A one-layer image of *root* (deterministic: same tree, same digests)."""
    layer = write_layer(directory_entries(root), store, hash_cache)
    config = {
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created_by": f"enclave-build: root filesystem from {text}"}],
    }
    raw = canonical_json(config)
    desc = Descriptor(OCI_CONFIG, store.put_bytes(raw), len(raw))
    return Image(store, config, desc, [layer.descriptor], None, text)


def _pick_manifest(index: dict[str, Any], tag: str | None, source: str) -> dict[str, Any]:
    manifests = index.get("manifests", [])
    if tag is not None:
        manifests = [m for m in manifests
                     if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
        if not manifests:
            raise ImageError(f"{source}: no image tagged {tag!r} in the layout")
    if not manifests:
        raise ImageError(f"{source}: the layout's index.json lists no images")
    if len(manifests) > 1:
        amd64 = [m for m in manifests if (m.get("platform") or {}).get("architecture") == "amd64"]
        if len(amd64) == 1:
            return amd64[0]
        raise ImageError(f"{source}: several images in the layout; name one as oci:DIR:TAG")
    return manifests[0]


def read_oci_layout(directory: Path, tag: str | None, store: BlobStore, source: str) -> Image:
    try:
        layout = json.loads((directory / "oci-layout").read_text())
        index = json.loads((directory / "index.json").read_text())
    except FileNotFoundError as exc:
        raise ImageError(f"{source}: not an OCI image layout (missing {Path(exc.filename).name})") \
            from None
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise ImageError(f"{source}: unsupported imageLayoutVersion {layout.get('imageLayoutVersion')}")
    local = BlobStore(directory / "blobs")
    chosen = _pick_manifest(index, tag, source)
    manifest_bytes = local.read(chosen["digest"])
    if sha256_digest(manifest_bytes) != chosen["digest"]:
        raise ImageError(f"{source}: manifest blob does not match its digest")
    manifest = json.loads(manifest_bytes)
    if chosen.get("mediaType") in (OCI_INDEX, DOCKER_LIST) or "manifests" in manifest:
        nested = _pick_manifest(manifest, None, source)
        manifest_bytes = local.read(nested["digest"])
        manifest = json.loads(manifest_bytes)
    config_desc = Descriptor.from_json(manifest["config"])
    layers = [Descriptor.from_json(layer) for layer in manifest["layers"]]
    for desc in [config_desc, *layers]:
        with open(local.path(desc.digest), "rb") as handle:
            store.put_stream(handle, expected=desc.digest)
    config = json.loads(store.read(config_desc.digest))
    return Image(store, config, config_desc, layers, manifest_bytes, source)


def _read_oci_archive(path: Path, tag: str | None, store: BlobStore, source: str) -> Image:
    with tempfile.TemporaryDirectory(prefix="enclave-build-oci-") as tmp:
        _safe_extract(path, Path(tmp), source)
        return read_oci_layout(Path(tmp), tag, store, source)


def read_docker_archive(path: Path, store: BlobStore, source: str) -> Image:
    """A `docker save` tar: manifest.json names the config and the layer files."""
    with tempfile.TemporaryDirectory(prefix="enclave-build-docker-") as tmp:
        _safe_extract(path, Path(tmp), source)
        try:
            entries = json.loads((Path(tmp) / "manifest.json").read_text())
        except (FileNotFoundError, ValueError):
            raise ImageError(f"{source}: not a docker-archive (no manifest.json)") from None
        if len(entries) != 1:
            raise ImageError(f"{source}: holds {len(entries)} images; save exactly one")
        entry = entries[0]
        with open(Path(tmp) / entry["Config"], "rb") as handle:
            config_digest, config_size = store.put_stream(handle)
        layers = []
        for name in entry["Layers"]:
            with open(Path(tmp) / name, "rb") as handle:
                gzipped = handle.read(2) == b"\x1f\x8b"
                handle.seek(0)
                digest, size = store.put_stream(handle)
            layers.append(Descriptor(OCI_LAYER_GZIP if gzipped else OCI_LAYER, digest, size))
    config = json.loads(store.read(config_digest))
    return Image(store, config, Descriptor(OCI_CONFIG, config_digest, config_size), layers, None,
                 source)


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
        raise ImageError(f"{source}: the Docker engine has no image {name!r}") from None
    except DockerException as exc:
        raise ImageError(f"{source}: cannot talk to the Docker engine ({exc}); is it running, "
                         "and is DOCKER_HOST right?") from None


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


__all__ = ["BaseImage", "open_base", "read_oci_layout", "read_docker_archive", "copy_blobs",
           "LayerEntry"]
