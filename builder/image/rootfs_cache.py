"""The cache of unpacked root filesystems (``<cache>/rootfs``): last use, locks, pruning.

The cache (``<cache>/rootfs``, normally ``~/.cache/enclave-build/rootfs``) is bounded: each
entry ``<chain_id>/`` records its last use (``.enclave-build-last-used``, touched on creation and
on every hit), and after a *new* entry is made only the ``ENCLAVE_BUILD_ROOTFS_CACHE_KEEP`` most
recently used entries are kept (default 8; a value that is not a whole number >= 1 is reported
and the default used). An entry is never removed while in use: a process that obtains an unpacked
root holds a shared ``flock`` on ``<chain_id>.lock`` (next to the entry, not inside it) until it
exits, and pruning removes an entry only if it can take that lock exclusively without waiting.
A removed entry is first renamed to ``.trash-*`` (so a half-deleted tree is never taken for a
complete one), then deleted; leftover ``.trash-*`` directories and ``.unpack-*`` work
directories older than a day are removed too, and only real directories directly below the cache
directory are ever touched (symlinks are never followed). Pruning logs one line when it frees
something and is silent otherwise.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

COMPLETE = ".enclave-build-complete"
LAST_USED = ".enclave-build-last-used"
KEEP_ENV = "ENCLAVE_BUILD_ROOTFS_CACHE_KEEP"
DEFAULT_KEEP = 8
STALE_WORK_SECONDS = 24 * 3600  # an .unpack-* work dir this old belongs to a dead process
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}")
PRUNE_LOCK = ".prune.lock"  # held (exclusively, never waited for) while pruning
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def report(line: str) -> None:
    """The default log: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


def _same_file(fd: int, path: str) -> bool:
    """Whether *fd* is still the file at *path* (a pruner unlinks a lock file it removed the
    entry of; a lock taken on the unlinked file protects nothing)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


class EntryLocks:
    """The shared locks a process holds on cache entries (lock-file path -> descriptor with
    LOCK_SH). :data:`PROCESS_LOCKS`, the process's own, is never released: the lock must last
    as long as the process may read the tree (a build's base, a run's overlay lower directory).
    Another table (a test's) stands for another holder and is released by :meth:`release`."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._guard = threading.Lock()

    def hold(self, cache_dir: Path, name: str) -> bool:
        """Take (once per table) a shared lock on the entry *name*, kept until released; False
        if the lock file cannot be made (a read-only cache: used unlocked)."""
        path = str(cache_dir / f"{name}.lock")
        with self._guard:
            if path in self._held:
                return True
            while True:
                try:
                    fd = os.open(path, _LOCK_FLAGS, 0o600)
                except OSError:
                    return False
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a pruner renames the entry
                    if _same_file(fd, path):
                        self._held[path] = fd
                        return True
                except OSError:  # no flock on this file system: pruners cannot lock it either
                    os.close(fd)
                    return False
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)  # the entry was pruned meanwhile: lock the new lock file

    def release(self) -> None:
        """Give up every lock of this table, as the holder's exit would."""
        with self._guard:
            for fd in self._held.values():
                os.close(fd)
            self._held.clear()


#: This process's locks on the entries it uses.
PROCESS_LOCKS = EntryLocks()


