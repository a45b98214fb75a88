"""tests/gramine_base.py without a Gramine archive: skip with the reason, but fail under CI."""

from __future__ import annotations

import pytest

from tests import gramine_base


def test_missing_archive_skips_with_reason(monkeypatch):
    monkeypatch.setattr(gramine_base, "gramine_archive", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Gramine archive"):
        gramine_base.require_gramine_base()


def test_missing_archive_fails_under_ci(monkeypatch):
    monkeypatch.setattr(gramine_base, "gramine_archive", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        gramine_base.require_gramine_base()


def test_cache_key_covers_the_inputs(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"one")
    first = gramine_base.base_key(archive)
    archive.write_bytes(b"two")
    assert gramine_base.base_key(archive) != first
