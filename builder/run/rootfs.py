"""A private, writable root filesystem for one run of an image.

The unpacked image in the cache is shared by every build and run and must never change, so a run
gets its own root: an overlay mount (the cached tree as the read-only lower layer, changes go to
a private upper directory) when we are root and the kernel allows it, else a copy.

The cached unpack is made for *reading* files: it does not keep the layers' owners (everything
belongs to whoever unpacked it) and it widens some modes. A run needs them as the image says --
the runtime user must own what the image gives it, e.g. the encrypted model files Gramine opens
read-write -- so :func:`image_ownership` reads the layers' tar headers (once per layer,
remembered in the cache) and :func:`apply_ownership` restores owners and modes in the private root.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..cache import cache_root
from ..image.oci import Image
from ..image.unpack import OPAQUE, WHITEOUT, member_path, open_layer

#: (image path without leading "/", uid, gid, mode bits, is_dir)
Entry = tuple[str, int, int, int, bool]
_FORMAT = 1


def _layer_record(image: Image, digest: str, cache: Path) -> dict:
    """One layer's owners/modes and whiteouts, read from its tar headers (remembered per layer
    digest: a base layer shared by many builds is read once)."""
    key = cache / f"{digest.replace(':', '-')}.json"
    try:
        record = json.loads(key.read_text())
        if record.get("format") == _FORMAT:
            return record
    except (OSError, ValueError):
        pass
    entries: list[list] = []  # [path, uid, gid, mode, is_dir], in tar order
    whiteouts: list[str] = []  # removed paths; "DIR/" + OPAQUE for opaque directories
    with open(image.store.path(digest), "rb") as handle:
        with tarfile.open(fileobj=open_layer(handle), mode="r|") as tar:
            for member in tar:
                rel = member_path(member.name)
                if not rel:
                    continue
                base = posixpath.basename(rel)
                if base == OPAQUE or base.startswith(WHITEOUT):
                    whiteouts.append(rel)
                elif member.isdir() or member.isfile():
                    entries.append(
                        [rel, member.uid, member.gid, member.mode & 0o777, member.isdir()]
                    )
                else:
                    entries.append([rel, -1, -1, 0, False])  # symlinks etc.: nothing to restore
    record = {"format": _FORMAT, "entries": entries, "whiteouts": whiteouts}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = key.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, key)
    return record


def image_ownership(image: Image, cache: Path | None = None) -> list[Entry]:
    """Entries whose owner or mode the cached unpack does not reproduce: not owned by 0:0, files
    without owner-read, directories without full owner access (the unpack adds those bits)."""
    cache = (cache or cache_root()) / "run-ownership"
    final: dict[str, tuple[int, int, int, bool]] = {}
    for layer in image.layers:
        record = _layer_record(image, layer.digest, cache)
        added = {e[0] for e in record["entries"]}
        for rel in record["whiteouts"]:
            parent, base = posixpath.dirname(rel), posixpath.basename(rel)
            if base == OPAQUE:
                prefix = parent + "/" if parent else ""
                for path in [p for p in final if p.startswith(prefix) and p not in added]:
                    del final[path]
            else:
                gone = posixpath.join(parent, base[len(WHITEOUT) :])
                for path in [p for p in final if p == gone or p.startswith(gone + "/")]:
                    del final[path]
        for rel, uid, gid, mode, is_dir in record["entries"]:
            if uid < 0:
                final.pop(rel, None)
            else:
                final[rel] = (uid, gid, mode, is_dir)
    entries: list[Entry] = []
    for path, (uid, gid, mode, is_dir) in sorted(final.items()):
        widened = mode | (0o700 if is_dir else 0o400)
        if uid or gid or widened != mode:
            entries.append((path, uid, gid, mode, is_dir))
    return entries


def apply_ownership(root: Path, entries: list[Entry]) -> int:
    """Give *root*'s files the owners and modes of *entries* (owners only when we are root).
    Returns how many were changed. Never follows symlinks out of the root."""
    changed = 0
    is_root = os.geteuid() == 0
    real_root = os.path.realpath(root)
    for rel, uid, gid, mode, _is_dir in entries:
        host = os.path.join(root, rel)
        if not os.path.realpath(os.path.dirname(host)).startswith(real_root):
            continue
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        if is_root and (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(host, uid, gid)
            changed += 1
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(host, mode)
            changed += 1
    return changed


def _overlay(lower: Path, work: Path) -> Path | None:
    merged = work / "root"
    for name in ("upper", "work", "root"):
        (work / name).mkdir()
    options = f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}"
    result = subprocess.run(
        ["mount", "-t", "overlay", "enclave-build-run", "-o", options, str(merged)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        for name in ("upper", "work", "root"):
            shutil.rmtree(work / name, ignore_errors=True)
        return None
    return merged


@contextmanager
def private_root(lower: Path, prefix: str = "enclave-build-run-") -> Iterator[Path]:
    """A writable view of *lower* that is removed afterwards; *lower* is never modified."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o700)
    merged = None
    try:
        if os.geteuid() == 0 and shutil.which("mount"):
            merged = _overlay(Path(lower).resolve(), work)
        if merged is not None:
            os.chmod(merged, stat.S_IMODE(os.stat(lower).st_mode))
            try:
                yield merged
            finally:
                result = subprocess.run(["umount", str(merged)], capture_output=True)
                if result.returncode != 0:
                    subprocess.run(["umount", "-l", str(merged)], capture_output=True)
        else:
            copy = work / "root"
            shutil.copytree(lower, copy, symlinks=True)
            yield copy
    finally:
        # still mounted (umount failed): never delete through the mount; leave the temp dir
        if merged is None or not os.path.ismount(merged):
            shutil.rmtree(work, ignore_errors=True)


__all__ = ["private_root", "image_ownership", "apply_ownership"]
