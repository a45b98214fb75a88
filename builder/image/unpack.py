"""Apply image layers into a root filesystem directory, with OCI whiteouts.

The result is cached by the layer chain (the digests of all layers so far), so an image is
unpacked once per machine and every later build reads files straight from disk. Unpacking is
for *reading* (hashing trusted files, libpal.so, the offsets file): device nodes are skipped,
set-id bits dropped, and nothing is ever written outside the target directory, whatever
symlinks and ``..`` the layers contain.

The cache is bounded and its entries locked while in use: see :mod:`.rootfs_cache`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..rootfs import RootFS
from .oci import OCI_LAYER_ZSTD, BlobStore, Descriptor, ImageError
from .rootfs_cache import COMPLETE, PROCESS_LOCKS, EntryLocks, prune_cache, report, touch

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

        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]  # reads as a BinaryIO
    if magic == b"\x28\xb5\x2f\xfd":
        raise ImageError(
            "zstd-compressed layers are not supported; use gzip or uncompressed "
            "layers (e.g. `docker buildx build --output compression=gzip`)"
        )
    return handle


def member_path(name: str) -> str | None:
    """The member's path relative to the root, or None if it would escape the root."""
    while name.startswith("./"):
        name = name[2:]
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40


class _LayerApplier:
    """Applies tar members below *root* with openat(2) semantics: every path is walked one
    component at a time from a descriptor of the root, each component opened with O_NOFOLLOW,
    and a symlink met on the way is interpreted by this code *as if the root were ``/``* (an
    absolute target restarts at the root, ``..`` stops at it). Nothing the layer contains can
    make a host path outside the root be opened, created or removed; members that cannot be
    applied that way are refused with an :class:`ImageError` naming the member."""

    def __init__(self, root: Path, source: str = "layer"):
        self.root = root
        self.source = source
        self.added: set[str] = set()  # paths this layer created (whiteouts don't remove them)
        self._root_fd = os.open(root, _DIR_FLAGS)

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def _fail(self, member: str, why: str) -> ImageError:
        return ImageError(f"{self.source}: member {member!r}: {why}")

    def _open_dir(self, parts: list[str], member: str, create: bool) -> int | None:
        """A new descriptor of the directory *parts* (relative to the root, symlinks resolved
        inside the root); missing directories are created when *create*, else None."""
        stack = list(reversed(parts))
        fds = [os.dup(self._root_fd)]
        links = 0
        try:
            while stack:
                part = stack.pop()
                if part in ("", "."):
                    continue
                if part == "..":  # only from a symlink target: never above the root
                    if len(fds) > 1:
                        os.close(fds.pop())
                    continue
                try:
                    st = os.lstat(part, dir_fd=fds[-1])
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(part, 0o755, dir_fd=fds[-1])
                    st = os.lstat(part, dir_fd=fds[-1])
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > _MAX_LINKS:
                        raise self._fail(member, "too many levels of symbolic links")
                    target = os.readlink(part, dir_fd=fds[-1])
                    if target.startswith("/"):
                        for fd in fds[1:]:
                            os.close(fd)
                        del fds[1:]
                    stack.extend(reversed(target.split("/")))
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise self._fail(
                        member, f"a parent path component ({part!r}) is not a directory"
                    )
                fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
            result = fds.pop()
            return result
        finally:
            for fd in fds:
                os.close(fd)

    @staticmethod
    def _remove(name: str, dir_fd: int) -> None:
        """Remove the entry *name* of *dir_fd* (a directory tree without following links)."""
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)

    def apply(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        try:
            self._apply(member, tar)
        except ImageError:
            raise
        except OSError as exc:
            raise self._fail(member.name, f"cannot apply: {exc.strerror or exc}") from None

    def _apply(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        rel = member_path(member.name)
        if rel is None:
            raise self._fail(member.name, "path contains '..' (would escape the root)")
        if "\0" in rel:
            raise self._fail(member.name, "path contains a NUL byte")
        if rel == "":
            return  # the root directory itself
        parts = rel.split("/")
        base = parts[-1]
        rel_dir = "/".join(parts[:-1])
        if base.startswith(WHITEOUT):
            self._whiteout(member.name, parts, base, rel_dir)
            return
        if member.ischr() or member.isblk():
            # Device nodes are not created: unpacking is for reading files, and a device node
            # in the cache would hand its device to whoever can read the cache. The path is
            # still taken by this layer (a lower layer's file there does not show through).
            dev_fd = self._open_dir(parts[:-1], member.name, create=True)
            assert dev_fd is not None  # create=True makes the directories
            try:
                self._remove(base, dev_fd)
            finally:
                os.close(dev_fd)
            self.added.add(rel)
            return
        parent = self._open_dir(parts[:-1], member.name, create=True)
        assert parent is not None
        try:
            self.added.add(rel)
            self._entry(member, tar, parent, base)
        finally:
            os.close(parent)

    def _whiteout(self, name: str, parts: list[str], base: str, rel_dir: str) -> None:
        if base == OPAQUE:
            directory = self._open_dir(parts[:-1], name, create=False)
            if directory is None:
                return
            try:
                for child in os.listdir(directory):
                    if posixpath.join(rel_dir, child) not in self.added:
                        self._remove(child, directory)
            finally:
                os.close(directory)
            return
        hidden = base[len(WHITEOUT) :]
        if hidden in ("", ".", ".."):
            raise self._fail(name, f"whiteout names {hidden!r}, not an entry")
        if hidden.startswith(WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk and the like): nothing to apply
        directory = self._open_dir(parts[:-1], name, create=False)
        if directory is None:
            return  # nothing below to hide
        try:
            if posixpath.join(rel_dir, hidden) not in self.added:
                self._remove(hidden, directory)
        finally:
            os.close(directory)

    def _entry(self, member: tarfile.TarInfo, tar: tarfile.TarFile, parent: int, base: str) -> None:
        mode = member.mode & 0o777  # set-id and sticky bits dropped
        if member.isdir():
            try:
                st = os.lstat(base, dir_fd=parent)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(base, dir_fd=parent)
                    os.mkdir(base, 0o700, dir_fd=parent)
            except FileNotFoundError:
                os.mkdir(base, 0o700, dir_fd=parent)
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
            try:
                os.fchmod(fd, mode | 0o700)
            finally:
                os.close(fd)
            return
        if member.islnk():
            source = self._link_source(member)
            self._remove(base, parent)
            if source is None:
                return
            src_dir, src_name = source
            try:
                os.link(
                    src_name, base, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False
                )
            except OSError:
                self._copy(src_dir, src_name, parent, base)
            finally:
                os.close(src_dir)
            return
        self._remove(base, parent)
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)  # stored, never followed here
        elif member.isfile():
            extracted = tar.extractfile(member)
            assert extracted is not None
            fd = os.open(
                base,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(extracted, out, 1 << 20)
                os.fchmod(out.fileno(), mode | 0o400)
        # FIFOs (and any other special type) are not needed to read files: the path is
        # cleared, nothing is created.

    def _link_source(self, member: tarfile.TarInfo) -> tuple[int, str] | None:
        """(directory fd, name) of a hard link's target inside the root."""
        target = member.linkname
        if target.startswith("/"):
            raise self._fail(member.name, f"hard link target {target!r} is absolute")
        link_rel = member_path(target)
        if link_rel is None:
            raise self._fail(member.name, f"hard link target {target!r} contains '..'")
        if link_rel == "" or "\0" in link_rel:
            raise self._fail(member.name, f"hard link target {target!r} is not a file")
        parts = link_rel.split("/")
        directory = self._open_dir(parts[:-1], member.name, create=False)
        if directory is None:
            raise self._fail(member.name, f"hard link target {target!r} does not exist")
        try:
            st = os.lstat(parts[-1], dir_fd=directory)
        except FileNotFoundError:
            os.close(directory)
            raise self._fail(member.name, f"hard link target {target!r} does not exist") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            os.close(directory)
            raise self._fail(member.name, f"hard link target {target!r} is not a file")
        return directory, parts[-1]

    @staticmethod
    def _copy(src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> None:
        st = os.lstat(src_name, dir_fd=src_dir)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src_name, dir_fd=src_dir), dst_name, dir_fd=dst_dir)
            return
        src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
        with os.fdopen(src, "rb") as inp:
            dst = os.open(
                dst_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dst_dir,
            )
            with os.fdopen(dst, "wb") as out:
                shutil.copyfileobj(inp, out, 1 << 20)
                os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))


