"""Where a built image goes: an OCI image layout, the Docker engine, or a registry."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from .oci import OCI_MANIFEST, BlobStore, Descriptor, Image, ImageError, canonical_json
from .reference import RegistryRef, parse_registry_ref
from .registry import RegistryClient

REF_NAME = "org.opencontainers.image.ref.name"


def write_oci_layout(image: Image, directory: Path, tag: str | None) -> Descriptor:
    """Write *image* as an OCI image layout in *directory* (created; must be new or empty)."""
    assert image.manifest_bytes is not None
    directory.mkdir(parents=True, exist_ok=True)
    store = BlobStore(directory / "blobs")
    for desc in [image.config_descriptor, *image.layers]:
        image.store.copy_into(store, desc.digest)
    digest = store.put_bytes(image.manifest_bytes)
    desc = Descriptor(OCI_MANIFEST, digest, len(image.manifest_bytes),
                      {REF_NAME: tag} if tag else None)
    (directory / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (directory / "index.json").write_bytes(canonical_json(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [desc.to_json()]}))
    return desc


def docker_archive(image: Image, tag: str | None, out: Path) -> None:
    """A tar `docker load` understands (Docker >= 20.10): manifest.json naming the config and the
    (gzip) layer blobs, next to an OCI layout of the same image for newer engines."""
    with tempfile.TemporaryDirectory(prefix="enclave-build-load-") as tmp:
        root = Path(tmp)
        write_oci_layout(image, root, tag)
        hexes = [d.digest.split(":", 1)[1] for d in image.layers]
        manifest = [{
            "Config": f"blobs/sha256/{image.config_descriptor.digest.split(':', 1)[1]}",
            "RepoTags": [tag] if tag else [],
            "Layers": [f"blobs/sha256/{h}" for h in hexes],
        }]
        (root / "manifest.json").write_text(json.dumps(manifest))
        with tarfile.open(out, "w") as tar:
            for path in sorted(root.rglob("*")):
                tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)


def load_into_docker(image: Image, tag: str | None) -> str:
    """`docker load` the image through the Docker engine API; returns the loaded image id."""
    import docker
    from docker.errors import DockerException

    with tempfile.TemporaryDirectory(prefix="enclave-build-load-") as tmp:
        archive = Path(tmp) / "image.tar"
        docker_archive(image, tag, archive)
        try:
            client = docker.from_env()
            with open(archive, "rb") as handle:
                loaded = client.images.load(handle)
        except DockerException as exc:
            raise ImageError(f"docker load failed: {exc} (is the Docker engine running, and is "
                             "DOCKER_HOST right?)") from None
    if not loaded:
        raise ImageError("docker load reported no image")
    image_id = loaded[0].id
    if image_id is None:
        raise ImageError("docker load reported an image without an id")
    return image_id


def push(image: Image, target: str,
         progress: Callable[[str, int | None], Callable[[int], None]] | None = None) -> str:
    """Push to *target* (registry reference with a tag); returns ``repo@sha256:...``."""
    ref = parse_registry_ref(target)
    digest = RegistryClient(ref.host).push(ref, image, progress)
    return str(RegistryRef(ref.host, ref.repository, None, digest))


def tidy_stale_temps(parent: Path, name: str) -> None:
    """Remove ``.NAME.tmp-PID-*`` directories left by builds that were killed."""
    import shutil

    for stale in parent.glob(f".{name}.tmp-*"):
        try:
            pid = int(stale.name.split(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass
