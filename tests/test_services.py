"""The test services clean up after themselves (no /tmp/eb-dockerd-* left behind)."""

from __future__ import annotations

import os
import subprocess

import pytest

from .services import remove_tree


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_remove_tree_unmounts_what_an_engine_left_mounted(tmp_path):
    # What a killed dockerd leaves: its data root bind-mounted onto itself, files in it.
    work = tmp_path / "eb-dockerd-x"
    (work / "root/vfs/dir").mkdir(parents=True)
    (work / "root/vfs/dir/layer").write_bytes(b"x")
    (work / "exec").mkdir()
    if (
        subprocess.run(
            ["mount", "--bind", str(work / "root"), str(work / "root")], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mount --bind is not permitted here")
    try:
        assert str(work / "root") in _mounts()
        remove_tree(work)
        assert not work.exists()
        assert str(work) not in _mounts()
    finally:
        subprocess.run(["umount", "--lazy", str(work / "root")], capture_output=True)


def _mounts() -> str:
    with open("/proc/self/mounts") as handle:
        return handle.read()
