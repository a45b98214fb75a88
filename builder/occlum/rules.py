"""Occlum 0.31's rules for Occlum.json, init_ra_conf.json and copy_bom YAML, as checks.

Each check names the Occlum source it follows (Rust struct / field / function names, from
occlum/occlum v0.31.0). Occlum reads a user's Occlum.json twice: ``tools/gen_internal_conf``
(``OcclumConfiguration`` and its sub-structs) turns it into the internal JSON plus the SGX SDK's
Enclave.xml at ``occlum build``, and the LibOS (``src/libos/src/config.rs``, ``InputConfig*``
structs, all ``deny_unknown_fields``) parses the internal JSON when the enclave starts. Some
mistakes fail the build, some only fail the enclave at start, and some are dropped silently
(gen_internal_conf's structs do not deny unknown fields, and its mount structs re-serialize only
the fields they know). enclave-build refuses all of them before anything is built.

A violation raises :class:`OcclumRuleError` carrying the JSON path of the offending value; the
renderer maps that path back to the spec key it came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from enclave_build.contract.size import OCCLUM_JSON_SIZE, Size, SizeError

from ..errors import EnclaveBuildError
from ..plan import HOST_FORBIDDEN_ENV, HOST_FORBIDDEN_ENV_PREFIXES

U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1
#: gen_internal_conf / config.rs ``parse_memory_size``: the unit table, tried in this order with
#: ``ends_with`` (so "B" alone means bytes and "32M" has no unit).
UNITS = (("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("TB", 1 << 40), ("B", 1))
#: config.rs ``ConfigMountFsType::from_input``.
FS_TYPES = ("sefs", "hostfs", "ramfs", "unionfs", "devfs", "procfs", "ext2")
#: gen_internal_conf ``gen_app_config`` prepends procfs at /proc and devfs at /dev to the app
#: stage's mounts; a user mount there would be mounted a second time over them.
RESERVED_TARGETS = ("/proc", "/dev")
#: gen_internal_conf mount-option checks: ``MIN_CACHE_SIZE``, ``CACHE_PAGE_SIZE``,
#: ``MIN_DISK_SIZE``.
CACHE_PAGE_SIZE = 0x1000
MIN_CACHE_SIZE = 48 * CACHE_PAGE_SIZE
MIN_DISK_SIZE = 5 << 30
#: gen_internal_conf ``DefaultConfig``: the kernel heap an EDMM build uses at least.
EDMM_KERNEL_HEAP_MAX = 1 << 30
#: The SGX SDK's sgx_sign (CMetadata::check_xml_parameter) needs StackMaxSize, the Heap*Size
#: and ReservedMem*Size of Enclave.xml, which gen_internal_conf takes from resource_limits, to
#: be multiples of the page size.
PAGE_SIZE = 0x1000
#: Documented ranges of the feature flags (docs/.../occlum_configuration.md, "feature").
FEATURE_RANGES = {"amx": (0, 2), "pkru": (0, 2), "io_uring": (0, 16)}
#: grpc_ratls (tools/toolchains/grpc_ratls, ``SGX_MESUREMENTS_MAX_SIZE``): sgx_mrs entries
#: past this many are silently ignored.
SGX_MRS_MAX = 16
#: init_grpc_ratls ``main``: the secret name init asks for when the image is encrypted.
IMAGE_KEY_SECRET = "image_key"
#: Environment variables the host may never set (env.untrusted): see builder.plan.
UNTRUSTED_FORBIDDEN_PREFIXES = HOST_FORBIDDEN_ENV_PREFIXES
UNTRUSTED_FORBIDDEN = HOST_FORBIDDEN_ENV
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_HEX_ID = re.compile(r"^(0x)?[0-9a-fA-F]{1,16}\Z")
_HASH = re.compile(r"^[0-9A-F]{64}\Z")


class OcclumRuleError(EnclaveBuildError):
    """A value Occlum 0.31 would refuse (or silently misread). *path* is its JSON path in the
    file named by *document* (``Occlum.json``, ``init_ra_conf.json``, ``bom.yaml``)."""

    def __init__(self, document: str, path: str, message: str):
        self.document = document
        self.path = path
        self.reason = message
        super().__init__(f"{document}: {path}: {message}")


# --- sizes -------------------------------------------------------------------------------------


def parse_memory_size(text: str) -> int:
    """Occlum's ``parse_memory_size``: trim, find the unit by suffix, parse the rest (trimmed) as
    an unsigned integer (:data:`enclave_build.contract.size.OCCLUM_JSON_SIZE`). Raises
    ValueError("No unit" / "No number" / overflow), as Occlum words it."""
    try:
        return int(Size.parse(text, OCCLUM_JSON_SIZE))
    except SizeError as exc:
        if "out of range" in str(exc):
            raise ValueError("does not fit in 64 bits") from None
        raise ValueError(
            "No number" if text.strip().endswith(tuple(u for u, _ in UNITS)) else "No unit"
        ) from None


def format_size(size: int) -> str:
    """The largest exact Occlum unit: 33554432 -> "32MB", 1536 -> "1536B"."""
    return Size(size).occlum_text()


# --- helpers -----------------------------------------------------------------------------------


class _Checker:
    def __init__(self, document: str):
        self.document = document

    def fail(self, path: str, message: str) -> OcclumRuleError:
        return OcclumRuleError(self.document, path, message)

    def table(
        self, value: Any, path: str, required: Iterable[str], optional: Iterable[str], rule: str
    ) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object ({rule})")
        required, optional = tuple(required), tuple(optional)
        for key in value:
            if key not in required and key not in optional:
                raise self.fail(
                    f"{path}.{key}" if path else key,
                    f"unknown field; {rule} has only {', '.join(required + optional)}",
                )
        for key in required:
            if key not in value:
                raise self.fail(
                    f"{path}.{key}" if path else key, f"missing field ({rule} requires it)"
                )
        return value

    def string(self, value: Any, path: str, rule: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string ({rule})")
        if "\0" in value:
            raise self.fail(path, f"contains a NUL byte ({rule} is passed on as a C string)")
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int, rule: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(path, f"expected an integer ({rule})")
        if not lo <= value <= hi:
            raise self.fail(path, f"{value} is out of range; allowed: {lo} to {hi} ({rule})")
        return value

    def boolean(self, value: Any, path: str, rule: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false ({rule})")
        return value

    def size(
        self, value: Any, path: str, rule: str, nonzero: bool = True, page: bool = False
    ) -> int:
        text = self.string(value, path, rule)
        try:
            size = parse_memory_size(text)
        except ValueError as exc:
            raise self.fail(
                path,
                f"{text!r} is not an Occlum size ({exc}); allowed: an "
                'integer and one of KB, MB, GB, TB, B, e.g. "32MB" '
                "(parse_memory_size)",
            ) from None
        if nonzero and size == 0:
            raise self.fail(path, f"{text!r} is zero ({rule})")
        if page and size % PAGE_SIZE:
            raise self.fail(
                path,
                f"{text!r} is not a multiple of 4KB: it becomes an enclave "
                "stack, heap or reserved-memory size in Enclave.xml, which "
                "the SGX SDK's sgx_sign refuses unaligned "
                "(CMetadata::check_xml_parameter)",
            )
        return size

    def strings(self, value: Any, path: str, rule: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected an array of strings ({rule})")
        return [self.string(v, f"{path}[{i}]", rule) for i, v in enumerate(value)]


def _abs_no_parent(checker: _Checker, text: str, path: str, rule: str) -> None:
    if not text.startswith("/"):
        raise checker.fail(path, f"{text!r} is not an absolute path ({rule})")
    if ".." in text.split("/"):
        raise checker.fail(path, f'{text!r} contains ".." ({rule})')


# --- Occlum.json ------------------------------------------------------------------------------


def check_occlum_json(doc: Any, *, edmm: bool | None = None) -> None:
    """Every rule of Occlum 0.31 that a user's Occlum.json must pass (see module docstring).
    *edmm*: the platform the build targets (None: from feature.enable_edmm)."""
    c = _Checker("Occlum.json")
    c.table(
        doc,
        "",
        ("resource_limits", "process", "entry_points", "env", "metadata", "feature", "mount"),
        (),
        "gen_internal_conf OcclumConfiguration",
    )
    feature = _check_feature(c, doc["feature"])
    edmm = feature.get("enable_edmm", False) if edmm is None else edmm
    heap_max = _check_resource_limits(c, doc["resource_limits"], edmm)
    _check_process(c, doc["process"])
    _check_entry_points(c, doc["entry_points"])
    _check_env(c, doc["env"])
    _check_metadata(c, doc["metadata"])
    _check_mounts(c, doc["mount"], heap_max)


def _check_resource_limits(c: _Checker, rl: Any, edmm: bool) -> int:
    rule = "gen_internal_conf OcclumResourceLimits"
    c.table(
        rl,
        "resource_limits",
        (
            "max_num_of_threads",
            "kernel_space_heap_size",
            "kernel_space_stack_size",
            "user_space_size",
        ),
        ("init_num_of_threads", "kernel_space_heap_max_size", "user_space_max_size"),
        rule,
    )
    # max_num_of_threads: u32; becomes TCSNum/TCSMaxNum of Enclave.xml, which needs >= 1.
    threads = c.integer(
        rl["max_num_of_threads"],
        "resource_limits.max_num_of_threads",
        1,
        U32_MAX,
        f"{rule}.max_num_of_threads: u32, the enclave's TCS count",
    )
    init = rl.get("init_num_of_threads")
    if init is not None:
        init = c.integer(
            init,
            "resource_limits.init_num_of_threads",
            1,
            U32_MAX,
            f"{rule}.init_num_of_threads: u32",
        )
        if init > threads:
            raise c.fail(
                "resource_limits.init_num_of_threads",
                f"{init} exceeds max_num_of_threads {threads} (gen_internal_conf: "
                '"init_num_of_threads ... wrong configuration")',
            )
    c.size(
        rl["kernel_space_stack_size"],
        "resource_limits.kernel_space_stack_size",
        f"{rule}.kernel_space_stack_size",
        page=True,
    )
    heap = c.size(
        rl["kernel_space_heap_size"],
        "resource_limits.kernel_space_heap_size",
        f"{rule}.kernel_space_heap_size",
        page=True,
    )
    heap_max = heap
    if rl.get("kernel_space_heap_max_size") is not None:
        heap_max = c.size(
            rl["kernel_space_heap_max_size"],
            "resource_limits.kernel_space_heap_max_size",
            f"{rule}.kernel_space_heap_max_size",
            page=True,
        )
        if heap > heap_max:
            raise c.fail(
                "resource_limits.kernel_space_heap_size",
                "the initial kernel heap exceeds kernel_space_heap_max_size "
                '(gen_internal_conf: "kernel_space_heap_size ... wrong '
                'configuration")',
            )
    if edmm:
        heap_max = max(heap_max, EDMM_KERNEL_HEAP_MAX)
    user = c.size(
        rl["user_space_size"],
        "resource_limits.user_space_size",
        f"{rule}.user_space_size",
        page=True,
    )
    if rl.get("user_space_max_size") is not None:
        user_max = c.size(
            rl["user_space_max_size"],
            "resource_limits.user_space_max_size",
            f"{rule}.user_space_max_size",
            page=True,
        )
        if user > user_max:
            raise c.fail(
                "resource_limits.user_space_size",
                "the initial user space exceeds user_space_max_size "
                '(gen_internal_conf: "user_space_size ... wrong configuration")',
            )
    return heap_max


def _check_process(c: _Checker, process: Any) -> None:
    rule = "gen_internal_conf OcclumProcess / config.rs ConfigProcess"
    names = ("default_stack_size", "default_heap_size", "default_mmap_size")
    c.table(process, "process", names, (), rule)
    for name in names:
        c.size(process[name], f"process.{name}", f"{rule}.{name}")


def _check_entry_points(c: _Checker, entry_points: Any) -> None:
    rule = "config.rs ConfigApp::from_input / entry.rs validate_program_path"
    paths = c.strings(entry_points, "entry_points", "config.rs InputConfigApp.entry_points")
    if not paths:
        raise c.fail(
            "entry_points",
            'empty: every `occlum run` would be refused ("program '
            'path is NOT a valid entry point")',
        )
    for i, path in enumerate(paths):
        _abs_no_parent(
            c,
            path,
            f"entry_points[{i}]",
            f'{rule}: entry points are absolute prefixes without ".."',
        )


def _env_name(c: _Checker, name: str, path: str) -> None:
    if not _ENV_NAME.match(name):
        raise c.fail(
            path,
            f"{name!r} is not an environment variable name; allowed: letters, "
            "digits and '_', not starting with a digit (config.rs "
            "combine_trusted_envs splits entries at the first '=')",
        )


def _check_env(c: _Checker, env: Any) -> None:
    # gen_internal_conf passes env through verbatim; config.rs InputConfigEnv denies unknown
    # fields and has no field defaults, so both lists must be there.
    c.table(env, "env", ("default", "untrusted"), (), "config.rs InputConfigEnv")
    defaults = c.strings(
        env["default"], "env.default", "config.rs InputConfigEnv.default (Vec<CString>)"
    )
    names: dict[str, int] = {}
    for i, entry in enumerate(defaults):
        name, eq, _ = entry.partition("=")
        if not eq:
            raise c.fail(f"env.default[{i}]", f"{entry!r} is not NAME=VALUE")
        _env_name(c, name, f"env.default[{i}]")
        if name in names:
            raise c.fail(
                f"env.default[{i}]", f"{name} is set twice (also env.default[{names[name]}])"
            )
        names[name] = i
    untrusted = c.strings(
        env["untrusted"], "env.untrusted", "config.rs InputConfigEnv.untrusted (HashSet<String>)"
    )
    for i, name in enumerate(untrusted):
        _env_name(c, name, f"env.untrusted[{i}]")
        if name.startswith(UNTRUSTED_FORBIDDEN_PREFIXES) or name in UNTRUSTED_FORBIDDEN:
            raise c.fail(
                f"env.untrusted[{i}]",
                f"{name} decides what code or configuration the enclave loads (the "
                "dynamic loader, the interpreter, glibc, OpenSSL); taken from the host "
                "it would let the host change what runs behind the measurement",
            )
        if name in names:
            raise c.fail(
                f"env.untrusted[{i}]",
                f"{name} is also measured in env.default[{names[name]}]; an untrusted "
                "variable overrides the measured value, so the measurement would not "
                "say what runs",
            )


def _check_metadata(c: _Checker, md: Any) -> None:
    rule = "gen_internal_conf OcclumMetadata"
    c.table(
        md,
        "metadata",
        ("product_id", "version_number", "debuggable", "enable_kss", "family_id", "ext_prod_id"),
        ("disable_log",),
        rule,
    )
    # u32 in Occlum.json, but they become SIGSTRUCT ISVPRODID / ISVSVN, which are 16-bit.
    c.integer(
        md["product_id"],
        "metadata.product_id",
        0,
        U16_MAX,
        f"{rule}.product_id: SIGSTRUCT ISVPRODID is 16-bit",
    )
    c.integer(
        md["version_number"],
        "metadata.version_number",
        0,
        U16_MAX,
        f"{rule}.version_number: SIGSTRUCT ISVSVN is 16-bit",
    )
    c.boolean(md["debuggable"], "metadata.debuggable", f"{rule}.debuggable")
    c.boolean(md["enable_kss"], "metadata.enable_kss", f"{rule}.enable_kss")
    if md.get("disable_log") is not None:
        c.boolean(md["disable_log"], "metadata.disable_log", f"{rule}.disable_log")
    for name in ("family_id", "ext_prod_id"):
        ident = c.table(
            md[name], f"metadata.{name}", ("high", "low"), (), "gen_internal_conf OcclumMetaID"
        )
        for half in ("high", "low"):
            text = c.string(ident[half], f"metadata.{name}.{half}", "OcclumMetaID")
            # get_u64_id_high_and_low: from_str_radix(trim_start_matches("0x"), 16) as u64.
            if not _HEX_ID.match(text):
                raise c.fail(
                    f"metadata.{name}.{half}",
                    f'{text!r} is not a 64-bit hex id such as "0x1234567812345678" '
                    "(gen_internal_conf get_u64_id_high_and_low)",
                )


def _check_feature(c: _Checker, feature: Any) -> dict:
    rule = "gen_internal_conf OcclumFeature / config.rs InputConfigFeature"
    c.table(
        feature, "feature", (), ("amx", "pkru", "io_uring", "enable_edmm", "enable_posix_shm"), rule
    )
    for name, (lo, hi) in FEATURE_RANGES.items():
        if name in feature:
            c.integer(feature[name], f"feature.{name}", lo, hi, f"{rule}.{name}")
    for name in ("enable_edmm", "enable_posix_shm"):
        if name in feature:
            c.boolean(feature[name], f"feature.{name}", f"{rule}.{name}")
    return feature


_MOUNT_FIELDS = (("type", "target"), ("source", "options"))
#: gen_internal_conf OcclumMountOptions (config.rs also has ``index``, which gen_internal_conf
#: does not know and would drop).
_OPTION_FIELDS = ("MAC", "layers", "temporary", "cache_size", "disk_size")


def _check_mount(c: _Checker, m: Any, path: str, heap_max: int) -> None:
    rule = "gen_internal_conf OcclumMount / config.rs InputConfigMount"
    c.table(m, path, *_MOUNT_FIELDS, rule)
    kind = c.string(m["type"], f"{path}.type", rule)
    if kind not in FS_TYPES:
        raise c.fail(
            f"{path}.type",
            f"{kind!r} is not a file system type; allowed: "
            f"{', '.join(FS_TYPES)} (config.rs "
            "ConfigMountFsType::from_input)",
        )
    target = c.string(m["target"], f"{path}.target", rule)
    if not target.startswith("/"):
        raise c.fail(
            f"{path}.target",
            f"{target!r} is not absolute (config.rs "
            'ConfigMount::from_input: "Target must be an absolute '
            'path")',
        )
    if m.get("source") is not None:
        c.string(m["source"], f"{path}.source", rule)
    options = c.table(
        m.get("options", {}),
        f"{path}.options",
        (),
        _OPTION_FIELDS,
        "gen_internal_conf OcclumMountOptions",
    )
    if "MAC" in options:
        c.string(options["MAC"], f"{path}.options.MAC", "OcclumMountOptions.MAC")
    if "temporary" in options:
        c.boolean(options["temporary"], f"{path}.options.temporary", "OcclumMountOptions")
    if kind in ("sefs", "hostfs") and not m.get("source"):
        what = "SEFS" if kind == "sefs" else "HostFS"
        raise c.fail(
            f"{path}.source",
            f'a {kind} mount needs a source (rootfs.rs: "Source is expected for {what}")',
        )
    if kind == "sefs" and options.get("temporary") and "MAC" in options:
        raise c.fail(
            f"{path}.options.temporary",
            "an integrity-protected SEFS (with MAC) "
            "cannot be temporary (rootfs.rs "
            "open_or_create_sefs_according_to)",
        )
    if "layers" in options and kind != "unionfs":
        raise c.fail(f"{path}.options.layers", "layers belong to a unionfs mount only")
    if kind == "unionfs":
        layers = options.get("layers")
        if not isinstance(layers, list) or len(layers) != 2:
            raise c.fail(
                f"{path}.options.layers",
                "a unionfs needs its two sefs layers, image "
                'then container (rootfs.rs: "Invalid '
                'layers for unionfs")',
            )
        for i, layer in enumerate(layers):
            lpath = f"{path}.options.layers[{i}]"
            _check_mount(c, layer, lpath, heap_max)
            if layer["type"] != "sefs":
                raise c.fail(
                    f"{lpath}.type",
                    'unionfs layers must be sefs (rootfs.rs: "Unsupported fs type inside unionfs")',
                )
    if "cache_size" in options:
        size = c.size(
            options["cache_size"], f"{path}.options.cache_size", "OcclumMountOptions.cache_size"
        )
        if size < MIN_CACHE_SIZE or size % CACHE_PAGE_SIZE or size > heap_max:
            raise c.fail(
                f"{path}.options.cache_size",
                f"must be at least {MIN_CACHE_SIZE} bytes, a multiple of "
                f"{CACHE_PAGE_SIZE} and at most the kernel heap maximum {heap_max} "
                "(gen_internal_conf cache_size check)",
            )
    if kind == "ext2" and "disk_size" not in options:
        raise c.fail(
            f"{path}.options.disk_size",
            "an ext2 mount needs disk_size "
            '(gen_internal_conf: "The disk_size must be '
            'specified for Ext2")',
        )
    if "disk_size" in options:
        size = c.size(
            options["disk_size"], f"{path}.options.disk_size", "OcclumMountOptions.disk_size"
        )
        if size < MIN_DISK_SIZE:
            raise c.fail(
                f"{path}.options.disk_size",
                f"{options['disk_size']!r} is below the "
                "minimum 5GB (gen_internal_conf "
                "MIN_DISK_SIZE)",
            )


def _check_mounts(c: _Checker, mounts: Any, heap_max: int) -> None:
    if not isinstance(mounts, list):
        raise c.fail(
            "mount", "expected an array of mounts (gen_internal_conf OcclumConfiguration.mount)"
        )
    roots = []
    seen: dict[str, int] = {}
    for i, m in enumerate(mounts):
        path = f"mount[{i}]"
        _check_mount(c, m, path, heap_max)
        target = m["target"].rstrip("/") or "/"
        if target == "/":
            roots.append(i)
        reserved = next(
            (r for r in RESERVED_TARGETS if target == r or target.startswith(r + "/")), None
        )
        if reserved is not None:
            where = target if target == reserved else f"{target} is inside {reserved}, which"
            raise c.fail(
                f"{path}.target",
                f"{where} is mounted by Occlum itself (procfs/devfs, "
                "gen_internal_conf gen_app_config)",
            )
        if target in seen:
            raise c.fail(
                f"{path}.target",
                f"{target} is mounted twice (also mount"
                f"[{seen[target]}]); the second would hide the first",
            )
        seen[target] = i
    # gen_app_config: "the root UnionFS is not valid" / "the image SEFS in layers is not
    # valid"; rootfs.rs open_root_fs_according_to: the container SEFS (no MAC) too. Any other
    # mount at "/" is skipped by mount_nonroot_fs_according_to.
    if not roots or mounts[roots[0]]["type"] != "unionfs":
        raise c.fail(
            "mount",
            'no root unionfs at "/" (gen_internal_conf gen_app_config: '
            '"the root UnionFS is not valid")',
        )
    layers = mounts[roots[0]]["options"]["layers"]
    index = roots[0]
    image = [ly for ly in layers if ly["target"] == "/" and "MAC" in ly.get("options", {})]
    container = [ly for ly in layers if ly["target"] == "/" and "MAC" not in ly.get("options", {})]
    if not image:
        raise c.fail(
            f"mount[{index}].options.layers",
            'no image sefs layer (target "/", '
            'options.MAC) (gen_app_config: "the '
            'image SEFS in layers is not valid")',
        )
    if not container:
        raise c.fail(
            f"mount[{index}].options.layers",
            'no container sefs layer (target "/", '
            'no MAC) (rootfs.rs: "the container '
            'SEFS in layers is not valid")',
        )


# --- init_ra_conf.json ------------------------------------------------------------------------

_VERIFY = (
    "verify_mr_enclave",
    "verify_mr_signer",
    "verify_isv_prod_id",
    "verify_isv_svn",
    "verify_config_svn",
    "verify_enclave_debuggable",
)
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}\Z")


def check_init_ra_conf(doc: Any) -> None:
    """init_grpc_ratls ``InitRAConfig`` / ``KmsKeys`` / ``RAConfig`` / ``MRsValue`` and how
    grpc_ratls reads ra_config (``parse_sgx_config_json``, ``verify_measurement_internal``)."""
    c = _Checker("init_ra_conf.json")
    c.table(doc, "", ("kms_server", "kms_keys", "ra_config"), (), "init_grpc_ratls InitRAConfig")
    server = c.string(doc["kms_server"], "kms_server", "InitRAConfig.kms_server")
    if not _HOSTPORT.match(server) or not 0 < int(server.rpartition(":")[2]) < 65536:
        raise c.fail("kms_server", f"{server!r} is not HOST:PORT (the gRPC target init dials)")
    if not isinstance(doc["kms_keys"], list):
        raise c.fail("kms_keys", "expected an array (InitRAConfig.kms_keys: Vec<KmsKeys>)")
    names: dict[str, int] = {}
    paths: dict[str, int] = {}
    for i, entry in enumerate(doc["kms_keys"]):
        path = f"kms_keys[{i}]"
        c.table(entry, path, ("key", "path"), (), "init_grpc_ratls KmsKeys")
        # CString::new(key).unwrap(): a NUL panics init.
        name = c.string(entry["key"], f"{path}.key", "KmsKeys.key")
        if not name:
            raise c.fail(f"{path}.key", "empty secret name")
        if name == IMAGE_KEY_SECRET:
            raise c.fail(
                f"{path}.key",
                f"{IMAGE_KEY_SECRET!r} is the name init itself uses for "
                "the image key (init_grpc_ratls main)",
            )
        if name in names:
            raise c.fail(f"{path}.key", f"{name!r} is fetched twice (also kms_keys[{names[name]}])")
        names[name] = i
        target = c.string(entry["path"], f"{path}.path", "KmsKeys.path")
        _abs_no_parent(
            c,
            target,
            f"{path}.path",
            "init writes the secret there with fs::write after mounting the rootfs",
        )
        if target.endswith("/"):
            raise c.fail(f"{path}.path", f"{target!r} names a directory, not a file")
        if target in paths:
            raise c.fail(
                f"{path}.path", f"{target} is written twice (also kms_keys[{paths[target]}])"
            )
        paths[target] = i
    ra = c.table(
        doc["ra_config"], "ra_config", _VERIFY + ("sgx_mrs",), (), "init_grpc_ratls RAConfig"
    )
    on = {}
    for name in _VERIFY:
        value = c.string(ra[name], f"ra_config.{name}", "RAConfig")
        # grpc_ratls compare_item(..., "on"): anything else silently means "off".
        if value not in ("on", "off"):
            raise c.fail(
                f"ra_config.{name}",
                f'{value!r} is neither "on" nor "off" (grpc_ratls treats anything but "on" as off)',
            )
        on[name] = value == "on"
    mrs = ra["sgx_mrs"]
    if not isinstance(mrs, list):
        raise c.fail("ra_config.sgx_mrs", "expected an array (RAConfig.sgx_mrs)")
    if not mrs:
        raise c.fail(
            "ra_config.sgx_mrs",
            "empty: grpc_ratls accepts no server at all (verify_measurement_internal)",
        )
    if len(mrs) > SGX_MRS_MAX:
        raise c.fail(
            "ra_config.sgx_mrs",
            f"{len(mrs)} entries; grpc_ratls reads only the first "
            f"{SGX_MRS_MAX} (SGX_MESUREMENTS_MAX_SIZE)",
        )
    for i, mr in enumerate(mrs):
        path = f"ra_config.sgx_mrs[{i}]"
        c.table(
            mr,
            path,
            ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "config_svn", "debuggable"),
            (),
            "init_grpc_ratls MRsValue",
        )
        for name, flag in (("mr_enclave", "verify_mr_enclave"), ("mr_signer", "verify_mr_signer")):
            value = c.string(mr[name], f"{path}.{name}", "MRsValue")
            if on[flag] and not _HEX64.match(value):
                raise c.fail(
                    f"{path}.{name}",
                    f"{value!r} is not 64 lower-case hex digits "
                    f"({flag} is on; grpc_ratls hex_to_byte)",
                )
        for name in ("isv_prod_id", "isv_svn", "config_svn"):
            # u32 in MRsValue, compared against the quote's 16-bit field.
            c.integer(
                mr[name],
                f"{path}.{name}",
                0,
                U16_MAX,
                "MRsValue, compared with a 16-bit quote field",
            )
        c.boolean(mr["debuggable"], f"{path}.debuggable", "MRsValue.debuggable")


# --- copy_bom YAML ----------------------------------------------------------------------------


def check_bom(doc: Any) -> None:
    """copy_bom's ``Bom`` / ``Target`` / ``SymLink`` / ``Source`` / ``NormalFile`` /
    ``FileWithOption`` (tools/copy_bom/src/bom.rs) and how it uses them (util.rs)."""
    c = _Checker("bom.yaml")
    c.table(doc, "", (), ("includes", "excludes", "targets"), "copy_bom Bom")
    for name in ("includes", "excludes"):
        if name in doc:
            c.strings(doc[name], name, f"Bom.{name}")
    targets = doc.get("targets") or []
    if not isinstance(targets, list):
        raise c.fail("targets", "expected an array (Bom.targets)")
    for i, t in enumerate(targets):
        path = f"targets[{i}]"
        c.table(t, path, ("target",), ("mkdirs", "createlinks", "copy"), "copy_bom Target")
        _bom_path(c, c.string(t["target"], f"{path}.target", "Target.target"), f"{path}.target")
        if not t["target"].startswith("/"):
            raise c.fail(f"{path}.target", "not absolute (an image path)")
        for j, d in enumerate(c.strings(t.get("mkdirs", []), f"{path}.mkdirs", "Target.mkdirs")):
            _bom_path(c, d, f"{path}.mkdirs[{j}]", relative=True)
        for j, link in enumerate(t.get("createlinks") or []):
            c.table(link, f"{path}.createlinks[{j}]", ("src", "linkname"), (), "copy_bom SymLink")
        for j, src in enumerate(t.get("copy") or []):
            spath = f"{path}.copy[{j}]"
            c.table(src, spath, (), ("from", "dirs", "files"), "copy_bom Source")
            if "from" in src:
                _bom_path(c, c.string(src["from"], f"{spath}.from", "Source.from"), f"{spath}.from")
            if "dirs" not in src and "files" not in src and not src.get("from"):
                raise c.fail(
                    spath,
                    'neither dirs nor files, and no from (copy_bom: "field '
                    "'from' cannot be empty\")",
                )
            for k, d in enumerate(c.strings(src.get("dirs", []), f"{spath}.dirs", "Source.dirs")):
                _bom_path(c, d, f"{spath}.dirs[{k}]", relative="from" in src)
            for k, f in enumerate(src.get("files") or []):
                fpath = f"{spath}.files[{k}]"
                if isinstance(f, str):
                    _bom_path(c, f, fpath, relative="from" in src)
                    continue
                c.table(
                    f, fpath, ("name",), ("hash", "autodep", "rename"), "copy_bom FileWithOption"
                )
                _bom_path(
                    c,
                    c.string(f["name"], f"{fpath}.name", "FileWithOption.name"),
                    f"{fpath}.name",
                    relative="from" in src,
                )
                if "hash" in f and not _HASH.match(c.string(f["hash"], f"{fpath}.hash", "hash")):
                    raise c.fail(
                        f"{fpath}.hash",
                        "not 64 upper-case hex digits (copy_bom compares SHA-256 as HEXUPPER text)",
                    )
                if "autodep" in f:
                    c.boolean(f["autodep"], f"{fpath}.autodep", "FileWithOption.autodep")
                if "rename" in f:
                    name = c.string(f["rename"], f"{fpath}.rename", "FileWithOption.rename")
                    if "/" in name or name in ("", ".", ".."):
                        raise c.fail(f"{fpath}.rename", f"{name!r} is not a file name")


def _bom_path(c: _Checker, text: str, path: str, relative: bool = False) -> None:
    # bom.rs joins mkdirs to the target and names to ``from`` with PathBuf::join, which
    # replaces the base when the joined path is absolute: it would escape the image.
    if relative and text.startswith("/"):
        raise c.fail(
            path,
            f"{text!r} is absolute; it must be relative to its target/from "
            "(PathBuf::join would replace the base)",
        )
    # copy_bom resolve_envs (shellexpand::env) expands $NAME / ${NAME} in every path.
    if "$" in text:
        raise c.fail(
            path,
            f"{text!r} contains '$', which copy_bom expands as an environment "
            "variable (util.rs resolve_envs)",
        )
    if "\0" in text or "\n" in text:
        raise c.fail(path, "control characters in a path")
