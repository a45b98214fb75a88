"""Find Gramine inside a base image's root filesystem.

Gramine's Python package records where it was installed: ``graminelibos/__init__.py`` holds
``__version__`` and ``_CONFIG_PKGLIBDIR``; the layout constants sit next to the package as
``_graminelibos_offsets.py``. Both are read as text (never executed). From PKGLIBDIR come
``libsysdb.so`` (the LibOS, loader.entrypoint), ``sgx/libpal.so`` (measured into the enclave) and
``runtime/glibc`` (Gramine's patched C library).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ..errors import EnclaveBuildError
from ..rootfs import RootFS, RootFSError

_LIB_ROOTS = ("/usr/lib", "/usr/local/lib", "/usr/lib64", "/usr/local/lib64")
_PKGLIBDIRS = (
    "/usr/lib/x86_64-linux-gnu/gramine",
    "/usr/local/lib/x86_64-linux-gnu/gramine",
    "/usr/lib64/gramine",
    "/usr/local/lib64/gramine",
    "/usr/lib/gramine",
    "/usr/local/lib/gramine",
)
SUPPORTED_VERSIONS = ("1.9",)
WORKING_BASES = (
    "gramineproject/gramine:1.9-noble or 1.9-jammy (or any image with the gramine 1.9 "
    "Debian/RPM package installed)",
    "the bases in base_images/ (`enclave-build base build`)",
    "a root filesystem from `enclave-build base gramine ROOTFS` (as root; --base dir:ROOTFS)",
)


class GramineNotFoundError(EnclaveBuildError):
    pass


@dataclass(frozen=True)
class GramineRuntime:
    version: str
    pkglibdir: str
    libos: str  # .../libsysdb.so
    libpal: str  # .../sgx/libpal.so
    runtimedir: str  # .../runtime/glibc
    offsets: str  # .../_graminelibos_offsets.py


def _python_dirs(rootfs: RootFS) -> list[str]:
    dirs = []
    for lib in _LIB_ROOTS:
        try:
            names = rootfs.listdir(lib)
        except (OSError, RootFSError):
            continue
        for name in names:
            if name == "python3" or re.fullmatch(r"python3\.\d+", name):
                for sub in ("dist-packages", "site-packages"):
                    dirs.append(posixpath.join(lib, name, sub))
    return dirs


def discover(rootfs: RootFS) -> GramineRuntime:
    searched: list[str] = []
    for pydir in _python_dirs(rootfs):
        init = posixpath.join(pydir, "graminelibos", "__init__.py")
        searched.append(init)
        if not rootfs.exists(init):
            continue
        text = rootfs.read_bytes(init).decode("utf-8", "replace")
        version = _assignment(text, "__version__")
        pkglibdir = _assignment(text, "_CONFIG_PKGLIBDIR")
        offsets = posixpath.join(pydir, "_graminelibos_offsets.py")
        if pkglibdir is None or version is None:
            continue
        return _finish(rootfs, version, pkglibdir, offsets)
    # No Python package: look for the usual library directories (the offsets file is required,
    # so this only helps if it was installed elsewhere on the Python path).
    for pkglibdir in _PKGLIBDIRS:
        searched.append(posixpath.join(pkglibdir, "sgx/libpal.so"))
        if rootfs.exists(posixpath.join(pkglibdir, "sgx/libpal.so")):
            for pydir in _python_dirs(rootfs):
                offsets = posixpath.join(pydir, "_graminelibos_offsets.py")
                if rootfs.exists(offsets):
                    return _finish(rootfs, "unknown", pkglibdir, offsets)
    raise GramineNotFoundError(
        f"no Gramine installation found in the base image ({rootfs}).\n"
        "Searched:\n  "
        + "\n  ".join(searched or ["(no python3 library directories)"])
        + "\nBases that work: "
        + "; ".join(WORKING_BASES)
    )


def _assignment(text: str, name: str) -> str | None:
    match = re.search(rf"^{re.escape(name)}\s*=\s*['\"]([^'\"]*)['\"]", text, re.M)
    return match.group(1) if match else None


def _finish(rootfs: RootFS, version: str, pkglibdir: str, offsets: str) -> GramineRuntime:
    runtime = GramineRuntime(
        version=version,
        pkglibdir=pkglibdir,
        libos=posixpath.join(pkglibdir, "libsysdb.so"),
        libpal=posixpath.join(pkglibdir, "sgx", "libpal.so"),
        runtimedir=posixpath.join(pkglibdir, "runtime", "glibc"),
        offsets=offsets,
    )
    missing = [p for p in (runtime.libos, runtime.libpal, runtime.offsets) if not rootfs.exists(p)]
    if missing:
        raise GramineNotFoundError(
            f"Gramine {version} in {rootfs} is incomplete (is the SGX build installed?): "
            f"missing {', '.join(missing)}"
        )
    if version not in SUPPORTED_VERSIONS and version != "unknown":
        raise GramineNotFoundError(
            f"the base image has Gramine {version}; enclave-build renders manifests for Gramine "
            f"{', '.join(SUPPORTED_VERSIONS)}. Bases that work: " + "; ".join(WORKING_BASES)
        )
    return runtime
