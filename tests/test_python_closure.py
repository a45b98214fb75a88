"""The Python closure: exactly the files a Python service runs, resolved in a base rootfs.

Against the stand-in layout (what is left out and why), and against this machine's own Debian
python3.11 where it exists: every module a server-like import set loads, and every shared
object mapped into the process, must be in the closure."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from enclave_build.builder.elf import LoaderView, closure
from enclave_build.builder.plan import PythonRuntime
from enclave_build.builder.python_closure import PythonClosureError, python_closure
from enclave_build.builder.rootfs import RootFS

from .conftest import tflite_bytes

STDLIB = "/usr/lib/python3.11"
LOCAL = "/usr/local/lib/python3.11/dist-packages"
DEBIAN = "/usr/lib/python3/dist-packages"


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> RootFS:
    from enclave_build.builder.standin import make_standin_rootfs

    return RootFS(make_standin_rootfs(tmp_path_factory.mktemp("py") / "root"))


def _files(runtime: PythonRuntime, rootfs: RootFS) -> set[str]:
    return set(python_closure(runtime, rootfs).files)


def test_stdlib_minus_unused_trees(standin):
    files = _files(PythonRuntime(), standin)
    assert {
        "/usr/bin/python3.11",
        f"{STDLIB}/os.py",
        f"{STDLIB}/encodings/utf_8.py",
        f"{STDLIB}/unittest/__init__.py",
        f"{STDLIB}/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
    } <= files
    for gone in (
        "test/__init__.py",
        "tkinter/__init__.py",
        "idlelib/__init__.py",
        "lib2to3/__init__.py",
        "ensurepip/__init__.py",
        "pydoc_data/topics.py",
        "turtledemo/__init__.py",
        "distutils/__init__.py",
        "unittest/test/test_case.py",
        "ctypes/test/test_x.py",
        "config-3.11-x86_64-linux-gnu/Makefile",
        "lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so",
        "lib-dynload/_tkinter.cpython-311-x86_64-linux-gnu.so",
    ):
        assert f"{STDLIB}/{gone}" not in files, gone


def test_only_hash_based_pyc_files_are_trusted(standin):
    """Inside the LibOS every mtime reads 0, so timestamp .pyc files are always stale."""
    files = _files(PythonRuntime(), standin)
    assert f"{STDLIB}/__pycache__/os.cpython-311.pyc" in files  # unchecked-hash
    assert f"{STDLIB}/__pycache__/site.cpython-311.pyc" not in files  # timestamp
    assert f"{STDLIB}/__pycache__/os.cpython-311.opt-1.pyc" not in files


def test_compiled_files_a_record_does_not_list_are_trusted_when_hash_based(tmp_path):
    """pip --no-compile, then compileall by the base: RECORD names only the sources, yet Python
    opens each module's __pycache__ file, and the real LibOS refuses an untrusted one."""
    site = tmp_path / LOCAL.lstrip("/")
    (site / "pkg/__pycache__").mkdir(parents=True)
    (site / "__pycache__").mkdir()
    info = site / "pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        "pkg/__init__.py,,\npkg/old.py,,\nsingle.py,,\npkg-1.0.dist-info/METADATA,,\n"
    )
    for rel in ("pkg/__init__.py", "pkg/old.py", "single.py"):
        (site / rel).write_text("x = 1\n")
    magic = b"\xa7\r\r\n"
    hashed, timestamped = magic + (1).to_bytes(4, "little") + bytes(8), magic + bytes(12)
    (site / "pkg/__pycache__/__init__.cpython-311.pyc").write_bytes(hashed)
    (site / "pkg/__pycache__/old.cpython-311.pyc").write_bytes(timestamped)
    (site / "pkg/__pycache__/__init__.cpython-312.pyc").write_bytes(hashed)  # other Python
    (site / "__pycache__/single.cpython-311.pyc").write_bytes(hashed)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3.11").write_bytes(b"")
    (tmp_path / STDLIB.lstrip("/")).mkdir(parents=True)
    (tmp_path / STDLIB.lstrip("/") / "os.py").write_text("")
    files = _files(PythonRuntime(distributions=["pkg"]), RootFS(tmp_path))
    assert f"{LOCAL}/pkg/__pycache__/__init__.cpython-311.pyc" in files
    assert f"{LOCAL}/__pycache__/single.cpython-311.pyc" in files
    assert f"{LOCAL}/pkg/__pycache__/old.cpython-311.pyc" not in files  # timestamp-based
    assert f"{LOCAL}/pkg/__pycache__/__init__.cpython-312.pyc" not in files


def test_distributions_follow_record_and_requires_dist(standin):
    result = python_closure(PythonRuntime(distributions=["openvino", "grpcio"]), standin)
    files = set(result.files)
    assert f"{LOCAL}/openvino/libs/libopenvino.so.2540" in files
    assert f"{LOCAL}/openvino_telemetry/__init__.py" in files  # Requires-Dist
    assert f"{LOCAL}/packaging/__init__.py" in files  # Requires-Dist
    assert f"{LOCAL}/numpy/__init__.py" in files  # Requires-Dist
    assert f"{LOCAL}/typing_extensions.py" in files  # grpcio's Requires-Dist
    assert f"{LOCAL}/openvino-2025.4.0.dist-info/METADATA" in files
    assert f"{LOCAL}/openvino-2025.4.0.dist-info/RECORD" not in files
    assert not any("unused" in f for f in files)  # installed, not required
    assert not any("/tests/" in f or f.endswith((".h", ".pyi")) for f in files)
    assert not any(f.startswith("/usr/local/bin") for f in files)
    assert any(d.startswith("openvino_telemetry-2025.2.0") for d in result.distributions)


