"""The spec's ``[deploy]`` section: how the service runs on Kubernetes.

It is validated with the rest of the spec (file, line and key in every error) and copied by the
build into ``service.json``, so ``enclave-build k8s BUILD_DIR`` needs only the build output.
Per-environment changes (replicas, hosts) belong in a kustomize overlay, not a rebuild.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enclave_build.contract.deploy import CPU_DOC, DEPLOY, DeploySpec
from enclave_build.contract.schema import Problem, validate_table

from ..errors import UsageError
from .quantity import cpu_millis, memory_bytes

_DNS_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
#: The libOSes whose EPC margin `enclave-build k8s` knows (others need [deploy] epc_margin).
LIBOS = ("gramine", "occlum")

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_SUBDOMAIN = re.compile(r"^(?=.{1,253}\Z)" + _DNS_NAME + r"\Z")
_DIGEST_DOC = (
    "an image reference pinned by digest, REGISTRY/NAME@sha256:<64 hex> (Kubernetes "
    "must run the image that was reviewed; `skopeo inspect docker://REF` or `docker "
    "buildx imagetools inspect REF` prints the digest)"
)


def label_key_problem(key: str) -> str | None:
    """Why *key* is not a Kubernetes label key (``[PREFIX/]NAME``), or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not _SUBDOMAIN.match(prefix):
        return f"label key {key!r}: the prefix before '/' must be a DNS subdomain"
    if not _LABEL_NAME.match(name):
        return (
            f"label key {key!r}: the name must be 1 to 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if value and not _LABEL_NAME.match(value):
        return (
            f"label value {value!r}: at most 63 letters, digits, '-', '_' or '.', starting "
            "and ending with a letter or digit (or empty)"
        )
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


def check_deploy(
    values: Mapping[str, Any], enclave: Mapping[str, Any], problems: list[Problem]
) -> None:
    """Cross-key checks of ``[deploy]`` (each key's own type and pattern are checked already)."""
    bad = {p.path for p in problems}

    def ok(key: str) -> bool:
        return values.get(key) is not None and ("deploy", key) not in bad

    for key in ("aesmd_image", "secret_server_image"):
        if ok(key) and (problem := image_problem(values[key])):
            problems.append(Problem(("deploy", key), problem))
    host = values["ingress_host"] if ok("ingress_host") else ""
    if len(host) > 253 or any(len(label) > 63 for label in host.split(".")):
        problems.append(
            Problem(
                ("deploy", "ingress_host"),
                "too long; allowed: a DNS name of at most 253 characters, each label at most 63",
            )
        )
    if ok("node_selector"):
        for key, value in values["node_selector"].items():
            problem = label_key_problem(key) or label_value_problem(value)
            if problem:
                problems.append(Problem(("deploy", "node_selector", key), problem))
    if ok("cpu") and cpu_millis(values["cpu"]) == 0:
        problems.append(
            Problem(
                ("deploy", "cpu"),
                f"{values['cpu']!r} is no CPU at all; allowed: {CPU_DOC}, more than 0",
            )
        )
    threads = enclave.get("max_threads")
    if ok("cpu") and isinstance(threads, int) and cpu_millis(values["cpu"]) > threads * 1000:
        problems.append(
            Problem(
                ("deploy", "cpu"),
                f"{values['cpu']!r} is more than [enclave] max_threads "
                f"({threads}): the enclave cannot use it; allowed: at most "
                f"{threads}",
            )
        )

    if ok("max_replicas") and ok("replicas") and values["max_replicas"] < values["replicas"]:
        problems.append(
            Problem(
                ("deploy", "max_replicas"),
                f"{values['max_replicas']} is less than replicas "
                f"({values['replicas']}), the autoscaler's minimum",
            )
        )
    if (
        ok("cpu_limit")
        and ok("cpu")
        and cpu_millis(values["cpu_limit"]) < cpu_millis(values["cpu"])
    ):
        problems.append(
            Problem(
                ("deploy", "cpu_limit"),
                f"{values['cpu_limit']!r} is less than the request cpu = {values['cpu']!r}",
            )
        )
    if (
        ok("cpu_limit")
        and isinstance(threads, int)
        and cpu_millis(values["cpu_limit"]) > threads * 1000
    ):
        problems.append(
            Problem(
                ("deploy", "cpu_limit"),
                f"{values['cpu_limit']!r} is more than [enclave] max_threads "
                f"({threads}): the enclave never runs more threads at once, so "
                "the extra CPU could never be used; allowed: at most "
                f"{threads}",
            )
        )
    if (
        ok("memory_limit")
        and ok("memory")
        and memory_bytes(values["memory_limit"]) < memory_bytes(values["memory"])
    ):
        problems.append(
            Problem(
                ("deploy", "memory_limit"),
                f"{values['memory_limit']!r} is less than the request memory = "
                f"{values['memory']!r}",
            )
        )


def validate_deploy(values: Any, enclave: Mapping[str, Any], source: str) -> DeploySpec:
    """``[deploy]`` values given outside the spec (e.g. `enclave-build k8s` options): the same
    checks as the spec's ``[deploy]``. Raises UsageError naming *source* and every bad key."""
    if not isinstance(values, dict):
        raise UsageError(f"{source}: deploy: expected a JSON object")
    given = {k: v for k, v in values.items() if v is not None}
    problems: list[Problem] = []
    checked = validate_table(DEPLOY, given, ("deploy",), Path("."), problems)
    check_deploy(checked, enclave, problems)
    if problems:
        raise UsageError("\n".join(f"{source}: {p.key}: {p.message}" for p in problems))
    return DeploySpec.from_values(checked)
