"""STAND-IN for Occlum 0.31's `occlum`, `copy_bom` and the SGX SDK's `sgx_sign` (test fixture).

NOT OCCLUM. The tests run enclave-build's Occlum backend against a Docker image built FROM
scratch whose tools are this program, because the real occlum/occlum image cannot be pulled
here and there is no SGX. A real Occlum build needs that image, e.g.:

    docker pull occlum/occlum:0.31.0-ubuntu22.04
    enclave-build build spec.toml          # with [service] libos = "occlum"

Each tool takes the real tool's command line (tools/occlum, tools/copy_bom, sgx_sign of the SGX
SDK; the same flags, files and directory layout), CHECKS its arguments and inputs, and writes
plausible outputs: an instance directory, a "SEFS" image (our own container format; encrypted
with a SHA-256 keystream under --image-key, so models never appear in clear), an unsigned
"enclave" whose MRENCLAVE is SHA-256 over everything that went into it, SGX signing data
(SIGSTRUCT header and body, real offsets), catsig that verifies the RSA-3072 e=3 PKCS#1 v1.5
signature, and a package tarball with `occlum package`'s file list.

Usage: standin.py occlum|copy_bom|sgx_sign ARGS...
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

import yaml

OCCLUM_DIR = "/opt/occlum"
TEMPLATE = f"{OCCLUM_DIR}/etc/template"
SGX_SDK = f"{OCCLUM_DIR}/sgxsdk-tools"
DEFAULT_SIGN_TOOL = f"{SGX_SDK}/bin/x64/sgx_sign"
DEFAULT_SIGN_KEY = f"{TEMPLATE}/Enclave.pem"
VERSION = "0.31.0"
#: Where enclave-build's bom files may take files from (the base rootfs, the plan's files) and
#: the toolchain's own tree.
SOURCE_ROOTS = ("/eb/rootfs/", "/eb/stage/", f"{OCCLUM_DIR}/")
SIGNED = "build/lib/libocclum-libos.signed.so"
INIT_KINDS = {
    "grpc_ratls": b"stand-in init_grpc_ratls\n",
    "aecs": b"stand-in init_aecs\n",
    "": b"stand-in init\n",
}
SIGSTRUCT_MARK = b"\nSTAND-IN-SIGSTRUCT\n"


class Fail(Exception):
    pass


def say(tool: str, text: str) -> None:
    print(f"[stand-in {tool}] {text}", flush=True)


# --- occlum ----------------------------------------------------------------------------------


def occlum(args: list[str]) -> None:
    if not args:
        raise Fail("Error: no sub-command is given")
    command, rest = args[0], args[1:]
    handlers = {
        "new": occlum_new,
        "build": occlum_build,
        "print": occlum_print,
        "package": occlum_package,
    }
    if command not in handlers:
        raise Fail(
            f"Error: unknown sub-command {command} (the stand-in has: {', '.join(handlers)})"
        )
    handlers[command](rest)


def occlum_new(args: list[str]) -> None:
    if not args:
        raise Fail("Error: target directory is not set")
    path = os.path.abspath(args[0])
    init_ra = ""
    rest = args[1:3]  # tools/occlum passes ${@:2:2} to init
    if args[3:]:
        raise Fail(f"Error: unexpected arguments {args[3:]}")
    if rest:
        if rest[0] != "--init-ra" or len(rest) != 2 or not rest[1]:
            raise Fail(
                "Error: Empty init-ra option provided"
                if rest[0] == "--init-ra"
                else f"Error: unknown option {rest[0]}"
            )
        init_ra = rest[1]
        if init_ra not in ("grpc_ratls", "aecs"):
            raise Fail(f"Error: --init-ra must be grpc_ratls or aecs, not {init_ra!r}")
    if os.path.lexists(path):
        raise Fail(f'Error: destination "{path}" already exists')
    for sub in (
        "bin",
        "lib",
        "lib64",
        "root",
        "host",
        "tmp",
        "dev",
        "proc",
        "etc",
        "sbin",
        "ext2",
        "opt/occlum/glibc/lib",
        "opt/occlum/glibc/etc",
    ):
        os.makedirs(os.path.join(path, "image", sub))
    write(os.path.join(path, "image/etc/hosts"), b"127.0.0.1   localhost\n")
    glibc = f"{OCCLUM_DIR}/glibc/lib"
    if os.path.isdir(glibc):  # like `occlum init`: Occlum's glibc, the loader in /lib64
        shutil.copy2(f"{glibc}/ld-linux-x86-64.so.2", os.path.join(path, "image/lib64"))
        for lib in ("libc.so.6", "libpthread.so.0", "libm.so.6"):
            shutil.copy2(f"{glibc}/{lib}", os.path.join(path, "image", glibc.lstrip("/")))
    for sub in ("bin", "lib", "dev", "proc", "etc"):
        os.makedirs(os.path.join(path, "initfs", sub))
    write(os.path.join(path, "initfs/bin/init"), INIT_KINDS[init_ra], 0o755)
    shutil.copyfile(f"{TEMPLATE}/Occlum.json", os.path.join(path, "Occlum.json"))
    os.chmod(os.path.join(path, "Occlum.json"), 0o644)
    if init_ra == "grpc_ratls":
        say("occlum", "Generate initfs with GRPC RATLS KMS client")
        shutil.copyfile(f"{TEMPLATE}/init_grpc_ratls.json", os.path.join(path, "init_ra_conf.json"))
    write(os.path.join(path, ".__occlum_status"), b"initialized\n")
    print(f"{path} initialized as an Occlum instance", flush=True)


def _instance() -> str:
    here = os.getcwd()
    if not os.path.isfile(os.path.join(here, ".__occlum_status")):
        raise Fail(
            "Error: the current working directory is not initialized as an Occlum "
            'instance. Need to run "occlum init" first.'
        )
    return here


def _init_kind(instance: str) -> str:
    data = read(os.path.join(instance, "initfs/bin/init"))
    for kind, marker in INIT_KINDS.items():
        if data == marker:
            return kind
    raise Fail("initfs/bin/init is not an init `occlum new` made")


def occlum_build(args: list[str]) -> None:
    instance = _instance()
    sign_key, sign_tool, image_key = DEFAULT_SIGN_KEY, DEFAULT_SIGN_TOOL, ""
    sgx_mode, edmm, buildin_key = "HW", False, False
    while args:
        option = args[0]
        value = args[1] if len(args) > 1 else ""
        if option in ("--sign-key", "--sign-tool", "--image-key", "--sgx-mode", "--enable-edmm"):
            if not value:
                raise Fail(f"Error: empty value for {option}")
            if option == "--sign-key":
                sign_key = value
            elif option == "--sign-tool":
                sign_tool = value
            elif option == "--image-key":
                image_key = value
            elif option == "--sgx-mode":
                sgx_mode = value
            else:
                edmm = value != "N"
            args = args[2:]
        elif option == "--buildin-image-key":
            buildin_key, args = True, args[1:]
        elif option in ("-f", "--force"):
            args = args[1:]
        else:
            raise Fail(f"Error: Unknown option: {option}")
    if not os.path.exists(sign_key):
        raise Fail(f"Error: invalid signing key path: {sign_key}")
    if not os.path.exists(sign_tool):
        raise Fail(f"Error: invalid signing tool path: {sign_tool}")
    print(f"Enclave sign-tool: {sign_tool}")
    print(f"Enclave sign-key: {sign_key}")
    key = None
    if image_key:
        key = _check_image_key(image_key)
        print(f"Image encryption key: {image_key}")
    if sgx_mode not in ("HW", "SIM", "HYPER"):
        raise Fail(f"Error: unknown SGX mode {sgx_mode}")
    print(f"SGX mode: {sgx_mode}", flush=True)

    config = _check_occlum_json(os.path.join(instance, "Occlum.json"))
    if edmm and not config["feature"].get("enable_edmm", False):
        say("occlum", "note: --enable-edmm Y while Occlum.json feature.enable_edmm is false")
    kind = _init_kind(instance)
    ra_conf_path = os.path.join(instance, "init_ra_conf.json")
    if kind == "grpc_ratls":
        if not os.path.isfile(ra_conf_path):
            raise Fail(
                "the instance's init is init_grpc_ratls, but init_ra_conf.json is "
                "missing (stand-in check)"
            )
        ra_conf = _check_init_ra_conf(ra_conf_path)
        say(
            "occlum",
            f"init_ra_conf.json: kms_server {ra_conf['kms_server']}, "
            f"{len(ra_conf['kms_keys'])} key(s)",
        )
        shutil.copyfile(ra_conf_path, os.path.join(instance, "initfs/etc/init_ra_conf.json"))
    if key is not None and kind != "grpc_ratls" and not buildin_key:
        raise Fail(
            "the image is encrypted, but the init cannot fetch its key: use "
            "`occlum new --init-ra grpc_ratls` (stand-in check)"
        )

    build = os.path.join(instance, "build")
    if os.path.isdir(build):
        shutil.rmtree(build)
    os.makedirs(os.path.join(build, "lib"))
    os.makedirs(os.path.join(build, "bin"))
    image_type = "encrypted" if key is not None else "integrity-only"
    image_config = json.dumps({"image_type": image_type}).encode() + b"\n"
    write(os.path.join(build, "image_config.json"), image_config)
    write(os.path.join(instance, "initfs/etc/image_config.json"), image_config)
    if buildin_key:
        shutil.copyfile(image_key, os.path.join(instance, "initfs/etc/image_key"))
    else:
        remove(os.path.join(instance, "initfs/etc/image_key"))

    print("Building new image...", flush=True)
    user_mac, count = _zip_tree(os.path.join(instance, "image"), os.path.join(build, "mount"), key)
    say("occlum", f"image: {count} entries, {image_type}, MAC {user_mac}")
    print("Building the initfs...", flush=True)
    init_mac, _ = _zip_tree(os.path.join(instance, "initfs"), os.path.join(build, "initfs"), None)

    enclave_xml = _enclave_xml(config)
    write(os.path.join(build, "Enclave.xml"), enclave_xml)
    sys_conf = json.dumps(
        {"user_json": config, "user_fs_mac": user_mac, "init_fs_mac": init_mac}, sort_keys=True
    ).encode()
    write(os.path.join(build, ".Occlum_sys.json"), sys_conf)
    protected = b"STAND-IN protected\n" + sys_conf
    write(os.path.join(build, ".Occlum_sys.json.protected"), protected)
    print("Building libOS...", flush=True)
    libos = f"libocclum-libos.so.{VERSION}"
    write(
        os.path.join(build, "lib", libos),
        b"STAND-IN libocclum-libos "
        + VERSION.encode()
        + b"\nbuiltin_config "
        + hashlib.sha256(protected).hexdigest().encode()
        + b"\n"
        + _filler("libos", 8192),
        0o755,
    )
    os.symlink(libos, os.path.join(build, "lib/libocclum-libos.so.0"))
    os.symlink("libocclum-libos.so.0", os.path.join(build, "lib/libocclum-libos.so"))
    pal = f"libocclum-pal.so.{VERSION}"
    write(
        os.path.join(build, "lib", pal), b"STAND-IN libocclum-pal\n" + _filler("pal", 4096), 0o755
    )
    os.symlink(pal, os.path.join(build, "lib/libocclum-pal.so.0"))
    os.symlink("libocclum-pal.so.0", os.path.join(build, "lib/libocclum-pal.so"))
    for name in ("occlum_exec_client", "occlum_exec_server", "occlum-run"):
        os.symlink(f"{OCCLUM_DIR}/build/bin/{name}", os.path.join(build, "bin", name))

    print("Signing the enclave...", flush=True)
    command = [
        sign_tool,
        "sign",
        "-key",
        sign_key,
        "-config",
        f"{build}/Enclave.xml",
        "-enclave",
        f"{build}/lib/libocclum-libos.so.0",
        "-out",
        f"{build}/lib/libocclum-libos.signed.so",
    ]
    env = {**os.environ, "SGX_SDK": SGX_SDK}
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise Fail(f"make: *** [{build}/lib/libocclum-libos.signed.so] Error {result.returncode}")

    write(os.path.join(instance, ".__occlum_status"), b"built\n")
    write(os.path.join(instance, ".sgx_mode"), sgx_mode.encode() + b"\n")
    os.makedirs(os.path.join(instance, "run/mount/__ROOT"), exist_ok=True)
    os.makedirs(os.path.join(instance, "run/initfs/__ROOT"), exist_ok=True)
    print("Built the Occlum image and enclave successfully", flush=True)


def _check_image_key(path: str) -> bytes:
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise Fail(
            f"{path}: the image key is readable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}; stand-in check)"
        )
    text = read(path).decode("ascii", "replace").strip()
    parts = text.split("-")
    if len(parts) != 16 or not all(re.fullmatch(r"[0-9a-fA-F]{2}", p) for p in parts):
        raise Fail(
            f"{path}: not an image key in `occlum gen-image-key` form (16 hex bytes joined by '-')"
        )
    return bytes(int(p, 16) for p in parts)


REQUIRED = {
    "resource_limits": dict,
    "process": dict,
    "entry_points": list,
    "env": dict,
    "metadata": dict,
    "feature": dict,
    "mount": list,
}


def _check_occlum_json(path: str) -> dict:
    try:
        config = json.loads(read(path))
    except ValueError as exc:
        raise Fail(f"{path}: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise Fail(f"{path}: not a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(config.get(key), kind):
            raise Fail(f"{path}: missing field `{key}` (or not a {kind.__name__})")
    unknown = sorted(set(config) - set(REQUIRED))
    if unknown:
        raise Fail(f"{path}: unknown field(s) {', '.join(unknown)}")
    meta = config["metadata"]
    typed: tuple[tuple[str, type], ...] = (
        ("product_id", int),
        ("version_number", int),
        ("debuggable", bool),
    )
    for key, expected in typed:
        if not isinstance(meta.get(key), expected) or (
            expected is int and isinstance(meta[key], bool)
        ):
            raise Fail(f"{path}: metadata.{key} must be a {expected.__name__}")
    limits = config["resource_limits"]
    if not isinstance(limits.get("max_num_of_threads"), int):
        raise Fail(f"{path}: resource_limits.max_num_of_threads must be an integer")
    if not all(isinstance(p, str) and p.startswith("/") for p in config["entry_points"]):
        raise Fail(f"{path}: entry_points must be absolute paths")
    root = [m for m in config["mount"] if isinstance(m, dict) and m.get("target") == "/"]
    if len(root) != 1 or root[0].get("type") != "unionfs":
        raise Fail(f"{path}: the root mount must be one unionfs")
    return config


def _check_init_ra_conf(path: str) -> dict:
    try:
        conf = json.loads(read(path))
    except ValueError as exc:
        raise Fail(f"{path}: not JSON ({exc})") from None
    if (
        not isinstance(conf, dict)
        or not isinstance(conf.get("kms_server"), str)
        or not isinstance(conf.get("kms_keys"), list)
        or not isinstance(conf.get("ra_config"), dict)
    ):
        raise Fail(f"{path}: needs kms_server (string), kms_keys (list), ra_config (object)")
    if conf["kms_server"] == "localhost:50051" and any(
        k.get("key") == "demo_key" for k in conf["kms_keys"] if isinstance(k, dict)
    ):
        raise Fail(f"{path}: still Occlum's template (demo_key at localhost:50051)")
    for item in conf["kms_keys"]:
        if not isinstance(item, dict) or set(item) != {"key", "path"}:
            raise Fail(f"{path}: each kms_keys entry is {{key, path}}")
    ra = conf["ra_config"]
    for flag in (
        "verify_mr_enclave",
        "verify_mr_signer",
        "verify_isv_prod_id",
        "verify_isv_svn",
        "verify_config_svn",
        "verify_enclave_debuggable",
    ):
        if ra.get(flag) not in ("on", "off"):
            raise Fail(f'{path}: ra_config.{flag} must be "on" or "off"')
    if not isinstance(ra.get("sgx_mrs"), list):
        raise Fail(f"{path}: ra_config.sgx_mrs must be a list")
    return conf


def _enclave_xml(config: dict) -> bytes:
    meta = config["metadata"]
    limits = config["resource_limits"]
    fields = [
        ("ProdID", meta["product_id"]),
        ("ISVSVN", meta["version_number"]),
        ("TCSNum", limits["max_num_of_threads"]),
        ("DisableDebug", 0 if meta["debuggable"] else 1),
        ("EnableKSS", 1 if meta.get("enable_kss") else 0),
    ]
    body = "".join(f"    <{k}>{v}</{k}>\n" for k, v in fields)
    return f"<EnclaveConfiguration>\n{body}</EnclaveConfiguration>\n".encode()


def _keystream(key: bytes, label: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(key + label.encode() + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:size])


def _zip_tree(source: str, target: str, key: bytes | None) -> tuple[str, int]:
    """Our stand-in 'SEFS': an index plus file contents, encrypted under *key*. Returns the
    root MAC (16 bytes, `xx-...` like Occlum's .ROOT_MAC) and the entry count."""
    entries = []
    blobs = bytearray()
    for current, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(current, name)
            rel = os.path.relpath(path, source)
            st = os.lstat(path)
            entry = {"path": rel, "mode": stat.S_IMODE(st.st_mode)}
            if stat.S_ISLNK(st.st_mode):
                entry["link"] = os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                entry["dir"] = True
            elif stat.S_ISREG(st.st_mode):
                data = read(path)
                if key is not None:
                    data = bytes(
                        a ^ b for a, b in zip(data, _keystream(key, rel, len(data)), strict=True)
                    )
                entry["offset"], entry["size"] = len(blobs), len(data)
                blobs += data
            else:
                raise Fail(f"{path}: not a file, directory or link")
            entries.append(entry)
    index = json.dumps(entries, sort_keys=True).encode()
    if key is not None:
        index = bytes(
            a ^ b for a, b in zip(index, _keystream(key, "\0index", len(index)), strict=True)
        )
    image = b"STAND-IN SEFS 1\n" + len(index).to_bytes(8, "little") + index + bytes(blobs)
    os.makedirs(os.path.join(target, "__ROOT"))
    write(os.path.join(target, "__ROOT/metadata"), image)
    mac = hashlib.sha256(image).digest()[:16]
    text = "-".join(f"{b:02x}" for b in mac)
    write(os.path.join(target, ".ROOT_MAC"), text.encode())
    return text, len(entries)


def _signed(instance: str) -> tuple[bytes, bytes]:
    """(enclave bytes, SIGSTRUCT) of the signed enclave."""
    path = os.path.join(instance, SIGNED)
    if not os.path.isfile(path):
        raise Fail(f"Error: No {SIGNED} existed")
    data = read(path)
    enclave, mark, sigstruct = data.rpartition(SIGSTRUCT_MARK)
    if not mark or len(sigstruct) != 1808:
        raise Fail(f"{SIGNED}: no SIGSTRUCT")
    return enclave, sigstruct


def occlum_print(args: list[str]) -> None:
    if not args:
        raise Fail("Error: print info name not provided")
    instance = os.getcwd()
    _, sigstruct = _signed(instance)
    if args[0] == "mrenclave":
        print(sigstruct[0x3C0:0x3E0].hex())
    elif args[0] == "mrsigner":
        print(hashlib.sha256(sigstruct[0x80:0x200]).hexdigest())
    else:
        raise Fail("Error: No valid info name provided")


def occlum_package(args: list[str]) -> None:
    instance = _instance()
    if not os.path.isdir(os.path.join(instance, "run/mount/__ROOT")):
        raise Fail(
            "Error: the Occlum image and enclave are not built yet. Need to run "
            '"occlum build" first.'
        )
    debug = False
    base = os.path.basename(instance)
    name = f"{base}.tar.gz"
    for arg in args:
        if arg == "--debug":
            debug = True
        else:
            name = arg
    if not name.endswith(".tar.gz"):
        name += ".tar.gz"
    if "/" in name:
        raise Fail(
            f"{name}: `occlum package` makes the package in the instance directory; "
            "give a plain name"
        )
    config = json.loads(read(os.path.join(instance, "Occlum.json")))
    if config["metadata"]["debuggable"] and not debug:
        raise Fail(
            'Warning: current Occlum instance is configured as "debuggable".\n'
            'Or, use "occlum package --debug" to support debug mode package'
        )
    top = name[: -len(".tar.gz")]
    members = [
        "Occlum.json",
        "build/bin",
        SIGNED,
        "build/initfs",
        "build/mount",
        "build/.Occlum_sys.json.protected",
        "initfs",
        "run",
        ".__occlum_status",
        ".sgx_mode",
    ]
    members += sorted(
        f"build/lib/{n}"
        for n in os.listdir(os.path.join(instance, "build/lib"))
        if n.startswith("libocclum-pal.so")
    )
    target = os.path.join(instance, name)
    remove(target)
    with tarfile.open(target, "w:gz") as tar:
        for member in members:
            path = os.path.join(instance, member)
            if not os.path.lexists(path):
                raise Fail(f"tar: {base}/{member}: Cannot stat: No such file or directory")
            tar.add(path, arcname=f"{top}/{member}")
    print(f"The package {name} is generated successfully", flush=True)


# --- copy_bom --------------------------------------------------------------------------------

BOM_KEYS = {"includes", "excludes", "targets"}
TARGET_KEYS = {"target", "mkdirs", "createlinks", "copy"}
COPY_KEYS = {"from", "dirs", "files"}
FILE_KEYS = {"name", "hash", "autodep", "rename"}


def copy_bom(args: list[str]) -> None:
    bom_file = root = None
    include_dirs: list[str] = []
    dry_run = False
    while args:
        option = args[0]
        if option in ("-f", "--file", "--root", "-i", "--include-dir"):
            if len(args) < 2:
                raise Fail(f"error: The argument '{option}' requires a value but none was supplied")
            if option in ("-f", "--file"):
                bom_file = args[1]
            elif option == "--root":
                root = args[1]
            else:
                include_dirs.append(args[1])
            args = args[2:]
        elif option == "--dry-run":
            dry_run, args = True, args[1:]
        else:
            raise Fail(f"error: Found argument '{option}' which wasn't expected")
    if bom_file is None or root is None:
        raise Fail("error: The following required arguments were not provided: --file, --root")
    if not os.path.isdir(root):
        raise Fail(f"{root}: the root directory does not exist")
    boms = _load_boms(bom_file, include_dirs, [])
    copied = 0
    for path, bom in boms:
        excludes = bom.get("excludes") or []
        for target in bom.get("targets") or []:
            copied += _apply_target(path, target, root, excludes, dry_run)
    say(
        "copy_bom",
        f"{copied} files from {len(boms)} bom file(s) into {root} "
        "(ELF dependencies are not resolved by the stand-in)",
    )


def _load_boms(path: str, include_dirs: list[str], chain: list[str]) -> list[tuple[str, dict]]:
    if path in chain:
        raise Fail(f"{path}: includes itself ({' -> '.join(chain + [path])})")
    try:
        with open(path, encoding="utf-8") as handle:
            bom = yaml.safe_load(handle)
    except OSError as exc:
        raise Fail(f"{path}: cannot read the bom file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise Fail(f"{path}: not YAML ({exc})") from None
    if not isinstance(bom, dict):
        raise Fail(f"{path}: a bom file is a mapping of includes, excludes, targets")
    _only(path, "bom", bom, BOM_KEYS)
    out: list[tuple[str, dict]] = []
    for name in bom.get("includes") or []:
        found = next(
            (os.path.join(d, name) for d in include_dirs if os.path.isfile(os.path.join(d, name))),
            None,
        )
        if found is None:
            raise Fail(f"{path}: included bom {name!r} not found in {include_dirs}")
        out += _load_boms(found, include_dirs, chain + [path])
    out.append((path, bom))
    return out


def _only(path: str, where: str, value: object, keys: set[str]) -> None:
    if not isinstance(value, dict):
        raise Fail(f"{path}: {where} must be a mapping")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise Fail(
            f"{path}: {where}: unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(keys))}"
        )


def _source(path: str, base: str | None, name: str) -> str:
    full = os.path.normpath(os.path.join(base, name) if base else name)
    if not full.startswith("/"):
        raise Fail(f"{path}: source {name!r} is not absolute (and has no `from`)")
    if not any((full + "/").startswith(r) for r in SOURCE_ROOTS):
        raise Fail(
            f"{path}: source {full} is outside {', '.join(SOURCE_ROOTS)} (the base "
            "root filesystem, the plan's files, the toolchain)"
        )
    if not os.path.lexists(full):
        raise Fail(f"{path}: source {full} does not exist")
    return full


def _apply_target(path: str, target: dict, root: str, excludes: list[str], dry: bool) -> int:
    _only(path, "target", target, TARGET_KEYS)
    dest = target.get("target")
    if not isinstance(dest, str) or not dest.startswith("/"):
        raise Fail(f"{path}: target {dest!r} must be an absolute path")
    dest_dir = os.path.join(root, dest.lstrip("/"))
    count = 0
    for sub in target.get("mkdirs") or []:
        if not dry:
            os.makedirs(os.path.join(dest_dir, sub), exist_ok=True)
    for source in target.get("copy") or []:
        _only(path, "copy", source, COPY_KEYS)
        base = source.get("from")
        for item in source.get("dirs") or []:
            full = _source(path, base, item)
            if not os.path.isdir(full):
                raise Fail(f"{path}: dirs entry {full} is not a directory")
            into = (
                dest_dir if item.endswith("/") else os.path.join(dest_dir, os.path.basename(full))
            )
            if not dry:
                count += _copy_dir(full, into, excludes)
        for item in source.get("files") or []:
            name, rename, digest = item, None, None
            if isinstance(item, dict):
                _only(path, "file", item, FILE_KEYS)
                name, rename, digest = item.get("name"), item.get("rename"), item.get("hash")
            if not isinstance(name, str):
                raise Fail(f"{path}: a files entry needs a name")
            full = _source(path, base, name)
            if not os.path.isfile(full):
                raise Fail(f"{path}: files entry {full} is not a file")
            if digest is not None and hashlib.sha256(read(full)).hexdigest() != digest.lower():
                raise Fail(f"{path}: {full} does not match its hash {digest}")
            if not dry:
                os.makedirs(dest_dir, exist_ok=True)
                shutil.copy2(full, os.path.join(dest_dir, rename or os.path.basename(name)))
                count += 1
    for link in target.get("createlinks") or []:
        if not isinstance(link, dict) or set(link) != {"src", "linkname"}:
            raise Fail(f"{path}: createlinks entries are {{src, linkname}}")
        if not dry:
            at = os.path.join(dest_dir, link["linkname"])
            os.makedirs(os.path.dirname(at), exist_ok=True)
            remove(at)
            os.symlink(link["src"], at)
    return count


def _copy_dir(source: str, target: str, excludes: list[str]) -> int:
    count = 0
    os.makedirs(target, exist_ok=True)
    for current, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch(d, e) for e in excludes))
        rel = os.path.relpath(current, source)
        out = os.path.normpath(os.path.join(target, rel))
        os.makedirs(out, exist_ok=True)
        for name in sorted(files):
            if any(fnmatch.fnmatch(name, e) for e in excludes):
                continue
            src = os.path.join(current, name)
            if os.path.islink(src):
                remove(os.path.join(out, name))
                os.symlink(os.readlink(src), os.path.join(out, name))
            else:
                shutil.copy2(src, os.path.join(out, name))
            count += 1
    return count


