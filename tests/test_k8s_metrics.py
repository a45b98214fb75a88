"""The model server's autoscaling signals: queue depth, latency histogram, enclave memory."""

from __future__ import annotations

import re
from pathlib import Path

from enclave_build.model_server.metrics import Metrics


def _proc(tmp_path: Path, meminfo: dict[str, int] | None) -> Path:
    """A stand-in /proc holding a meminfo with *meminfo* (bytes; written in kB as the kernel
    does), or none at all."""
    proc = tmp_path / "proc"
    proc.mkdir()
    if meminfo is not None:
        (proc / "meminfo").write_text(
            "".join(f"{key}:  {value // 1024} kB\n" for key, value in meminfo.items())
            + "Buffers:  1024 kB\n"
        )
    return proc


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} missing from:\n{text}"
    return float(match.group(1))


def test_memory_in_use_ratio_follows_meminfo(tmp_path):
    proc = _proc(tmp_path, {"MemTotal": 2 << 30, "MemAvailable": 512 << 20})
    text = Metrics(proc).render(queue_depth=3, in_flight=1, models=["m"])
    assert _value(text, "model_server_memory_in_use_bytes") == (2 << 30) - (512 << 20)
    assert _value(text, "model_server_memory_in_use_ratio") == 0.75
    assert "# TYPE model_server_memory_in_use_ratio gauge" in text
    assert _value(text, "model_server_queue_depth") == 3


def test_no_ratio_without_meminfo(tmp_path):
    text = Metrics(_proc(tmp_path, None)).render(queue_depth=0, in_flight=0, models=[])
    assert "model_server_memory_in_use_ratio" not in text


def test_latency_histogram_the_adapter_rule_reads():
    m = Metrics()
    m.observe("m", "grpc", "ok", 0.003)
    m.observe("m", "grpc", "ok", 0.2)
    text = m.render(queue_depth=0, in_flight=0, models=["m"])
    assert (
        'model_server_request_duration_seconds_bucket{model="m",protocol="grpc",le="0.005"} 1'
        in text
    )
    assert (
        'model_server_request_duration_seconds_bucket{model="m",protocol="grpc",le="+Inf"} 2'
        in text
    )


def test_every_adapter_rule_reads_a_series_the_server_exports_and_feeds_the_hpa(tmp_path):
    """The prometheus-adapter rules, the HPA's metric names and the server's /metrics agree."""
    from enclave_build.builder.k8s.autoscaling import LATENCY, MEMORY, QUEUE, adapter_rules

    m = Metrics(_proc(tmp_path, {"MemTotal": 2 << 30, "MemAvailable": 1 << 30}))
    m.observe("m", "rest", "ok", 0.01)
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in m.render(queue_depth=1, in_flight=0, models=["m"]).splitlines()
        if line and not line.startswith("#")
    }
    names = set()
    for rule in adapter_rules()["rules"]:
        series = rule["seriesQuery"].split("{")[0]
        assert series in exported, series
        assert re.fullmatch(rule["name"]["matches"], series)
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"], (series, placeholder)
        names.add(rule["name"]["as"])
    assert names == {QUEUE, LATENCY, MEMORY}
