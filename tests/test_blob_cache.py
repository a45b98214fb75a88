"""The blob cache is bounded (size and age), never loses what an output references or what a
running build uses, and `enclave-build cache ls|prune|clean` report and bound it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enclave_build.builder.cache import cache_root
from enclave_build.builder.image.blob_cache import BlobCache, Limits, parse_days, parse_size
from enclave_build.builder.image.oci import BlobStore

from .conftest import image_rootfs, run_cli, tflite_bytes, write_spec

DAY = 86400.0

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[signing]
key = "key.pem"
"""


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _blob(store: BlobStore, data: bytes, used: float) -> str:
    digest = store.put_bytes(data)
    os.utime(store.path(digest), (used, used))
    return digest


@pytest.fixture
def cache(tmp_path) -> tuple[BlobCache, BlobStore, Clock]:
    clock = Clock(1_000 * DAY)
    blobs = BlobCache(tmp_path / "cache", clock)
    return blobs, blobs.store(), clock


def test_old_blobs_go_then_the_least_recently_used_until_it_fits(cache):
    blobs, store, clock = cache
    old = _blob(store, b"o" * 10_000, clock.now - 40 * DAY)
    a = _blob(store, b"a" * 10_000, clock.now - 3 * DAY)
    b = _blob(store, b"b" * 10_000, clock.now - 2 * DAY)
    c = _blob(store, b"c" * 10_000, clock.now - 1 * DAY)
    size = store.path(a).stat().st_blocks * 512 or 10_000
    result = blobs.prune(Limits(max_size=2 * size, max_age_days=30))
    assert [r.digest for r in result.removed] == [old, a]
    assert not store.has(old) and not store.has(a) and store.has(b) and store.has(c)
    assert result.kept == 2 and result.freed == 2 * size


def test_shared_blobs_and_kept_ones_are_never_removed(cache, tmp_path):
    blobs, store, clock = cache
    shared = _blob(store, b"s" * 5000, clock.now - 400 * DAY)
    kept = _blob(store, b"k" * 5000, clock.now - 400 * DAY)
    layout = BlobStore(tmp_path / "out" / "oci" / "blobs")
    store.copy_into(layout, shared)  # an output's hard link
    assert os.stat(store.path(shared)).st_nlink == 2
    result = blobs.prune(Limits(max_size=0, max_age_days=0), keep=[kept])
    assert result.removed == () and store.has(shared) and store.has(kept)
    info = {b.digest: b for b in blobs.blobs()}
    assert info[shared].shared and not info[kept].shared
    os.unlink(layout.path(shared))  # the output is gone: now it ages out
    assert [r.digest for r in blobs.prune(Limits(0, 0), keep=[kept]).removed] == [shared]


def test_everything_removes_shared_blobs_but_the_output_keeps_its_link(cache, tmp_path):
    blobs, store, clock = cache
    digest = _blob(store, b"x" * 100, clock.now)
    layout = BlobStore(tmp_path / "out" / "oci" / "blobs")
    store.copy_into(layout, digest)
    assert [r.digest for r in blobs.prune(Limits(), everything=True).removed] == [digest]
    assert layout.read(digest) == b"x" * 100


def test_nothing_is_pruned_while_a_build_holds_the_cache(cache, tmp_path):
    blobs, store, clock = cache
    old = _blob(store, b"o" * 100, clock.now - 100 * DAY)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from enclave_build.builder.image.blob_cache import BlobCache\n"
            "with BlobCache(Path(sys.argv[1])).in_use():\n"
            "    print('held', flush=True); time.sleep(60)",
            str(blobs.root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert blobs.prune(Limits(0, 0)).in_use and store.has(old)
        with blobs.in_use():  # other builds share the hold
            pass
    finally:
        holder.kill()
        holder.wait()
    assert not blobs.prune(Limits(0, 0)).in_use and not store.has(old)


def test_orphan_layer_records_and_stale_temps_are_tidied(cache):
    blobs, store, clock = cache
    digest = _blob(store, b"layer", clock.now)
    records = blobs.root / "layers"
    records.mkdir()
    (records / "a.json").write_text(json.dumps({"digest": digest, "size": 5, "diff_id": "x"}))
    (records / "b.json").write_text(json.dumps({"digest": "sha256:" + "0" * 64}))
    temp = blobs.directory / ".incoming-dead"
    temp.write_bytes(b"half")
    os.utime(temp, (clock.now - 2 * DAY, clock.now - 2 * DAY))
    fresh = blobs.directory / ".incoming-alive"
    fresh.write_bytes(b"writing")
    os.utime(fresh, (clock.now, clock.now))
    assert blobs.prune(Limits()).records_removed == 1
    assert sorted(p.name for p in records.iterdir()) == ["a.json"]
    assert not temp.exists() and fresh.exists()


@pytest.mark.parametrize(
    "text,value",
    [
        ("10G", 10 << 30),
        ("500M", 500 << 20),
        ("0", 0),
        ("1.5GiB", int(1.5 * (1 << 30))),
        ("2048", 2048),
    ],
)
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "ten", "-1G", "5X", "5G\n1"])
def test_bad_sizes_and_days(text):
    with pytest.raises(ValueError):
        parse_size(text)
    with pytest.raises(ValueError):
        parse_days(text or "nan")


