"""Kubernetes resource quantities: the few forms enclave-build reads and writes."""

from __future__ import annotations

import math
import re

MI = 1 << 20
GI = 1 << 30
_CPU = re.compile(r"^([0-9]+)m\Z|^([0-9]+(?:\.[0-9]{1,3})?)\Z")
_MEMORY = re.compile(r"^([1-9][0-9]*)(Ki|Mi|Gi|Ti)?\Z")
_BINARY = {None: 1, "Ki": 1 << 10, "Mi": MI, "Gi": GI, "Ti": 1 << 40}

CPU_DOC = 'CPUs, e.g. "2", "1.5" or "500m"'
MEMORY_DOC = 'bytes with a binary suffix, e.g. "512Mi" or "2Gi"'
CPU_PATTERN = r"[0-9]+m|[0-9]+(\.[0-9]{1,3})?"
MEMORY_PATTERN = r"[1-9][0-9]*(Ki|Mi|Gi|Ti)?"


def cpu_millis(text: str) -> int:
    """``"500m"`` -> 500, ``"2"`` -> 2000, ``"1.5"`` -> 1500."""
    match = _CPU.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a CPU quantity; allowed: {CPU_DOC}")
    if match.group(1) is not None:
        return int(match.group(1))
    return round(float(match.group(2)) * 1000)


def memory_bytes(text: str) -> int:
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a memory quantity; allowed: {MEMORY_DOC}")
    return int(match.group(1)) * _BINARY[match.group(2)]


_BYTES_QUANTITY = re.compile(r"^([0-9]+)(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?\Z")
_QUANTITY_SCALE = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                   "E": 10**18, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
                   "Pi": 1 << 50, "Ei": 1 << 60}
#: Kubernetes keeps integer quantities in an int64.
QUANTITY_MAX = (1 << 63) - 1
BYTES_QUANTITY_DOC = ("bytes as Kubernetes writes them: an integer, or with a decimal suffix "
                      "k, M, G, T (64G = 64 x 10^9) or a binary one Ki, Mi, Gi, Ti "
                      "(64Gi = 64 x 2^30)")


def bytes_quantity(text: str) -> int:
    """A Kubernetes quantity of bytes (``"64Gi"``, ``"64G"`` = 64 x 10^9, ``"68719476736"``),
    as the scheduler reads it: what a node's ``sgx.intel.com/epc`` allocatable says."""
    match = _BYTES_QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity of bytes; allowed: {BYTES_QUANTITY_DOC}")
    value = int(match.group(1)) * _QUANTITY_SCALE[match.group(2)]
    if not 0 < value <= QUANTITY_MAX:
        raise ValueError(f"{text!r} is out of range; allowed: more than 0 and at most "
                         f"{QUANTITY_MAX} bytes")
    return value


def format_cpu(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_mebibytes(size: int) -> str:
    """Bytes rounded up to whole MiB (the device plugin counts EPC in bytes; MiB reads well)."""
    return f"{math.ceil(size / MI)}Mi"


def format_size(size: int) -> str:
    """4 GiB -> ``"4G"`` (the spec's own size notation), else MiB."""
    if size % GI == 0:
        return f"{size // GI}G"
    return f"{math.ceil(size / MI)}M"
