"""The ``[deploy]`` settings: how `enclave-build k8s` runs a service on Kubernetes.

The spec's ``[deploy]`` section and service.json's ``deploy`` object share this one schema: the
build validates the spec with it and copies the values into service.json, which `enclave-build
k8s` reads back through the same schema (see :mod:`.service_info`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .schema import Field, Section
from .size import K8S_MEMORY, K8S_MEMORY_PATTERN

CPU_DOC = 'CPUs, e.g. "2", "1.5" or "500m"'
CPU_PATTERN = r"[0-9]+m|[0-9]+(\.[0-9]{1,3})?"
MEMORY_DOC = K8S_MEMORY.doc
MEMORY_PATTERN = K8S_MEMORY_PATTERN

_DNS_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
SGX_NODE_LABEL = "intel.feature.node.kubernetes.io/sgx"

DEPLOY = Section(
    "deploy",
    "how `enclave-build k8s` deploys the service on Kubernetes",
    (
        Field(
            "namespace",
            "str",
            "namespace of every object (default: the service's name)",
            pattern=_LABEL,
            pattern_doc="a DNS label (lower-case letters, digits, '-')",
        ),
        Field(
            "replicas",
            "int",
            "model-server replicas (the HPA's minimum when autoscaling)",
            default=2,
            minimum=1,
            maximum=1000,
        ),
        Field(
            "max_replicas",
            "int",
            "autoscaling upper bound; unset = no HorizontalPodAutoscaler",
            minimum=1,
            maximum=1000,
        ),
        Field(
            "cpu",
            "str",
            "CPU request of the enclave container",
            default="1",
            pattern=CPU_PATTERN,
            pattern_doc=CPU_DOC,
        ),
        Field(
            "cpu_limit",
            "str",
            "CPU limit (default: the smaller of [enclave] max_threads and "
            "4 CPUs, never less than cpu); at most [enclave] max_threads",
            pattern=CPU_PATTERN,
            pattern_doc=CPU_DOC,
        ),
        Field(
            "memory",
            "str",
            "ordinary (non-EPC) memory request of the enclave container: the "
            "untrusted runtime and, under EPC pressure, pages the kernel evicts",
            default="512Mi",
            pattern=MEMORY_PATTERN,
            pattern_doc=MEMORY_DOC,
        ),
        Field(
            "memory_limit",
            "str",
            "ordinary memory limit",
            default="2Gi",
            pattern=MEMORY_PATTERN,
            pattern_doc=MEMORY_DOC,
        ),
        Field(
            "epc_margin",
            "str",
            "EPC beyond [enclave] size to request (default: the libOS's "
            "margin, see `enclave-build plan-capacity`)",
            pattern=MEMORY_PATTERN,
            pattern_doc=MEMORY_DOC,
        ),
        Field(
            "read_only_root",
            "bool",
            "read-only root filesystem; files the libOS opens "
            "read-write (Gramine encrypted files) are copied to emptyDir volumes at start",
            default=True,
        ),
        Field(
            "ingress_host",
            "str",
            "host name of an Ingress with TLS passthrough to the gRPC port "
            "(needs [tls]); unset = no Ingress",
            pattern=_DNS_NAME,
            pattern_doc='a DNS name, e.g. "infer.example.com"',
        ),
        Field(
            "ingress_class",
            "str",
            "IngressClass of that Ingress (ingress-nginx started with --enable-ssl-passthrough)",
            default="nginx",
            pattern=_LABEL,
            pattern_doc="a DNS label",
        ),
        Field(
            "pccs_url",
            "str",
            "PCCS the quoting enclave (aesmd) and the secret server fetch "
            "certificates and collateral from",
            pattern=r"https://\S+",
            pattern_doc='an https:// URL, e.g. "https://pccs.internal:8081/sgx/certification/v4/"',
        ),
        Field(
            "aesmd_image",
            "str",
            "image of the aesmd sidecar (Intel's SGX PSW with the DCAP "
            "quote provider) that quotes for the enclave, pinned by digest: "
            "REGISTRY/NAME@sha256:...",
        ),
        Field(
            "secret_server_image",
            "str",
            "image running `enclave-build secrets serve` "
            "(enclave-build installed), pinned by digest: REGISTRY/NAME@sha256:...",
        ),
        Field(
            "secret_server_replicas",
            "int",
            "secret-server replicas (stateless)",
            default=2,
            minimum=1,
            maximum=100,
        ),
        Field(
            "target_queue_depth",
            "int",
            "autoscaling: requests waiting per replica",
            default=4,
            minimum=1,
        ),
        Field(
            "target_latency_ms",
            "int",
            "autoscaling: p95 request latency per replica, ms",
            default=250,
            minimum=1,
        ),
        Field(
            "target_memory_percent",
            "int",
            "autoscaling: enclave memory in use per replica, %",
            default=80,
            minimum=1,
            maximum=100,
        ),
        Field(
            "node_selector",
            "table[str]",
            "node labels the pods need (default: Intel node feature discovery's SGX label)",
            default={SGX_NODE_LABEL: "true"},
        ),
    ),
)


@dataclass(frozen=True)
class DeploySpec:
    """Validated ``[deploy]`` values (defaults filled in)."""

    namespace: str | None = None
    replicas: int = 2
    max_replicas: int | None = None
    cpu: str = "1"
    cpu_limit: str | None = None
    memory: str = "512Mi"
    memory_limit: str = "2Gi"
    epc_margin: str | None = None
    read_only_root: bool = True
    ingress_host: str | None = None
    ingress_class: str = "nginx"
    pccs_url: str | None = None
    aesmd_image: str | None = None
    secret_server_image: str | None = None
    secret_server_replicas: int = 2
    target_queue_depth: int = 4
    target_latency_ms: int = 250
    target_memory_percent: int = 80
    node_selector: Mapping[str, str] = field(default_factory=lambda: {SGX_NODE_LABEL: "true"})

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> DeploySpec:
        defaults = cls()
        kwargs: dict[str, Any] = {
            f.name: values.get(f.name)
            if values.get(f.name) is not None
            else getattr(defaults, f.name)
            for f in fields(cls)
        }
        kwargs["node_selector"] = dict(kwargs["node_selector"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["node_selector"] = dict(sorted(self.node_selector.items()))
        return data


__all__ = [
    "DEPLOY",
    "DeploySpec",
    "SGX_NODE_LABEL",
    "CPU_DOC",
    "CPU_PATTERN",
    "MEMORY_DOC",
    "MEMORY_PATTERN",
]
