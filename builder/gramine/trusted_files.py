"""Expand and hash ``sgx.trusted_files`` entries against an image's root filesystem.

Rules follow Gramine 1.9's manifest tooling: a URI ending in ``/`` is a directory, expanded
recursively in sorted order into one entry per regular file (entries that are neither files nor
directories, or unreadable, are skipped; symlinked directories are not descended); a file URI
must not name a directory; duplicates are merged. Symlinks resolve inside the image root.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from ..errors import EnclaveBuildError
from ..rootfs import RootFS, RootFSError


class TrustedFileError(EnclaveBuildError):
    """A trusted file cannot be found, read or hashed."""


@dataclass(frozen=True)
class TrustedFile:
    uri: str  # "file:/abs/path" as written into the manifest
    inner: str  # resolved path inside the root
    size: int


def _uri_path(uri: str) -> str:
    if not uri.startswith("file:"):
        raise TrustedFileError(f"{uri!r}: only file: URIs can be trusted files")
    path = uri[len("file:") :]
    if not path.startswith("/"):
        raise TrustedFileError(f"{uri!r}: trusted files need absolute paths inside the image")
    return path


def expand(uris: list[str], rootfs: RootFS) -> list[TrustedFile]:
    """Expand directory URIs and check every file exists and is readable."""
    out: dict[str, TrustedFile] = {}
    for uri in uris:
        path = _uri_path(uri)
        try:
            resolved = rootfs.resolve(path.rstrip("/") or "/")
        except RootFSError as exc:
            raise TrustedFileError(f"trusted file {uri!r}: {exc}") from None
        st = rootfs.lstat(resolved)
        if st is None:
            raise TrustedFileError(
                f"trusted file {uri!r}: {path} does not exist in the image ({rootfs})"
            )
        if uri.endswith("/"):
            if not stat.S_ISDIR(st.st_mode):
                raise TrustedFileError(f"trusted file {uri!r} ends with '/' but is not a directory")
            for item in _walk(resolved, rootfs):
                out.setdefault(item.uri, item)
        else:
            if stat.S_ISDIR(st.st_mode):
                raise TrustedFileError(
                    f"trusted file {uri!r} is a directory: write it with a trailing '/'"
                )
            if not stat.S_ISREG(st.st_mode):
                raise TrustedFileError(f"trusted file {uri!r} is not a regular file")
            if not os.access(rootfs.host_path(resolved), os.R_OK):
                raise TrustedFileError(f"trusted file {uri!r}: permission denied")
            out.setdefault(uri, TrustedFile(uri, resolved, st.st_size))
    return list(out.values())


def _walk(directory: str, rootfs: RootFS) -> list[TrustedFile]:
    found: list[TrustedFile] = []
    for name in sorted(os.listdir(rootfs.host_path(directory))):
        inner = posixpath.join(directory, name)
        host = rootfs.host_path(inner)
        lst = rootfs.lstat(inner)
        if lst is None:
            continue
        if stat.S_ISLNK(lst.st_mode):
            target_stat = rootfs.stat(inner)
            if target_stat is None or stat.S_ISDIR(target_stat.st_mode):
                continue  # dangling, or a symlinked directory: not descended (as Gramine)
            if not stat.S_ISREG(target_stat.st_mode):
                continue
            resolved = rootfs.resolve(inner)
            if os.access(rootfs.host_path(resolved), os.R_OK):
                found.append(TrustedFile(f"file:{inner}", resolved, target_stat.st_size))
        elif stat.S_ISDIR(lst.st_mode):
            if os.access(host, os.R_OK | os.X_OK):
                found.extend(_walk(inner, rootfs))
        elif stat.S_ISREG(lst.st_mode) and os.access(host, os.R_OK):
            found.append(TrustedFile(f"file:{inner}", inner, lst.st_size))
    return found
