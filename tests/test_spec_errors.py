"""Every bad spec fails with exit code 2, the exact message (file:line, key, what is allowed),
and writes nothing."""

from __future__ import annotations

import pytest

from enclave_build.builder.spec import SpecError

from .conftest import run_cli, tflite_bytes
from .spec_corpus import CASES, GOOD


def _prepare(tmp_path, text, signing_key):
    (tmp_path / "model.tflite").write_bytes(tflite_bytes(bytes(60)))
    (tmp_path / "key.pem").write_bytes(signing_key.read_bytes())
    (tmp_path / "spec.toml").write_text(text)


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case_id,text,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_error_text(tmp_path, monkeypatch, signing_key, case_id, text, expected):
    from enclave_build.builder.build import load

    _prepare(tmp_path, text, signing_key)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        load("spec.toml")
    assert info.value.lines() == [line.format(dir=tmp_path) for line in expected]
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "case_id", ["size-not-power-of-two", "unknown-key-typo", "model-file-missing"]
)
def test_cli_exits_2_and_writes_nothing(tmp_path, signing_key, standin_root, case_id):
    text, expected = next((t, e) for c, t, e in CASES if c == case_id)
    _prepare(tmp_path, text, signing_key)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"error: {line.format(dir=tmp_path)}" for line in expected
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_good_spec_loads(tmp_path, monkeypatch, signing_key):
    from enclave_build.builder.build import load

    _prepare(tmp_path, GOOD, signing_key)
    monkeypatch.chdir(tmp_path)
    spec, _ = load("spec.toml")
    assert spec.enclave.size == 2 << 30
    assert spec.models[0].path == tmp_path / "model.tflite"
    assert spec.section("tflite")["threads"] == 1  # plugin default filled in


def test_cli_refuses_a_tag_that_is_no_image_name(tmp_path, signing_key, standin_root):
    """`--tag` is checked as `[image] tag` is: before, it went into measurements.json and the
    OCI index as given, and only `--push` refused it."""
    _prepare(tmp_path, GOOD.replace("max_threads = 8", "max_threads = 16"), signing_key)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        "--tag",
        "Face:1",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        "error: --tag: image reference 'Face:1': invalid repository name 'library/Face' "
        "(lower-case letters, digits, '.', '_', '-', '/')"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
