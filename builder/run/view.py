"""The root a plain-process simulation runs in: only the files Gramine would let it open.

Under Gramine (``sgx.file_check_policy = "strict"``) an enclave can open trusted files (whose
hash the signed manifest lists), allowed files, files in its encrypted mounts (authenticated
by their key) and its tmpfs mounts -- nothing else in the image. A plain process has no LibOS
to enforce that: it imports whatever lies on its ``sys.path``. So it gets a fresh root holding
exactly those files, copied out of the verified, unpacked image:

- every trusted file, from the content :func:`builder.image.verify.verify_enclave` checked
  (symlinks resolved inside the image, as the enclave sees them, and written as plain files:
  no link in the view can lead to this machine's own files);
- allowed files and the files under encrypted mounts, as the image has them (regular files
  only);
- empty directories for tmpfs mounts and ``fs.start_dir``.

A ``.pth``, ``sitecustomize.py`` or module added to the image without being trusted is simply
not there to be imported, whichever directory of the view the process searches.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import EnclaveBuildError
from ..image.verify import EnclaveVerification
from ..rootfs import RootFS, RootFSError


class ViewError(EnclaveBuildError):
    """The plain-process root cannot be made."""


def _image_path(value: Any) -> str | None:
    """A normalized absolute image path from a path or ``file:`` URI (None if not one)."""
    if not isinstance(value, str):
        return None
    path = value[len("file:") :] if value.startswith("file:") else value
    if not path.startswith("/") or ".." in path.split("/"):
        return None
    return posixpath.normpath(path)


def _place(target: Path, image_path: str) -> Path:
    return target / image_path.lstrip("/")


def _copy(source: Path, target: Path, image_path: str) -> bool:
    """Copy *source* to *image_path* in *target* as a plain file (no-op if something is there
    already). Returns True if copied."""
    dest = _place(target, image_path)
    if os.path.lexists(dest):
        return False
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest, follow_symlinks=True)
        executable = os.stat(source).st_mode & 0o111
        os.chmod(dest, 0o755 if executable else 0o644)
    except (FileExistsError, NotADirectoryError):
        return False  # a file where the other path needs a directory (or the reverse)
    except OSError as exc:
        raise ViewError(
            f"{image_path}: cannot copy it into the run's root: {exc.strerror or exc}"
        ) from None
    return True


def _regular_files(rootfs: RootFS, image_path: str) -> list[tuple[str, Path]]:
    """(image path, host file) of the regular file at *image_path*, or of every regular file
    under it if it is a directory. Symlinked files resolve inside the image; symlinked
    directories are not entered (as the trusted-file walk does)."""
    try:
        resolved = rootfs.resolve(image_path)
    except RootFSError:
        return []
    host = rootfs.host_path(resolved)
    try:
        st = os.lstat(host)
    except OSError:
        return []
    if stat.S_ISREG(st.st_mode):
        return [(image_path, host)]
    if not stat.S_ISDIR(st.st_mode):
        return []
    found = []
    for name in sorted(os.listdir(host)):
        inner = posixpath.join(image_path, name)
        entry = host / name
        if entry.is_symlink():
            target = rootfs.stat(posixpath.join(resolved, name))
            if target is not None and stat.S_ISREG(target.st_mode):
                found += _regular_files(rootfs, inner)
        elif entry.is_dir():
            found += _regular_files(rootfs, inner)
        elif entry.is_file():
            found.append((inner, entry))
    return found


def populate(target: Path, verification: EnclaveVerification) -> int:
    """Fill *target* with the files an enclave of *verification* may open; returns how many
    files were copied. The verification must agree (a tampered image has no view)."""
    if not verification.agrees or verification.manifest is None:
        raise ViewError("the image does not agree with its SIGSTRUCT; no root is made for it")
    manifest = verification.manifest
    rootfs = verification.rootfs
    copied = 0
    for image_path, host in sorted(verification.trusted.items()):
        copied += _copy(host, target, image_path)
    sgx = table if isinstance(table := manifest.get("sgx"), dict) else {}
    fs = table if isinstance(table := manifest.get("fs"), dict) else {}
    extra: list[str] = [p for p in map(_image_path, sgx.get("allowed_files") or []) if p]
    for mount in fs.get("mounts") or []:
        if not isinstance(mount, dict):
            continue
        if mount.get("type") == "encrypted":
            path = _image_path(mount.get("uri"))
            if path:
                extra.append(path)
        elif mount.get("type") == "tmpfs":
            path = _image_path(mount.get("path"))
            if path:
                _place(target, path).mkdir(parents=True, exist_ok=True)
    for path in extra:
        for image_path, host in _regular_files(rootfs, path):
            copied += _copy(host, target, image_path)
    start = _image_path(fs.get("start_dir") or "/") or "/"
    _place(target, start).mkdir(parents=True, exist_ok=True)
    return copied


@contextmanager
def enclave_view(
    verification: EnclaveVerification, prefix: str = "enclave-build-run-"
) -> Iterator[Path]:
    """A fresh root with only the files the enclave may open (see the module docstring);
    removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        os.chmod(work, 0o700)
        root = work / "root"
        root.mkdir()
        populate(root, verification)
        yield root
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["enclave_view", "populate", "ViewError"]
