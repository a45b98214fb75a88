"""Check a manifest (as a dict) against what Gramine 1.9 accepts.

Gramine 1.9 rejects unknown manifest keys outright, and several keys that older manifests used
were removed. This checker knows the 1.9 key tree (python/graminelibos/manifest_check.py in
Gramine) and, for removed keys, says what replaced them, so a bad manifest fails here rather
than at enclave start.
"""

from __future__ import annotations

from typing import Any

from ..errors import EnclaveBuildError

STR, INT, BOOL, ANY = "string", "integer", "boolean", "any"
SIZE = STR


class ManifestSchemaError(EnclaveBuildError):
    """The manifest uses keys or values Gramine 1.9 rejects."""


#: Keys removed before/in Gramine 1.9, with what to use instead.
REMOVED: dict[str, str] = {
    "sgx.thread_num": "use sgx.max_threads",
    "sgx.nonpie_binary": "removed: Gramine only runs position-independent executables",
    "sgx.require_avx": 'use sgx.cpu_features.avx = "required"',
    "sgx.require_avx512": 'use sgx.cpu_features.avx512 = "required"',
    "sgx.require_mpx": 'use sgx.cpu_features.mpx = "required"',
    "sgx.require_pkru": 'use sgx.cpu_features.pkru = "required"',
    "sgx.require_amx": 'use sgx.cpu_features.amx = "required"',
    "sgx.require_exinfo": "use sgx.use_exinfo",
    "loader.pal_internal_mem_size": "removed: PAL memory is no longer sized in the manifest",
    "sgx.ra_client_spid": 'EPID attestation was removed: use sgx.remote_attestation = "dcap"',
    "sgx.ra_client_linkable": 'EPID attestation was removed: use sgx.remote_attestation = "dcap"',
    "sgx.rpc_thread_num": "use sgx.insecure__rpc_thread_num",
    "sgx.protected_files": 'use an fs.mounts entry with type = "encrypted"',
    "sgx.protected_files_key": "use fs.insecure__keys (debug only) or a provisioned key",
    "sgx.insecure__protected_files_key": "use fs.insecure__keys (debug only)",
    "sgx.protected_mrenclave_files": 'use an encrypted mount with key_name = "_sgx_mrenclave"',
    "sgx.protected_mrsigner_files": 'use an encrypted mount with key_name = "_sgx_mrsigner"',
    "sgx.trusted_checksum": "use sgx.trusted_files entries {uri, sha256}",
    "sgx.static_address": "removed: enclaves are always placed by Gramine",
    "sgx.zero_heap_on_demand": "removed",
    "sgx.allow_file_creation": "removed: use sgx.allowed_files or an encrypted mount",
    "sgx.insecure__allow_file_creation": "removed: use sgx.allowed_files or an encrypted mount",
    "loader.preload": "removed: Gramine loads only libsysdb.so",
    "loader.argv0_override": "use loader.argv",
    "loader.insecure__use_cmdline_argv_v1": "use loader.insecure__use_cmdline_argv",
    "fs.mount": "use the fs.mounts array",
    "fs.experimental__enable_sysfs_topology": "removed: sysfs topology is always enabled",
    "libos.check_invalid_pointers_v1": "use libos.check_invalid_pointers",
}

_FS_MOUNT = {"path": STR, "uri": STR, "type": STR, "key_name": STR, "enable_recovery": BOOL}

#: The Gramine 1.9 manifest key tree. A dict is a table; a list holds the element schema.
SCHEMA: dict[str, Any] = {
    "fs": {
        "mounts": [_FS_MOUNT],
        "root": {k: v for k, v in _FS_MOUNT.items() if k != "path"},
        "start_dir": STR,
        "insecure__keys": {"*": STR},
    },
    "libos": {"entrypoint": STR, "check_invalid_pointers": BOOL},
    "loader": {
        "entrypoint": {"uri": STR, "sha256": STR},
        "argv": [STR],
        "argv_src_file": STR,
        "env": {"*": ANY},
        "env_src_file": STR,
        "gid": INT,
        "uid": INT,
        "insecure__use_cmdline_argv": BOOL,
        "insecure__use_host_env": BOOL,
        "insecure__disable_aslr": BOOL,
        "log_file": STR,
        "log_level": STR,
    },
    "sgx": {
        "allowed_files": [STR],
        "cpu_features": {"avx": STR, "avx512": STR, "amx": STR, "mpx": STR, "pkru": STR},
        "debug": BOOL,
        "edmm_enable": BOOL,
        "enable_stats": BOOL,
        "enclave_size": SIZE,
        "file_check_policy": STR,
        "insecure__allow_memfaults_without_exinfo": BOOL,
        "insecure__rpc_thread_num": INT,
        "isvprodid": INT,
        "isvsvn": INT,
        "max_threads": INT,
        "preheat_enclave": BOOL,
        "profile": {"enable": STR, "mode": STR, "with_stack": BOOL, "frequency": INT},
        "remote_attestation": STR,
        "seal_key": {"flags_mask": STR, "xfrm_mask": STR, "misc_mask": STR},
        "trusted_files": [ANY],
        "use_exinfo": BOOL,
        "vtune_profile": BOOL,
    },
    "sys": {
        "allowed_ioctls": [{"request_code": INT, "struct": STR}],
        "brk": {"max_size": SIZE},
        "disallow_subprocesses": BOOL,
        "enable_extra_runtime_domain_names_conf": BOOL,
        "enable_sigterm_injection": BOOL,
        "experimental__enable_flock": BOOL,
        "insecure__allow_eventfd": BOOL,
        "ioctl_structs": {"*": ANY},
        "debug__mock_syscalls": [{"name": STR, "return": INT}],
        "stack": {"size": SIZE},
        "fds": {"limit": INT},
    },
}

