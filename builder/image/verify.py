"""Check that what an unpacked Gramine image will run is what its SIGSTRUCT vouches for.

Labels and measurements.json only repeat the SIGSTRUCT; nothing in them ties the SIGSTRUCT to
the files next to it. :func:`verify_enclave` does, from the image's own files:

1. **MRENCLAVE** is re-derived from the image's ``APP.manifest.sgx`` and the ``libpal.so`` and
   ``_graminelibos_offsets.py`` of the image's Gramine (as ``gramine-sgx-sign`` does), and
   compared with the SIGSTRUCT's, whose signature must verify
   (:func:`builder.gramine.identity.check_identity`). That covers the manifest's every byte:
   argv, environment, mounts and each trusted file's SHA-256.
2. **Trusted files**: every ``sgx.trusted_files`` entry and the LibOS (``loader.entrypoint``)
   must exist in the image and hash to the manifest's SHA-256. Symlinks resolve inside the
   image, as the enclave sees them. Digests come from the hash cache, keyed on the file's
   device, inode, size, mtime *and ctime* in the cache's own unpacked tree: an image sets
   mtimes and sizes, but the inode and ctime are this machine's (made when the layers were
   unpacked, from digest-verified blobs), so no image can reuse another file's digest.
3. **Import path**: every file in a directory of the manifest's ``PYTHONPATH`` must be a
   trusted (or allowed) file. The build puts only trusted files there; anything else (a
   ``.pth``, a ``sitecustomize.py``, a ``*.dist-info`` naming entry points) was added later.
   Gramine would refuse to open it; a plain-process simulation would have loaded it.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EnclaveBuildError
from ..gramine.identity import IdentityCheck, check_identity, read_sigstruct
from ..gramine.measure import PalImage
from ..gramine.offsets import Offsets
from ..gramine.runtime import discover
from ..hashing import HashCache, hash_files
from ..rootfs import RootFS, RootFSError

#: Larger files cannot be a manifest, a libpal.so or an offsets file (read into memory).
MAX_ENCLAVE_FILE = 64 << 20
#: How many problems of one kind are listed one by one before "... and N more".
LISTED = 10
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class EnclaveVerification:
    """The outcome for the enclave *app* (``/enclave/SERVICE``) in *rootfs*. *trusted* maps the
    image path of every trusted file whose content was checked to the file on this machine
    (inside *rootfs*) that holds that content; *problems* is empty when everything agrees."""

    app: str
    rootfs: RootFS
    manifest: dict[str, Any] | None = None
    identity: IdentityCheck | None = None
    trusted: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """What `inspect --json` reports under ``rederived``."""
        return {
            "app": self.app,
            "mr_enclave": self.identity.mr_enclave if self.identity else None,
            "trusted_files_checked": len(self.trusted),
        }


def verify_enclave(
    rootfs: RootFS, app: str, hash_cache: HashCache | None = None
) -> EnclaveVerification:
    """Verify the enclave *app* of the unpacked image *rootfs* (see the module docstring)."""
    result = EnclaveVerification(app, rootfs)
    manifest_path, sig_path = f"{app}.manifest.sgx", f"{app}.sig"
    sig_bytes = _read(rootfs, sig_path, result.problems)
    manifest_bytes = _read(rootfs, manifest_path, result.problems)
    pal, offs, pal_path = _gramine(rootfs, result.problems)
    if sig_bytes is None:
        return result
    if manifest_bytes is None or pal is None or offs is None:
        _sig, info, problems = read_sigstruct(sig_bytes, sig_path)  # still report what it says
        result.identity = IdentityCheck(None, info, tuple(problems))
        result.problems += problems
        return result
    result.identity = check_identity(
        manifest_bytes,
        pal,
        offs,
        sig_bytes,
        manifest_source=manifest_path,
        pal_source=pal_path,
        sigstruct_source=sig_path,
    )
    result.problems += result.identity.problems
    result.manifest = result.identity.manifest
    if result.manifest is None:
        try:
            result.manifest = tomllib.loads(manifest_bytes.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            result.problems.append(f"{manifest_path}: not a TOML manifest: {exc}")
            return result
    _check_trusted_files(result, hash_cache)
    _check_import_path(result)
    return result


# --------------------------------------------------------------------------------- reading


def _gramine(rootfs: RootFS, problems: list[str]) -> tuple[PalImage | None, Offsets | None, str]:
    """The libpal.so and layout constants of the image's own Gramine (found as the build
    found them)."""
    try:
        runtime = discover(rootfs)
        offs = Offsets.parse(_must_read(rootfs, runtime.offsets).decode("utf-8"), runtime.offsets)
        return (
            PalImage.from_bytes(_must_read(rootfs, runtime.libpal), runtime.libpal),
            offs,
            runtime.libpal,
        )
    except EnclaveBuildError as exc:
        problems.append(f"cannot re-derive MRENCLAVE: the image's Gramine is unusable: {exc}")
    except UnicodeDecodeError:
        problems.append("cannot re-derive MRENCLAVE: the image's Gramine offsets file is not text")
    return None, None, "libpal.so"


def _read(rootfs: RootFS, path: str, problems: list[str]) -> bytes | None:
    try:
        return _must_read(rootfs, path)
    except RootFSError as exc:
        problems.append(str(exc))
        return None


def _must_read(rootfs: RootFS, path: str) -> bytes:
    resolved = rootfs.resolve(path)
    st = rootfs.lstat(resolved)
    if st is None:
        raise RootFSError(f"{path}: not found in the image")
    if not stat.S_ISREG(st.st_mode):
        raise RootFSError(f"{path}: not a regular file")
    if st.st_size > MAX_ENCLAVE_FILE:
        raise RootFSError(
            f"{path}: {st.st_size} bytes, more than any enclave file this size "
            f"can be ({MAX_ENCLAVE_FILE})"
        )
    return rootfs.read_bytes(resolved)


def _image_path(uri: Any) -> str | None:
    """The absolute, normalized image path of a ``file:`` URI (None if it is not one)."""
    if not isinstance(uri, str) or not uri.startswith("file:"):
        return None
    path = uri[len("file:") :]
    if not path.startswith("/") or ".." in path.split("/"):
        return None
    return posixpath.normpath(path) + ("/" if path.endswith("/") and path != "/" else "")


class _Resolver:
    """:meth:`RootFS.resolve` with each directory resolved once (thousands of trusted files
    share a few hundred directories)."""

    def __init__(self, rootfs: RootFS):
        self.rootfs = rootfs
        self.directories: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        parent, name = posixpath.split(path)
        if not name:
            return self.rootfs.resolve(path)
        directory = self.directories.get(parent)
        if directory is None:
            directory = self.directories[parent] = self.rootfs.resolve(parent)
        candidate = posixpath.join(directory, name)
        if name in (".", "..") or os.path.islink(
            os.path.join(self.rootfs.root, candidate.lstrip("/"))
        ):
            return self.rootfs.resolve(candidate)
        return candidate


def _listed(problems: list[str], items: list[str], what: str) -> None:
    problems += items[:LISTED]
    if len(items) > LISTED:
        problems.append(f"... and {len(items) - LISTED} more {what}")


# --------------------------------------------------------------------------- trusted files


def _trusted_entries(manifest: dict[str, Any], problems: list[str]) -> list[tuple[str, str, str]]:
    """(image path, expected sha256, what) for the LibOS and every trusted file."""
    entries: list[tuple[str, str, str]] = []
    loader = table if isinstance(table := manifest.get("loader"), dict) else {}
    sgx = table if isinstance(table := manifest.get("sgx"), dict) else {}
    candidates: list[tuple[Any, str]] = [
        (loader.get("entrypoint"), "loader.entrypoint (the LibOS)")
    ]
    listed = sgx.get("trusted_files", [])
    if not isinstance(listed, list):
        problems.append("the manifest's sgx.trusted_files is not a list")
        listed = []
    candidates += [(item, f"sgx.trusted_files[{index}]") for index, item in enumerate(listed)]
    for item, what in candidates:
        uri = item.get("uri") if isinstance(item, dict) else item
        digest = item.get("sha256") if isinstance(item, dict) else None
        path = _image_path(uri)
        if path is None or path.endswith("/"):
            problems.append(f"{what}: {uri!r} is not a file: URI of one absolute image path")
        elif not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            problems.append(f"{what} ({path}): no valid sha256, so its content is unverified")
        else:
            entries.append((path, digest, what))
    return entries


def _check_trusted_files(result: EnclaveVerification, hash_cache: HashCache | None) -> None:
    assert result.manifest is not None
    rootfs = result.rootfs
    problems: list[str] = []
    entries = _trusted_entries(result.manifest, problems)
    hosts: dict[str, Path] = {}
    resolve = _Resolver(rootfs)
    for path, _digest, what in entries:
        try:
            resolved = resolve(path)
        except RootFSError as exc:
            problems.append(f"trusted file {path} ({what}): {exc}")
            continue
        host = os.path.join(rootfs.root, resolved.lstrip("/"))
        try:
            st = os.lstat(host)
        except OSError:
            problems.append(f"trusted file {path} ({what}) is missing from the image")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"trusted file {path} ({what}) is not a regular file in the image")
        else:
            hosts[path] = Path(host)
    try:
        digests = hash_files(list(dict.fromkeys(hosts.values())), cache=hash_cache)
    except OSError as exc:
        result.problems.append(f"cannot hash the image's trusted files: {exc}")
        return
    for path, want, what in entries:
        found = hosts.get(path)
        if found is None:
            continue
        got = digests[found]
        if got != want:
            problems.append(
                f"trusted file {path} ({what}) was changed: the image holds content "
                f"with sha256 {got}, the signed manifest lists {want}"
            )
        else:
            result.trusted[path] = found
    _listed(result.problems, problems, "trusted-file problems")


# ----------------------------------------------------------------------------- import path


def python_path(manifest: dict[str, Any]) -> list[str]:
    """The manifest's ``loader.env.PYTHONPATH`` directories (image paths)."""
    env = (manifest.get("loader") or {}).get("env") or {}
    value = env.get("PYTHONPATH") if isinstance(env, dict) else None
    if not isinstance(value, str):
        return []
    return [p for p in value.split(":") if p]


