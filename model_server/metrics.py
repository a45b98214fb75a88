"""Prometheus text-format metrics (exposition format 0.0.4), no client library needed.

* ``model_server_requests_total{model,protocol,status}``: inference requests by outcome
  (status ``ok``, ``invalid``, ``not_found``, ``unavailable``, ``too_large``, ``internal``);
  requests for a model that is not served count under ``model="_unknown"`` (bounded labels).
* ``model_server_request_duration_seconds{model,protocol}``: histogram, from request parsed to
  response ready.
* ``model_server_client_refusals_total{model,protocol}``: requests refused because the model
  is restricted to named clients (``models[].clients``) and the client is not one of them
  (REST 403, gRPC PERMISSION_DENIED); a restricted model's series start at 0.
* ``model_server_queue_depth``: requests waiting for admission or for an interpreter;
  ``model_server_requests_in_flight``.
* Memory: ``model_server_process_resident_bytes`` / ``model_server_process_virtual_bytes``
  (``/proc/self/statm``) and ``model_server_memory_total_bytes`` /
  ``model_server_memory_available_bytes`` (``/proc/meminfo``; inside Gramine these describe the
  enclave's memory), ``model_server_memory_in_use_bytes`` and
  ``model_server_memory_in_use_ratio`` (in use / total: the autoscaler's EPC-pressure signal).
  A file the platform does not provide just leaves its metrics out.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import defaultdict
from pathlib import Path

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_MODEL = "_unknown"
PROTOCOLS = ("grpc", "rest")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kw: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in kw.items()) + "}"


#: Where the kernel's process and memory files are (a test gives its own directory).
PROC = Path("/proc")


def _statm(proc: Path) -> dict[str, int]:
    try:
        with open(proc / "self" / "statm") as f:
            size, resident = (int(x) for x in f.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return {}
    return {"virtual": size * page, "resident": resident * page}


def _meminfo(proc: Path) -> dict[str, int]:
    out = {}
    try:
        with open(proc / "meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable", "MemFree"):
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


class Metrics:
    def __init__(self, proc: Path = PROC) -> None:
        """*proc*: where ``meminfo`` and ``self/statm`` are read (the kernel's /proc)."""
        self.proc = proc
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.hist: dict[tuple[str, str], list] = {}
        self._lock = threading.Lock()  # gRPC handler threads and the event loop observe
        self.refusals: dict[tuple[str, str], int] = {}

    def track_refusals(self, models: list[str], protocols: tuple[str, ...] = PROTOCOLS) -> None:
        """Start the refusal counters of the restricted *models* at 0."""
        with self._lock:
            for model in models:
                for protocol in protocols:
                    self.refusals.setdefault((model, protocol), 0)

    def refuse(self, model: str, protocol: str) -> None:
        """A request for *model* refused: the client is not among its clients."""
        with self._lock:
            self.refusals[(model, protocol)] = self.refusals.get((model, protocol), 0) + 1

    def observe(self, model: str, protocol: str, status: str, seconds: float) -> None:
        with self._lock:
            self.requests[(model, protocol, status)] += 1
            h = self.hist.get((model, protocol))
            if h is None:
                h = self.hist[(model, protocol)] = [[0] * (len(BUCKETS) + 1), 0.0, 0]
            h[0][bisect.bisect_left(BUCKETS, seconds)] += 1
            h[1] += seconds
            h[2] += 1

    def render(self, queue_depth: int, in_flight: int, models: list[str]) -> str:
        lines = [
            "# HELP model_server_requests_total Inference requests by model, protocol and status.",
            "# TYPE model_server_requests_total counter",
        ]
        with self._lock:
            requests = sorted(self.requests.items())
            hist = sorted((k, (list(v[0]), v[1], v[2])) for k, v in self.hist.items())
            refusals = sorted(self.refusals.items())
        for (model, protocol, status), n in requests:
            lines.append(
                f"model_server_requests_total"
                f"{_labels(model=model, protocol=protocol, status=status)} {n}"
            )
        lines += [
            "# HELP model_server_request_duration_seconds Inference request latency in the server.",
            "# TYPE model_server_request_duration_seconds histogram",
        ]
        for (model, protocol), (counts, total, n) in hist:
            cum = 0
            for bound, c in zip((*BUCKETS, float("inf")), counts, strict=True):
                cum += c
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(
                    "model_server_request_duration_seconds_bucket"
                    f"{_labels(model=model, protocol=protocol, le=le)} {cum}"
                )
            lines.append(
                "model_server_request_duration_seconds_sum"
                f"{_labels(model=model, protocol=protocol)} {total!r}"
            )
            lines.append(
                "model_server_request_duration_seconds_count"
                f"{_labels(model=model, protocol=protocol)} {n}"
            )
        if refusals:
            lines += [
                "# HELP model_server_client_refusals_total Requests refused because the client "
                "is not among the model's clients.",
                "# TYPE model_server_client_refusals_total counter",
            ]
            lines += [
                f"model_server_client_refusals_total{_labels(model=model, protocol=protocol)} {n}"
                for (model, protocol), n in refusals
            ]
        lines += [
            "# HELP model_server_queue_depth Requests waiting for admission or an interpreter.",
            "# TYPE model_server_queue_depth gauge",
            f"model_server_queue_depth {queue_depth}",
            "# HELP model_server_requests_in_flight Inference requests admitted and not answered.",
            "# TYPE model_server_requests_in_flight gauge",
            f"model_server_requests_in_flight {in_flight}",
            "# HELP model_server_model_ready Whether a model is loaded and serving.",
            "# TYPE model_server_model_ready gauge",
        ]
        lines += [f"model_server_model_ready{_labels(model=m)} 1" for m in models]
        statm = _statm(self.proc)
        if statm:
            lines += [
                "# HELP model_server_process_resident_bytes Resident memory of the server process.",
                "# TYPE model_server_process_resident_bytes gauge",
                f"model_server_process_resident_bytes {statm['resident']}",
                "# HELP model_server_process_virtual_bytes Virtual memory of the server process.",
                "# TYPE model_server_process_virtual_bytes gauge",
                f"model_server_process_virtual_bytes {statm['virtual']}",
            ]
        mem = _meminfo(self.proc)
        if "MemTotal" in mem:
            avail = mem.get("MemAvailable", mem.get("MemFree"))
            lines += [
                "# HELP model_server_memory_total_bytes Memory of the machine (in Gramine: the "
                "enclave).",
                "# TYPE model_server_memory_total_bytes gauge",
                f"model_server_memory_total_bytes {mem['MemTotal']}",
            ]
            if avail is not None:
                lines += [
                    "# HELP model_server_memory_available_bytes Memory still available (in "
                    "Gramine: in the enclave).",
                    "# TYPE model_server_memory_available_bytes gauge",
                    f"model_server_memory_available_bytes {avail}",
                    "# HELP model_server_memory_in_use_bytes Total minus available.",
                    "# TYPE model_server_memory_in_use_bytes gauge",
                    f"model_server_memory_in_use_bytes {mem['MemTotal'] - avail}",
                ]
                if mem["MemTotal"] > 0:
                    ratio = (mem["MemTotal"] - avail) / mem["MemTotal"]
                    lines += [
                        "# HELP model_server_memory_in_use_ratio Memory in use / total (in "
                        "Gramine: of the enclave size; an autoscaling signal).",
                        "# TYPE model_server_memory_in_use_ratio gauge",
                        f"model_server_memory_in_use_ratio {ratio:.6f}",
                    ]
        return "\n".join(lines) + "\n"
