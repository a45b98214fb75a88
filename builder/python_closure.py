"""The files a Python service runs, resolved inside an image's root filesystem.

Trusting whole ``site-packages`` trees is what makes a Python enclave slow to start (every
trusted entry costs time at start even when unused) and hides what the enclave runs. This module
lists exactly: the interpreter, its standard library minus the trees that never run in a server,
and the files of the installed distributions the service imports (their ``.dist-info/RECORD``,
following ``Requires-Dist``). Compiled ``.pyc`` files are trusted only when Python can use them
inside the LibOS: hash-based ones (``compileall --invalidation-mode unchecked-hash``), because
file timestamps read 0 there and every timestamp-based ``.pyc`` looks stale. A RECORD lists the
``.pyc`` files only when pip compiled them itself; those a base compiled afterwards (as
enclave-build's bases do, hash-based) are found next to each listed ``.py``: Python opens the
``.pyc`` of every module it imports, and under the real LibOS an existing but untrusted one is
refused (Gramine logs "Disallowing access to file ...") and the module recompiled at every start.
"""

from __future__ import annotations

import csv
import email.parser
import fnmatch
import io
import posixpath
import re
import stat
from dataclasses import dataclass

from .errors import EnclaveBuildError
from .plan import PythonRuntime
from .rootfs import RootFS, RootFSError

#: Files inside distributions that are never executed or read by a running server.
UNUSED_SUFFIXES = (
    ".pyi",
    ".h",
    ".hpp",
    ".c",
    ".cc",
    ".cpp",
    ".pxd",
    ".pyx",
    ".pxi",
    ".a",
    ".cmake",
    ".pc",
    ".md",
    ".rst",
)
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
#: Metadata files kept from a .dist-info (importlib.metadata lookups at import time).
KEPT_METADATA = ("METADATA", "entry_points.txt", "top_level.txt")

#: Marker environment of Debian bookworm's CPython 3.11 on x86-64.
MARKER_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
    "extra": "",
}


class PythonClosureError(EnclaveBuildError):
    """The base image lacks something the Python service needs."""


@dataclass(frozen=True)
class PythonFiles:
    files: tuple[str, ...]  # image paths to trust, in a stable order
    distributions: tuple[str, ...]  # "name version (site dir)" of every distribution included


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def python_closure(runtime: PythonRuntime, rootfs: RootFS) -> PythonFiles:
    """Resolve *runtime* against *rootfs*; raises :class:`PythonClosureError` naming the missing
    path and the base image."""
    out: dict[str, None] = {}
    _require(rootfs, runtime.interpreter, "the Python interpreter")
    out[runtime.interpreter] = None
    _require(rootfs, runtime.stdlib + "/os.py", "Python's standard library")
    for path in _tree(rootfs, runtime.stdlib, runtime.stdlib_exclude):
        out[path] = None

    index = _dist_index(rootfs, runtime.site_dirs)
    included: list[str] = []
    done: set[str] = set()
    queue = [(name, True) for name in runtime.distributions]
    while queue:
        name, required = queue.pop(0)
        key = normalize(name)
        if key in done:
            continue
        done.add(key)
        dist = index.get(key)
        if dist is None:
            if required:
                raise PythonClosureError(
                    f"the Python distribution {name!r} is not installed in the base image "
                    f"({rootfs}); looked for {key.replace('-', '_')}-*.dist-info in "
                    + ", ".join(runtime.site_dirs)
                )
            continue  # a dependency the base provides otherwise (e.g. a Debian package)
        site, info = dist
        included.append(f"{info[: -len('.dist-info')]} ({site})")
        for path in _dist_files(rootfs, site, info, runtime.version):
            out[path] = None
        for requirement in _requirements(rootfs, posixpath.join(site, info)):
            queue.append((requirement, False))

    for module in runtime.modules:
        paths = _module_files(rootfs, runtime.site_dirs, module, runtime.version)
        if not paths:
            raise PythonClosureError(
                f"the Python module {module!r} is not in the base image ({rootfs}); looked in "
                + ", ".join(runtime.site_dirs)
            )
        for path in paths:
            out[path] = None
    return PythonFiles(tuple(out), tuple(included))


def _require(rootfs: RootFS, path: str, what: str) -> None:
    if not rootfs.exists(path):
        raise PythonClosureError(
            f"{what} {path} is not in the base image ({rootfs}); the "
            "Python server needs Debian's python3.11 there"
        )


def _excluded(rel: str, is_dir: bool, patterns: tuple[str, ...]) -> bool:
    parts = rel.split("/")
    if any(part in TEST_DIRS for part in (parts if is_dir else parts[:-1])):
        return True
    for pattern in patterns:
        if pattern.endswith("/"):
            if is_dir and fnmatch.fnmatchcase(rel, pattern[:-1]):
                return True
        elif not is_dir and fnmatch.fnmatchcase(rel, pattern):
            return True
    return False


def _tree(rootfs: RootFS, top: str, exclude: tuple[str, ...]) -> list[str]:
    """Regular files under *top* (sorted, symlinked files included, symlinked dirs not
    descended), minus *exclude* and unusable .pyc files."""
    found: list[str] = []

    def walk(directory: str, rel: str) -> None:
        try:
            names = rootfs.listdir(directory)
        except (OSError, RootFSError):
            return
        for name in names:
            inner = posixpath.join(directory, name)
            sub = f"{rel}/{name}" if rel else name
            lst = rootfs.lstat(inner)
            if lst is None:
                continue
            if stat.S_ISDIR(lst.st_mode):
                if not _excluded(sub, True, exclude):
                    walk(inner, sub)
                continue
            st = rootfs.stat(inner) if stat.S_ISLNK(lst.st_mode) else lst
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            if _excluded(sub, False, exclude) or not _useful(rootfs, inner):
                continue
            found.append(inner)

    walk(top, "")
    return found


