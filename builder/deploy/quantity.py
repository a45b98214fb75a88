"""Kubernetes resource quantities: the few forms enclave-build reads and writes (sizes are
:class:`enclave_build.contract.size.Size`, read in the Kubernetes grammars)."""

from __future__ import annotations

import re

from enclave_build.contract.deploy import CPU_DOC, CPU_PATTERN, MEMORY_DOC, MEMORY_PATTERN
from enclave_build.contract.size import INT64_MAX, K8S_BYTES, K8S_MEMORY, Size, SizeError

MI = 1 << 20
GI = 1 << 30
_CPU = re.compile(r"^([0-9]+)m\Z|^([0-9]+(?:\.[0-9]{1,3})?)\Z")

#: Kubernetes keeps integer quantities in an int64.
QUANTITY_MAX = INT64_MAX
BYTES_QUANTITY_DOC = K8S_BYTES.doc


def cpu_millis(text: str) -> int:
    """``"500m"`` -> 500, ``"2"`` -> 2000, ``"1.5"`` -> 1500."""
    match = _CPU.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a CPU quantity; allowed: {CPU_DOC}")
    if match.group(1) is not None:
        return int(match.group(1))
    return round(float(match.group(2)) * 1000)


def memory_bytes(text: str) -> int:
    """``"512Mi"`` -> bytes (SizeError, a ValueError, otherwise)."""
    return int(Size.parse(text, K8S_MEMORY))


def bytes_quantity(text: str) -> int:
    """A Kubernetes quantity of bytes (``"64Gi"``, ``"64G"`` = 64 x 10^9, ``"68719476736"``),
    as the scheduler reads it: what a node's ``sgx.intel.com/epc`` allocatable says."""
    return int(Size.parse(text, K8S_BYTES))


def format_cpu(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_mebibytes(size: int) -> str:
    """Bytes rounded up to whole MiB (the device plugin counts EPC in bytes; MiB reads well)."""
    return Size(size).mebibytes_text()


def format_size(size: int) -> str:
    """4 GiB -> ``"4G"`` (the spec's own size notation), else MiB."""
    return Size(size).gigabytes_text()


__all__ = [
    "cpu_millis",
    "memory_bytes",
    "bytes_quantity",
    "format_cpu",
    "format_mebibytes",
    "format_size",
    "CPU_DOC",
    "CPU_PATTERN",
    "MEMORY_DOC",
    "MEMORY_PATTERN",
    "QUANTITY_MAX",
    "BYTES_QUANTITY_DOC",
    "SizeError",
    "MI",
    "GI",
]
