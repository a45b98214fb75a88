"""The image blob cache (``<cache>/blobs``): last use, locks, bounds by size and age.

Every image a build reads or writes passes through the blob cache (``~/.cache/enclave-build/
blobs/sha256/<hex>``): base layers from a registry or the Docker engine, the built layers,
configs. Without bounds it only grows: each build of a changed 1.5 GB model adds a 1.5 GB
layer and orphans the last one.

What an output references
    An output's OCI layout (``OUT/oci/blobs``) gets its blobs as hard links of the cached files
    where it can (:meth:`BlobStore.copy_into`), and ``oci:`` / ``run`` / ``inspect`` inputs
    come back in the same way. A cached blob with more than one link is therefore shared with an
    output (or another layout): removing the cache's name for it would free nothing and the
    output keeps its own link either way, so pruning never removes such a blob and does not
    count it against the size bound. Once the output is deleted (or replaced by a rebuild) the
    blob has one link left and ages out. An output on another file system holds a copy and
    does not depend on the cache at all.

Last use
    A blob's mtime is its last use: written now, or touched by :meth:`BlobCache.touch` when a
    build uses it (every blob of the built image and its base's config).

Bounds
    :meth:`BlobCache.prune` removes, among the blobs only the cache holds, those unused for
    longer than the maximum age, then the least recently used until the rest fits the maximum
    size; then layer records (``<cache>/layers``) whose blob is gone, and temporary files of
    killed processes. Defaults: 10 GiB and 30 days, ``ENCLAVE_BUILD_BLOB_CACHE_MAX_SIZE``
    (e.g. ``20G``, ``500M``) and ``ENCLAVE_BUILD_BLOB_CACHE_MAX_AGE`` (days) change them. A build
    prunes after it finished; ``enclave-build cache prune`` on demand, ``cache clean`` removes
    every blob.

Concurrency
    A build holds a shared ``flock`` on ``<cache>/blobs.lock`` while it uses the cache
    (:meth:`BlobCache.in_use`). Pruning takes that lock exclusively without waiting and does
    nothing (says so) while any build holds it, so a blob is never removed between a build
    finding it and linking it into its output.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from enclave_build.contract.size import HUMAN_SIZE, Size

from ..errors import EnclaveBuildError
from .oci import BlobStore

LOCK = "blobs.lock"
MAX_SIZE_ENV = "ENCLAVE_BUILD_BLOB_CACHE_MAX_SIZE"
MAX_AGE_ENV = "ENCLAVE_BUILD_BLOB_CACHE_MAX_AGE"
DEFAULT_MAX_SIZE = 10 << 30
DEFAULT_MAX_AGE_DAYS = 30.0
STALE_TEMP_SECONDS = 24 * 3600
_DAY = 24 * 3600
_HEX = re.compile(r"[0-9a-f]{64}")
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``"10G"``, ``"500M"``, ``"1.5GiB"``, ``"0"`` -> bytes (binary multiples); ValueError."""
    return int(Size.parse(text, HUMAN_SIZE))


def parse_days(text: str) -> float:
    try:
        days = float(text.strip())
    except ValueError:
        days = -1.0
    if not days >= 0 or days == float("inf"):
        raise ValueError(f'{text!r} is not a number of days (0 or more, e.g. "30" or "0.5")')
    return days


@dataclass(frozen=True)
class Limits:
    max_size: int = DEFAULT_MAX_SIZE
    max_age_days: float = DEFAULT_MAX_AGE_DAYS

    @classmethod
    def from_env(cls, log: Callable[[str], None] = report) -> Limits:
        """The limits from the environment; a bad value is reported and the default used."""
        size, age = DEFAULT_MAX_SIZE, DEFAULT_MAX_AGE_DAYS
        raw = os.environ.get(MAX_SIZE_ENV, "").strip()
        if raw:
            try:
                size = parse_size(raw)
            except ValueError as exc:
                log(f"{MAX_SIZE_ENV}: {exc}; using the default {DEFAULT_MAX_SIZE >> 30}G")
        raw = os.environ.get(MAX_AGE_ENV, "").strip()
        if raw:
            try:
                age = parse_days(raw)
            except ValueError as exc:
                log(f"{MAX_AGE_ENV}: {exc}; using the default {DEFAULT_MAX_AGE_DAYS:g} days")
        return cls(size, age)


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int  # bytes on disk
    last_used: float  # seconds since the epoch (the file's mtime)
    shared: bool  # hard-linked into an output or another layout: never pruned


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[BlobInfo, ...] = ()
    freed: int = 0
    kept: int = 0  # blobs left
    kept_bytes: int = 0  # their size, shared ones included
    records_removed: int = 0  # layer records whose blob was gone
    in_use: bool = False  # another process was using the cache: nothing was done


class CacheInUse(EnclaveBuildError):
    """The blob cache is in use by a running build: nothing was removed (exit code 1)."""