def touch(entry: Path) -> None:
    """Record a use of *entry* (best effort: a read-only cache is still usable)."""
    try:
        fd = os.open(
            entry / LAST_USED, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError:
        return
    try:
        os.utime(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _last_used(entry: Path) -> int:
    """The entry's last use (ns); entries made before last-use records: when completed."""
    for path in (entry / LAST_USED, entry / COMPLETE, entry):
        try:
            return os.lstat(path).st_mtime_ns
        except OSError:
            continue
    return 0


def cache_keep(log: Callable[[str], None] = report) -> int:
    """How many unpacked roots the cache keeps (``ENCLAVE_BUILD_ROOTFS_CACHE_KEEP``)."""
    raw = os.environ.get(KEEP_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_KEEP
    try:
        keep = int(raw.strip())
    except ValueError:
        keep = 0
    if keep >= 1:
        return keep
    log(
        f"{KEEP_ENV}={raw!r}: not a whole number >= 1; keeping the default {DEFAULT_KEEP} "
        "most recently used unpacked images"
    )
    return DEFAULT_KEEP


def _tree_size(path: Path) -> int:
    """Disk use of the tree at *path* (symlinks not followed, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _human(n: int) -> str:
    value = float(n)
    for suffix in ("B", "kB", "MB", "GB"):
        if value < 999.95:
            return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
        value /= 1000
    return f"{value:.1f} TB"


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _discard(cache_dir: Path, name: str) -> int | None:
    """Rename the directory *name* of the cache to a ``.trash-*`` name, delete it; bytes freed
    (None if it was gone already)."""
    trash = cache_dir / f".trash-{name.lstrip('.')[:24]}-{secrets.token_hex(4)}"
    try:
        os.rename(cache_dir / name, trash)
    except OSError:
        return None
    return _delete(trash)


def _delete(trash: Path) -> int:
    size = _tree_size(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return size


def _remove_entry(cache_dir: Path, name: str, seen_last_use: int) -> int | None:
    """Remove the entry *name* if no process holds it; bytes freed, or None if kept."""
    lock = str(cache_dir / f"{name}.lock")
    try:
        fd = os.open(lock, _LOCK_FLAGS, 0o600)
    except OSError:
        return None
    trash = None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # in use (or locks unsupported): keep it
        if not _same_file(fd, lock):
            return None  # another pruner removed it meanwhile
        entry = cache_dir / name
        if not _is_real_dir(entry):
            os.unlink(lock)  # the entry is gone: so is its lock file
            return None
        if _last_used(entry) != seen_last_use:
            return None  # used since we looked: it is recent now
        trash = cache_dir / f".trash-{name[:24]}-{secrets.token_hex(4)}"
        os.rename(entry, trash)
        os.unlink(lock)  # while locked: waiters see it and start over
    except OSError:
        if trash is None or not trash.exists():
            return None
    finally:
        os.close(fd)
    return _delete(trash)


def _remove_orphan_lock(cache_dir: Path, lock_name: str) -> None:
    """Unlink a lock file whose entry does not exist and that nobody holds (a failed unpack)."""
    lock = str(cache_dir / lock_name)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(fd, lock) and not os.path.lexists(cache_dir / lock_name[:-5]):
            os.unlink(lock)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RootfsEntry:
    """An unpacked root filesystem of the cache."""

    chain_id: str
    size: int  # bytes on disk
    last_used: float  # seconds since the epoch


def list_entries(cache_dir: Path) -> list[RootfsEntry]:
    """The cache's complete entries, most recently used first (sizes walk each tree)."""
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return []
    out = [
        RootfsEntry(name, _tree_size(cache_dir / name), _last_used(cache_dir / name) / 1e9)
        for name in names
        if _ENTRY_NAME.fullmatch(name) and _is_real_dir(cache_dir / name)
    ]
    out.sort(key=lambda e: (-e.last_used, e.chain_id))
    return out


def prune_cache(
    cache_dir: Path,
    current: str | None = None,
    log: Callable[[str], None] = report,
    keep: int | None = None,
) -> int:
    """Keep the :func:`cache_keep` (or *keep*, 0 for none) most recently used entries of
    *cache_dir* (the entry *current* always), removing older ones nobody holds, plus leftover
    ``.trash-*`` and stale ``.unpack-*`` directories. Logs one line if it freed anything;
    returns the bytes freed. Skipped (0) while another process prunes the same cache."""
    keep = cache_keep(log) if keep is None else keep
    try:
        guard = os.open(cache_dir / PRUNE_LOCK, _LOCK_FLAGS, 0o600)
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # another process is pruning this cache right now
        return _prune_locked(cache_dir, current, keep, log)
    finally:
        os.close(guard)


def _mtime(path: Path) -> float | None:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return None


def _prune_locked(
    cache_dir: Path, current: str | None, keep: int, log: Callable[[str], None]
) -> int:
    try:
        names = set(os.listdir(cache_dir))
    except OSError:
        return 0
    now = time.time()
    entries: list[tuple[int, str]] = []
    leftovers = 0
    freed = 0
    removed = 0
    for name in names:
        path = cache_dir / name
        if name.endswith(".lock") and _ENTRY_NAME.fullmatch(name[:-5]):
            if name[:-5] not in names:
                _remove_orphan_lock(cache_dir, name)
            continue
        if not _is_real_dir(path):
            continue  # files, symlinks: never ours to remove
        if name.startswith(".trash-"):
            # every pruner holds PRUNE_LOCK until its trash is gone: this one is a leftover
            freed += _delete(path)
            leftovers += 1
        elif name.startswith(".unpack-"):
            times = [t for t in (_mtime(path), _mtime(path / "rootfs")) if t is not None]
            if times and now - max(times) > STALE_WORK_SECONDS:
                size = _discard(cache_dir, name)
                if size is not None:
                    freed += size
                    leftovers += 1
        elif _ENTRY_NAME.fullmatch(name) and name != current:
            entries.append((_last_used(path), name))
    entries.sort(reverse=True)
    for last_use, name in entries[max(keep - (current is not None), 0) :]:
        size = _remove_entry(cache_dir, name, last_use)
        if size is not None:
            freed += size
            removed += 1
    if removed or leftovers:
        what = []
        if removed:
            what.append(
                f"{removed} least recently used unpacked image{'s' if removed != 1 else ''}"
            )
        if leftovers:
            what.append(f"{leftovers} leftover work director{'ies' if leftovers != 1 else 'y'}")
        log(
            f"rootfs cache: removed {' and '.join(what)} from {cache_dir} ({_human(freed)} "
            f"freed; keeping the {keep} most recently used, set {KEEP_ENV} to change)"
        )
    return freed
