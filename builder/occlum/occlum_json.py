"""The plan -> Occlum.json (Occlum 0.31's user-facing configuration), with where each value
came from in the spec.

How the libOS-neutral plan maps onto Occlum:

- ``resource_limits``: ``[enclave] size`` is the enclave's whole memory budget. Occlum splits
  it into the LibOS kernel heap (``occlum.kernel_heap``), one kernel stack per thread
  (``occlum.kernel_stack`` x ``max_num_of_threads``) and the user space, which gets the rest.
  With ``[enclave] edmm = true`` the same budget is the *maximum*: ``kernel_space_heap_max_size``
  and ``user_space_max_size`` are set, ``user_space_size`` is the initial size
  (``occlum.user_space_init``, default min(256 MB, maximum)), ``init_num_of_threads`` is
  ``occlum.init_threads`` when given, and ``feature.enable_edmm`` is on. (Occlum's own tool
  raises the EDMM maxima to at least 1 GB kernel heap / 16 GB user space, see
  rules.EDMM_*; memory is committed on demand.)
- ``process.default_stack_size`` is the plan's stack size; heap and mmap from ``[occlum]``.
- ``entry_points``: exactly one program (Occlum matches program paths by prefix, so a file path
  admits that one program): the measured launcher for Python services (launcher.py: Occlum
  takes the command line from the host), else the plan's entrypoint.
- ``env.default``: the plan's environment, measured (sorted ``NAME=VALUE``), with Occlum's glibc
  first on ``LD_LIBRARY_PATH``; ``env.untrusted``: the plan's passthrough names only.
- ``metadata``: product_id / version_number / debuggable from ``[enclave]``; ``disable_log`` is
  written explicitly (off for debug enclaves, on for release ones, as Occlum defaults); KSS ids
  from ``[occlum]`` as 64-bit high/low halves.
- ``mount``: the unionfs root over the image SEFS (MAC filled in by ``occlum build``) and the
  container SEFS, as ``occlum new`` writes it; ramfs for the plan's tmpfs mounts, for ``/tmp``
  and for the key directory init writes fetched keys to; hostfs only for ``occlum.hostfs``.
  The plan's encrypted mounts need no mount on Occlum: their files are inside the SEFS image,
  which is encrypted as a whole (see render.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..plan import MountType, ServicePlan
from .rules import format_size
from .spec_section import OcclumPlanOptions

#: Where `occlum new` puts Occlum's glibc in the image (tools/occlum, cmd_new).
OCCLUM_GLIBC_LIB = "/opt/occlum/glibc/lib"
#: Where init (init_grpc_ratls) writes the keys it fetched: a ramfs, so plaintext keys never
#: reach the host's disk, not even sealed.
KEYS_DIR = "/run/enclave-build/keys"
DEFAULT_USER_SPACE_INIT = 256 << 20
#: Smallest user space worth starting a LibOS process in.
MIN_USER_SPACE = 32 << 20
FRAMEWORK_KEY = "service.framework"  # values the framework plugin chose


class OcclumConfigError(UsageError):
    """The plan asks for something Occlum cannot do; names the spec key."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(f"{where}: {message}")


@dataclass
class Rendered:
    doc: dict[str, Any]
    #: JSON path prefix -> spec key that value came from
    origins: dict[str, str] = field(default_factory=dict)
    mount_targets: list[str] = field(default_factory=list)


def locate(plan: ServicePlan, key: str) -> str:
    return plan.origin.locate(key) if plan.origin is not None else key


def _fail(plan: ServicePlan, key: str, message: str) -> OcclumConfigError:
    return OcclumConfigError(locate(plan, key), message)


def _id_halves(value: int) -> dict[str, str]:
    return {"high": f"0x{value >> 64:016x}", "low": f"0x{value & ((1 << 64) - 1):016x}"}


