"""A model directory's symbolic links never bring host files into the image, on any path that
reads the directory: Gramine's trusted hashes and encrypted files, and Occlum's bom/staging."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enclave_build.builder.gramine.backend import encrypted_items, expand_plan_file
from enclave_build.builder.model_files import SkippedModelFile, regular_files
from enclave_build.builder.plan import FileKind, PlanFile


@pytest.fixture
def model_dir(tmp_path) -> Path:
    secret = tmp_path / "host-secret.pem"
    secret.write_text("not part of the model\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "other.bin").write_bytes(b"x")
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb")
    (model / "variables" / "variables.index").write_bytes(b"ix")
    os.symlink(secret, model / "variables" / "key.pem")  # a file outside
    os.symlink(tmp_path / "elsewhere", model / "linked-dir")  # a directory outside
    os.symlink(model, model / "variables" / "loop")  # a loop
    os.mkfifo(model / "fifo")  # would block a reader
    return model


def test_only_the_directorys_own_regular_files(model_dir):
    with pytest.warns(SkippedModelFile) as caught:
        files = regular_files(model_dir)
    assert [p.relative_to(model_dir).as_posix() for p in files] == [
        "saved_model.pb",
        "variables/variables.index",
    ]
    said = " ".join(str(w.message) for w in caught)
    assert "key.pem: a symbolic link to" in said and "host-secret.pem" in said
    assert "fifo: not a regular file" in said and "linked-dir" in said and "loop" in said


def test_gramine_trusts_and_encrypts_no_link_target(model_dir):
    item = PlanFile(model_dir, "/models/m/", FileKind.ENCRYPTED, key_name="k")
    with pytest.warns(SkippedModelFile):
        encrypted = encrypted_items(item)
    assert sorted(dest for dest, _ in encrypted) == [
        "/models/m/saved_model.pb",
        "/models/m/variables/variables.index",
    ]
    trusted_item = PlanFile(model_dir, "/models/m/", FileKind.TRUSTED)
    with pytest.warns(SkippedModelFile):
        trusted = expand_plan_file(trusted_item, "/models/m/")
    assert sorted(uri for uri, _ in trusted) == [
        "file:/models/m/saved_model.pb",
        "file:/models/m/variables/variables.index",
    ]
    assert all("host-secret" not in str(content) for _, content in encrypted + trusted)
