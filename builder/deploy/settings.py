"""The spec's ``[deploy]`` section: how the service runs on Kubernetes.

It is validated with the rest of the spec (file, line and key in every error) and copied by the
build into ``service.json``, so ``enclave-build k8s BUILD_DIR`` needs only the build output.
Per-environment changes (replicas, hosts) belong in a kustomize overlay, not a rebuild.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import re
from pathlib import Path

from ..errors import UsageError
from ..schema import Field, Problem, Section, validate_table
from .quantity import (CPU_DOC, CPU_PATTERN, MEMORY_DOC, MEMORY_PATTERN, cpu_millis,
                       memory_bytes)

_DNS_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
SGX_NODE_LABEL = "intel.feature.node.kubernetes.io/sgx"
#: The libOSes whose EPC margin `enclave-build k8s` knows (others need [deploy] epc_margin).
LIBOS = ("gramine", "occlum")

DEPLOY = Section("deploy", "how `enclave-build k8s` deploys the service on Kubernetes", (
    Field("namespace", "str", "namespace of every object (default: the service's name)",
          pattern=_LABEL, pattern_doc="a DNS label (lower-case letters, digits, '-')"),
    Field("replicas", "int", "model-server replicas (the HPA's minimum when autoscaling)",
          default=2, minimum=1, maximum=1000),
    Field("max_replicas", "int", "autoscaling upper bound; unset = no HorizontalPodAutoscaler",
          minimum=1, maximum=1000),
    Field("cpu", "str", "CPU request of the enclave container", default="1",
          pattern=CPU_PATTERN, pattern_doc=CPU_DOC),
    Field("cpu_limit", "str", "CPU limit (default: the smaller of [enclave] max_threads and "
          "4 CPUs, never less than cpu); at most [enclave] max_threads",
          pattern=CPU_PATTERN, pattern_doc=CPU_DOC),
    Field("memory", "str", "ordinary (non-EPC) memory request of the enclave container: the "
          "untrusted runtime and, under EPC pressure, pages the kernel evicts",
          default="512Mi", pattern=MEMORY_PATTERN, pattern_doc=MEMORY_DOC),
    Field("memory_limit", "str", "ordinary memory limit", default="2Gi",
          pattern=MEMORY_PATTERN, pattern_doc=MEMORY_DOC),
    Field("epc_margin", "str", "EPC beyond [enclave] size to request (default: the libOS's "
          "margin, see `enclave-build plan-capacity`)", pattern=MEMORY_PATTERN,
          pattern_doc=MEMORY_DOC),
    Field("read_only_root", "bool", "read-only root filesystem; files the libOS opens "
          "read-write (Gramine encrypted files) are copied to emptyDir volumes at start",
          default=True),
    Field("ingress_host", "str", "host name of an Ingress with TLS passthrough to the gRPC port "
          "(needs [tls]); unset = no Ingress", pattern=_DNS_NAME,
          pattern_doc="a DNS name, e.g. \"infer.example.com\""),
    Field("ingress_class", "str", "IngressClass of that Ingress (ingress-nginx started with "
          "--enable-ssl-passthrough)", default="nginx", pattern=_LABEL,
          pattern_doc="a DNS label"),
    Field("pccs_url", "str", "PCCS the quoting enclave (aesmd) and the secret server fetch "
          "certificates and collateral from", pattern=r"https://\S+",
          pattern_doc='an https:// URL, e.g. "https://pccs.internal:8081/sgx/certification/v4/"'),
    Field("aesmd_image", "str", "image of the aesmd sidecar (Intel's SGX PSW with the DCAP "
          "quote provider) that quotes for the enclave, pinned by digest: "
          "REGISTRY/NAME@sha256:..."),
    Field("secret_server_image", "str", "image running `enclave-build secrets serve` "
          "(enclave-build installed), pinned by digest: REGISTRY/NAME@sha256:..."),
    Field("secret_server_replicas", "int", "secret-server replicas (stateless)", default=2,
          minimum=1, maximum=100),
    Field("target_queue_depth", "int", "autoscaling: requests waiting per replica", default=4,
          minimum=1),
    Field("target_latency_ms", "int", "autoscaling: p95 request latency per replica, ms",
          default=250, minimum=1),
    Field("target_memory_percent", "int", "autoscaling: enclave memory in use per replica, %",
          default=80, minimum=1, maximum=100),
    Field("node_selector", "table[str]", "node labels the pods need (default: Intel node "
          "feature discovery's SGX label)", default={SGX_NODE_LABEL: "true"}),
))


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
    node_selector: Mapping[str, str] = field(
        default_factory=lambda: {SGX_NODE_LABEL: "true"})

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "DeploySpec":
        defaults = cls()
        kwargs = {f.name: values.get(f.name) if values.get(f.name) is not None
                  else getattr(defaults, f.name) for f in fields(cls)}
        kwargs["node_selector"] = dict(kwargs["node_selector"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["node_selector"] = dict(sorted(self.node_selector.items()))
        return data


_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_SUBDOMAIN = re.compile(r"^(?=.{1,253}\Z)" + _DNS_NAME + r"\Z")
_DIGEST_DOC = ("an image reference pinned by digest, REGISTRY/NAME@sha256:<64 hex> (Kubernetes "
               "must run the image that was reviewed; `skopeo inspect docker://REF` or `docker "
               "buildx imagetools inspect REF` prints the digest)")


def label_key_problem(key: str) -> str | None:
    """Why *key* is not a Kubernetes label key (``[PREFIX/]NAME``), or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not _SUBDOMAIN.match(prefix):
        return f"label key {key!r}: the prefix before '/' must be a DNS subdomain"
    if not _LABEL_NAME.match(name):
        return (f"label key {key!r}: the name must be 1 to 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    if value and not _LABEL_NAME.match(value):
        return (f"label value {value!r}: at most 63 letters, digits, '-', '_' or '.', starting "
                "and ending with a letter or digit (or empty)")
    return None


def image_problem(ref: str) -> str | None:
    """Why *ref* cannot name a container image run next to an enclave, or None."""
    from ..image.reference import parse_registry_ref

    if not ref:
        return f"empty; allowed: {_DIGEST_DOC}"
    try:
        parsed = parse_registry_ref(ref)
    except UsageError as exc:
        return f"{exc}; allowed: {_DIGEST_DOC}"
    if parsed.digest is None:
        return f"{ref!r} is not pinned by digest; allowed: {_DIGEST_DOC}"
    return None


def check_deploy(values: Mapping[str, Any], enclave: Mapping[str, Any],
                 problems: list[Problem]) -> None:
    """Cross-key checks of ``[deploy]`` (each key's own type and pattern are checked already)."""
    bad = {p.path for p in problems}

    def ok(key: str) -> bool:
        return values.get(key) is not None and ("deploy", key) not in bad

    for key in ("aesmd_image", "secret_server_image"):
        if ok(key) and (problem := image_problem(values[key])):
            problems.append(Problem(("deploy", key), problem))
    host = values["ingress_host"] if ok("ingress_host") else ""
    if len(host) > 253 or any(len(label) > 63 for label in host.split(".")):
        problems.append(Problem(("deploy", "ingress_host"), "too long; allowed: a DNS name of at "
                                "most 253 characters, each label at most 63"))
    if ok("node_selector"):
        for key, value in values["node_selector"].items():
            problem = label_key_problem(key) or label_value_problem(value)
            if problem:
                problems.append(Problem(("deploy", "node_selector", key), problem))
    if ok("cpu") and cpu_millis(values["cpu"]) == 0:
        problems.append(Problem(("deploy", "cpu"), f"{values['cpu']!r} is no CPU at all; "
                                f"allowed: {CPU_DOC}, more than 0"))
    threads = enclave.get("max_threads")
    if ok("cpu") and isinstance(threads, int) and cpu_millis(values["cpu"]) > threads * 1000:
        problems.append(Problem(("deploy", "cpu"),
                                f"{values['cpu']!r} is more than [enclave] max_threads "
                                f"({threads}): the enclave cannot use it; allowed: at most "
                                f"{threads}"))

    if ok("max_replicas") and ok("replicas") and values["max_replicas"] < values["replicas"]:
        problems.append(Problem(("deploy", "max_replicas"),
                                f"{values['max_replicas']} is less than replicas "
                                f"({values['replicas']}), the autoscaler's minimum"))
    if ok("cpu_limit") and ok("cpu") and cpu_millis(values["cpu_limit"]) < cpu_millis(values["cpu"]):
        problems.append(Problem(("deploy", "cpu_limit"),
                                f"{values['cpu_limit']!r} is less than the request cpu = "
                                f"{values['cpu']!r}"))
    if ok("cpu_limit") and isinstance(threads, int) and \
            cpu_millis(values["cpu_limit"]) > threads * 1000:
        problems.append(Problem(("deploy", "cpu_limit"),
                                f"{values['cpu_limit']!r} is more than [enclave] max_threads "
                                f"({threads}): the enclave never runs more threads at once, so "
                                "the extra CPU could never be used; allowed: at most "
                                f"{threads}"))
    if ok("memory_limit") and ok("memory") and \
            memory_bytes(values["memory_limit"]) < memory_bytes(values["memory"]):
        problems.append(Problem(("deploy", "memory_limit"),
                                f"{values['memory_limit']!r} is less than the request memory = "
                                f"{values['memory']!r}"))


def validate_deploy(values: Any, enclave: Mapping[str, Any], source: str) -> DeploySpec:
    """``deploy`` as read back from a build's service.json: the same checks as the spec's
    ``[deploy]`` (the file may have been edited or come from elsewhere). Raises UsageError
    naming *source* and every bad key."""
    if not isinstance(values, dict):
        raise UsageError(f"{source}: deploy: expected a JSON object")
    given = {k: v for k, v in values.items() if v is not None}
    problems: list[Problem] = []
    checked = validate_table(DEPLOY, given, ("deploy",), Path("."), problems)
    check_deploy(checked, enclave, problems)
    if problems:
        raise UsageError("\n".join(f"{source}: {p.key}: {p.message}" for p in problems))
    return DeploySpec.from_values(checked)