_CHOICES = {
    "sgx.remote_attestation": ("none", "dcap"),
    "loader.log_level": ("none", "error", "warning", "debug", "trace", "all"),
    "sgx.file_check_policy": ("strict", "allow_all_but_log"),
    "sgx.cpu_features.avx": ("unspecified", "disabled", "required"),
    "sgx.cpu_features.avx512": ("unspecified", "disabled", "required"),
    "sgx.cpu_features.amx": ("unspecified", "disabled", "required"),
    "sgx.cpu_features.mpx": ("disabled", "required"),
    "sgx.cpu_features.pkru": ("disabled", "required"),
    "fs.mounts.type": ("chroot", "encrypted", "tmpfs", "untrusted_shm"),
}

_TYPES = {STR: str, INT: int, BOOL: bool}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == ANY:
        return True
    if kind == INT and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def check_manifest(manifest: dict[str, Any]) -> None:
    """Raise :class:`ManifestSchemaError` listing every problem Gramine 1.9 would reject."""
    problems: list[str] = []
    _walk(manifest, SCHEMA, "", problems)
    for required in ("libos.entrypoint", "loader.entrypoint", "fs.mounts"):
        section, key = required.split(".")
        if key not in manifest.get(section, {}):
            problems.append(f"{required}: required key is missing")
    entry = manifest.get("loader", {}).get("entrypoint")
    if isinstance(entry, str):
        problems.append(
            "loader.entrypoint: a string is no longer accepted (Gramine 1.9): "
            "use a table {uri, sha256}"
        )
    attestation = manifest.get("sgx", {}).get("remote_attestation")
    if isinstance(attestation, bool):
        problems.append('sgx.remote_attestation: booleans were removed: use "none" or "dcap"')
    sgx = manifest.get("sgx", {})
    if sgx.get("edmm_enable") and sgx.get("preheat_enclave"):
        problems.append("sgx.preheat_enclave: conflicts with sgx.edmm_enable")
    env = manifest.get("loader", {}).get("env", {})
    if isinstance(env, dict):
        for name, value in env.items():
            problems += _env_problems(name, value)
    for index, mount in enumerate(manifest.get("fs", {}).get("mounts", [])):
        if isinstance(mount, dict):
            if "path" not in mount:
                problems.append(f"fs.mounts[{index}].path: required key is missing")
            if mount.get("type", "chroot") != "tmpfs" and "uri" not in mount:
                problems.append(f"fs.mounts[{index}].uri: required key is missing")
    if problems:
        raise ManifestSchemaError(
            "manifest rejected by the Gramine 1.9 schema:\n  " + "\n  ".join(problems)
        )


def _env_problems(name: str, value: Any) -> list[str]:
    """Gramine 1.9: ``loader.env.NAME`` is a string, ``{ value = "..." }`` or
    ``{ passthrough = true }`` (taken from the host at start)."""
    where = f"loader.env.{name}"
    if isinstance(value, str):
        return []
    if not isinstance(value, dict):
        return [f"{where}: expected a string or a table {{value}} / {{passthrough = true}}"]
    unknown = sorted(set(value) - {"value", "passthrough"})
    if unknown:
        return [f"{where}.{unknown[0]}: unknown key; allowed: value, passthrough"]
    if len(value) != 1:
        return [f"{where}: give exactly one of value and passthrough"]
    if "value" in value and not isinstance(value["value"], str):
        return [f"{where}.value: expected a string"]
    if "passthrough" in value and value["passthrough"] is not True:
        return [f"{where}.passthrough: only true is allowed (leave the variable out instead)"]
    return []


def _walk(value: Any, schema: Any, path: str, problems: list[str]) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            if path != "loader.entrypoint":  # a string entrypoint gets its own message
                problems.append(f"{path}: expected a table")
            return
        for key, item in value.items():
            full = f"{path}.{key}" if path else key
            if full in REMOVED:
                problems.append(f"{full}: removed in Gramine 1.9: {REMOVED[full]}")
                continue
            sub = schema.get(key, schema.get("*"))
            if sub is None:
                problems.append(f"{full}: unknown key (Gramine 1.9 rejects unknown keys)")
                continue
            _walk(item, sub, full, problems)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array")
            return
        for index, item in enumerate(value):
            _walk(item, schema[0], f"{path}[{index}]", problems)
    else:
        if path == "sgx.remote_attestation" and isinstance(value, bool):
            return  # reported with a specific message in check_manifest
        if not _type_ok(value, schema):
            problems.append(f"{path}: expected a {schema}")
            return
        choice_key = path.split("[")[0] + ("." + path.rsplit(".", 1)[1] if "[" in path else "")
        choices = _CHOICES.get(choice_key)
        if choices and value not in choices:
            problems.append(f"{path}: {value!r} is not allowed; allowed: {', '.join(choices)}")