def test_markers_leave_out_extras_and_other_pythons(standin):
    files = _files(PythonRuntime(distributions=["ai-edge-litert"]), standin)
    assert f"{LOCAL}/ai_edge_litert/interpreter.py" in files
    assert f"{LOCAL}/numpy/__init__.py" in files
    assert not any("tqdm" in f or "strenum" in f for f in files)


def test_debian_packages_and_modules_without_metadata(standin):
    files = _files(
        PythonRuntime(distributions=["cryptography"], modules=["_cffi_backend"]), standin
    )
    assert f"{DEBIAN}/cryptography/hazmat/bindings/_rust.abi3.so" in files
    assert f"{DEBIAN}/_cffi_backend.cpython-311-x86_64-linux-gnu.so" in files
    assert not any("graminelibos" in f for f in files)


def test_missing_pieces_name_the_path_and_the_base(standin, tmp_path):
    with pytest.raises(
        PythonClosureError,
        match=r"'onnxruntime' is not installed in the base "
        rf"image \({standin.root}\)",
    ):
        python_closure(PythonRuntime(distributions=["onnxruntime"]), standin)
    with pytest.raises(PythonClosureError, match="module 'nope' is not in the base image"):
        python_closure(PythonRuntime(modules=["nope"]), standin)
    empty = RootFS(tmp_path)
    with pytest.raises(
        PythonClosureError,
        match=rf"interpreter /usr/bin/python3.11 is not in the base image \({tmp_path}\)",
    ):
        python_closure(PythonRuntime(), empty)


def test_missing_runtime_fails_the_build_with_the_base_named(tmp_path, standin_root, signing_key):
    """A Python-server build on a base without the runtime the backend needs."""
    import shutil

    from enclave_build.builder.build import build

    base = tmp_path / "base"
    shutil.copytree(standin_root, base, symlinks=True)
    shutil.rmtree(base / LOCAL.lstrip("/") / "ai_edge_litert-2.1.0.dist-info")
    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    (tmp_path / "spec.toml").write_text(
        '[service]\nname = "x"\nframework = "tflite"\n\n'
        '[[models]]\nname = "m"\npath = "m.tflite"\n'
        'encrypt = false\n\n[signing]\nkey = "key.pem"\n'
    )
    with pytest.raises(
        PythonClosureError,
        match=rf"'ai-edge-litert' is not installed in the "
        rf"base image \(dir:{base}\)",
    ):
        build(tmp_path / "spec.toml", base=f"dir:{base}")


SERVER_IMPORTS = (
    "asyncio",
    "ssl",
    "json",
    "ctypes",
    "http.server",
    "concurrent.futures",
    "logging",
    "signal",
    "socket",
    "hashlib",
    "struct",
    "zlib",
    "tempfile",
    "argparse",
    "dataclasses",
    "email.parser",
    "urllib.parse",
    "cryptography.x509",
    "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.serialization",
)


@pytest.mark.skipif(
    not Path("/usr/bin/python3.11").exists() or not Path(f"{DEBIAN}/cryptography").is_dir(),
    reason="needs Debian's python3.11 and python3-cryptography on this machine",
)
def test_real_debian_python_runs_only_closure_files():
    probe = (
        "import json, sys\n"
        f"for m in {SERVER_IMPORTS!r}: __import__(m)\n"
        "files = sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())} - {''})\n"
        "maps = sorted({l.split()[-1] for l in open('/proc/self/maps') if '.so' in l})\n"
        "print(json.dumps([files, maps]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run(
        ["/usr/bin/python3.11", "-I", "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout
    files, maps = json.loads(out)
    rootfs = RootFS(Path("/"))
    result = python_closure(
        PythonRuntime(distributions=["cryptography"], modules=["_cffi_backend"]), rootfs
    )
    trusted = set(result.files)
    view = LoaderView(rootfs, {}, ("/usr/lib/x86_64-linux-gnu",))
    elves = [f for f in result.files if ".so" in f or f == "/usr/bin/python3.11"]
    libs = closure(elves, view).libraries
    real = {os.path.realpath(p) for p in trusted | set(libs)}
    for path in files:
        if "_distutils_hack" in path:
            continue  # imported by a .pth file, which the enclave does not trust (site skips it)
        if path.startswith((STDLIB, DEBIAN)):
            assert path in trusted, f"{path} is imported but not in the closure"
    for path in maps:
        if os.path.basename(path).startswith("ld-linux"):
            continue  # the program interpreter: Gramine's own in an enclave
        assert os.path.realpath(path) in real, f"{path} is mapped but not in the closure"
