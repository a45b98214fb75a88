"""A small bounded run of benchmarks/hostile_load.py: legitimate attesting clients mixed with
20% hostile connections (no TLS, stalled handshakes, garbage after the handshake, malformed
certificates, 64 KiB requests) against a two-process server: every legitimate client is served,
every hostile connection has one deny audit line, memory does not run away."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _module():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "hostile_load.py"
    spec = importlib.util.spec_from_file_location("hostile_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_legitimate_clients_are_served_among_hostile_ones(tmp_path):
    hostile_load = _module()
    # The server's connection deadline bounds every legitimate client too (queue + handshake +
    # verification, 40 at once): 3 s, several times the ~0.4 s p99 of a loaded 2-core machine.
    r = hostile_load.run(
        legit=80, hostile_share=0.2, concurrency=40, timeout=3.0, processes=2, directory=tmp_path
    )
    assert r["failures"] == [] and r["served"] == 80, r["failures"][:3]
    assert r["hostile_errors"] == [], r["hostile_errors"][:3]
    assert r["hostile"] == 20
    for kind, (count, audited) in r["audited"].items():
        assert count == 4 and audited == count, (kind, r["audited"], r["reasons"])
    assert r["allowed_lines"] >= 80 + 1  # measured + warm-up clients
    assert r["processes"] == 2
    assert r["rss_growth_kib"] < 64 * 1024, r  # bounded, not a leak per connection
