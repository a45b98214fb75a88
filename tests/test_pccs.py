"""Collateral from a PCCS: a PCCS stand-in on 127.0.0.1 serves the synthetic PKI's collateral
through the PCCS v4 API that dcap-qvl's client calls; the result is cached until nextUpdate.
(Against Intel's PCS or a real PCCS the same code runs; neither is reachable here.)"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from enclave_build.attestation.collateral import CollateralError, PccsCollateral
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.attestation.verify import verify_quote

from .fixtures import SLOW

pytestmark = pytest.mark.integration


def test_collateral_from_pccs_verifies_and_is_cached(pccs, tmp_path):
    url, pki, hits = pccs
    me = hashlib.sha256(b"e").digest()
    quote = pki.quote(me, hashlib.sha256(b"s").digest())
    source = PccsCollateral(url, cache_dir=tmp_path)
    text = source.for_quote(quote)
    assert verify_quote(quote, text, root_ca_der=pki.root_der).mr_enclave == me.hex()
    fetched = len(hits)
    assert fetched >= 4
    assert source.for_quote(pki.quote(me, bytes(32))) == text  # memory cache
    assert len(hits) == fetched
    again = PccsCollateral(url, cache_dir=tmp_path)  # disk cache, new process
    assert again.for_quote(quote) == text and len(hits) == fetched
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_pccs_failure_is_an_error(tmp_path):
    source = PccsCollateral("http://127.0.0.1:9/sgx/certification/v4/", cache_dir=tmp_path)
    pki = SyntheticPKI()
    with pytest.raises(CollateralError, match="cannot fetch collateral from PCCS"):
        source.for_quote(pki.quote(bytes(32), bytes(32)))


def test_a_stalled_pccs_is_given_up_at_the_deadline(pccs, tmp_path, monkeypatch):
    url, pki, _hits = pccs
    monkeypatch.setitem(SLOW, "seconds", 6.0)
    source = PccsCollateral(url, cache_dir=tmp_path, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(CollateralError, match=r"within 0.5 s"):
        source.for_quote(pki.quote(bytes(32), bytes(32)))
    assert time.monotonic() - started < 3.5  # the 0.5 s, not the 6 s stall


def test_concurrent_requests_for_one_platform_fetch_once(pccs, tmp_path, monkeypatch):
    url, pki, hits = pccs
    monkeypatch.setitem(SLOW, "seconds", 0.5)
    source = PccsCollateral(url, cache_dir=tmp_path)
    quote = pki.quote(bytes(32), bytes(32))
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(source.for_quote(quote))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 8 and len(set(results)) == 1
    assert hits.count("/sgx/certification/v4/tcb") == 1


def test_secret_server_with_pccs_url(pccs, tmp_path, monkeypatch):
    from enclave_build.attestation.config import load_config
    from enclave_build.attestation.server import SecretServer

    from .attest_env import make_env
    from .secret_client import fetch_secret

    url, pki, hits = pccs
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = make_env(tmp_path / "env", pki=pki)
    env.config.write_text(
        env.config.read_text().replace('collateral = "collateral.json"', f'pccs_url = "{url}"')
    )
    server = SecretServer(load_config(env.config))
    host, port = server.start()
    try:
        for _ in range(3):
            assert (
                fetch_secret(host, port, env.ca, *env.enclave_cert("face"), server_name="localhost")
                == env.secrets["face"]
            )
        assert hits.count("/sgx/certification/v4/tcb") == 1  # fetched once, then cached
    finally:
        server.shutdown()


def test_memory_only_collateral_reads_and_writes_no_disk(pccs, tmp_path):
    """disk=False (the model server's view of its secret server's PCCS): fetched once, kept in
    memory, nothing written to nor read from the cache directory."""
    url, pki, hits = pccs
    quote = pki.quote(hashlib.sha256(b"e").digest(), hashlib.sha256(b"s").digest())
    PccsCollateral(url, cache_dir=tmp_path).for_quote(quote)  # a disk copy a host left
    fetched = len(hits)
    source = PccsCollateral(url, cache_dir=tmp_path / "private", disk=False)
    text = source.for_quote(quote)
    assert len(hits) == 2 * fetched  # the host's copy was not read back
    assert source.for_quote(quote) == text and len(hits) == 2 * fetched  # memory
    assert not (tmp_path / "private").exists()
