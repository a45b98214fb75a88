"""Trusted-file expansion inside an image root, and the parallel hasher with its cache."""

from __future__ import annotations

import hashlib
import os

import pytest

from enclave_build.builder import hashing
from enclave_build.builder.gramine.trusted_files import TrustedFileError, expand
from enclave_build.builder.hashing import HashCache, hash_files
from enclave_build.builder.rootfs import RootFS, RootFSError


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "usr/lib/app/sub").mkdir(parents=True)
    (r / "usr/lib/app/b.so").write_bytes(b"b")
    (r / "usr/lib/app/a.so").write_bytes(b"a")
    (r / "usr/lib/app/sub/c.so").write_bytes(b"c")
    (r / "usr/lib/app/link.so").symlink_to("a.so")
    (r / "usr/lib/app/dirlink").symlink_to("sub")
    (r / "usr/lib/app/dangling").symlink_to("/nowhere")
    (r / "etc").mkdir()
    (r / "etc/passwd").write_text("root:x:0:0\n")
    (r / "usr/bin").mkdir()
    (r / "usr/bin/tool").symlink_to("/usr/lib/app/a.so")  # absolute: must resolve in the root
    (r / "loop1").symlink_to("loop2")
    (r / "loop2").symlink_to("loop1")
    return RootFS(r)


def test_directory_expansion_is_sorted_recursive_and_skips_symlinked_dirs(root):
    files = expand(["file:/usr/lib/app/"], root)
    assert [f.uri for f in files] == [
        "file:/usr/lib/app/a.so",
        "file:/usr/lib/app/b.so",
        "file:/usr/lib/app/link.so",
        "file:/usr/lib/app/sub/c.so",
    ]
    assert files[2].inner == "/usr/lib/app/a.so"


def test_absolute_symlink_resolves_inside_the_root_not_the_host(root):
    [tool] = expand(["file:/usr/bin/tool"], root)
    assert tool.inner == "/usr/lib/app/a.so"
    host = root.host_path(tool.inner)
    assert hash_files([host])[host] == hashlib.sha256(b"a").hexdigest()


def test_escaping_with_dotdot_stays_in_the_root(root):
    assert root.resolve("/../../etc/passwd") == "/etc/passwd"


@pytest.mark.parametrize(
    "uri,message",
    [
        (
            "file:/usr/lib/missing.so",
            "trusted file 'file:/usr/lib/missing.so': /usr/lib/missing.so "
            "does not exist in the image",
        ),
        (
            "file:/usr/lib/app",
            "trusted file 'file:/usr/lib/app' is a directory: write it with a trailing '/'",
        ),
        (
            "file:/etc/passwd/",
            "trusted file 'file:/etc/passwd/' ends with '/' but is not a directory",
        ),
        ("file:relative", "'file:relative': trusted files need absolute paths inside the image"),
        ("http://x/y", "'http://x/y': only file: URIs can be trusted files"),
        ("file:/loop1", "symbolic link loop"),
    ],
)
def test_bad_trusted_entries_have_clear_errors(root, uri, message):
    with pytest.raises(TrustedFileError, match=None) as info:
        expand([uri], root)
    assert message in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable_file_is_an_error(root):
    path = root.host_path("/etc/passwd")
    path.chmod(0)
    with pytest.raises(TrustedFileError, match="permission denied"):
        expand(["file:/etc/passwd"], root)


def test_unreadable_file_is_an_error_even_as_root(root, monkeypatch):
    """CI runs as root, which reads anything: simulate the failed access check."""
    from enclave_build.builder.gramine import trusted_files

    monkeypatch.setattr(trusted_files.os, "access", lambda path, mode: False)
    with pytest.raises(
        TrustedFileError, match="trusted file 'file:/etc/passwd': permission denied"
    ):
        expand(["file:/etc/passwd"], root)


def test_rootfs_requires_a_directory(tmp_path):
    with pytest.raises(RootFSError, match="root filesystem directory not found"):
        RootFS(tmp_path / "nope")


def test_parallel_hashes_equal_hashlib(tmp_path):
    paths = []
    for i in range(20):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(1000 * i + 1))
        paths.append(p)
    got = hash_files(paths, workers=2)
    assert got == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_warm_cache_rehashes_nothing_and_edits_are_noticed(tmp_path, monkeypatch):
    files = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 5000)
        files.append(p)
    cache = HashCache(tmp_path / "cache.sqlite")
    first = hash_files(files, cache=cache)

    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(
        hashing, "sha256_file", lambda p, progress=None: calls.append(p) or real(p, progress)
    )
    assert hash_files(files, cache=HashCache(tmp_path / "cache.sqlite")) == first
    assert calls == []

    files[2].write_bytes(b"changed")
    again = hash_files(files, cache=HashCache(tmp_path / "cache.sqlite"))
    assert [str(c) for c in calls] == [str(files[2])]
    assert again[files[2]] == hashlib.sha256(b"changed").hexdigest()


def test_unchanged_rebuild_rehashes_nothing(tmp_path, standin_root, signing_key, monkeypatch):
    from .test_manifest import build_manifest

    (tmp_path / "a").mkdir()
    first = build_manifest("tflite", tmp_path / "a", standin_root, signing_key)
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(
        hashing, "sha256_file", lambda p, progress=None: calls.append(p) or real(p, progress)
    )
    (tmp_path / "b").mkdir()
    # Same model content in another directory: new paths, so those are hashed; the base is not.
    second = build_manifest("tflite", tmp_path / "b", standin_root, signing_key)
    assert second == first
    assert all(str(tmp_path / "b") in str(c) for c in calls), calls