# --- sgx_sign --------------------------------------------------------------------------------


def sgx_sign(args: list[str]) -> None:
    if not args:
        raise Fail("Usage: sgx_sign <command> <options>")
    command, options = args[0], _options(args[1:])
    if command == "gendata":
        _need(options, "enclave", "config", "out")
        write(options["out"], _signing_data(options["enclave"], options["config"]))
        print("Succeed.", flush=True)
    elif command == "catsig":
        _need(options, "enclave", "config", "out", "key", "sig", "unsigned")
        _catsig(options)
        print("Succeed.", flush=True)
    elif command == "sign":
        raise Fail(
            "the stand-in sgx_sign does not sign with a private key; enclave-build "
            "signs through --sign-tool (gendata, then catsig)"
        )
    else:
        raise Fail(f"sgx_sign: unknown command {command}")


def _options(args: list[str]) -> dict[str, str]:
    out = {}
    while args:
        if not args[0].startswith("-") or len(args) < 2:
            raise Fail(f"sgx_sign: bad option {args[0]!r}")
        out[args[0][1:]] = args[1]
        args = args[2:]
    return out


def _need(options: dict[str, str], *names: str) -> None:
    missing = [n for n in names if n not in options]
    if missing:
        raise Fail(f"sgx_sign: missing option(s) {', '.join('-' + n for n in missing)}")
    extra = sorted(set(options) - set(names))
    if extra:
        raise Fail(f"sgx_sign: unexpected option(s) {', '.join('-' + n for n in extra)}")


