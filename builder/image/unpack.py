"""Apply image layers into a root filesystem directory, with OCI whiteouts.

The result is cached by the layer chain (the digests of all layers so far), so an image is
unpacked once per machine and every later build reads files straight from disk. Unpacking is
for *reading* (hashing trusted files, libpal.so, the offsets file): device nodes are skipped,
set-id bits dropped, and nothing is ever written outside the target directory, whatever
symlinks and ``..`` the layers contain.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from ..rootfs import RootFS, RootFSError
from .oci import BlobStore, Descriptor, ImageError, OCI_LAYER_ZSTD

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class _DiffIdReader:
    """Hashes the *uncompressed* tar stream as tarfile reads it (the layer's diff_id)."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data


def open_layer(handle: BinaryIO) -> BinaryIO:
    magic = handle.read(4)
    handle.seek(0)
    if magic[:2] == b"\x1f\x8b":
        import gzip
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    if magic == b"\x28\xb5\x2f\xfd":
        raise ImageError("zstd-compressed layers are not supported; use gzip or uncompressed "
                         "layers (e.g. `docker buildx build --output compression=gzip`)")
    return handle


def member_path(name: str) -> str | None:
    """The member's path relative to the root, or None if it would escape the root."""
    while name.startswith("./"):
        name = name[2:]
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


class _LayerApplier:
    def __init__(self, root: Path):
        self.root = root
        self.view = RootFS(root)
        self.added: set[str] = set()   # paths this layer created (whiteouts don't remove them)

    def _parent(self, rel: str) -> Path:
        """Host directory for *rel*'s parent, resolving symlinks inside the root."""
        parent = posixpath.dirname(rel)
        if not parent:
            return self.root
        try:
            inner = self.view.resolve("/" + parent)
        except RootFSError:
            inner = "/" + parent
        host = self.root / inner.lstrip("/")
        if host.is_symlink() or (host.exists() and not host.is_dir()):
            self._remove(host)
        host.mkdir(parents=True, exist_ok=True)
        return host

    @staticmethod
    def _remove(host: Path) -> None:
        if host.is_symlink() or not host.is_dir():
            host.unlink(missing_ok=True)
        else:
            shutil.rmtree(host)

    def apply(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        rel = member_path(member.name)
        if rel is None or rel == "":
            return
        base = posixpath.basename(rel)
        if base == OPAQUE:
            directory = self._parent(rel)
            rel_dir = posixpath.dirname(rel)
            for child in list(directory.iterdir()):
                if posixpath.join(rel_dir, child.name) not in self.added:
                    self._remove(child)
            return
        if base.startswith(WHITEOUT):
            target = self._parent(rel) / base[len(WHITEOUT):]
            if os.path.lexists(target) and \
                    posixpath.join(posixpath.dirname(rel), base[len(WHITEOUT):]) not in self.added:
                self._remove(target)
            return
        host = self._parent(rel) / base
        self.added.add(rel)
        mode = member.mode & 0o777
        if member.isdir():
            if os.path.lexists(host) and not host.is_dir():
                self._remove(host)
            host.mkdir(exist_ok=True)
            os.chmod(host, mode | 0o700)
            return
        if os.path.lexists(host):
            self._remove(host)
        if member.issym():
            os.symlink(member.linkname, host)
        elif member.islnk():
            link_rel = member_path(member.linkname)
            if link_rel is None:
                return
            try:
                source = self.root / self.view.resolve("/" + link_rel).lstrip("/")
            except RootFSError:
                return
            if source.is_file():
                try:
                    os.link(source, host)
                except OSError:
                    shutil.copyfile(source, host)
        elif member.isfile():
            extracted = tar.extractfile(member)
            assert extracted is not None
            with open(host, "wb") as out:
                shutil.copyfileobj(extracted, out, 1 << 20)
            os.chmod(host, mode | 0o400)
        # character/block devices and FIFOs are not needed to read files: skipped


def apply_layer(root: Path, handle: BinaryIO, source: str = "layer") -> str:
    """Apply one layer (gzip or plain tar) onto *root*; returns its diff_id."""
    reader = _DiffIdReader(open_layer(handle))
    applier = _LayerApplier(root)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[arg-type]
            for member in tar:
                applier.apply(member, tar)
        while reader.read(1 << 20):  # hash trailing padding too: diff_id covers the whole tar
            pass
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ImageError(f"{source}: cannot read layer: {exc}") from exc
    return "sha256:" + reader.hash.hexdigest()


def chain_id(layers: list[Descriptor]) -> str:
    h = hashlib.sha256()
    for layer in layers:
        h.update(layer.digest.encode() + b"\n")
    return h.hexdigest()


def unpacked_rootfs(store: BlobStore, layers: list[Descriptor], diff_ids: list[str],
                    cache_dir: Path, description: str,
                    progress: Callable[[int], None] | None = None) -> RootFS:
    """The image's root filesystem, unpacked (once) under *cache_dir*, layers verified against
    the config's diff_ids."""
    if diff_ids and len(diff_ids) != len(layers):
        raise ImageError(f"{description}: {len(layers)} layers but {len(diff_ids)} diff_ids")
    target = cache_dir / chain_id(layers)
    if (target / ".enclave-build-complete").exists():
        return RootFS(target / "rootfs", description)
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache_dir))
    try:
        root = work / "rootfs"
        root.mkdir()
        for index, layer in enumerate(layers):
            if layer.media_type == OCI_LAYER_ZSTD:
                raise ImageError(f"{description}: layer {layer.digest} is zstd-compressed; "
                                 "only gzip and plain tar layers are supported")
            with open(store.path(layer.digest), "rb") as handle:
                diff_id = apply_layer(root, handle, f"{description} layer {index}")
            if diff_ids and diff_id != diff_ids[index]:
                raise ImageError(f"{description}: layer {index} ({layer.digest}) uncompresses to "
                                 f"{diff_id}, but the config says {diff_ids[index]}")
            if progress:
                progress(layer.size)
        (work / ".enclave-build-complete").write_text(description + "\n")
        try:
            os.rename(work, target)
        except OSError:  # another build finished the same chain first
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return RootFS(target / "rootfs", description)
