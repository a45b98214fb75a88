"""Build the stand-in Occlum toolchain image FROM scratch (test fixture; NOT Occlum).

The image holds: this machine's bash and the few coreutils the backend's scripts use, the Python
interpreter running the tests with just the standard-library modules the stand-in imports (found
by importing it in a probe and listing ``sys.modules``) plus PyYAML, every ELF library those need
(from ``ldd``), all at their paths on this machine; ``standin.py`` as ``occlum`` and ``copy_bom``
in /opt/occlum/build/bin and as the SGX SDK's ``sgx_sign``; and stand-in templates in
/opt/occlum/etc/template. A real build uses ``occlum/occlum:0.31.0-ubuntu22.04`` instead.

Also: :func:`make_runtime_base`, a ``dir:`` runtime base (the stand-in Gramine tree of
:mod:`builder.standin` for the application's files, plus stand-ins of what Occlum's runtime
package installs under /opt/occlum/build/bin).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAG = "enclave-build-test/occlum-standin:0.31.0"
#: The programs the backend's driver and sign-tool scripts run besides occlum/copy_bom/sgx_sign.
PROGRAMS = ("bash", "cp", "mkdir", "chown", "sleep")
STANDIN_DIR = "/opt/standin"
#: Stand-ins of Occlum's glibc (/opt/occlum/glibc/lib in the real image).
GLIBC = (
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libpthread.so.0",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
)
PROBE = """
import sys
sys.path[:0] = [{standin!r}, {yaml_parent!r}]
import standin, yaml, gzip, zlib, tarfile, subprocess, xml.etree.ElementTree, pyexpat, json
import fnmatch, base64, hashlib, encodings.utf_8, encodings.ascii, encodings.latin_1
hashlib.sha256(b"")
for name, module in sorted(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path:
        print(path)
"""


def _ldd(paths: list[str]) -> set[str]:
    out: set[str] = set()
    for path in paths:
        result = subprocess.run(["ldd", path], capture_output=True, text=True)
        for line in result.stdout.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                out.add(match.group(1))
    return out


def _mirror(root: Path, path: str) -> None:
    """Copy host *path* into *root* at the same place, recreating symlinked components."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        candidate = os.path.join(current, part)
        inside = root / candidate.lstrip("/")
        if os.path.islink(candidate):
            if not os.path.lexists(inside):
                inside.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.readlink(candidate), inside)
            target = os.readlink(candidate)
            current = os.path.normpath(os.path.join(current, target))  # absolute target wins
            continue
        current = candidate
    inside = root / current.lstrip("/")
    if os.path.isdir(current):
        inside.mkdir(parents=True, exist_ok=True)
    elif not inside.exists():
        inside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(current, inside)


def _write(root: Path, inner: str, data: str | bytes, mode: int = 0o644) -> None:
    path = root / inner.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def make_context(context: Path) -> Path:
    """Write the build context (Dockerfile + rootfs/) under *context*."""
    import yaml

    root = context / "rootfs"
    root.mkdir(parents=True)
    python = os.path.realpath(sys.executable)
    yaml_parent = str(Path(yaml.__file__).resolve().parent.parent)
    probe = subprocess.run(
        [python, "-S", "-c", PROBE.format(standin=str(HERE), yaml_parent=yaml_parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    files = [p for p in probe.stdout.splitlines() if p and not p.startswith(str(HERE))]
    stdlib = os.path.dirname(os.__file__)
    files.append(os.path.join(stdlib, "os.py"))  # the interpreter's prefix landmark
    files += [str(p) for p in Path(stdlib, "encodings").glob("*.py")]
    programs = [python] + [shutil.which(p) or f"/usr/bin/{p}" for p in PROGRAMS]
    for path in programs + files:
        _mirror(root, path)
    yaml_dir = Path(yaml.__file__).resolve().parent
    for file in yaml_dir.rglob("*"):
        if file.is_file() and "__pycache__" not in file.parts:
            _mirror(root, str(path))
    elves = programs + [p for p in files if p.endswith(".so")]
    elves += [str(p) for p in yaml_dir.glob("*.so")]
    for lib in sorted(_ldd(elves)):
        _mirror(root, lib)
    for link in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(link) and not os.path.lexists(root / link.lstrip("/")):
            os.symlink(os.readlink(link), root / link.lstrip("/"))
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)

    _write(root, f"{STANDIN_DIR}/standin.py", (HERE / "standin.py").read_bytes())
    for tool, where in (
        ("occlum", "/opt/occlum/build/bin/occlum"),
        ("copy_bom", "/opt/occlum/build/bin/copy_bom"),
        ("sgx_sign", "/opt/occlum/sgxsdk-tools/bin/x64/sgx_sign"),
    ):
        _write(
            root,
            where,
            f"#!/bin/bash\n# enclave-build test stand-in (NOT {tool})\n"
            f"PYTHONPATH={yaml_parent} exec {python} -S -B "
            f'{STANDIN_DIR}/standin.py {tool} "$@"\n',
            0o755,
        )
    for lib in GLIBC:
        _write(root, f"/opt/occlum/glibc/lib/{lib}", f"stand-in of Occlum's glibc {lib}\n", 0o755)
    for template in (HERE / "template").iterdir():
        _write(root, f"/opt/occlum/etc/template/{template.name}", template.read_bytes())
    (context / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\n"
        "ENV PATH=/opt/occlum/build/bin:/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8\n"
        'LABEL org.opencontainers.image.description="enclave-build test stand-in of the '
        'Occlum 0.31 toolchain (NOT Occlum)"\n'
        "WORKDIR /root\n"
    )
    (root / "root").mkdir(exist_ok=True)
    return context


def build_image(client, context: Path, tag: str = TAG) -> str:
    """Build the stand-in toolchain image in the engine *client* talks to; returns its tag."""
    make_context(context)
    client.images.build(path=str(context), tag=tag, rm=True, network_mode="none")
    return tag


def make_runtime_base(root: Path) -> Path:
    """A ``dir:`` runtime base: the stand-in application tree plus stand-ins of Occlum's
    runtime files (occlum-runtime installs /opt/occlum/build/bin/{occlum,occlum-run,...})."""
    from enclave_build.builder.standin import make_standin_rootfs

    make_standin_rootfs(root)
    for name in ("occlum", "occlum-run", "occlum_exec_client", "occlum_exec_server"):
        _write(
            root,
            f"/opt/occlum/build/bin/{name}",
            f"#!/bin/sh\necho 'stand-in {name}: no Occlum runtime here' >&2\nexit 1\n",
            0o755,
        )
    _write(root, "/usr/bin/sh", "stand-in /bin/sh\n", 0o755)
    if not os.path.lexists(root / "bin"):
        os.symlink("usr/bin", root / "bin")
    return root