def _resource_limits(plan: ServicePlan, opts: OcclumPlanOptions, out: Rendered) -> dict:
    enclave = plan.enclave
    threads = enclave.max_threads
    if threads < 1:
        raise _fail(plan, "enclave.max_threads", f"{threads}: Occlum needs at least one thread")
    heap_max = opts.kernel_heap_max or opts.kernel_heap
    if opts.kernel_heap > heap_max:
        raise _fail(
            plan,
            "occlum.kernel_heap",
            f"{format_size(opts.kernel_heap)} exceeds "
            f"occlum.kernel_heap_max {format_size(heap_max)}",
        )
    kernel = heap_max + threads * opts.kernel_stack
    user_max = enclave.size - kernel
    if user_max < MIN_USER_SPACE:
        raise _fail(
            plan,
            "enclave.size",
            f"{format_size(enclave.size)} leaves "
            f"{format_size(max(user_max, 0))} for the user space after the LibOS "
            f"kernel's {format_size(kernel)} (heap {format_size(heap_max)} + "
            f"{threads} threads x {format_size(opts.kernel_stack)} stack); at least "
            f"{format_size(MIN_USER_SPACE)} is needed: raise [enclave] size or lower "
            "occlum.kernel_heap, occlum.kernel_stack or enclave.max_threads",
        )
    rl: dict[str, Any] = {
        "max_num_of_threads": threads,
        "kernel_space_heap_size": format_size(opts.kernel_heap),
        "kernel_space_stack_size": format_size(opts.kernel_stack),
    }
    out.origins.update(
        {
            "resource_limits.max_num_of_threads": "enclave.max_threads",
            "resource_limits.kernel_space_heap_size": "occlum.kernel_heap",
            "resource_limits.kernel_space_stack_size": "occlum.kernel_stack",
            "resource_limits.kernel_space_heap_max_size": "occlum.kernel_heap_max",
            "resource_limits.user_space_max_size": "enclave.size",
            "resource_limits.init_num_of_threads": "occlum.init_threads",
        }
    )
    if enclave.edmm:
        init = opts.user_space_init or min(DEFAULT_USER_SPACE_INIT, user_max)
        if init > user_max:
            raise _fail(
                plan,
                "occlum.user_space_init",
                f"{format_size(init)} exceeds the user "
                f"space maximum {format_size(user_max)} ([enclave] size minus the "
                "kernel's share)",
            )
        if opts.init_threads is not None and opts.init_threads > threads:
            raise _fail(
                plan,
                "occlum.init_threads",
                f"{opts.init_threads} exceeds enclave.max_threads {threads}",
            )
        rl["kernel_space_heap_max_size"] = format_size(heap_max)
        rl["user_space_size"] = format_size(init)
        rl["user_space_max_size"] = format_size(user_max)
        if opts.init_threads is not None:
            rl["init_num_of_threads"] = opts.init_threads
        out.origins["resource_limits.user_space_size"] = "occlum.user_space_init"
    else:
        rl["user_space_size"] = format_size(user_max)
        out.origins["resource_limits.user_space_size"] = "enclave.size"
    return rl


def _env(plan: ServicePlan, out: Rendered) -> dict:
    values = dict(plan.env)
    values.setdefault("HOME", "/tmp")
    path = values.get("LD_LIBRARY_PATH", "")
    values["LD_LIBRARY_PATH"] = ":".join(
        [OCCLUM_GLIBC_LIB] + [p for p in path.split(":") if p and p != OCCLUM_GLIBC_LIB]
    )
    clash = sorted(set(values) & set(plan.env_passthrough))
    if clash:
        raise _fail(
            plan,
            FRAMEWORK_KEY,
            f"environment variable(s) {', '.join(clash)} both measured and taken from the host",
        )
    out.origins["env"] = FRAMEWORK_KEY
    return {
        "default": [f"{k}={v}" for k, v in sorted(values.items())],
        "untrusted": sorted(set(plan.env_passthrough)),
    }


