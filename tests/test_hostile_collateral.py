"""PCCS collateral fetching under load and failure: single-flight per platform (FMSPC), a slow
platform never holds up another, every wait has a deadline, every failure is a CollateralError.
The fetch itself is replaced here; tests/test_pccs.py runs the real one against a stand-in."""

from __future__ import annotations

import json
import threading
import time

import pytest

from enclave_build.attestation import collateral as coll
from enclave_build.attestation.collateral import CollateralError, PccsCollateral


class _Fake(PccsCollateral):
    """Platform = the quote's first byte; fetch time per platform from *delays*."""

    def __init__(
        self, tmp_path, delays: dict[bytes, float], timeout: float = 5.0, fail: bool = False
    ):
        super().__init__("https://pccs.invalid/", cache_dir=tmp_path, timeout=timeout)
        self.delays = delays
        self.fail = fail
        self.fetches: list[bytes] = []

    @staticmethod
    def _key(quote: bytes) -> str:
        return quote[:1].hex()

    @staticmethod
    def _fresh(text: str) -> bool:
        return True

    def _fetch(self, quote: bytes) -> str:
        self.fetches.append(quote[:1])
        time.sleep(self.delays.get(quote[:1], 0.0))
        if self.fail:
            raise ValueError("PCCS answered HTTP 500")
        return json.dumps({"tcb_info": quote[:1].hex()})


def _parallel(fn, count: int) -> list:
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(fn())) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return out


def test_one_fetch_per_platform_however_many_ask(tmp_path):
    source = _Fake(tmp_path, {b"A": 0.3})
    results = _parallel(lambda: source.for_quote(b"A..."), 10)
    assert results == ['{"tcb_info": "41"}'] * 10
    assert source.fetches == [b"A"]
    assert source.for_quote(b"A...") == results[0] and source.fetches == [b"A"]  # cached


def test_a_slow_platform_does_not_hold_up_another(tmp_path):
    source = _Fake(tmp_path, {b"S": 5.0}, timeout=8.0)

    def refused() -> None:
        with pytest.raises(CollateralError):
            source.for_quote(b"S", timeout=1.0)

    slow = threading.Thread(target=refused)
    slow.start()
    deadline = time.monotonic() + 10
    while b"S" not in source.fetches and time.monotonic() < deadline:  # S is being fetched
        time.sleep(0.01)
    assert source.fetches == [b"S"]
    started = time.monotonic()
    assert source.for_quote(b"F") == '{"tcb_info": "46"}'
    assert time.monotonic() - started < 2.5  # held up behind S would be ~5 s
    slow.join(10)


def test_waiters_give_up_at_their_own_deadline(tmp_path):
    source = _Fake(tmp_path, {b"S": 5.0}, timeout=8.0)
    started = time.monotonic()
    with pytest.raises(CollateralError, match=r"did not deliver collateral within 0.3 s"):
        source.for_quote(b"S", timeout=0.3)
    assert time.monotonic() - started < 2.5  # the 0.3 s, not the 5 s fetch


def test_the_fetch_itself_has_a_deadline(tmp_path, monkeypatch):
    """Nobody waits forever, even without a caller deadline: the source's timeout bounds it."""
    source = _Fake(tmp_path, {b"S": 5.0}, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(CollateralError):
        source.for_quote(b"S")
    assert time.monotonic() - started < 2.5  # the 0.3 s, not the 5 s fetch


def test_a_failed_fetch_is_a_collateral_error_for_every_waiter(tmp_path):
    source = _Fake(tmp_path, {b"A": 0.2}, fail=True)

    def attempt():
        try:
            source.for_quote(b"A")
        except CollateralError as exc:
            return str(exc)
        return None

    errors = _parallel(attempt, 5)
    assert len(errors) == 5 and all(e and "HTTP 500" in e for e in errors), errors
    assert source.fetches == [b"A"]


def test_a_quote_the_pccs_client_cannot_read_is_a_collateral_error(tmp_path):
    source = PccsCollateral("https://pccs.invalid/", cache_dir=tmp_path, timeout=1.0)
    with pytest.raises(CollateralError, match="FMSPC"):
        source.for_quote(b"\x03\x00" + bytes(100))


def test_default_deadline_is_finite():
    assert 0 < coll.DEFAULT_TIMEOUT < 60
