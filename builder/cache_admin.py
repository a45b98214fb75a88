"""What ``enclave-build cache ls|prune|clean`` does: report and bound enclave-build's caches.

The caches live under :func:`builder.cache.cache_root`: image blobs (``blobs/``, bounded by
size and age, see :mod:`builder.image.blob_cache`), unpacked images (``rootfs/``, the most
recently used kept, see :mod:`builder.image.rootfs_cache`), layer records (``layers/``) and
file digests (``hashes.sqlite``). Nothing an output directory references is removed by
``prune``; ``clean`` empties the caches (outputs keep their own copies or links of their blobs),
except unpacked images a running build or run holds.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import cache_root
from .image.blob_cache import BlobCache, BlobInfo, CacheInUse, Limits, PruneResult
from .image.rootfs_cache import RootfsEntry, cache_keep, list_entries, prune_cache

HASHES = ("hashes.sqlite", "hashes.sqlite-wal", "hashes.sqlite-shm")


def _when(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CacheReport:
    root: Path
    blobs: tuple[BlobInfo, ...]
    rootfs: tuple[RootfsEntry, ...]
    limits: Limits
    rootfs_keep: int

    @property
    def blob_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def shared_bytes(self) -> int:
        return sum(b.size for b in self.blobs if b.shared)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "blobs": {
                "count": len(self.blobs),
                "bytes": self.blob_bytes,
                "shared_bytes": self.shared_bytes,
                "items": [
                    {
                        "digest": b.digest,
                        "size": b.size,
                        "last_used": _when(b.last_used),
                        "shared": b.shared,
                    }
                    for b in self.blobs
                ],
            },
            "rootfs": {
                "count": len(self.rootfs),
                "bytes": sum(e.size for e in self.rootfs),
                "keep": self.rootfs_keep,
                "items": [
                    {"chain_id": e.chain_id, "size": e.size, "last_used": _when(e.last_used)}
                    for e in self.rootfs
                ],
            },
            "limits": {"max_size": self.limits.max_size, "max_age_days": self.limits.max_age_days},
        }


def cache_report(root: Path | None = None, log: Callable[[str], None] | None = None) -> CacheReport:
    root = root or cache_root()
    quiet = log or (lambda line: None)
    return CacheReport(
        root,
        tuple(BlobCache(root).blobs()),
        tuple(list_entries(root / "rootfs")),
        Limits.from_env(quiet),
        cache_keep(quiet),
    )


@dataclass(frozen=True)
class Pruned:
    blobs: PruneResult
    rootfs_freed: int
    other_freed: int = 0  # layer records and the digest cache (clean)

    @property
    def freed(self) -> int:
        return self.blobs.freed + self.rootfs_freed + self.other_freed

    def to_json(self) -> dict[str, Any]:
        return {
            "removed": [b.digest for b in self.blobs.removed],
            "freed": self.freed,
            "kept": self.blobs.kept,
            "kept_bytes": self.blobs.kept_bytes,
            "rootfs_freed": self.rootfs_freed,
            "records_removed": self.blobs.records_removed,
        }


def _in_use(root: Path) -> CacheInUse:
    return CacheInUse(
        f"the blob cache {root / 'blobs'} is in use by a running enclave-build "
        "build; nothing was removed (try again when it has finished)"
    )


def prune_caches(
    limits: Limits, root: Path | None = None, log: Callable[[str], None] | None = None
) -> Pruned:
    """Bound the blob cache by *limits* and the unpacked images by their count."""
    root = root or cache_root()
    blobs = BlobCache(root).prune(limits)
    if blobs.in_use:
        raise _in_use(root)
    freed = (
        prune_cache(root / "rootfs", log=log or (lambda line: None))
        if (root / "rootfs").is_dir()
        else 0
    )
    return Pruned(blobs, freed)


def clean_caches(root: Path | None = None, log: Callable[[str], None] | None = None) -> Pruned:
    """Remove every cached blob, layer record, unpacked image nobody holds, and the file-digest
    cache (the next build hashes and fetches again)."""
    root = root or cache_root()
    cache = BlobCache(root)
    blobs = cache.prune(Limits(0, 0.0), everything=True)
    if blobs.in_use:
        raise _in_use(root)
    freed = (
        prune_cache(root / "rootfs", log=log or (lambda line: None), keep=0)
        if (root / "rootfs").is_dir()
        else 0
    )
    other = 0
    records = root / "layers"
    if records.is_dir() and not records.is_symlink():
        other += sum(p.stat().st_size for p in records.iterdir() if p.is_file())
        shutil.rmtree(records, ignore_errors=True)
    for name in HASHES:
        path = root / name
        try:
            other += path.stat().st_size
            os.unlink(path)
        except OSError:
            continue
    return Pruned(blobs, freed, other)
