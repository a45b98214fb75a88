"""OCI image model: descriptors, a content-addressed blob store, images and their JSON.

JSON that enclave-build writes (configs, manifests, index) is serialized canonically (sorted
keys, no whitespace) so the same content always has the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

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
TO_OCI = {
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_CONFIG: OCI_CONFIG,
    OCI_LAYER_GZIP: OCI_LAYER_GZIP,
    OCI_LAYER: OCI_LAYER,
    OCI_CONFIG: OCI_CONFIG,
    OCI_LAYER_ZSTD: OCI_LAYER_ZSTD,
}

_CHUNK = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ImageError(EnclaveBuildError):
    """An image cannot be read, written or trusted."""


def check_digest(digest: Any, where: str = "digest") -> str:
    """*digest* if it is ``sha256:`` + 64 lower-case hex digits; :class:`ImageError` otherwise.

    Every digest that comes from outside (registry answers, layouts, indexes, archives) passes
    here before it names a file, so a digest can never be a path."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        shown = (
            digest if isinstance(digest, str) and len(digest) <= 100 else f"{str(digest)[:100]}..."
        )
        raise ImageError(
            f"{where}: invalid digest {shown!r} (expected sha256: and 64 lower-case hex digits)"
        )
    return digest


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object from untrusted bytes; :class:`ImageError` for anything else."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ImageError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ImageError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_manifest(data: dict[str, Any], what: str) -> tuple[Descriptor, list[Descriptor]]:
    """(config, layers) of an image manifest (OCI or Docker v2 schema 2)."""
    if data.get("schemaVersion") != 2 or not isinstance(data.get("config"), dict):
        raise ImageError(f"{what}: unsupported manifest (need schemaVersion 2 with a config)")
    layers = data.get("layers", [])
    if not isinstance(layers, list):
        raise ImageError(f"{what}: manifest layers must be a list")
    return (
        Descriptor.from_json(data["config"], f"{what} config"),
        [Descriptor.from_json(layer, f"{what} layer {i}") for i, layer in enumerate(layers)],
    )


def parse_index(data: dict[str, Any], what: str) -> list[Descriptor]:
    """The manifests an image index (or Docker manifest list) names."""
    manifests = data.get("manifests", [])
    if not isinstance(manifests, list):
        raise ImageError(f"{what}: index manifests must be a list")
    return [Descriptor.from_json(m, f"{what} manifest {i}") for i, m in enumerate(manifests)]


def parse_config(raw: bytes, what: str) -> dict[str, Any]:
    """An image config, with the parts enclave-build reads checked for shape."""
    config = parse_json_object(raw, what)
    rootfs = config.get("rootfs", {})
    if not isinstance(rootfs, dict):
        raise ImageError(f"{what}: rootfs must be an object")
    diff_ids = rootfs.get("diff_ids", [])
    if not isinstance(diff_ids, list):
        raise ImageError(f"{what}: rootfs.diff_ids must be a list")
    for index, diff_id in enumerate(diff_ids):
        check_digest(diff_id, f"{what} diff_id {index}")
    inner = config.get("config")
    if inner is not None and not isinstance(inner, dict):
        raise ImageError(f"{what}: config must be an object")
    labels = (inner or {}).get("Labels")
    if labels is not None and (
        not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values())
    ):
        raise ImageError(f"{what}: config.Labels must map names to strings")
    return config


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
    platform: dict[str, Any] | None = None  # index entries only

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "descriptor") -> Descriptor:
        """A descriptor from untrusted JSON: digest, size, media type and the optional maps are
        checked for shape; :class:`ImageError` names *where* it came from otherwise."""
        if not isinstance(data, dict):
            raise ImageError(f"{where}: malformed descriptor (not an object)")
        media_type, size = data.get("mediaType"), data.get("size")
        annotations, platform = data.get("annotations"), data.get("platform")
        if not isinstance(media_type, str):
            raise ImageError(f"{where}: malformed descriptor (mediaType missing or not a string)")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f"{where}: malformed descriptor (size {size!r})")
        if annotations is not None and (
            not isinstance(annotations, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
        ):
            raise ImageError(f"{where}: malformed descriptor (annotations)")
        if platform is not None and not isinstance(platform, dict):
            raise ImageError(f"{where}: malformed descriptor (platform)")
        return cls(media_type, check_digest(data.get("digest"), where), size, annotations, platform)


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


class Readable(Protocol):
    """What :meth:`BlobStore.put_stream` reads: a file, or an HTTP response's raw stream."""

    def read(self, size: int = -1, /) -> bytes: ...


class BlobStore:
    """``ROOT/sha256/<hex>`` files, written atomically and named by their verified digest
    (the layout of an OCI image layout's ``blobs/`` directory)."""

    def __init__(self, root: Path):
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / check_digest(digest, f"blob in {self.root}")[7:]

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

    def put_stream(
        self,
        stream: Readable,
        expected: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, int]:
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
                raise ImageError(
                    f"blob content does not match its digest: expected {expected}, "
                    f"got {digest} (corrupted download or tampered registry)"
                )
            os.replace(tmp, self.path(digest))
            return digest, hashing.size
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def writer(self) -> BlobWriter:
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

    def copy_into(
        self, other: BlobStore, digest: str, progress: Callable[[int], None] | None = None
    ) -> None:
        """Make *digest* available in *other* (hard link when possible, else a copy that
        reports each chunk to *progress*; a link reports the blob's size at once)."""
        source, target = self.path(digest), other.path(digest)
        if other.has(digest):
            if progress:
                progress(source.stat().st_size)
            return
        tmp = target.with_name(f".link-{os.getpid()}-{target.name}")
        try:
            os.link(source, tmp)
            if progress:
                progress(source.stat().st_size)
        except OSError:
            try:
                with open(source, "rb") as inp, open(tmp, "wb") as out:
                    while chunk := inp.read(_CHUNK):
                        out.write(chunk)
                        if progress:
                            progress(len(chunk))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
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
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})

    @property
    def manifest_digest(self) -> str | None:
        return sha256_digest(self.manifest_bytes) if self.manifest_bytes else None


def oci_manifest(config: Descriptor, layers: list[Descriptor]) -> bytes:
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
    )