def _allowed(manifest: dict[str, Any]) -> tuple[set[str], tuple[str, ...]]:
    """sgx.allowed_files as (exact paths, directory prefixes ending in '/')."""
    sgx = table if isinstance(table := manifest.get("sgx"), dict) else {}
    exact, prefixes = set(), []
    for uri in sgx.get("allowed_files", []) if isinstance(sgx.get("allowed_files"), list) else []:
        path = _image_path(uri)
        if path is None:
            continue
        if path.endswith("/"):
            prefixes.append(path)
        else:
            exact.add(path)
            prefixes.append(path + "/")  # an allowed directory may be written without the '/'
    return exact, tuple(prefixes)


def _check_import_path(result: EnclaveVerification) -> None:
    assert result.manifest is not None
    rootfs = result.rootfs
    trusted = {path for path, _d, _w in _trusted_entries(result.manifest, [])}
    exact, prefixes = _allowed(result.manifest)
    problems: list[str] = []
    for directory in python_path(result.manifest):
        if not directory.startswith("/") or ".." in directory.split("/"):
            problems.append(f"PYTHONPATH entry {directory!r} is not an absolute image path")
            continue
        directory = posixpath.normpath(directory)
        try:
            resolved = rootfs.resolve(directory)
        except RootFSError as exc:
            problems.append(f"PYTHONPATH entry {directory}: {exc}")
            continue
        host = rootfs.host_path(resolved)
        if not host.is_dir() or host.is_symlink():
            continue  # nothing there to import
        for dirpath, dirnames, filenames in os.walk(host):
            dirnames.sort()
            relative = os.path.relpath(dirpath, host)
            inner = directory if relative == "." else posixpath.join(directory, relative)
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in sorted(filenames) + links:
                path = posixpath.join(inner, name)
                if path in trusted or path in exact or path.startswith(prefixes):
                    continue
                problems.append(
                    f"{path}: on the manifest's PYTHONPATH ({directory}) but not a "
                    "trusted file; the build puts only trusted files there, so it "
                    "was added to the image afterwards (Gramine would refuse to "
                    "open it; a plain Python process could load it)"
                )
    _listed(result.problems, problems, "untrusted files on the PYTHONPATH")


__all__ = ["verify_enclave", "EnclaveVerification", "python_path", "MAX_ENCLAVE_FILE"]