def _xml_values(path: str) -> dict[str, int]:
    try:
        root = ET.fromstring(read(path))
    except ET.ParseError as exc:
        raise Fail(f"{path}: not XML ({exc})") from None
    return {child.tag: int(child.text or "0", 0) for child in root}


def _signing_data(enclave_path: str, config_path: str) -> bytes:
    enclave = read(enclave_path)
    values = _xml_values(config_path)
    mr_enclave = hashlib.sha256(
        b"stand-in MRENCLAVE\0" + enclave + json.dumps(values, sort_keys=True).encode()
    ).digest()
    header = (
        bytes.fromhex("06000000e10000000000010000000000")
        + bytes(4)
        + bytes(4)
        + bytes.fromhex("01010000600000006000000001000000")
        + bytes(4)
        + bytes(84)
    )
    flags = 0x4 | (0 if values.get("DisableDebug", 1) else 0x2)  # MODE64BIT, DEBUG
    body = bytearray(128)
    body[0x1C:0x24] = flags.to_bytes(8, "little")
    body[0x24:0x2C] = (0x3).to_bytes(8, "little")  # XFRM: x87, SSE
    body[0x2C:0x3C] = bytes.fromhex("fdffffffffffffff0000000000000000")
    body[0x3C:0x5C] = mr_enclave
    body[0x7C:0x7E] = values.get("ProdID", 0).to_bytes(2, "little")
    body[0x7E:0x80] = values.get("ISVSVN", 0).to_bytes(2, "little")
    assert len(header) == 128
    return header + bytes(body)


