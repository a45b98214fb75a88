"""Where verification collateral comes from: an offline file, or a PCCS/PCS (cached).

PCCS collateral is fetched with dcap-qvl's client (by the quote's FMSPC and PCK CA) and cached in
memory and on disk until the TCB info's ``nextUpdate``, so a burst of enclaves starting at once
costs one fetch. Fetches are single-flight *per platform* (FMSPC + CA): the first connection that
needs a platform's collateral starts one fetch, later ones for the same platform wait for it,
and connections for other platforms are not held up at all. Every fetch has a deadline, and so
has every wait (the caller's own, e.g. what is left of its connection's deadline). Every failure
is a :class:`CollateralError` with a reason.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import AttestationError
from .verify import collateral_validity, load_collateral

if TYPE_CHECKING:
    from enclave_build.contract.secrets_config import AttestationSettings

DEFAULT_TIMEOUT = 10.0


class CollateralError(AttestationError):
    """Collateral for a quote cannot be had (PCCS down, slow or answering garbage)."""


class CollateralSource(Protocol):
    def for_quote(self, quote: bytes, timeout: float | None = None) -> str:
        """Collateral JSON (dcap-qvl's nine-key format) to verify *quote* with; waits at most
        *timeout* seconds (None: the source's own deadline)."""


class FileCollateral:
    def __init__(self, path: Path):
        self.path = path
        self._text = load_collateral(path)

    def for_quote(self, quote: bytes, timeout: float | None = None) -> str:
        return self._text


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "enclave-build" / "collateral"


class _Flight:
    """One fetch in progress; whoever needs its result waits on *done*."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.text: str | None = None
        self.error: str | None = None


class PccsCollateral:
    def __init__(
        self,
        url: str,
        cache_dir: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        disk: bool = True,
    ):
        """*disk* False: collateral is kept in memory only (an enclave's own cache, where
        nothing the host left on disk may be read back, and nothing is left behind)."""
        self.url = url
        self.disk = disk
        self.cache_dir = cache_dir or _cache_dir()
        self.timeout = timeout
        self._memory: dict[str, str] = {}
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()  # guards the two dicts only; never held while fetching

    @staticmethod
    def _key(quote: bytes) -> str:
        import dcap_qvl

        try:
            parsed = dcap_qvl.parse_quote(quote)
            platform = f"{parsed.fmspc()}:{parsed.ca()}"
        except Exception as exc:  # noqa: BLE001 - the binding raises assorted types
            raise CollateralError(f"cannot read the quote's platform (FMSPC): {exc}") from None
        return hashlib.sha256(platform.encode()).hexdigest()[:32]

    @staticmethod
    def _fresh(text: str) -> bool:
        try:
            _, next_update = collateral_validity(text)
        except (ValueError, KeyError, TypeError):
            return False
        return _dt.datetime.now(_dt.UTC) < next_update

    def _cached(self, key: str) -> str | None:
        text = self._memory.get(key)
        if text is None and self.disk:
            try:
                text = (self.cache_dir / f"{key}.json").read_text()
            except (OSError, UnicodeDecodeError):
                return None
        if text is None:
            return None
        return text if self._fresh(text) else None

    def for_quote(self, quote: bytes, timeout: float | None = None) -> str:
        key = self._key(quote)
        wait = self.timeout if timeout is None else max(0.0, min(timeout, self.timeout))
        with self._lock:
            text = self._cached(key)
            if text is not None:
                self._memory[key] = text
                return text
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
                threading.Thread(
                    target=self._run, args=(key, quote, flight), daemon=True, name=f"pccs-{key[:8]}"
                ).start()
        if not flight.done.wait(wait):
            raise CollateralError(f"PCCS {self.url} did not deliver collateral within {wait:.1f} s")
        if flight.error is not None:
            raise CollateralError(flight.error)
        assert flight.text is not None
        return flight.text

    def _run(self, key: str, quote: bytes, flight: _Flight) -> None:
        """The one fetch for *key*: bounded by the source's deadline, result shared."""
        started = time.monotonic()
        try:
            text = self._fetch(quote)
            try:
                if not self.disk:
                    raise OSError("memory only")
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_dir / f".{key}.{os.getpid()}.{threading.get_ident()}"
                tmp.write_text(text)
                os.replace(tmp, self.cache_dir / f"{key}.json")
            except OSError:
                pass  # the disk cache is an optimisation
            flight.text = text
        except TimeoutError:
            flight.error = (
                f"PCCS {self.url} did not answer within {self.timeout:.1f} s "
                f"(gave up after {time.monotonic() - started:.1f} s)"
            )
        except Exception as exc:  # noqa: BLE001 - any failure of the fetch is reported
            flight.error = f"cannot fetch collateral from PCCS {self.url}: {exc}"
        finally:
            with self._lock:
                if flight.text is not None:
                    self._memory[key] = flight.text
                self._flights.pop(key, None)
            flight.done.set()

    def _fetch(self, quote: bytes) -> str:
        import dcap_qvl

        async def fetch():  # dcap-qvl's binding needs a running loop when it is called
            return await asyncio.wait_for(dcap_qvl.get_collateral(self.url, quote), self.timeout)

        collateral = asyncio.run(fetch())
        text = collateral.to_json()
        data = json.loads(text)
        if not isinstance(data, dict) or "tcb_info" not in data:
            raise ValueError("the PCCS answer is not collateral")
        return text


def source_for(settings: AttestationSettings) -> CollateralSource:
    if settings.collateral is not None:
        return FileCollateral(settings.collateral)
    assert settings.pccs_url is not None  # the reader requires exactly one of the two
    return PccsCollateral(settings.pccs_url, timeout=settings.pccs_timeout)