_PYC_TAG = re.compile(r"\.cpython-\d+\.pyc\Z")


def _useful(rootfs: RootFS, inner: str) -> bool:
    if inner.endswith(".pyc"):
        if not _PYC_TAG.search(inner):
            return False  # .opt-1/.opt-2 caches are not used without -O
        try:
            with open(rootfs.host_path(rootfs.resolve(inner)), "rb") as handle:
                header = handle.read(8)
        except (OSError, RootFSError):
            return False
        return len(header) == 8 and bool(int.from_bytes(header[4:8], "little") & 1)
    return not inner.endswith(UNUSED_SUFFIXES)


def _dist_index(rootfs: RootFS, site_dirs: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """normalized distribution name -> (site dir, NAME-VERSION.dist-info); first site dir wins."""
    index: dict[str, tuple[str, str]] = {}
    for site in site_dirs:
        try:
            names = rootfs.listdir(site)
        except (OSError, RootFSError):
            continue
        for name in names:
            if name.endswith(".dist-info"):
                dist = normalize(name[: -len(".dist-info")].rsplit("-", 1)[0])
                index.setdefault(dist, (site, name))
    return index


def _read(rootfs: RootFS, path: str) -> str | None:
    try:
        return rootfs.read_bytes(path).decode("utf-8", "replace")
    except (OSError, RootFSError):
        return None


def _cached_pyc(rootfs: RootFS, source: str, version: str) -> str | None:
    """The usable (hash-based) ``__pycache__`` file of *source* for Python *version*, if any."""
    directory, name = posixpath.split(source)
    tag = "cpython-" + version.replace(".", "")
    pyc = posixpath.join(directory, "__pycache__", f"{name[:-3]}.{tag}.pyc")
    st = rootfs.stat(pyc)
    if st is None or not stat.S_ISREG(st.st_mode) or not _useful(rootfs, pyc):
        return None
    return pyc


def _dist_files(rootfs: RootFS, site: str, info: str, version: str = "3.11") -> list[str]:
    record = _read(rootfs, posixpath.join(site, info, "RECORD"))
    if record is None:
        # No RECORD (some distro packages): the import packages named in top_level.txt.
        top = _read(rootfs, posixpath.join(site, info, "top_level.txt")) or ""
        files = [
            posixpath.join(site, info, m)
            for m in KEPT_METADATA
            if rootfs.exists(posixpath.join(site, info, m))
        ]
        for module in top.split():
            files += _module_files(rootfs, (site,), module, version)
        return files
    files = []
    for row in csv.reader(io.StringIO(record)):
        if not row or not row[0]:
            continue
        rel = posixpath.normpath(row[0])
        if rel.startswith("../") or rel.startswith("/"):
            continue  # scripts and data outside the site directory
        parts = rel.split("/")
        if parts[0].endswith(".dist-info"):
            if parts[-1] not in KEPT_METADATA:
                continue
        elif _excluded(rel, False, ()) or not _useful(rootfs, posixpath.join(site, rel)):
            continue
        inner = posixpath.join(site, rel)
        st = rootfs.stat(inner)
        if st is not None and stat.S_ISREG(st.st_mode):
            files.append(inner)
            if inner.endswith(".py"):
                pyc = _cached_pyc(rootfs, inner, version)
                if pyc is not None:
                    files.append(pyc)
    return sorted(set(files))


def _requirements(rootfs: RootFS, info_dir: str) -> list[str]:
    text = _read(rootfs, posixpath.join(info_dir, "METADATA")) or ""
    message = email.parser.Parser().parsestr(text, headersonly=True)
    names = []
    for requirement in message.get_all("Requires-Dist") or []:
        spec, _, marker = requirement.partition(";")
        if marker.strip() and not _marker_true(marker.strip()):
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match:
            names.append(match.group(1))
    return names


def _marker_true(marker: str) -> bool:
    try:
        from packaging.markers import InvalidMarker, Marker
    except ImportError:  # pragma: no cover - packaging is there wherever pip is
        return "extra" not in marker
    try:
        return Marker(marker).evaluate(dict(MARKER_ENV))
    except (InvalidMarker, Exception):  # noqa: BLE001 - an odd marker: leave it out
        return False


def _module_files(
    rootfs: RootFS, site_dirs: tuple[str, ...], module: str, version: str = "3.11"
) -> list[str]:
    """Files of the top-level import *module* (a package directory, a .py or an extension)."""
    for site in site_dirs:
        package = posixpath.join(site, module)
        st = rootfs.stat(package)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return _tree(rootfs, package, ())
        try:
            names = rootfs.listdir(site)
        except (OSError, RootFSError):
            continue
        hits = [
            posixpath.join(site, n)
            for n in names
            if n == f"{module}.py" or (n.startswith(f"{module}.") and n.endswith(".so"))
        ]
        if hits:
            pycs = [_cached_pyc(rootfs, h, version) for h in hits if h.endswith(".py")]
            return hits + [p for p in pycs if p is not None]
    return []
