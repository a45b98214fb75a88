"""SHA-256 of many files: in parallel across cores, with a persistent cache.

hashlib releases the GIL while it hashes, so a thread pool keeps every core busy. The cache maps
(path, device, inode, size, mtime, ctime) to the digest in a small SQLite database, so an
unchanged rebuild re-hashes nothing; any change to a file changes its key.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .cache import cache_root

_BUFFER = 1 << 20


def default_cache_path() -> Path:
    return cache_root() / "hashes.sqlite"


def sha256_file(path: Path | str, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of the file; *progress* is called with each chunk's size as it is hashed."""
    with open(path, "rb") as handle:
        if progress is None:
            return hashlib.file_digest(handle, "sha256").hexdigest()
        h = hashlib.sha256()
        buffer = bytearray(_BUFFER)
        view = memoryview(buffer)
        while n := handle.readinto(buffer):
            h.update(view[:n])
            progress(n)
        return h.hexdigest()


def _cache_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _db_path(name: str) -> str | bytes:
    """The database key of a path: its text, or its raw bytes when the name is not UTF-8
    (os.fsdecode's surrogate escapes cannot be stored as SQLite text)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


class HashCache:
    """Digest cache; keys include inode, size, mtime and ctime so edits are never missed."""

    def __init__(self, path: Path | None = None):
        self.path = path or default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, dev INTEGER, "
            "ino INTEGER, size INTEGER, mtime INTEGER, ctime INTEGER, sha256 TEXT)"
        )
        # Files builder.key_scan found clean, per scanner fingerprint (version and wrap keys).
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS key_scan (path TEXT PRIMARY KEY, dev INTEGER, "
            "ino INTEGER, size INTEGER, mtime INTEGER, ctime INTEGER, fingerprint TEXT)"
        )

    def lookup_many(self, entries: list[tuple[str, os.stat_result]]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._lock:
            rows = {}
            names = [_db_path(p) for p, _ in entries]
            for start in range(0, len(names), 900):
                chunk = names[start : start + 900]
                marks = ",".join("?" * len(chunk))
                for row in self._db.execute(
                    f"SELECT path, dev, ino, size, mtime, ctime, sha256 FROM digests "
                    f"WHERE path IN ({marks})",
                    chunk,
                ):
                    rows[row[0]] = row
        for path, st in entries:
            row = rows.get(_db_path(path))
            if row is not None and tuple(row[1:6]) == _cache_key(st):
                found[path] = row[6]
        return found

    def store_many(self, items: list[tuple[str, os.stat_result, str]]) -> None:
        if not items:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(_db_path(path), *_cache_key(st), digest) for path, st, digest in items],
            )
            self._db.execute("COMMIT")

    def clean_files(self, entries: list[tuple[str, os.stat_result]], fingerprint: str) -> set[str]:
        """The paths among *entries* a scanner with *fingerprint* found clean, unchanged since."""
        clean: set[str] = set()
        with self._lock:
            for path, st in entries:
                row = self._db.execute(
                    "SELECT dev, ino, size, mtime, ctime, fingerprint FROM key_scan WHERE path = ?",
                    (_db_path(path),),
                ).fetchone()
                if row is not None and tuple(row[:5]) == _cache_key(st) and row[5] == fingerprint:
                    clean.add(path)
        return clean

    def mark_clean(self, items: list[tuple[str, os.stat_result]], fingerprint: str) -> None:
        if not items:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO key_scan VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(_db_path(path), *_cache_key(st), fingerprint) for path, st in items],
            )
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def hash_files(
    paths: Iterable[Path],
    cache: HashCache | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[Path, str]:
    """SHA-256 hex digest of every path; *progress* is called with the bytes hashed, chunk by
    chunk (a cached file's size at once)."""
    originals = list(dict.fromkeys(paths))
    names = [os.fspath(p) for p in originals]
    stats = [(name, os.stat(name)) for name in names]
    cached = cache.lookup_many(stats) if cache else {}
    todo = [(name, st) for name, st in stats if name not in cached]
    if progress and cached:
        progress(sum(st.st_size for name, st in stats if name in cached))

    def work(item: tuple[str, os.stat_result]) -> tuple[str, os.stat_result, str]:
        name, st = item
        return name, st, sha256_file(name, progress)

    # Largest first: keeps both cores busy to the end instead of one finishing a big file alone.
    todo.sort(key=lambda item: -item[1].st_size)
    workers = workers or os.cpu_count() or 1
    if len(todo) <= 1 or workers == 1:
        done = [work(item) for item in todo]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(work, todo))
    digests = dict(cached)
    digests.update((name, digest) for name, _, digest in done)
    if cache:
        cache.store_many(done)
    return {original: digests[name] for original, name in zip(originals, names, strict=True)}
