"""EPC-aware autoscaling: a HorizontalPodAutoscaler (autoscaling/v2) on the model server's own
metrics, served to the HPA by prometheus-adapter (rules generated here).

Why not CPU: an enclave's throughput collapses when its working set no longer fits in the EPC
(the kernel pages enclave memory out and back in, encrypting and decrypting every 4 KiB page)
and when requests queue behind its fixed number of threads; in both cases CPU use can stay
moderate (threads wait on EPC faults, enclave exits and the queue) while latency explodes.
So the HPA follows what the server sees:

* ``model_server_queue_depth``: requests waiting for admission or an interpreter (load);
* ``model_server_request_latency_p95_seconds``: p95 of ``model_server_request_duration_seconds``
  over 2 minutes (what clients feel);
* ``model_server_memory_in_use_ratio``: enclave memory in use / enclave size (inside Gramine
  /proc/meminfo describes the enclave): the EPC-pressure guard. It rarely falls when load
  moves away (heaps keep their pages), so it scales out before the enclave runs out of memory
  but does not drive scale-in; queue depth and latency do.

The HPA takes the largest replica count any metric asks for. Scale-up is immediate (a new
replica needs its enclave-creation time before it helps), scale-down waits five minutes.
"""

from __future__ import annotations

from typing import Any

from ..deploy.service_info import ServiceInfo
from .deployment import labels, metadata

QUEUE = "model_server_queue_depth"
LATENCY = "model_server_request_latency_p95_seconds"
MEMORY = "model_server_memory_in_use_ratio"

Obj = dict[str, Any]


def wanted(info: ServiceInfo) -> bool:
    """An HPA is generated when [deploy] max_replicas exceeds replicas and the server exports
    the metrics (enclave-build's model server)."""
    d = info.deploy
    return d.max_replicas is not None and d.max_replicas > d.replicas and info.metrics is not None


def _pods(metric: str, average: str) -> Obj:
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": metric},
            "target": {"type": "AverageValue", "averageValue": average},
        },
    }


def hpa(info: ServiceInfo) -> Obj | None:
    if not wanted(info):
        return None
    d = info.deploy
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(info, info.service, "model-server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": info.service},
            "minReplicas": d.replicas,
            "maxReplicas": d.max_replicas,
            "metrics": [
                _pods(QUEUE, str(d.target_queue_depth)),
                _pods(LATENCY, f"{d.target_latency_ms}m"),
                _pods(MEMORY, f"{d.target_memory_percent * 10}m"),
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "selectPolicy": "Min",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def _rule(series: str, name: str, query: str) -> Obj:
    return {
        "seriesQuery": f'{series}{{namespace!="",pod!=""}}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {"matches": f"^{series}$", "as": name},
        "metricsQuery": query,
    }


#: p95 over two minutes; a pod that served nothing in that window has no quantile
#: (``histogram_quantile`` of all-zero rates is NaN), so ``>= 0`` drops the NaN and the ``or``
#: branch reports 0 for it. Without that the HPA gets NaN (older prometheus-adapters turn it
#: into -9223372036854775808m) or no value for an idle pod, and a metric it cannot read stops
#: it from ever scaling down.
LATENCY_QUERY = (
    "histogram_quantile(0.95, sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) "
    "by (le, <<.GroupBy>>)) >= 0 or "
    "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>) * 0"
)


def adapter_rules() -> Obj:
    """prometheus-adapter's ``rules`` (its config.yaml). Prometheus must scrape the pods
    (their prometheus.io/* annotations) with ``namespace`` and ``pod`` labels, as the usual
    kubernetes-pods scrape job does."""
    return {
        "rules": [
            _rule(QUEUE, QUEUE, "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"),
            _rule("model_server_request_duration_seconds_bucket", LATENCY, LATENCY_QUERY),
            _rule(MEMORY, MEMORY, "max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"),
        ]
    }


def adapter_helm_values() -> Obj:
    """The same rules as values of the prometheus-community/prometheus-adapter Helm chart
    (``rules.custom``); the chart's default rules stay as they are."""
    return {"rules": {"custom": adapter_rules()["rules"]}}


__all__ = ["hpa", "adapter_rules", "adapter_helm_values", "wanted", "labels"]
