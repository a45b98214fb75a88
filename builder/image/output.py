"""Where a built image goes: an OCI image layout, the Docker engine, or a registry."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .oci import OCI_MANIFEST, BlobStore, Descriptor, Image, ImageError, canonical_json
from .reference import RegistryRef, parse_registry_ref
from .registry import RegistryClient

REF_NAME = "org.opencontainers.image.ref.name"


def write_oci_layout(
    image: Image, directory: Path, tag: str | None, progress: ProgressTask | None = None
) -> Descriptor:
    """Write *image* as an OCI image layout in *directory* (created; must be new or empty).
    Blobs are hard-linked from the image's store, copied where they cannot be (another
    filesystem): *progress* shows that as the stage "writing the output"."""
    assert image.manifest_bytes is not None
    directory.mkdir(parents=True, exist_ok=True)
    store = BlobStore(directory / "blobs")
    blobs = [image.config_descriptor, *image.layers]
    advance = progress("writing the output", sum(d.size for d in blobs)) if progress else None
    for desc in blobs:
        image.store.copy_into(store, desc.digest, advance)
    digest = store.put_bytes(image.manifest_bytes)
    desc = Descriptor(
        OCI_MANIFEST, digest, len(image.manifest_bytes), {REF_NAME: tag} if tag else None
    )
    (directory / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (directory / "index.json").write_bytes(
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [desc.to_json()],
            }
        )
    )
    return desc


ProgressTask = Callable[[str, "int | None"], Callable[[int], None]]
#: Bytes per read and write when copying blobs into the archive `docker load` reads.
_COPY = 1 << 20


def docker_archive(
    image: Image, tag: str | None, out: Path, progress: ProgressTask | None = None
) -> None:
    """A tar `docker load` understands (Docker >= 20.10): manifest.json naming the config and the
    (gzip) layer blobs, next to an OCI layout of the same image for newer engines."""
    with tempfile.TemporaryDirectory(prefix="enclave-build-load-") as tmp:
        root = Path(tmp)
        write_oci_layout(image, root, tag)
        hexes = [d.digest.split(":", 1)[1] for d in image.layers]
        manifest = [
            {
                "Config": f"blobs/sha256/{image.config_descriptor.digest.split(':', 1)[1]}",
                "RepoTags": [tag] if tag else [],
                "Layers": [f"blobs/sha256/{h}" for h in hexes],
            }
        ]
        (root / "manifest.json").write_text(json.dumps(manifest))
        paths = sorted(root.rglob("*"))
        advance = (
            progress(
                "writing the docker archive", sum(p.stat().st_size for p in paths if p.is_file())
            )
            if progress
            else None
        )
        # copybufsize is TarFile's, which typeshed's overloads of open() leave out
        with tarfile.open(out, "w", copybufsize=_COPY) as tar:  # type: ignore[call-overload]
            for path in paths:
                info = tar.gettarinfo(path, arcname=path.relative_to(root).as_posix())
                if info.isfile():
                    with open(path, "rb") as handle:
                        tar.addfile(info, _Counted(handle, advance))
                else:
                    tar.addfile(info)


class _Counted:
    """A file read in chunks; each one advances the progress. Iterable and sized too, so
    HTTP clients stream it with a Content-Length."""

    def __init__(
        self, handle: BinaryIO, advance: Callable[[int], None] | None, size: int | None = None
    ):
        self.handle = handle
        self.advance = advance
        self.size = size

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if self.advance is not None and data:
            self.advance(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read(_COPY):
            yield data

    def __len__(self) -> int:
        return self.size or 0


def load_into_docker(image: Image, tag: str | None, progress: ProgressTask | None = None) -> str:
    """`docker load` the image through the Docker engine API; returns the loaded image id."""
    import docker
    from docker.errors import DockerException

    with tempfile.TemporaryDirectory(prefix="enclave-build-load-") as tmp:
        archive = Path(tmp) / "image.tar"
        docker_archive(image, tag, archive, progress)
        size = archive.stat().st_size
        advance = progress("loading into Docker", size) if progress else None
        try:
            client = docker.from_env()
            with open(archive, "rb") as handle:
                loaded = client.images.load(_Counted(handle, advance, size))
        except DockerException as exc:
            raise ImageError(
                f"docker load failed: {exc} (is the Docker engine running, and is "
                "DOCKER_HOST right?)"
            ) from None
    if not loaded:
        raise ImageError("docker load reported no image")
    image_id = loaded[0].id
    if image_id is None:
        raise ImageError("docker load reported an image without an id")
    return image_id


def push(
    image: Image,
    target: str,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> str:
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
