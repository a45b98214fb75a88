"""ELF shared-library closure: computed from real binaries copied with their libraries into a
fixture root filesystem, checked against the system's own dynamic loader (ldd), and enforced in
built manifests (a library the binary needs and the manifest does not trust fails the test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from enclave_build.builder.elf import LibraryNotFoundError, LoaderView, closure, read_deps
from enclave_build.builder.rootfs import RootFS

from .conftest import write_spec

RUNTIME = "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"
GLIBC = {
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
    "libresolv.so.2",
}


def _ldd(binary: str) -> dict[str, str]:
    """name -> host path of every library the system loader maps for *binary*."""
    if shutil.which("ldd") is None or not Path(binary).exists():
        pytest.skip(f"needs ldd and {binary} on the build machine")
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = {}
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs[parts[0]] = parts[2]
    return libs


def _copy(src: str, root: Path, dest: str) -> None:
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)


def real_binary_rootfs(root: Path, binary: str, dest: str) -> tuple[Path, set[str]]:
    """A merged-/usr root with *binary* at *dest*, every non-glibc library it needs under
    /usr/lib/x86_64-linux-gnu, and a stand-in Gramine glibc dir. Returns (root, names)."""
    libs = _ldd(binary)
    _copy(binary, root, dest)
    names = set()
    for name, path in libs.items():
        if name in GLIBC:
            _copy(path, root, f"{RUNTIME}/{name}")
        else:
            _copy(path, root, f"/usr/lib/x86_64-linux-gnu/{name}")
            names.add(name)
    _copy("/lib64/ld-linux-x86-64.so.2", root, f"{RUNTIME}/ld-linux-x86-64.so.2")
    (root / "usr/lib/x86_64-linux-gnu/libnever-needed.so.1").write_bytes(b"\x7fELF not needed")
    if not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")
    return root, names


def _view(root: Path) -> LoaderView:
    return LoaderView(RootFS(root), {"/lib": RUNTIME}, ("/lib", "/usr/lib/x86_64-linux-gnu"))


@pytest.mark.parametrize("binary", ["/usr/bin/openssl", "/usr/bin/python3.11"])
def test_closure_of_a_real_binary_matches_the_system_loader(tmp_path, binary):
    root, names = real_binary_rootfs(tmp_path / "root", binary, "/usr/bin/app")
    assert names, "the binary needs some non-glibc library"
    result = closure(["/usr/bin/app"], _view(root), strict=True)
    found = {p for p in result.libraries if not p.startswith(RUNTIME)}
    assert found == {f"/usr/lib/x86_64-linux-gnu/{n}" for n in names}
    # Gramine's glibc wins for libc and friends: they resolve into runtime/glibc.
    assert f"{RUNTIME}/libc.so.6" in result.libraries
    assert not any(p.startswith("/usr/lib/x86_64-linux-gnu/libc.so") for p in result.libraries)
    assert "/usr/lib/x86_64-linux-gnu/libnever-needed.so.1" not in result.libraries


def test_missing_library_is_an_error_naming_it_and_the_needer(tmp_path):
    root, names = real_binary_rootfs(tmp_path / "root", "/usr/bin/openssl", "/usr/bin/app")
    gone = sorted(names)[0]
    (root / "usr/lib/x86_64-linux-gnu" / gone).unlink()
    with pytest.raises(LibraryNotFoundError) as info:
        closure(["/usr/bin/app"], _view(root), strict=True)
    message = str(info.value)
    assert f"/usr/bin/app needs {gone}, which is not in the base image ({root})" in message
    assert "searched: /lib, /usr/lib/x86_64-linux-gnu" in message
    lenient = closure(["/usr/bin/app"], _view(root))
    assert (gone, "/usr/bin/app") in lenient.missing


def test_runpath_origin_and_rpath(tmp_path):
    """$ORIGIN in DT_RUNPATH is the needing object's directory; DT_RPATH comes before
    LD_LIBRARY_PATH only without DT_RUNPATH."""
    from enclave_build.builder.standin import standin_elf

    root = tmp_path / "root"
    (root / "opt/app/bin").mkdir(parents=True)
    (root / "opt/app/lib").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "opt/app/bin/app").write_bytes(
        standin_elf("app", needed=("libapp.so",), runpath="$ORIGIN/../lib")
    )
    (root / "opt/app/lib/libapp.so").write_bytes(standin_elf("libapp", needed=("libz.so.1",)))
    (root / "opt/app/lib/libz.so.1").write_bytes(standin_elf("bundled-z"))
    (root / "usr/lib/x86_64-linux-gnu/libz.so.1").write_bytes(standin_elf("system-z"))
    deps = read_deps(root / "opt/app/bin/app")
    assert deps.needed == ("libapp.so",) and deps.runpath == ("$ORIGIN/../lib",)
    view = LoaderView(RootFS(root), {}, ("/usr/lib/x86_64-linux-gnu",))
    libs = closure(["/opt/app/bin/app"], view, strict=True).libraries
    # libapp.so has no RUNPATH of its own: libz comes from LD_LIBRARY_PATH, as ld.so does it.
    assert libs == ("/opt/app/lib/libapp.so", "/usr/lib/x86_64-linux-gnu/libz.so.1")


def test_stripped_sections_fall_back_to_the_dynamic_segment(tmp_path):
    from enclave_build.builder.standin import standin_elf

    path = tmp_path / "x.so"
    path.write_bytes(standin_elf("x", needed=("liba.so.1", "libb.so.2"), runpath="/opt/lib"))
    deps = read_deps(path)
    assert deps.needed == ("liba.so.1", "libb.so.2") and deps.runpath == ("/opt/lib",)
    (tmp_path / "text").write_text("not an ELF")
    assert read_deps(tmp_path / "text") is None


@pytest.fixture
def real_tfserving_base(tmp_path, standin_root):
    """The stand-in Gramine base with a REAL binary (openssl) as tensorflow_model_server."""
    root = tmp_path / "base"
    shutil.copytree(standin_root, root, symlinks=True)
    os.unlink(root / "usr/bin/tensorflow_model_server")
    root, names = real_binary_rootfs(root, "/usr/bin/openssl", "/usr/bin/tensorflow_model_server")
    return root, names


TFS_SPEC = """[service]
name = "tfs"
framework = "tfserving"