def _mounts(plan: ServicePlan, opts: OcclumPlanOptions, keys: bool, out: Rendered) -> list:
    mounts: list[dict[str, Any]] = [
        {
            "target": "/",
            "type": "unionfs",
            "options": {
                "layers": [
                    {
                        "target": "/",
                        "type": "sefs",
                        "source": "./build/mount/__ROOT",
                        "options": {"MAC": ""},
                    },
                    {"target": "/", "type": "sefs", "source": "./run/mount/__ROOT"},
                ]
            },
        }
    ]
    out.origins["mount[0]"] = FRAMEWORK_KEY

    def add(entry: dict[str, Any], origin: str) -> None:
        out.origins[f"mount[{len(mounts)}]"] = origin
        mounts.append(entry)
        out.mount_targets.append(entry["target"])

    for index, mount in enumerate(plan.mounts):
        path = mount.path.rstrip("/") or "/"
        if mount.type is MountType.TMPFS:
            add({"target": path, "type": "ramfs"}, FRAMEWORK_KEY)
        elif mount.type is MountType.CHROOT:
            if (mount.uri or "") != f"file:{path}":
                raise _fail(
                    plan,
                    FRAMEWORK_KEY,
                    f"plan mount {index} shows image directory "
                    f"{mount.uri} at {path}; Occlum's root is the image itself, so "
                    "files must be placed where the enclave opens them",
                )
        # ENCRYPTED: the files are in the encrypted SEFS image; nothing to mount.
    if not any(m["target"] == "/tmp" for m in mounts):
        add({"target": "/tmp", "type": "ramfs"}, FRAMEWORK_KEY)
    if keys:
        add({"target": KEYS_DIR, "type": "ramfs"}, "secrets.server")
    for target, source in opts.hostfs:
        add({"target": target, "type": "hostfs", "source": source}, f"occlum.hostfs.{target}")
    return mounts


def occlum_json(
    plan: ServicePlan, opts: OcclumPlanOptions, *, keys: bool, entry_point: str | None = None
) -> Rendered:
    """The Occlum.json document for *plan* (*keys*: init writes fetched keys to KEYS_DIR;
    *entry_point*: the only program `occlum run` may start, default the plan's entrypoint)."""
    out = Rendered({})
    entry = entry_point or plan.entrypoint
    out.origins["entry_points"] = FRAMEWORK_KEY
    out.origins["process.default_stack_size"] = FRAMEWORK_KEY
    out.origins["process.default_heap_size"] = "occlum.process_heap"
    out.origins["process.default_mmap_size"] = "occlum.process_mmap"
    out.origins.update(
        {
            "metadata.product_id": "enclave.isv_prod_id",
            "metadata.version_number": "enclave.isv_svn",
            "metadata.debuggable": "enclave.debug",
            "metadata.disable_log": "enclave.debug",
            "metadata.enable_kss": "occlum.enable_kss",
            "metadata.family_id": "occlum.family_id",
            "metadata.ext_prod_id": "occlum.ext_prod_id",
            "feature.amx": "occlum.amx",
            "feature.pkru": "occlum.pkru",
            "feature.io_uring": "occlum.io_uring",
            "feature.enable_edmm": "enclave.edmm",
            "feature.enable_posix_shm": "occlum.posix_shm",
        }
    )
    out.doc = {
        "resource_limits": _resource_limits(plan, opts, out),
        "process": {
            "default_stack_size": format_size(plan.enclave.stack_size),
            "default_heap_size": format_size(opts.process_heap),
            "default_mmap_size": format_size(opts.process_mmap),
        },
        "entry_points": [entry],
        "env": _env(plan, out),
        "metadata": {
            "product_id": plan.enclave.isv_prod_id,
            "version_number": plan.enclave.isv_svn,
            "debuggable": plan.enclave.debug,
            "disable_log": not plan.enclave.debug,
            "enable_kss": opts.enable_kss,
            "family_id": _id_halves(opts.family_id),
            "ext_prod_id": _id_halves(opts.ext_prod_id),
        },
        "feature": {
            "amx": opts.amx,
            "pkru": opts.pkru,
            "io_uring": opts.io_uring,
            "enable_edmm": plan.enclave.edmm,
            "enable_posix_shm": opts.posix_shm,
        },
        "mount": _mounts(plan, opts, keys, out),
    }
    return out
