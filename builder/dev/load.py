"""Load for ``enclave-build profile``: N inference requests to one model at concurrency C over
KServe v2 REST (builder.dev.requests), with each request's latency."""

from __future__ import annotations

import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .requests import InferRequest, RequestError, infer

#: Bounds of --requests and --concurrency (the CLI checks them; a client's number never sizes
#: anything beyond them).
MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 256


@dataclass
class LoadResult:
    model: str
    requests: int
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0

    def percentile(self, q: float) -> float | None:
        """The *q* quantile (0..1) of the successful requests' latencies (nearest rank)."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[index]

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "ok": len(self.latencies_ms),
            "errors": self.errors,
            "first_error": self.first_error,
            "p50_ms": self.percentile(0.5),
            "p99_ms": self.percentile(0.99),
            "mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else None,
            "seconds": self.seconds,
        }


def drive(
    base_url: str, model: str, request: InferRequest, requests: int, concurrency: int
) -> LoadResult:
    """Send *requests* copies of *request* to *model*, *concurrency* at a time."""
    if not 1 <= requests <= MAX_REQUESTS or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError("requests or concurrency out of bounds")
    result = LoadResult(model, requests, concurrency)

    def one(_: int) -> tuple[float | None, str | None]:
        started = time.perf_counter()
        try:
            infer(base_url, model, request)
        except RequestError as exc:
            return None, str(exc)
        return (time.perf_counter() - started) * 1000, None

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="profile-load") as pool:
        for latency, error in pool.map(one, range(requests)):
            if latency is None:
                result.errors += 1
                result.first_error = result.first_error or error
            else:
                result.latencies_ms.append(latency)
    result.seconds = time.perf_counter() - started
    return result


__all__ = ["LoadResult", "drive", "MAX_REQUESTS", "MAX_CONCURRENCY"]