class _Advancing:
    """A layer file being read: each byte read for the first time advances *progress*."""

    def __init__(self, handle: BinaryIO, progress: Callable[[int], None] | None):
        self.handle = handle
        self.progress = progress
        self.reached = 0

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        position = self.handle.tell()
        if self.progress is not None and position > self.reached:
            self.progress(position - self.reached)
        self.reached = max(self.reached, position)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


def apply_layer(root: Path, handle: BinaryIO, source: str = "layer") -> str:
    """Apply one layer (gzip or plain tar) onto *root*; returns its diff_id."""
    reader = _DiffIdReader(open_layer(handle))
    applier = _LayerApplier(root, source)
    try:
        # a read-only file object: tarfile's stream mode only calls read()
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                applier.apply(member, tar)
        while reader.read(1 << 20):  # hash trailing padding too: diff_id covers the whole tar
            pass
    except (tarfile.TarError, EOFError, OSError, zlib.error, UnicodeError) as exc:
        raise ImageError(f"{source}: cannot read layer: {exc}") from exc
    finally:
        applier.close()
    return "sha256:" + reader.hash.hexdigest()


def chain_id(layers: list[Descriptor]) -> str:
    h = hashlib.sha256()
    for layer in layers:
        h.update(layer.digest.encode() + b"\n")
    return h.hexdigest()


