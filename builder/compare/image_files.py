"""The files two images hold differently, outside what the enclave measures (encrypted models,
files no manifest names, the signed Occlum LibOS, ...).

Layers both images share (the same diff_ids from the bottom up, usually the base's) hold the
same files and are skipped; the paths the remaining layers touch are compared in the two
unpacked root filesystems as the images present them (later layers over earlier ones,
whiteouts applied): regular files by SHA-256, symlinks by target, anything else by its kind.
Directories are not compared (their metadata follows from the files)."""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..hashing import HashCache, hash_files
from ..image.oci import Image, ImageError
from ..image.unpack import OPAQUE, WHITEOUT, member_path, open_layer
from ..rootfs import RootFS, RootFSError


@dataclass(frozen=True)
class Entry:
    """A path of an image: *kind* ``file``, ``symlink`` or another file type; *value* the
    file's SHA-256 or the link's target."""

    kind: str
    value: str | None


def shared_layers(a: Image, b: Image) -> int:
    """How many layers, from the bottom, the two images share."""
    count = 0
    for left, right in zip(a.diff_ids or [], b.diff_ids or [], strict=False):
        if left != right:
            break
        count += 1
    return count


def layer_paths(image: Image, start: int) -> set[str]:
    """Every path (absolute) that the layers from *start* up add, change or delete."""
    paths: set[str] = set()
    for layer in image.layers[start:]:
        try:
            with open(image.store.path(layer.digest), "rb") as handle:
                with tarfile.open(fileobj=open_layer(handle), mode="r|") as tar:
                    for member in tar:
                        name = member_path(member.name)
                        if not name:
                            continue
                        parent, base = posixpath.split(name)
                        if base == OPAQUE:
                            continue
                        if base.startswith(WHITEOUT):
                            name = posixpath.join(parent, base[len(WHITEOUT) :])
                        paths.add("/" + name)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ImageError(f"{image.source}: layer {layer.digest}: cannot read: {exc}") from None
    return paths


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"


def entries(
    rootfs: RootFS,
    paths: Iterable[str],
    cache: HashCache | None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Entry]:
    """The entry at each of *paths* in *rootfs* (the path itself, not what a symlink names);
    absent paths and directories are left out."""
    found: dict[str, Entry] = {}
    files: dict[str, Path] = {}
    for path in paths:
        host = rootfs.root / path.lstrip("/")
        try:
            st = os.lstat(host)
        except OSError:
            continue
        kind = _kind(st.st_mode)
        if kind == "directory":
            continue
        if kind == "file":
            files[path] = host
        elif kind == "symlink":
            found[path] = Entry(kind, os.readlink(host))
        else:
            found[path] = Entry(kind, None)
    digests = hash_files(files.values(), cache, progress=progress)
    for path, host in files.items():
        found[path] = Entry("file", digests[host])
    return found


def real_paths(rootfs: RootFS, paths: Iterable[str]) -> set[str]:
    """*paths* with symlinks resolved inside *rootfs* (paths that cannot be resolved kept)."""
    out = set()
    for path in paths:
        out.add(path)
        try:
            out.add(rootfs.resolve(path))
        except RootFSError:  # a path the image does not resolve stays as given
            pass
    return out


__all__ = ["Entry", "shared_layers", "layer_paths", "entries", "real_paths"]
