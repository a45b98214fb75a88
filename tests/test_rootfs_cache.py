"""The unpacked-rootfs cache (builder.image.rootfs_cache) is bounded: only the
ENCLAVE_BUILD_ROOTFS_CACHE_KEEP (default 8) most recently used entries survive the creation of a
new one, an entry another process holds is never removed, and leftovers (stale work dirs, trash)
are cleaned up -- without ever touching anything outside the cache directory."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from enclave_build.builder.image.oci import OCI_LAYER, BlobStore, Descriptor
from enclave_build.builder.image.rootfs_cache import KEEP_ENV, LAST_USED, EntryLocks
from enclave_build.builder.image.unpack import chain_id, unpacked_rootfs

REPO = Path(__file__).resolve().parents[1]
OLD = time.time() - 10_000  # last uses set explicitly, well in the past, in order


def layer_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = f"image {i}\n".encode()
        info = tarfile.TarInfo("etc/id")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def held(monkeypatch):
    """This test's table of held entry locks (so the session's own entries are not involved);
    released at the end, as a process's locks are when it exits."""
    table = EntryLocks()
    monkeypatch.delenv(KEEP_ENV, raising=False)
    yield table
    table.release()


def exit_process(table: EntryLocks) -> None:
    """Release the entries this table holds, as if the build that used them had exited."""
    table.release()


class Cache:
    def __init__(self, tmp_path: Path, locks: EntryLocks):
        self.locks = locks
        self.store = BlobStore(tmp_path / "blobs")
        self.dir = tmp_path / "cache" / "rootfs"
        self.lines: list[str] = []

    def layers(self, i: int) -> list[Descriptor]:
        data = layer_bytes(i)
        return [Descriptor(OCI_LAYER, self.store.put_bytes(data), len(data))]

    def name(self, i: int) -> str:
        return chain_id(self.layers(i))

    def get(self, i: int) -> Path:
        layers = self.layers(i)
        rootfs = unpacked_rootfs(
            self.store,
            layers,
            [layers[0].digest],
            self.dir,
            f"image {i}",
            log=self.lines.append,
            locks=self.locks,
        )
        assert (rootfs.root / "etc/id").read_text() == f"image {i}\n"
        return self.dir / self.name(i)

    def set_last_use(self, i: int, when: float) -> None:
        os.utime(self.dir / self.name(i) / LAST_USED, (when, when))

    def present(self, *indexes: int) -> list[int]:
        return [i for i in indexes if (self.dir / self.name(i) / "rootfs/etc/id").is_file()]

    def fill(self, count: int) -> None:
        """Entries 0..count-1, used in that order long ago, held by nobody."""
        for i in range(count):
            self.get(i)
            self.set_last_use(i, OLD + i)
        exit_process(self.locks)


def test_newest_n_are_kept_and_older_ones_removed(tmp_path, held, monkeypatch) -> None:
    cache = Cache(tmp_path, held)
    cache.fill(5)
    assert cache.present(*range(5)) == list(range(5))
    assert cache.lines == []  # quiet while nothing is removed
    monkeypatch.setenv(KEEP_ENV, "3")
    cache.get(5)  # new: prune to 3
    assert cache.present(*range(6)) == [3, 4, 5]
    assert len(cache.lines) == 1
    assert "removed 3 least recently used unpacked images" in cache.lines[0]
    assert "freed" in cache.lines[0] and str(cache.dir) in cache.lines[0]
    left = sorted(p.name for p in cache.dir.iterdir())
    assert not [n for n in left if n.startswith((".trash-", ".unpack-"))]
    assert not (cache.dir / f"{cache.name(0)}.lock").exists()  # removed with its entry
    # a removed image is simply unpacked again when needed
    exit_process(held)
    cache.get(0)
    assert cache.present(0) == [0]


