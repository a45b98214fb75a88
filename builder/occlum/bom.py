"""The copy_bom YAML that fills Occlum's image directory from the plan.

Inside the build container the plan's own files are laid out under STAGE by their image path,
and the base image's root filesystem is visible read-only under ROOTFS (render.py). The bom
lists every file explicitly:

- plan files (models, configs, our server's code) from STAGE, each with its SHA-256 (copy_bom
  refuses a file whose content differs), directories expanded file by file;
- from ROOTFS: the entrypoint, the plan's trusted paths, the paths trusted when present, the
  Python closure and the ELF closure of all of it, resolved against the base image by
  builder.elf (never by copy_bom: its ``autodep`` runs the *container's* loader and would
  copy the container's libraries), so every entry says ``autodep: false``. A file reached
  through symlinks is copied from its resolved path (an absolute link inside ROOTFS would
  point into the container's own tree) to the path the enclave opens;
- glibc itself (GLIBC_CORE) is never taken from the base: the image must use Occlum's glibc,
  which ``occlum new`` puts in /opt/occlum/glibc/lib (and /lib64 for the loader); the few core
  libraries `occlum new` does not copy come from the container's /opt/occlum/glibc/lib;
- a directory for every mount target (the LibOS mounts onto an existing directory).

/etc/hosts, /etc/resolv.conf and /etc/hostname are written by Occlum itself at start
(``write_host_file`` in fs_ops/mount.rs), so the plan's copies of those are left out.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import stat
from pathlib import Path
from typing import Any, Iterable

from ..elf import LoaderView, closure
from ..errors import EnclaveBuildError
from ..plan import ServicePlan
from ..python_closure import python_closure
from ..rootfs import RootFS, RootFSError
from .occlum_json import FRAMEWORK_KEY, OCCLUM_GLIBC_LIB, OcclumConfigError, locate

#: Occlum's glibc replaces these; `occlum new` copies the first four into the image.
GLIBC_CORE = ("ld-linux-x86-64.so.2", "libc.so.6", "libpthread.so.0", "libm.so.6",
              "libdl.so.2", "librt.so.1")
GLIBC_FROM_CONTAINER = ("libdl.so.2", "librt.so.1")
#: Written by Occlum at start (fs_ops/mount.rs write_host_file).
OCCLUM_WRITES = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")


class BomError(EnclaveBuildError):
    pass


def _sha256(data: bytes | None, source: Path | None) -> str:
    h = hashlib.sha256()
    if data is not None:
        h.update(data)
    else:
        assert source is not None
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest().upper()


def plan_files(plan: ServicePlan) -> list[tuple[str, str]]:
    """(image path, SHA-256 in upper-case hex) of every file the plan adds, in plan order;
    directories expanded (sorted), so the stage holds exactly these files."""
    out: list[tuple[str, str]] = []
    for item in plan.files:
        if item.dest in OCCLUM_WRITES:
            continue
        if item.dest.endswith("/"):
            if item.source is None or not item.source.is_dir():
                raise BomError(f"{item.dest}: a directory entry needs a source directory")
            for path in sorted(p for p in item.source.rglob("*") if p.is_file()):
                out.append((item.dest + path.relative_to(item.source).as_posix(),
                            _sha256(None, path)))
        else:
            if item.source is not None and not item.source.is_file():
                raise BomError(f"{item.source}: not a file (for {item.dest})")
            out.append((item.dest, _sha256(item.data, item.source)))
    return out


def _walk(rootfs: RootFS, top: str) -> list[str]:
    out = []
    for name in rootfs.listdir(top):
        inner = posixpath.join(top, name)
        st = rootfs.stat(inner)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            out += _walk(rootfs, inner)
        elif stat.S_ISREG(st.st_mode):
            out.append(inner)
    return out


def _expand(rootfs: RootFS, paths: Iterable[str], strict: bool, plan: ServicePlan) -> list[str]:
    out: list[str] = []
    for path in paths:
        inner = path.rstrip("/") or "/"
        st = rootfs.stat(inner)
        if st is None:
            if strict:
                raise OcclumConfigError(locate(plan, FRAMEWORK_KEY), f"{inner} is not in the base "
                                      f"image ({rootfs})")
            continue
        out += _walk(rootfs, inner) if stat.S_ISDIR(st.st_mode) else [inner]
    return out


def rootfs_files(plan: ServicePlan, rootfs: RootFS | None, skip: set[str]) -> list[str]:
    """Image paths to copy from the base image (before the glibc substitution)."""
    needs_rootfs = plan.python is not None or plan.trusted_if_present
    if rootfs is None:
        if needs_rootfs:
            raise BomError("the Occlum bom of this plan needs the base image's root filesystem "
                           "(a Python closure or paths trusted when present)")
        files = [plan.entrypoint] + [p for p in plan.trusted]
        return list(dict.fromkeys(p for p in files if p not in skip))
    files = _expand(rootfs, [plan.entrypoint] + plan.trusted, True, plan)
    if plan.python is not None:
        files += python_closure(plan.python, rootfs).files
    files += _expand(rootfs, plan.trusted_if_present, False, plan)
    files += _expand(rootfs, [p for p in plan.allowed if p not in OCCLUM_WRITES], False, plan)
    library_path = tuple(p for p in plan.env.get("LD_LIBRARY_PATH", "").split(":")
                         if p.startswith("/"))
    view = LoaderView(rootfs, {}, library_path)
    entry = closure([plan.entrypoint], view)
    for name, needer in entry.missing:
        if name not in GLIBC_CORE:  # glibc comes from Occlum, not from the base
            raise OcclumConfigError(locate(plan, FRAMEWORK_KEY),
                                    f"{needer} needs {name}, which is not in the base image "
                                    f"({rootfs}); searched: "
                                    + ", ".join(library_path + view.default_dirs))
    rest = closure(files, view)
    files += list(entry.libraries) + list(rest.libraries)
    return list(dict.fromkeys(p for p in files if p not in skip))


def bom(plan: ServicePlan, rootfs: RootFS | None, stage: str, rootfs_dir: str,
        mount_targets: list[str]) -> dict[str, Any]:
    """The copy_bom document (a dict in copy_bom's ``Bom`` shape)."""
    groups: dict[tuple[str, str], list[Any]] = {}

    def add(target: str, source_dir: str, entry: Any) -> None:
        groups.setdefault((target, source_dir), []).append(entry)

    staged = plan_files(plan)
    for dest, digest in staged:
        add(posixpath.dirname(dest), stage + posixpath.dirname(dest),
            {"name": posixpath.basename(dest), "hash": digest, "autodep": False})
    glibc_needed: set[str] = set()
    for path in rootfs_files(plan, rootfs, {d for d, _ in staged}):
        name = posixpath.basename(path)
        if name in GLIBC_CORE:
            glibc_needed.add(name)
            continue
        try:
            real = rootfs.resolve(path) if rootfs is not None else path
        except RootFSError as exc:
            raise BomError(str(exc)) from None
        entry: dict[str, Any] = {"name": posixpath.basename(real), "autodep": False}
        if posixpath.basename(real) != name:
            entry["rename"] = name
        add(posixpath.dirname(path), rootfs_dir + posixpath.dirname(real), entry)
    for name in sorted(glibc_needed & set(GLIBC_FROM_CONTAINER)):
        add(OCCLUM_GLIBC_LIB, OCCLUM_GLIBC_LIB, {"name": name, "autodep": False})
    targets: list[dict[str, Any]] = []
    mkdirs = sorted({t.lstrip("/") for t in mount_targets if t.strip("/")})
    if mkdirs:
        targets.append({"target": "/", "mkdirs": mkdirs})
    for (target, source_dir) in sorted(groups):
        files = sorted(groups[(target, source_dir)], key=lambda e: (e.get("rename") or e["name"]))
        targets.append({"target": target or "/",
                        "copy": [{"from": source_dir, "files": files}]})
    return {"targets": targets}


# --- YAML ------------------------------------------------------------------------------------

def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=True)  # a valid YAML double-quoted scalar


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                _emit(item, indent + 2, lines)
            elif isinstance(item, dict):
                lines.append(f"{pad}{key}: {{}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: []")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                sub[0] = f"{pad}- " + sub[0][indent + 2:]
                lines += sub
            elif isinstance(item, list):
                raise BomError("nested lists are not used in a bom")
            else:
                lines.append(f"{pad}- {_scalar(item)}")


def to_yaml(doc: dict[str, Any], header: str = "") -> bytes:
    """Block-style YAML with every string double-quoted: deterministic, and read by serde_yaml
    exactly as written (no YAML 1.1 surprises such as ``no`` or ``0777``)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _emit(doc, 0, lines)
    return ("\n".join(lines) + "\n").encode()
