"""A read-only view of an image's root filesystem.

Paths inside the root are absolute POSIX strings (``/usr/lib/libfoo.so``). Symlinks are resolved
*inside* the root, as the enclave will see them, never against the build machine's own files.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import EnclaveBuildError


class RootFSError(EnclaveBuildError):
    """A path inside the root filesystem cannot be used."""


@dataclass(frozen=True)
class RootFS:
    """A directory on the build machine that holds an image's root filesystem."""

    root: Path
    description: str = ""

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise RootFSError(f"{self.root}: root filesystem directory not found")

    def __str__(self) -> str:
        return self.description or str(self.root)

    def host_path(self, inner: str) -> Path:
        """Where the (already resolved) inner path lives on the build machine."""
        return self.root / inner.lstrip("/")

    def resolve(self, inner: str) -> str:
        """Resolve symlinks in *inner* within the root; raises :class:`RootFSError` on loops,
        dangling links or missing components."""
        if not inner.startswith("/"):
            raise RootFSError(f"{inner!r}: paths inside the image must be absolute")
        return self._resolve(inner, {}, 0)

    def _resolve(self, inner: str, seen: dict[str, str | None], depth: int) -> str:
        if depth > 40:
            raise RootFSError(f"{inner}: too many levels of symbolic links")
        current = "/"
        for part in [p for p in inner.split("/") if p]:
            if part == ".":
                continue
            if part == "..":
                current = posixpath.dirname(current)
                continue
            candidate = posixpath.join(current, part)
            host = self.host_path(candidate)
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                current = candidate  # missing: caller reports it with the full path
                continue
            except NotADirectoryError:
                raise RootFSError(f"{inner}: {current} is not a directory") from None
            if stat.S_ISLNK(st.st_mode):
                if candidate in seen:
                    target = seen[candidate]
                    if target is None:
                        raise RootFSError(f"{inner}: symbolic link loop at {candidate}")
                    current = target
                    continue
                seen[candidate] = None
                target = os.readlink(host)
                if not target.startswith("/"):
                    target = posixpath.join(current, target)
                resolved = self._resolve(target, seen, depth + 1)
                seen[candidate] = resolved
                current = resolved
            else:
                current = candidate
        return current

    def lstat(self, inner: str) -> os.stat_result | None:
        try:
            return os.lstat(self.host_path(inner))
        except OSError:
            return None

    def stat(self, inner: str) -> os.stat_result | None:
        """stat() of the path after resolving symlinks inside the root; None if missing."""
        try:
            return os.stat(self.host_path(self.resolve(inner)))
        except (OSError, RootFSError):
            return None

    def exists(self, inner: str) -> bool:
        return self.stat(inner) is not None

    def read_bytes(self, inner: str) -> bytes:
        resolved = self.resolve(inner)
        try:
            return self.host_path(resolved).read_bytes()
        except FileNotFoundError:
            raise RootFSError(f"{inner}: not found in {self}") from None
        except IsADirectoryError:
            raise RootFSError(f"{inner}: is a directory in {self}") from None
        except OSError as exc:
            raise RootFSError(
                f"{inner}: cannot read in {self}: {os.strerror(exc.errno or errno.EIO)}"
            ) from None

    def listdir(self, inner: str) -> list[str]:
        """Sorted entry names of a directory (after resolving *inner*)."""
        return sorted(os.listdir(self.host_path(self.resolve(inner))))