def _disk_size(st: os.stat_result) -> int:
    return st.st_blocks * 512 if st.st_blocks else st.st_size


def human(n: int) -> str:
    value = float(n)
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if value < 1023.95:
            return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
        value /= 1024
    return f"{value:.1f} TiB"


class BlobCache:
    """The blob cache under *root* (normally :func:`builder.cache.cache_root`); *clock* gives
    the time (injectable for tests)."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time):
        self.root = root
        self.clock = clock

    @property
    def directory(self) -> Path:
        return self.root / "blobs"

    def store(self) -> BlobStore:
        return BlobStore(self.directory)

    def _lock_fd(self) -> int | None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return os.open(self.root / LOCK, _LOCK_FLAGS, 0o600)
        except OSError:
            return None  # a read-only cache: nothing prunes it either

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Hold the cache against pruning (shared with other builds) while the block runs."""
        fd = self._lock_fd()
        if fd is None:
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prune runs
            except OSError:
                pass  # no flock here: nothing can prune safely
            yield
        finally:
            os.close(fd)

    def touch(self, digests: Iterable[str]) -> None:
        """Record a use of each cached blob (best effort)."""
        store = self.store()
        for digest in digests:
            try:
                os.utime(store.path(digest))
            except OSError:
                continue

    def blobs(self) -> list[BlobInfo]:
        """Every cached blob, most recently used first."""
        out = []
        directory = self.directory / "sha256"
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        for name in names:
            if not _HEX.fullmatch(name):
                continue
            try:
                st = os.lstat(directory / name)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(BlobInfo(f"sha256:{name}", _disk_size(st), st.st_mtime, st.st_nlink > 1))
        out.sort(key=lambda b: (-b.last_used, b.digest))
        return out

    def prune(
        self,
        limits: Limits,
        keep: Iterable[str] = (),
        *,
        everything: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> PruneResult:
        """Apply *limits* to the blobs only the cache holds, never touching *keep*;
        *everything*: remove every blob, shared ones too (``cache clean``). Does nothing
        (``in_use``) while another process holds the cache."""
        fd = self._lock_fd()
        if fd is None:
            return PruneResult(in_use=True)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return PruneResult(in_use=True)
            result = self._prune_locked(limits, frozenset(keep), everything)
        finally:
            os.close(fd)
        if log is not None and (result.removed or result.records_removed):
            log(
                f"blob cache: removed {len(result.removed)} blob"
                f"{'s' if len(result.removed) != 1 else ''} from {self.directory} "
                f"({human(result.freed)} freed, {human(result.kept_bytes)} kept; at most "
                f"{human(limits.max_size)} and {limits.max_age_days:g} days, set "
                f"{MAX_SIZE_ENV} / {MAX_AGE_ENV} to change)"
            )
        return result

    def _prune_locked(self, limits: Limits, keep: frozenset[str], everything: bool) -> PruneResult:
        now = self.clock()
        blobs = self.blobs()
        if everything:
            doomed = [b for b in blobs if b.digest not in keep]
        else:
            own = [b for b in blobs if not b.shared and b.digest not in keep]
            cutoff = now - limits.max_age_days * _DAY
            doomed = [b for b in own if b.last_used < cutoff]
            rest = [b for b in own if b.last_used >= cutoff]  # most recent first
            total = sum(b.size for b in rest) + sum(
                b.size for b in blobs if b.digest in keep and not b.shared
            )
            while rest and total > limits.max_size:
                oldest = rest.pop()
                doomed.append(oldest)
                total -= oldest.size
        removed = []
        store = self.store()
        for blob in doomed:
            try:
                os.unlink(store.path(blob.digest))
            except OSError:
                continue
            removed.append(blob)
        self._remove_stale_temps(now)
        records = self._remove_orphan_records(store)
        gone = {b.digest for b in removed}
        left = [b for b in blobs if b.digest not in gone]
        return PruneResult(
            tuple(removed),
            sum(b.size for b in removed),
            len(left),
            sum(b.size for b in left),
            records,
        )

    def _remove_stale_temps(self, now: float) -> None:
        """``.incoming-*`` / ``.link-*`` files of processes killed while writing a blob."""
        for directory in (self.directory, self.directory / "sha256"):
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                if not name.startswith((".incoming-", ".link-")):
                    continue
                path = directory / name
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and now - st.st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(path)
                except OSError:
                    continue

    def _remove_orphan_records(self, store: BlobStore) -> int:
        """Layer records (builder.image.layers) naming a blob that is gone."""
        import json

        removed = 0
        records = self.root / "layers"
        try:
            names = os.listdir(records)
        except OSError:
            return 0
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = records / name
            try:
                digest = json.loads(path.read_text()).get("digest")
                if (
                    isinstance(digest, str)
                    and _HEX.fullmatch(digest[7:])
                    and digest.startswith("sha256:")
                    and store.has(digest)
                ):
                    continue
                os.unlink(path)
                removed += 1
            except (OSError, ValueError, AttributeError):
                continue
        return removed
