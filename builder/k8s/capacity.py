"""How much EPC one replica needs, and how many replicas fit on SGX nodes.

The Intel SGX device plugin advertises a node's EPC as the extended resource
``sgx.intel.com/epc`` (bytes) and the device nodes as ``sgx.intel.com/enclave`` and
``sgx.intel.com/provision`` (each limited per node, 20 containers by default: the plugin's
``-enclave-limit`` / ``-provision-limit``). The scheduler places a pod only where its EPC
request still fits, so the request must cover everything the enclave commits:

* **Gramine** without EDMM adds every page of ``sgx.enclave_size`` at start (the manifest, the
  PAL and LibOS, heap, thread stacks, TCS/SSA all live inside that range; free pages are added,
  just not measured), so the enclave itself needs exactly its size. The margin covers what the
  kernel keeps per enclave outside the range: the SECS page and the version-array pages it uses
  when it pages EPC out: 1 MiB. With EDMM pages are added on demand, but the enclave may grow
  to its size, so the request stays the same.
* **Occlum** (the Intel SGX SDK underneath) lays out the LibOS image, its kernel heap
  (``kernel_space_heap_size``, 32 MiB by default) and one kernel stack per thread
  (``kernel_space_stack_size``, 1 MiB by default, times ``max_num_of_threads``) besides the
  user space the application sees. enclave-build's [enclave] size is that user space, so the
  margin is 32 MiB + max_threads x 1 MiB + 64 MiB for the LibOS image, TCS/SSA/TLS pages and
  the SDK's metadata (an upper estimate; the exact layout is printed by the SDK's signing tool).
* Every pod that attests needs Intel's quoting and provisioning enclaves (QE3, PCE), which take
  :data:`AESMD_EPC`. Gramine asks an **aesmd** sidecar for quotes: the sidecar requests that EPC
  and one more ``sgx.intel.com/enclave`` slot. Occlum's runtime calls the DCAP quote library
  itself (in-process quoting: the PAL's ``sgx_qe_get_target_info`` / ``sgx_qe_get_quote``),
  which loads QE3 and PCE into the enclave container: its own request grows by that EPC, and
  it needs ``/dev/sgx_provision`` (:func:`quotes_in_process`).

Anything else is the platform's business: the EPC a node advertises is what it can give.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..deploy.quantity import MI
from ..deploy.settings import LIBOS
from ..errors import UsageError

#: Gramine: SECS + the kernel's version-array pages per enclave.
GRAMINE_MARGIN = 1 * MI
#: Occlum: kernel heap (Occlum.json default) + LibOS image, TCS/SSA/TLS, SDK metadata.
OCCLUM_FIXED_MARGIN = 32 * MI + 64 * MI
#: Occlum: one kernel stack per thread (Occlum.json default kernel_space_stack_size).
OCCLUM_PER_THREAD = 1 * MI
#: aesmd's QE3 and PCE enclaves (a few MiB each at most).
AESMD_EPC = 8 * MI
#: The Intel SGX device plugin's default -enclave-limit and -provision-limit.
DEFAULT_DEVICE_LIMIT = 20


def quotes_in_process(libos: str) -> bool:
    """Whether the libOS's runtime loads the quoting enclaves itself (Occlum: libsgx_dcap_ql
    in its PAL) instead of asking an aesmd over its socket (Gramine)."""
    return libos == "occlum"


def libos_margin(libos: str, max_threads: int) -> int:
    """EPC beyond the enclave size the libOS needs (see the module docstring)."""
    if libos == "gramine":
        return GRAMINE_MARGIN
    if libos == "occlum":
        return OCCLUM_FIXED_MARGIN + max_threads * OCCLUM_PER_THREAD
    raise UsageError(
        f"no EPC margin known for libOS {libos!r}; allowed: {', '.join(LIBOS)} "
        "(or set [deploy] epc_margin)"
    )


@dataclass(frozen=True)
class EpcRequest:
    """The EPC one replica asks the scheduler for, and where it comes from."""

    enclave_size: int
    margin: int
    sidecar: int  # the aesmd sidecar's own request (0 when the pod does not attest)
    #: the quoting enclaves the enclave container loads itself (Occlum pods that attest)
    in_process_quoting: int = 0

    @property
    def enclave_container(self) -> int:
        """``sgx.intel.com/epc`` of the enclave container, rounded up to whole MiB."""
        return math.ceil((self.enclave_size + self.margin) / MI) * MI + self.in_process_quoting

    @property
    def per_pod(self) -> int:
        return self.enclave_container + self.sidecar


def epc_request(
    enclave_size: int, libos: str, max_threads: int, *, attests: bool, margin: int | None = None
) -> EpcRequest:
    if enclave_size <= 0:
        raise UsageError(f"enclave size must be positive, got {enclave_size}")
    quoting = AESMD_EPC if attests else 0
    in_process = quotes_in_process(libos)
    return EpcRequest(
        enclave_size,
        libos_margin(libos, max_threads) if margin is None else margin,
        0 if in_process else quoting,
        quoting if in_process else 0,
    )


@dataclass(frozen=True)
class CapacityPlan:
    libos: str
    enclave_size: int
    margin: int
    sidecar_epc: int
    quoting_epc: int  # QE3 + PCE in the enclave container (Occlum); 0 with a sidecar
    epc_per_pod: int
    epc_per_node: int
    nodes: int
    enclave_devices_per_pod: int
    enclave_limit: int
    replicas_per_node: int
    replicas: int
    limited_by: str  # "epc" or "enclave-limit"
    epc_unused_per_node: int

    def to_json(self) -> dict:
        return asdict(self)

    def why_none_fit(self) -> str | None:
        """What keeps every replica off a node, or None when at least one fits."""
        if self.replicas_per_node:
            return None
        if self.epc_per_pod > self.epc_per_node:
            quoting = (
                f" + quoting enclaves {self.quoting_epc}"
                if self.quoting_epc
                else f" + aesmd {self.sidecar_epc}"
            )
            return (
                f"no replica fits: one needs {self.epc_per_pod} bytes of EPC (enclave "
                f"{self.enclave_size} + margin {self.margin}{quoting}) "
                f"but a node has {self.epc_per_node}; use a smaller [enclave] size "
                "(with EDMM the enclave still reserves its whole size) or nodes with "
                "more EPC"
            )
        return (
            f"no replica fits: a pod opens /dev/sgx_enclave from "
            f"{self.enclave_devices_per_pod} containers but the device plugin allows "
            f"{self.enclave_limit} per node (-enclave-limit)"
        )


def plan_capacity(
    enclave_size: int,
    epc_per_node: int,
    nodes: int,
    *,
    libos: str = "gramine",
    max_threads: int = 64,
    attests: bool = True,
    margin: int | None = None,
    enclave_limit: int = DEFAULT_DEVICE_LIMIT,
) -> CapacityPlan:
    """Replicas that fit per node and in the cluster: by EPC, and by the device plugin's limit
    on containers per node that may open /dev/sgx_enclave (an aesmd sidecar is one more; an
    Occlum pod quotes in its one container, which also takes one of the node's
    /dev/sgx_provision slots, limited alike by -provision-limit)."""
    if epc_per_node <= 0:
        raise UsageError(f"EPC per node must be positive, got {epc_per_node}")
    if nodes < 1:
        raise UsageError(f"nodes must be at least 1, got {nodes}")
    if enclave_limit < 1:
        raise UsageError(f"the enclave device limit must be at least 1, got {enclave_limit}")
    request = epc_request(enclave_size, libos, max_threads, attests=attests, margin=margin)
    devices = 2 if request.sidecar else 1
    by_epc = epc_per_node // request.per_pod
    by_devices = enclave_limit // devices
    per_node = min(by_epc, by_devices)
    return CapacityPlan(
        libos=libos,
        enclave_size=enclave_size,
        margin=request.margin,
        sidecar_epc=request.sidecar,
        quoting_epc=request.in_process_quoting,
        epc_per_pod=request.per_pod,
        epc_per_node=epc_per_node,
        nodes=nodes,
        enclave_devices_per_pod=devices,
        enclave_limit=enclave_limit,
        replicas_per_node=per_node,
        replicas=per_node * nodes,
        limited_by="epc" if by_epc <= by_devices else "enclave-limit",
        epc_unused_per_node=epc_per_node - per_node * request.per_pod,
    )
