"""The shared-library closure of ELF files, resolved inside an image's root filesystem.

An enclave can only load libraries that are trusted files, and the dynamic loader inside it
searches its own way: ``DT_RPATH`` (when there is no ``DT_RUNPATH``), ``LD_LIBRARY_PATH``,
``DT_RUNPATH`` (``$ORIGIN`` = the directory of the object that needs the library), then the
default directories. Paths are seen through the enclave's mounts: Gramine mounts its own glibc
(``runtime/glibc``) at ``/lib``, which is first in ``LD_LIBRARY_PATH``, so libc, libm,
libpthread, libdl, ld-linux... always come from there.

The closure is computed from the bytes in the base image (pyelftools reads ``DT_NEEDED``,
``DT_RPATH`` and ``DT_RUNPATH``), never from the build machine's own libraries.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection, DynamicSegment
from elftools.elf.elffile import ELFFile

from .errors import EnclaveBuildError
from .rootfs import RootFS, RootFSError

#: The loader's built-in search directories (Debian multiarch layout), after LD_LIBRARY_PATH.
DEFAULT_DIRS: tuple[str, ...] = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
)


class LibraryNotFoundError(EnclaveBuildError):
    """A library the entrypoint needs is not in the base image."""


@dataclass(frozen=True)
class ElfDeps:
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def read_deps(path: Path) -> ElfDeps | None:
    """DT_NEEDED, DT_RPATH and DT_RUNPATH of an ELF file; None if it is not a (readable) ELF."""
    if not is_elf(path):
        return None
    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            tables: list[DynamicSection | DynamicSegment] = [
                s for s in elf.iter_sections() if isinstance(s, DynamicSection)
            ]
            if not tables and elf.num_sections() == 0:
                # Section headers stripped: the PT_DYNAMIC segment holds the same tags.
                tables = [g for g in elf.iter_segments() if isinstance(g, DynamicSegment)]
            needed, rpath, runpath = _collect(tag for table in tables for tag in table.iter_tags())
    except (ELFError, ValueError, OSError, KeyError, AssertionError):
        return None
    return ElfDeps(tuple(needed), tuple(rpath), tuple(runpath))


def _collect(tags: Iterable) -> tuple[list[str], list[str], list[str]]:
    """DT_NEEDED names, DT_RPATH and DT_RUNPATH directories, in file order."""
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    for tag in tags:
        if tag.entry.d_tag == "DT_NEEDED":
            needed.append(tag.needed)
        elif tag.entry.d_tag == "DT_RPATH":
            rpath += [p for p in tag.rpath.split(":") if p]
        elif tag.entry.d_tag == "DT_RUNPATH":
            runpath += [p for p in tag.runpath.split(":") if p]
    return needed, rpath, runpath


@dataclass
class LoaderView:
    """How the enclave's dynamic loader sees the image.

    *mounts* maps enclave directories to directories of the base image (the host side of a
    chroot mount), e.g. ``{"/lib": "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"}``; paths
    under no mount are the image's own. *library_path* is the enclave's ``LD_LIBRARY_PATH``.
    """

    rootfs: RootFS
    mounts: dict[str, str] = field(default_factory=dict)
    library_path: tuple[str, ...] = ()
    default_dirs: tuple[str, ...] = DEFAULT_DIRS

    def host_of(self, enclave_path: str) -> str:
        """The image path behind an enclave path (longest matching mount wins)."""
        path = posixpath.normpath(enclave_path)
        best = ""
        for mount in self.mounts:
            m = mount.rstrip("/") or "/"
            if (path == m or path.startswith(m + "/")) and len(m) > len(best):
                best = m
        if not best:
            return path
        rest = path[len(best) :].lstrip("/")
        return posixpath.join(self.mounts[best], rest) if rest else self.mounts[best]

    def find(self, name: str, requester: str, deps: ElfDeps) -> str | None:
        """The image path of library *name* as the loader finds it for *requester* (an image
        path), or None. A name with a '/' is a path."""
        for directory in self.search_dirs(requester, deps):
            candidate = self.host_of(posixpath.join(directory, name))
            st = self.rootfs.stat(candidate)
            if st is not None and stat.S_ISREG(st.st_mode):
                return candidate
        return None

    def search_dirs(self, requester: str, deps: ElfDeps) -> list[str]:
        origin = posixpath.dirname(requester)

        def expand(paths: Iterable[str]) -> list[str]:
            out = []
            for p in paths:
                p = p.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
                if p.startswith("/"):
                    out.append(posixpath.normpath(p))
            return out

        dirs: list[str] = []
        if not deps.runpath:
            dirs += expand(deps.rpath)
        dirs += list(self.library_path)
        dirs += expand(deps.runpath)
        dirs += list(self.default_dirs)
        return list(dict.fromkeys(dirs))


@dataclass(frozen=True)
class Closure:
    libraries: tuple[str, ...]  # image paths of every library found, in order
    missing: tuple[tuple[str, str], ...]  # (library name, image path of the ELF needing it)


def closure(
    roots: Iterable[str],
    view: LoaderView,
    *,
    strict: bool = False,
    known: dict[str, ElfDeps | None] | None = None,
) -> Closure:
    """Every library the ELF files *roots* (image paths) need, transitively.

    With *strict*, a library that cannot be found raises :class:`LibraryNotFoundError` naming it,
    the ELF that needs it, the directories searched and the base image. *known* caches parsed
    files across calls (image path -> deps)."""
    cache = known if known is not None else {}
    found: dict[str, None] = {}
    missing: list[tuple[str, str]] = []
    queue = list(dict.fromkeys(roots))
    seen = set(queue)
    while queue:
        current = queue.pop(0)
        deps = _deps(current, view.rootfs, cache)
        if deps is None:
            continue
        for name in deps.needed:
            if "/" in name:
                target = view.host_of(name) if view.rootfs.exists(view.host_of(name)) else None
            else:
                target = view.find(name, current, deps)
            if target is None:
                if strict:
                    raise LibraryNotFoundError(
                        f"{current} needs {name}, which is not in the base image "
                        f"({view.rootfs}); searched: " + ", ".join(view.search_dirs(current, deps))
                    )
                missing.append((name, current))
                continue
            if target not in found:
                found[target] = None
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return Closure(tuple(found), tuple(missing))


def _deps(inner: str, rootfs: RootFS, cache: dict[str, ElfDeps | None]) -> ElfDeps | None:
    if inner not in cache:
        try:
            host = rootfs.host_path(rootfs.resolve(inner))
        except RootFSError:
            cache[inner] = None
        else:
            cache[inner] = read_deps(host)
    return cache[inner]