def test_an_entry_held_by_another_process_is_not_removed(tmp_path, held, monkeypatch) -> None:
    cache = Cache(tmp_path, held)
    cache.fill(2)
    layer = cache.layers(0)[0]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from pathlib import Path\n"
            "from enclave_build.builder.image.oci import OCI_LAYER, BlobStore, Descriptor\n"
            "from enclave_build.builder.image.unpack import unpacked_rootfs\n"
            "d = Descriptor(OCI_LAYER, sys.argv[2], int(sys.argv[3]))\n"
            "r = unpacked_rootfs(BlobStore(Path(sys.argv[1])), [d], [], Path(sys.argv[4]), 'x')\n"
            "print(r.root, flush=True)\n"
            "sys.stdin.read()\n",
            str(cache.store.root),
            layer.digest,
            str(layer.size),
            str(cache.dir),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = holder.stdout.readline()  # the holder has its tree
        assert line.strip() == str(cache.dir / cache.name(0) / "rootfs"), holder.stderr.read()
        cache.set_last_use(0, OLD - 1)  # its hit refreshed it: make it the oldest again
        monkeypatch.setenv(KEEP_ENV, "1")
        cache.get(2)
        assert cache.present(0, 1, 2) == [0, 2]  # 1 removed, 0 only skipped
        assert "removed 1 least recently used unpacked image " in cache.lines[-1]
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            stream.close()
    exit_process(held)
    cache.get(3)  # the holder has exited: now 0 goes like any other
    assert cache.present(0, 1, 2, 3) == [3]


def test_a_hit_refreshes_the_last_use(tmp_path, held, monkeypatch) -> None:
    cache = Cache(tmp_path, held)
    cache.fill(3)
    before = (cache.dir / cache.name(0) / LAST_USED).stat().st_mtime
    cache.get(0)  # a hit: no unpacking, no pruning
    assert (cache.dir / cache.name(0) / LAST_USED).stat().st_mtime > before
    assert cache.lines == []
    exit_process(held)
    monkeypatch.setenv(KEEP_ENV, "2")
    cache.get(3)
    assert cache.present(0, 1, 2, 3) == [0, 3]


def test_stale_work_dirs_and_trash_are_removed_nothing_outside(tmp_path, held) -> None:
    cache = Cache(tmp_path, held)
    cache.dir.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("host file")
    two_days_ago = time.time() - 2 * 86400
    stale = cache.dir / ".unpack-stale"
    (stale / "rootfs/etc").mkdir(parents=True)
    (stale / "rootfs/etc/big").write_bytes(b"x" * 100_000)
    for path in (stale / "rootfs/etc", stale / "rootfs", stale):
        os.utime(path, (two_days_ago, two_days_ago))
    fresh = cache.dir / ".unpack-fresh"  # an unpack under way elsewhere
    (fresh / "rootfs").mkdir(parents=True)
    trash = cache.dir / ".trash-leftover"
    (trash / "rootfs").mkdir(parents=True)
    (trash / "rootfs/file").write_text("half deleted")
    (cache.dir / ".trash-link").symlink_to(outside)  # symlinks: never followed
    (cache.dir / ("e" * 64)).symlink_to(outside)  # not a real entry dir
    os.utime(cache.dir / ("e" * 64), (two_days_ago, two_days_ago), follow_symlinks=False)
    (cache.dir / ".unpack-file").write_text("not a dir")
    orphan = cache.dir / f"{'f' * 64}.lock"  # a failed unpack's lock file
    orphan.write_text("")

    cache.get(0)
    names = {p.name for p in cache.dir.iterdir()}
    assert ".unpack-stale" not in names and ".trash-leftover" not in names
    assert {".unpack-fresh", ".trash-link", "e" * 64, ".unpack-file"} <= names
    assert not orphan.exists()
    assert (outside / "victim").read_text() == "host file"
    assert not [n for n in names if n.startswith(".trash-") and n != ".trash-link"]
    assert len(cache.lines) == 1 and "2 leftover work directories" in cache.lines[0]


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_keep_value_is_reported_and_the_default_used(
    tmp_path, held, monkeypatch, value
) -> None:
    cache = Cache(tmp_path, held)
    cache.fill(9)  # all held while made
    assert cache.present(*range(9)) == list(range(9))
    monkeypatch.setenv(KEEP_ENV, value)
    cache.get(9)
    assert cache.present(*range(10)) == list(range(2, 10))  # the default 8
    assert any(
        KEEP_ENV in line and repr(value) in line and "default 8" in line for line in cache.lines
    )


def test_the_env_override_keeps_more(tmp_path, held, monkeypatch) -> None:
    monkeypatch.setenv(KEEP_ENV, "12")
    cache = Cache(tmp_path, held)
    cache.fill(11)
    cache.get(11)
    assert cache.present(*range(12)) == list(range(12))
    assert cache.lines == []
    exit_process(held)
    monkeypatch.setenv(KEEP_ENV, "1")
    cache.get(12)
    assert cache.present(*range(13)) == [12]