def _der(data: bytes, pos: int) -> tuple[int, bytes, int]:
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    return tag, data[pos : pos + length], pos + length


def _public_key(path: str) -> tuple[int, int]:
    text = read(path).decode("ascii", "replace")
    match = re.search(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", text, re.S)
    if not match:
        raise Fail(f"{path}: not a PEM public key")
    der = base64.b64decode("".join(match.group(1).split()))
    _, spki, _ = _der(der, 0)
    _, _, pos = _der(spki, 0)  # AlgorithmIdentifier
    _, bits, _ = _der(spki, pos)  # BIT STRING
    _, seq, _ = _der(bits[1:], 0)
    _, n, pos = _der(seq, 0)
    _, e, _ = _der(seq, pos)
    return int.from_bytes(n, "big"), int.from_bytes(e, "big")


SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


def _catsig(options: dict[str, str]) -> None:
    data = _signing_data(options["enclave"], options["config"])
    if read(options["unsigned"]) != data:
        raise Fail("sgx_sign catsig: the -unsigned file is not this enclave's signing data")
    n, e = _public_key(options["key"])
    if n.bit_length() != 3072 or e != 3:
        raise Fail("sgx_sign catsig: the key must be RSA-3072 with exponent 3")
    raw = read(options["sig"])
    if len(raw) != 384:
        raise Fail(f"sgx_sign catsig: the signature has {len(raw)} bytes, not 384")
    s = int.from_bytes(raw, "big")
    digest = hashlib.sha256(data).digest()
    expected = (
        b"\x00\x01"
        + b"\xff" * (384 - 3 - len(SHA256_PREFIX) - 32)
        + b"\x00"
        + SHA256_PREFIX
        + digest
    )
    if pow(s, e, n).to_bytes(384, "big") != expected:
        raise Fail("sgx_sign catsig: the signature does not verify against the data and key")
    q1 = s * s // n
    q2 = (s * s * s - q1 * s * n) // n
    sigstruct = bytearray(1808)
    sigstruct[0:128] = data[:128]
    sigstruct[0x80:0x200] = n.to_bytes(384, "little")
    sigstruct[0x200:0x204] = e.to_bytes(4, "little")
    sigstruct[0x204:0x384] = s.to_bytes(384, "little")
    sigstruct[0x384:0x404] = data[128:]
    sigstruct[0x410:0x590] = q1.to_bytes(384, "little")
    sigstruct[0x590:0x710] = q2.to_bytes(384, "little")
    write(options["out"], read(options["enclave"]) + SIGSTRUCT_MARK + bytes(sigstruct), 0o755)


# --- helpers ---------------------------------------------------------------------------------


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def write(path: str, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def remove(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)


def _filler(label: str, size: int) -> bytes:
    return _keystream(b"stand-in", label, size)


TOOLS = {"occlum": occlum, "copy_bom": copy_bom, "sgx_sign": sgx_sign}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in TOOLS:
        print(f"usage: standin.py {'|'.join(TOOLS)} ARGS", file=sys.stderr)
        return 2
    try:
        TOOLS[argv[1]](argv[2:])
    except Fail as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
