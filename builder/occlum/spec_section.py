"""The optional ``[occlum]`` spec section: Occlum-only knobs, checked while the spec loads.

Everything libOS-neutral stays where it is (``[enclave] size``, ``max_threads``, ``edmm``,
``debug``, ``isv_prod_id``, ``isv_svn``); this section holds only what Occlum has and Gramine
does not. The Occlum backend declares it through its ``LibOS`` object (``section`` and
``options``), so the spec engine validates it like every other section and allows it only with
``service.libos = "occlum"``. Its values reach the backend as :class:`OcclumPlanOptions` in
``plan.libos_options`` (nothing downstream reads the spec)::

    [occlum]
    kernel_heap = "64M"            # Occlum.json resource_limits.kernel_space_heap_size
    kernel_stack = "1M"            # resource_limits.kernel_space_stack_size
    kernel_heap_max = "256M"       # EDMM only: resource_limits.kernel_space_heap_max_size
    user_space_init = "512M"       # EDMM only: resource_limits.user_space_size (initial)
    init_threads = 8               # EDMM only: resource_limits.init_num_of_threads
    process_heap = "32M"           # process.default_heap_size (brk)
    process_mmap = "100M"          # process.default_mmap_size (unused by Occlum 0.31)
    amx = 0                        # feature.amx: 0 off, 1 required, 2 if the CPU has it
    pkru = 0                       # feature.pkru, same values
    io_uring = 0                   # feature.io_uring: 0 off, 1..16 instances
    posix_shm = false              # feature.enable_posix_shm
    enable_kss = false             # metadata.enable_kss; then family_id / ext_prod_id count
    family_id = "0x0"              # metadata.family_id, up to 128 bits in hex
    ext_prod_id = "0x0"            # metadata.ext_prod_id, up to 128 bits in hex
    encrypt_image = false          # encrypt the SEFS image even without encrypted models
    server_measurements = ["../secret-server/out/measurements.json"]
    server_pin = "mr_enclave"      # or "mr_signer": what init requires of the secret server
    allow_debug_server = false     # accept a DEBUG secret-server enclave (insecure)
    build_image = "enclave-build/occlum:0.31.0"   # the Occlum toolchain image the build runs
                                   # in (default occlum/occlum:0.31.0-ubuntu22.04); the
                                   # ENCLAVE_BUILD_OCCLUM_IMAGE environment variable overrides it

    [occlum.hostfs]                # host directories visible in the enclave: only when asked
    "/host/data" = "/var/lib/app"  # target in the enclave = directory on the host

Sizes are ``<integer><K|M|G|T>`` with an optional trailing ``B`` (``"64M"``, ``"64MB"``).
``server_measurements`` are the measurements.json files of the secret-server enclave(s) that
Occlum's init may fetch keys from (init verifies the server's quote: mutual RA-TLS); they are
required when the service has keys to fetch.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.schema import Field, Problem, Section
from enclave_build.contract.size import OCCLUM_SIZE, Size, SizeError

from ..plan import ServicePlan
from ..spec import SectionContext

SECTION = Section(
    "occlum",
    'Occlum-only options (service.libos = "occlum")',
    (
        Field(
            "kernel_heap",
            "str",
            "LibOS kernel heap (Occlum.json kernel_space_heap_size)",
            default="32M",
        ),
        Field(
            "kernel_heap_max", "str", "EDMM only: kernel heap maximum (kernel_space_heap_max_size)"
        ),
        Field(
            "kernel_stack",
            "str",
            "LibOS kernel stack per thread (kernel_space_stack_size)",
            default="1M",
        ),
        Field(
            "user_space_init",
            "str",
            "EDMM only: initial user space (user_space_size); the "
            "maximum is [enclave] size minus the kernel's share",
        ),
        Field(
            "init_threads",
            "int",
            "EDMM only: threads created at start (init_num_of_threads)",
            minimum=1,
            maximum=4096,
        ),
        Field(
            "process_heap",
            "str",
            "brk heap of each process (process.default_heap_size)",
            default="32M",
        ),
        Field(
            "process_mmap",
            "str",
            "process.default_mmap_size (kept for Occlum's parser)",
            default="100M",
        ),
        Field(
            "amx",
            "int",
            "feature.amx: 0 off, 1 required, 2 when the CPU has it",
            default=0,
            minimum=0,
            maximum=2,
        ),
        Field(
            "pkru",
            "int",
            "feature.pkru: 0 off, 1 required, 2 when the CPU has it",
            default=0,
            minimum=0,
            maximum=2,
        ),
        Field(
            "io_uring",
            "int",
            "feature.io_uring: 0 off, 1..16 io_uring instances",
            default=0,
            minimum=0,
            maximum=16,
        ),
        Field("posix_shm", "bool", "feature.enable_posix_shm", default=False),
        Field(
            "enable_kss", "bool", "metadata.enable_kss (Key Separation and Sharing)", default=False
        ),
        Field("family_id", "str", "metadata.family_id (KSS), hex up to 128 bits", default="0x0"),
        Field(
            "ext_prod_id", "str", "metadata.ext_prod_id (KSS), hex up to 128 bits", default="0x0"
        ),
        Field(
            "encrypt_image",
            "bool",
            "encrypt the SEFS image (occlum build --image-key) even when no model is encrypted",
            default=False,
        ),
        Field(
            "hostfs",
            "table[str]",
            "host directories mounted in the enclave (hostfs): "
            '"/target" = "/host/dir"; none unless listed',
            default={},
        ),
        Field(
            "server_measurements",
            "list[str]",
            "measurements.json files of the secret-server "
            "enclave(s) Occlum's init may fetch keys from",
            default=[],
        ),
        Field(
            "server_pin",
            "str",
            "what init requires of the secret server's enclave",
            default="mr_enclave",
            choices=("mr_enclave", "mr_signer"),
        ),
        Field(
            "allow_debug_server",
            "bool",
            "accept a DEBUG secret-server enclave (insecure)",
            default=False,
        ),
        Field(
            "build_image",
            "str",
            "the Occlum 0.31 toolchain image `occlum build` runs in "
            "(NAME:TAG or NAME@sha256:...; $ENCLAVE_BUILD_OCCLUM_IMAGE overrides it)",
        ),
    ),
    owner="occlum",
)


@dataclass(frozen=True)
class OcclumPlanOptions:
    """Occlum-only knobs, from the spec's optional ``[occlum]`` section (sizes in bytes; None =
    derived by the Occlum backend, see builder/occlum/occlum_json.py)."""

    kernel_heap: int = 32 << 20
    kernel_heap_max: int | None = None  # EDMM only
    kernel_stack: int = 1 << 20
    user_space_init: int | None = None  # EDMM only
    init_threads: int | None = None  # EDMM only
    process_heap: int = 32 << 20
    process_mmap: int = 100 << 20
    amx: int = 0
    pkru: int = 0
    io_uring: int = 0
    posix_shm: bool = False
    enable_kss: bool = False
    family_id: int = 0  # 128-bit ISVFAMILYID (KSS)
    ext_prod_id: int = 0  # 128-bit ISVEXTPRODID (KSS)
    encrypt_image: bool = False
    hostfs: tuple[tuple[str, str], ...] = ()  # (target in the enclave, source on the host)
    server_identities: tuple[EnclaveIdentity, ...] = ()
    server_pin: str = "mr_enclave"  # "mr_enclave" | "mr_signer"
    build_image: str | None = None  # Occlum toolchain image (None: the default)


def plan_options(plan: ServicePlan) -> OcclumPlanOptions:
    """The Occlum options of *plan* (the defaults for a plan made without a spec section)."""
    options = plan.libos_options
    return options if isinstance(options, OcclumPlanOptions) else OcclumPlanOptions()


class DebugServerWarning(UserWarning):
    """``occlum.allow_debug_server`` let a DEBUG secret-server enclave be trusted."""


_HEX = re.compile(r"^0x[0-9a-fA-F]{1,32}\Z")
_TARGET = re.compile(r"^/[A-Za-z0-9._/-]*\Z")
#: Sizes that become Enclave.xml stack/heap/reserved sizes, which sgx_sign wants page-aligned.
PAGE_ALIGNED = ("kernel_heap", "kernel_heap_max", "kernel_stack", "user_space_init")
PAGE = 0x1000
SIZE_DOC = OCCLUM_SIZE.doc


def parse_size(text: str) -> int | None:
    """``"64M"``/``"64MB"`` -> bytes; a bare number needs the ``B`` (``"4096B"``)."""
    try:
        return int(Size.parse(text, OCCLUM_SIZE))
    except SizeError:
        return None


def options(
    values: Mapping[str, Any], context: SectionContext, problems: list[Problem]
) -> OcclumPlanOptions | None:
    """Convert the validated ``[occlum]`` table of an Occlum service; append located problems
    (None when a size cannot be used: the problem says why)."""
    edmm = bool((context.core.get("enclave") or {}).get("edmm"))
    base_dir = context.base_dir
    sizes: dict[str, int | None] = {}
    for name in (
        "kernel_heap",
        "kernel_heap_max",
        "kernel_stack",
        "user_space_init",
        "process_heap",
        "process_mmap",
    ):
        text = values.get(name)
        if text is None:
            sizes[name] = None
            continue
        size = parse_size(text)
        if size is None or size == 0:
            problems.append(
                Problem(("occlum", name), f"{text!r} is not a size; allowed: {SIZE_DOC}, not zero")
            )
        elif name in PAGE_ALIGNED and size % PAGE:
            problems.append(
                Problem(
                    ("occlum", name),
                    f"{text!r} is not a multiple of 4K: it "
                    "becomes an enclave stack/heap/reserved size, which the SGX "
                    "SDK's signer refuses unaligned; allowed: a multiple of 4K, "
                    'e.g. "64M"',
                )
            )
            size = None
        sizes[name] = size
    if not edmm:
        for name in ("kernel_heap_max", "user_space_init", "init_threads"):
            if values.get(name) is not None:
                problems.append(
                    Problem(
                        ("occlum", name),
                        "only with enclave.edmm = true (without "
                        "EDMM Occlum sizes the enclave statically)",
                    )
                )
    ids: dict[str, int] = {}
    for name in ("family_id", "ext_prod_id"):
        text = values.get(name)
        if isinstance(text, str) and not _HEX.match(text):
            problems.append(
                Problem(
                    ("occlum", name),
                    f'{text!r} is not allowed; allowed: "0x" and 1 to 32 hex digits (128 bits)',
                )
            )
            ids[name] = 0
        else:
            ids[name] = int(text, 16) if isinstance(text, str) else 0
            if ids[name] and not values.get("enable_kss"):
                problems.append(
                    Problem(
                        ("occlum", name),
                        "only with occlum.enable_kss = true "
                        "(without KSS Occlum leaves the id out of the enclave: "
                        "it would not be in the measurement)",
                    )
                )
    hostfs: list[tuple[str, str]] = []
    for target, source in (values.get("hostfs") or {}).items():
        key = ("occlum", "hostfs", target)
        norm = "/" + "/".join(p for p in target.split("/") if p not in ("", "."))
        if not _TARGET.match(target) or ".." in target.split("/") or norm == "/":
            problems.append(
                Problem(
                    key,
                    "the target must be an absolute path in the enclave "
                    'other than "/", without ".." (letters, digits, '
                    "'.', '_', '-', '/')",
                )
            )
        elif not source:
            problems.append(Problem(key, "empty host directory: a hostfs mount needs its source"))
        elif (
            not source.startswith("/")
            or ".." in source.split("/")
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in source)
        ):
            problems.append(
                Problem(
                    key,
                    f"{source!r}: the host directory must be an absolute "
                    'path without ".." or control characters, e.g. '
                    '"/var/lib/app"',
                )
            )
        else:
            hostfs.append((norm, source))
    identities = []
    for index, name in enumerate(values.get("server_measurements") or []):
        identity = _load_identity(
            name,
            base_dir,
            ("occlum", "server_measurements", index),
            values.get("allow_debug_server", False),
            problems,
        )
        if identity is not None:
            identities.append(identity)
    build_image = values.get("build_image")
    if build_image is not None and not _image_ref_ok(build_image, problems):
        build_image = None
    if any(s is None for n, s in sizes.items() if values.get(n) is not None):
        return None
    defaults = OcclumPlanOptions()
    return OcclumPlanOptions(
        kernel_heap=sizes["kernel_heap"] or defaults.kernel_heap,
        kernel_heap_max=sizes["kernel_heap_max"],
        kernel_stack=sizes["kernel_stack"] or defaults.kernel_stack,
        user_space_init=sizes["user_space_init"],
        init_threads=values.get("init_threads"),
        process_heap=sizes["process_heap"] or defaults.process_heap,
        process_mmap=sizes["process_mmap"] or defaults.process_mmap,
        amx=values.get("amx", 0),
        pkru=values.get("pkru", 0),
        io_uring=values.get("io_uring", 0),
        posix_shm=bool(values.get("posix_shm")),
        enable_kss=bool(values.get("enable_kss")),
        family_id=ids["family_id"],
        ext_prod_id=ids["ext_prod_id"],
        encrypt_image=bool(values.get("encrypt_image")),
        hostfs=tuple(sorted(hostfs)),
        server_identities=tuple(identities),
        server_pin=values.get("server_pin") or "mr_enclave",
        build_image=build_image,
    )


def _image_ref_ok(text: str, problems: list[Problem]) -> bool:
    """The build image is pulled by the Docker engine: a registry reference, no transport."""
    from ..errors import UsageError
    from ..image.reference import parse_registry_ref

    key = ("occlum", "build_image")
    if (
        not text.strip()
        or text != text.strip()
        or "://" in text
        or text.startswith(("docker-daemon:", "oci:", "oci-archive:", "dir:"))
    ):
        problems.append(
            Problem(
                key,
                f"{text!r} is not an image reference; allowed: NAME:TAG or "
                "NAME@sha256:<64 hex> as `docker pull` takes it, e.g. "
                '"occlum/occlum:0.31.0-ubuntu22.04"',
            )
        )
        return False
    try:
        parse_registry_ref(text)
    except UsageError as exc:
        problems.append(
            Problem(
                key,
                f"{exc}; allowed: NAME:TAG or NAME@sha256:<64 hex>, e.g. "
                '"occlum/occlum:0.31.0-ubuntu22.04"',
            )
        )
        return False
    return True


def _load_identity(
    name: str, base_dir: Path, key: tuple, allow_debug: bool, problems: list[Problem]
) -> EnclaveIdentity | None:
    from enclave_build.attestation.measurements import Measurements, MeasurementsError

    path = Path(name) if Path(name).is_absolute() else (base_dir / name).resolve()
    try:
        m = Measurements.load(path)
    except MeasurementsError as exc:
        problems.append(Problem(key, f"{path}: not a usable measurements.json ({exc})"))
        return None
    if m.debug and not allow_debug:
        problems.append(
            Problem(
                key,
                f"{path}: the secret server there is a DEBUG enclave "
                "(its memory is readable by its host); rebuild it without "
                "debug or set occlum.allow_debug_server = true",
            )
        )
        return None
    if m.debug:
        warnings.warn(
            f"{path}: occlum.allow_debug_server: this enclave's init will trust a "
            "DEBUG secret server, whose host can read every key it holds; never use "
            "it for real secrets",
            DebugServerWarning,
            stacklevel=2,
        )
    return m.identity