[[models]]
name = "m"
path = "model"
encrypt = false

[signing]
key = "key.pem"
"""


def _build_tfs(tmp_path, base: Path, signing_key: Path):
    from enclave_build.builder.build import build

    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model/saved_model.pb").write_bytes(b"\x08\x01")
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    return build(write_spec(tmp_path, TFS_SPEC), base=f"dir:{base}")


def test_every_library_a_real_binary_needs_is_trusted(tmp_path, real_tfserving_base, signing_key):
    base, _names = real_tfserving_base
    result = _build_tfs(tmp_path, base, signing_key)
    manifest = tomllib.loads(result.artifacts.manifest.decode())
    trusted = {tf["uri"] for tf in manifest["sgx"]["trusted_files"]}
    needed = set(_ldd("/usr/bin/openssl"))
    for name in needed:
        where = RUNTIME if name in GLIBC else "/usr/lib/x86_64-linux-gnu"
        assert f"file:{where}/{name}" in trusted, f"{name} is needed but not trusted"
    assert "file:/usr/lib/x86_64-linux-gnu/libnever-needed.so.1" not in trusted


def test_build_fails_clearly_when_the_base_lacks_a_needed_library(
    tmp_path, real_tfserving_base, signing_key
):
    base, names = real_tfserving_base
    gone = sorted(names)[-1]
    (base / "usr/lib/x86_64-linux-gnu" / gone).unlink()
    with pytest.raises(
        LibraryNotFoundError,
        match=f"/usr/bin/tensorflow_model_server needs {gone}, which is not in the base image",
    ):
        _build_tfs(tmp_path, base, signing_key)
