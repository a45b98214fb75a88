"""OCI image model: descriptors, a content-addressed blob store, images and their JSON.

JSON that enclave-build writes (configs, manifests, index) is serialized canonically (sorted
keys, no whitespace) so the same content always has the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ..errors import EnclaveBuildError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

#: Docker media types and their OCI equivalents (same bytes).
TO_OCI = {DOCKER_LAYER_GZIP: OCI_LAYER_GZIP, DOCKER_LAYER: OCI_LAYER, DOCKER_CONFIG: OCI_CONFIG,
          OCI_LAYER_GZIP: OCI_LAYER_GZIP, OCI_LAYER: OCI_LAYER, OCI_CONFIG: OCI_CONFIG,
          OCI_LAYER_ZSTD: OCI_LAYER_ZSTD}

_CHUNK = 1 << 20


class ImageError(EnclaveBuildError):
    """An image cannot be read, written or trusted."""


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Descriptor":
        try:
            return cls(data["mediaType"], data["digest"], int(data["size"]),
                       data.get("annotations"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"malformed descriptor {data!r}") from exc


class _Hashing:
    """A writable that hashes what passes through it."""

    def __init__(self, target: BinaryIO):
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


class BlobStore:
    """``ROOT/sha256/<hex>`` files, written atomically and named by their verified digest
    (the layout of an OCI image layout's ``blobs/`` directory)."""

    def __init__(self, root: Path):
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64:
            raise ImageError(f"unsupported digest {digest!r}")
        return self.root / "sha256" / hexdigest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from {self.root}") from None

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not self.has(digest):
            self._commit(lambda out: out.write(data), digest)
        return digest

    def put_stream(self, stream: BinaryIO, expected: str | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        """Copy *stream* in; verify it against *expected* if given. Returns (digest, size)."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                hashing = _Hashing(out)
                while chunk := stream.read(_CHUNK):
                    hashing.write(chunk)
                    if progress:
                        progress(len(chunk))
            digest = "sha256:" + hashing.hash.hexdigest()
            if expected is not None and digest != expected:
                raise ImageError(f"blob content does not match its digest: expected {expected}, "
                                 f"got {digest} (corrupted download or tampered registry)")
            os.replace(tmp, self.path(digest))
            return digest, hashing.size
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def writer(self) -> "BlobWriter":
        return BlobWriter(self)

    def _commit(self, write: Callable[[BinaryIO], Any], digest: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
            os.replace(tmp, self.path(digest))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def copy_into(self, other: "BlobStore", digest: str) -> None:
        """Make *digest* available in *other* (hard link when possible)."""
        if other.has(digest):
            return
        source, target = self.path(digest), other.path(digest)
        tmp = target.with_name(f".link-{os.getpid()}-{target.name}")
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)


class BlobWriter:
    """Write a blob of unknown digest; ``commit()`` names it by what was written."""

    def __init__(self, store: BlobStore):
        self.store = store
        fd, self._tmp = tempfile.mkstemp(dir=store.root, prefix=".incoming-")
        self._file = os.fdopen(fd, "wb")
        self.hashing = _Hashing(self._file)

    def write(self, data: bytes) -> int:
        return self.hashing.write(data)

    def flush(self) -> None:
        self._file.flush()

    def commit(self) -> tuple[str, int]:
        self._file.close()
        digest = "sha256:" + self.hashing.hash.hexdigest()
        os.replace(self._tmp, self.store.path(digest))
        return digest, self.hashing.size

    def abort(self) -> None:
        self._file.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


@dataclass
class Image:
    """An image whose blobs are all in *store*."""

    store: BlobStore
    config: dict[str, Any]
    config_descriptor: Descriptor
    layers: list[Descriptor]
    manifest_bytes: bytes | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids", []))

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})

    @property
    def manifest_digest(self) -> str | None:
        return sha256_digest(self.manifest_bytes) if self.manifest_bytes else None


def oci_manifest(config: Descriptor, layers: list[Descriptor]) -> bytes:
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    })