def unpacked_rootfs(
    store: BlobStore,
    layers: list[Descriptor],
    diff_ids: list[str],
    cache_dir: Path,
    description: str,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    locks: EntryLocks = PROCESS_LOCKS,
) -> RootFS:
    """The image's root filesystem, unpacked (once) under *cache_dir*, layers verified against
    the config's diff_ids. The entry stays locked against pruning in *locks* (this process's,
    held while it lives); making a new one prunes the cache (see the module docstring),
    reporting through *log* (default: stderr)."""
    if diff_ids and len(diff_ids) != len(layers):
        raise ImageError(f"{description}: {len(layers)} layers but {len(diff_ids)} diff_ids")
    name = chain_id(layers)
    target = cache_dir / name
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # an existing read-only cache can still be read; unpacking reports the error
    locks.hold(cache_dir, name)  # before looking: a pruner cannot take the entry from now on
    if (target / COMPLETE).exists():
        touch(target)
        return RootFS(target / "rootfs", description)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache_dir))
    try:
        root = work / "rootfs"
        root.mkdir()
        for index, layer in enumerate(layers):
            if layer.media_type == OCI_LAYER_ZSTD:
                raise ImageError(
                    f"{description}: layer {layer.digest} is zstd-compressed; "
                    "only gzip and plain tar layers are supported"
                )
            with open(store.path(layer.digest), "rb") as handle:
                diff_id = apply_layer(
                    root,
                    _Advancing(handle, progress),  # type: ignore[arg-type]
                    f"{description} layer {index}",
                )
            if diff_ids and diff_id != diff_ids[index]:
                raise ImageError(
                    f"{description}: layer {index} ({layer.digest}) uncompresses to "
                    f"{diff_id}, but the config says {diff_ids[index]}"
                )
        (work / COMPLETE).write_text(description + "\n")
        touch(work)
        created = True
        try:
            os.rename(work, target)
        except OSError:  # another build finished the same chain first
            shutil.rmtree(work, ignore_errors=True)
            created = False
            if not (target / COMPLETE).exists():
                raise ImageError(
                    f"{target}: exists but is not a complete unpacked image; "
                    "remove it and try again"
                ) from None
            touch(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if created:
        try:
            prune_cache(cache_dir, name, log or report)
        except OSError:
            pass  # pruning is housekeeping: never fails the build or run that needed the tree
    return RootFS(target / "rootfs", description)
