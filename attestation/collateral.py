"""Where verification collateral comes from: an offline file, or a PCCS/PCS (cached).

PCCS collateral is fetched with dcap-qvl's client (by the quote's FMSPC and PCK CA) and cached in
memory and on disk until the TCB info's ``nextUpdate``, so a burst of enclaves starting at once
costs one fetch.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Protocol

from .verify import collateral_validity, load_collateral


class CollateralSource(Protocol):
    def for_quote(self, quote: bytes) -> str:
        """Collateral JSON (dcap-qvl's nine-key format) to verify *quote* with."""


class FileCollateral:
    def __init__(self, path: Path):
        self.path = path
        self._text = load_collateral(path)

    def for_quote(self, quote: bytes) -> str:
        return self._text


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "enclave-build" / "collateral"


class PccsCollateral:
    def __init__(self, url: str, cache_dir: Path | None = None):
        self.url = url
        self.cache_dir = cache_dir or _cache_dir()
        self._memory: dict[str, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(quote: bytes) -> str:
        import dcap_qvl

        parsed = dcap_qvl.parse_quote(quote)
        return hashlib.sha256(f"{parsed.fmspc()}:{parsed.ca()}".encode()).hexdigest()[:32]

    @staticmethod
    def _fresh(text: str) -> bool:
        _, next_update = collateral_validity(text)
        return _dt.datetime.now(_dt.timezone.utc) < next_update

    def for_quote(self, quote: bytes) -> str:
        key = self._key(quote)
        with self._lock:
            text = self._memory.get(key)
            if text is None:
                path = self.cache_dir / f"{key}.json"
                if path.exists():
                    text = path.read_text()
            if text is None or not self._fresh(text):
                text = self._fetch(quote)
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_dir / f".{key}.{os.getpid()}"
                tmp.write_text(text)
                os.replace(tmp, self.cache_dir / f"{key}.json")
            self._memory[key] = text
            return text

    def _fetch(self, quote: bytes) -> str:
        import dcap_qvl

        async def fetch():  # dcap-qvl's binding needs a running loop when it is called
            return await dcap_qvl.get_collateral(self.url, quote)

        collateral = asyncio.run(fetch())
        text = collateral.to_json()
        json.loads(text)
        return text


def source_for(settings) -> CollateralSource:  # noqa: ANN001 - AttestationSettings
    if settings.collateral is not None:
        return FileCollateral(settings.collateral)
    return PccsCollateral(settings.pccs_url)