def test_limits_from_the_environment(monkeypatch):
    said = []
    monkeypatch.setenv("ENCLAVE_BUILD_BLOB_CACHE_MAX_SIZE", "2G")
    monkeypatch.setenv("ENCLAVE_BUILD_BLOB_CACHE_MAX_AGE", "soon")
    assert Limits.from_env(said.append) == Limits(2 << 30, 30.0)
    assert "ENCLAVE_BUILD_BLOB_CACHE_MAX_AGE: 'soon' is not a number of days" in said[0]


# ------------------------------------------------------------------ at the level of a user


def _project(directory: Path, signing_key: Path, model: bytes) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "model.tflite").write_bytes(model)
    if not (directory / "key.pem").exists():
        shutil.copy(signing_key, directory / "key.pem")
    return write_spec(directory, SPEC)


def _layer_digests(out: Path) -> set[str]:
    index = json.loads((out / "oci" / "index.json").read_text())
    manifest = json.loads(
        (out / "oci/blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text()
    )
    return {d["digest"] for d in [manifest["config"], *manifest["layers"]]}


def _layer_sizes(out: Path) -> dict[str, int]:
    index = json.loads((out / "oci" / "index.json").read_text())
    manifest = json.loads(
        (out / "oci/blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text()
    )
    return {d["digest"]: d["size"] for d in manifest["layers"]}


def test_a_rebuild_with_a_changed_model_leaves_no_orphaned_layer(
    tmp_path, standin_root, signing_key
):
    """Was: every build of a changed model added a layer the size of the model and the older
    one stayed in the cache for ever. Now the build bounds the cache: with a 2 MiB bound the
    orphaned 3 MiB layer goes, what the current output references stays."""
    project = tmp_path / "project"
    env = {"ENCLAVE_BUILD_BLOB_CACHE_MAX_SIZE": "2M"}
    _project(project, signing_key, tflite_bytes(os.urandom(3 << 20)))
    first = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        cwd=project,
        env=env,
    )
    assert first.returncode == 0, first.stderr.decode()
    old = _layer_digests(project / "out")
    first_layers = _layer_sizes(project / "out")
    _project(project, signing_key, tflite_bytes(os.urandom(3 << 20)))
    second = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        cwd=project,
        env=env,
    )
    assert second.returncode == 0, second.stderr.decode()
    new = _layer_digests(project / "out")
    store = BlobStore(cache_root() / "blobs")
    blobs = {b.digest: b for b in BlobCache(cache_root()).blobs()}
    assert all(store.has(d) and blobs[d].shared for d in new)  # the output's, linked
    old_model_layer = max(old - new, key=lambda d: first_layers.get(d, 0))
    assert not store.has(old_model_layer)
    assert sum(b.size for b in blobs.values() if not b.shared) <= 2 << 20
    assert b"blob cache: removed " in second.stderr
    assert (image_rootfs(project / "out") / "models").is_dir()  # the output still reads


def test_cache_commands(tmp_path, standin_root, signing_key):
    project = tmp_path / "project"
    _project(project, signing_key, tflite_bytes(os.urandom(1 << 20)))
    assert (
        run_cli(
            "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=project
        ).returncode
        == 0
    )
    orphan = BlobStore(cache_root() / "blobs").put_bytes(b"an orphaned layer" * 100)
    listed = json.loads(run_cli("cache", "ls", "--json").stdout)
    items = {i["digest"]: i for i in listed["blobs"]["items"]}
    assert items[orphan]["shared"] is False
    assert all(items[d]["shared"] for d in _layer_digests(project / "out"))
    assert set(listed) == {"root", "blobs", "rootfs", "limits"}
    text = run_cli("cache", "ls", "--blobs").stdout.decode()
    assert orphan[:19] in text and "(in an output)" in text

    pruned = run_cli("cache", "prune", "--max-age", "0", "--json")
    assert pruned.returncode == 0, pruned.stderr.decode()
    report = json.loads(pruned.stdout)
    assert orphan in report["removed"]
    assert not set(report["removed"]) & _layer_digests(project / "out")
    bad = run_cli("cache", "prune", "--max-size", "lots")
    assert bad.returncode == 2 and b"error: --max-size: 'lots' is not a size" in bad.stderr

    cleaned = run_cli("cache", "clean", "--json")
    assert cleaned.returncode == 0, cleaned.stderr.decode()
    assert json.loads(run_cli("cache", "ls", "--json").stdout)["blobs"]["count"] == 0
    inspected = run_cli("inspect", str(project / "out"))
    assert inspected.returncode == 0, inspected.stderr.decode()  # the output has its blobs


def test_prune_refuses_while_a_build_runs(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from enclave_build.builder.cache import cache_root; "
            "from enclave_build.builder.image.blob_cache import BlobCache\n"
            "with BlobCache(cache_root()).in_use():\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (["cache", "prune"], ["cache", "clean"]):
            proc = run_cli(*command)
            assert proc.returncode == 1
            assert b"is in use by a running enclave-build build; nothing was removed" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
