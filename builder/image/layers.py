"""Deterministic image layers.

Entries are sorted by path, every parent directory is written explicitly, owners are 0:0 with
no names (or the uid:gid an entry names, e.g. the image's runtime user for files it must open
read-write), and every mtime is SOURCE_DATE_EPOCH (or 0). The tar (PAX) is gzip-compressed by
:mod:`.block_gzip` (parallel deterministic blocks at level 6; incompressible blocks -- ciphertext,
most model weights -- stored), so the same entries give the same diff_id and digest on any
machine with the same zlib, whatever its number of cores. Reading, hashing (diff_id and
digest) and writing are one pass over each file with 1 MiB buffers. A layer whose entries are
unchanged since an earlier build is taken from the cache instead of being written again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..hashing import HashCache, hash_files
from . import block_gzip
from .oci import OCI_LAYER_GZIP, BlobStore, Descriptor

GZIP_LEVEL = block_gzip.LEVEL
#: Bytes per read and per write of a layer's files (and of the tar stream).
COPY_BUFFER = block_gzip.BLOCK


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(0, int(value))
    except ValueError:
        return 0


@dataclass(frozen=True)
class LayerEntry:
    """One path in a layer. Exactly one of *source* (host file), *data* or *link* for files and
    symlinks; directories have none."""

    path: str  # absolute path in the image
    kind: str  # "file", "dir" or "symlink"
    mode: int = 0o644
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class LayerBlob:
    descriptor: Descriptor
    diff_id: str


def directory_entries(root: Path, prefix: str = "/") -> list[LayerEntry]:
    """Every directory, regular file and symlink under *root* (others are skipped)."""
    entries: list[LayerEntry] = []
    for current, dirs, files in os.walk(root):
        dirs.sort()
        rel_dir = os.path.relpath(current, root)
        for name in sorted(dirs + files):
            host = Path(current) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))  # "a/b"; never starts with "./"
            inner = "/" + os.path.join(prefix.strip("/"), rel).lstrip("/")
            st = os.lstat(host)
            if stat.S_ISLNK(st.st_mode):
                entries.append(LayerEntry(inner, "symlink", 0o777, link=os.readlink(host)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(LayerEntry(inner, "dir", stat.S_IMODE(st.st_mode)))
            elif stat.S_ISREG(st.st_mode):
                entries.append(LayerEntry(inner, "file", stat.S_IMODE(st.st_mode), source=host))
    return entries


def _with_parents(entries: list[LayerEntry]) -> list[LayerEntry]:
    by_path = {e.path.rstrip("/") or "/": e for e in entries}
    for entry in entries:
        parent = os.path.dirname(entry.path.rstrip("/"))
        while parent not in ("", "/") and parent not in by_path:
            by_path[parent] = LayerEntry(parent, "dir", 0o755)
            parent = os.path.dirname(parent)
    by_path.pop("/", None)
    return [by_path[p] for p in sorted(by_path)]


def _cache_key(entries: list[LayerEntry], hash_cache: HashCache | None) -> str:
    files = [e.source for e in entries if e.kind == "file" and e.source is not None]
    digests = hash_files(files, cache=hash_cache) if files else {}
    h = hashlib.sha256(
        f"v2 block-gzip{GZIP_LEVEL} store{block_gzip.STORE_RATIO} "
        f"epoch{source_date_epoch()}\n".encode()
    )
    for e in entries:
        content = (
            digests[e.source]
            if e.source is not None
            else hashlib.sha256(e.data).hexdigest()
            if e.data is not None
            else e.link or ""
        )
        owner = [e.uid, e.gid] if (e.uid or e.gid) else []
        h.update(json.dumps([e.path, e.kind, e.mode, content, *owner]).encode() + b"\n")
    return h.hexdigest()


def write_layer(
    entries: list[LayerEntry],
    store: BlobStore,
    hash_cache: HashCache | None = None,
    progress: Callable[[int], None] | None = None,
    cache_dir: Path | None = None,
) -> LayerBlob:
    """Write (or reuse) the gzip layer holding *entries*."""
    entries = _with_parents(entries)
    index = (cache_dir or store.root.parent) / "layers"
    key = _cache_key(entries, hash_cache)
    record = index / f"{key}.json"
    if record.exists():
        data = json.loads(record.read_text())
        if store.has(data["digest"]):
            if progress:
                progress(
                    sum(e.source.stat().st_size for e in entries if e.source)
                    + sum(len(e.data) for e in entries if e.data)
                )
            return LayerBlob(
                Descriptor(OCI_LAYER_GZIP, data["digest"], data["size"]), data["diff_id"]
            )

    epoch = source_date_epoch()
    writer = store.writer()
    gz = block_gzip.BlockGzipWriter(writer)  # type: ignore[arg-type]
    try:
        diff = _DiffHash(gz)
        # a write-only file object (tarfile's stream mode only calls write() and close());
        # copybufsize is TarFile's, which typeshed's overloads of open() leave out
        with tarfile.open(
            fileobj=diff,
            mode="w|",
            format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
            bufsize=COPY_BUFFER,
            copybufsize=COPY_BUFFER,
        ) as tar:
            for entry in entries:
                info = tarfile.TarInfo(entry.path.lstrip("/"))
                info.mtime = epoch
                info.uid, info.gid = entry.uid, entry.gid
                info.uname = info.gname = ""
                info.mode = entry.mode
                if entry.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif entry.kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = entry.link or ""
                    tar.addfile(info)
                elif entry.data is not None:
                    info.size = len(entry.data)
                    tar.addfile(info, io.BytesIO(entry.data))
                    if progress:
                        progress(info.size)
                else:
                    assert entry.source is not None
                    with open(entry.source, "rb") as handle:
                        info.size = os.fstat(handle.fileno()).st_size
                        tar.addfile(info, _Reading(handle, progress))
        gz.close()
        digest, size = writer.commit()
    except BaseException:
        gz.abort()
        writer.abort()
        raise
    blob = LayerBlob(Descriptor(OCI_LAYER_GZIP, digest, size), "sha256:" + diff.hash.hexdigest())
    index.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"digest": digest, "size": size, "diff_id": blob.diff_id}))
    os.replace(tmp, record)
    return blob


class _Reading:
    """A file being added to the layer: reports each chunk read to *progress*."""

    def __init__(self, handle: BinaryIO, progress: Callable[[int], None] | None):
        self.handle = handle
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if self.progress and data:
            self.progress(len(data))
        return data


class _DiffHash:
    """Hashes the uncompressed tar stream (the diff_id) on its way to the compressor."""

    def __init__(self, target: block_gzip.BlockGzipWriter):
        self.target = target
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.target.write(data)

    def flush(self) -> None:
        pass
