"""A stand-in Gramine base root filesystem, for the demo and for tests on machines without Gramine.

STAND-IN, NOT GRAMINE. Gramine cannot be installed here, so this writes a small tree with the
*layout* of a Gramine 1.9 SGX installation (Debian package paths) plus the framework binaries the
builtin plugins expect. Every binary in it is a generated placeholder: ``sgx/libpal.so`` is a
synthetic ELF shared object with several PT_LOAD segments (code, data and bss) so measurement
exercises the same code paths as with the real libpal; the offsets file carries Gramine 1.9's
x86-64 layout constants. Measurements computed against this tree are exactly what gramine-sgx-sign
would compute for the same files, but the enclave would not run: real users build on a real
base (``enclave-build build SPEC --base docker://gramineproject/gramine:v1.9`` or a base from
``base_images/``).

The tree carries the stand-in marker (:mod:`enclave_build.contract.standin_base`), which is
how the rest of enclave-build tells it (and every image built on it) from a real base: nothing
else imports this module but the commands that write a stand-in.

The tree is deterministic: the same call writes the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from enclave_build.contract.names import STANDIN_MARKER
from enclave_build.contract.standin_base import StandInBase

from .errors import UsageError

#: The Gramine release whose layout the stand-in imitates.
GRAMINE_VERSION = "1.9"
PKGLIBDIR = "/usr/lib/x86_64-linux-gnu/gramine"
PYDIR = "/usr/lib/python3/dist-packages"

# Gramine 1.9's x86-64 layout constants (the values its build writes to _graminelibos_offsets.py).
GRAMINE_OFFSETS = {
    "SGX_FLAGS_DEBUG": 0x2,
    "SGX_FLAGS_MODE64BIT": 0x4,
    "SGX_XFRM_LEGACY": 0x3,
    "SGX_XFRM_AVX": 0x4,
    "SGX_XFRM_MPX": 0x18,
    "SGX_XFRM_AVX512": 0xE4,
    "SGX_XFRM_PKRU": 0x200,
    "SGX_XFRM_AMX": 0x60000,
    "SGX_MISCSELECT_EXINFO": 0x1,
    "SE_KEY_SIZE": 0x180,
    "SGX_FLAGS_MASK_CONST": 0xFFFFFFFFFFFFFFFF,
    "SGX_XFRM_MASK_CONST": 0xFFFFFFFFFFF9FF1B,
    "SGX_MISCSELECT_MASK_CONST": 0xFFFFFFFF,
    "STACK_PROTECTOR_CANARY_DEFAULT": 0xBADBADBADBAD,
    "SGX_GPR_SIZE": 0xB8,
    "SGX_COMMON_SELF": 0x0,
    "SGX_COMMON_STACK_PROTECTOR_CANARY": 0x8,
    "SGX_ENCLAVE_SIZE": 0x110,
    "SGX_TCS_OFFSET": 0x118,
    "SGX_INITIAL_STACK_ADDR": 0x120,
    "SGX_SIG_STACK_LOW": 0x130,
    "SGX_SIG_STACK_HIGH": 0x138,
    "SGX_SSA": 0x148,
    "SGX_GPR": 0x150,
    "SGX_MANIFEST_SIZE": 0x1A0,
    "SGX_HEAP_MIN": 0x1A8,
    "SGX_HEAP_MAX": 0x1B0,
    "TCS_FLAGS": 0x8,
    "TCS_OSSA": 0x10,
    "TCS_CSSA": 0x18,
    "TCS_NSSA": 0x1C,
    "TCS_OENTRY": 0x20,
    "TCS_OFS_BASE": 0x30,
    "TCS_OGS_BASE": 0x38,
    "TCS_OFS_LIMIT": 0x40,
    "TCS_OGS_LIMIT": 0x44,
    "TCS_SIZE": 0x1000,
    "SGX_ARCH_SIGSTRUCT_HEADER": 0x0,
    "SGX_ARCH_SIGSTRUCT_VENDOR": 0x10,
    "SGX_ARCH_SIGSTRUCT_DATE": 0x14,
    "SGX_ARCH_SIGSTRUCT_HEADER2": 0x18,
    "SGX_ARCH_SIGSTRUCT_SWDEFINED": 0x28,
    "SGX_ARCH_SIGSTRUCT_MODULUS": 0x80,
    "SGX_ARCH_SIGSTRUCT_EXPONENT": 0x200,
    "SGX_ARCH_SIGSTRUCT_SIGNATURE": 0x204,
    "SGX_ARCH_SIGSTRUCT_MISC_SELECT": 0x384,
    "SGX_ARCH_SIGSTRUCT_MISC_MASK": 0x388,
    "SGX_ARCH_SIGSTRUCT_ATTRIBUTES": 0x3A0,
    "SGX_ARCH_SIGSTRUCT_ATTRIBUTE_MASK": 0x3B0,
    "SGX_ARCH_SIGSTRUCT_ENCLAVE_HASH": 0x3C0,
    "SGX_ARCH_SIGSTRUCT_ISV_PROD_ID": 0x400,
    "SGX_ARCH_SIGSTRUCT_ISV_SVN": 0x402,
    "SGX_ARCH_SIGSTRUCT_Q1": 0x410,
    "SGX_ARCH_SIGSTRUCT_Q2": 0x590,
    "SGX_ARCH_SIGSTRUCT_SIZE": 0x710,
    "SSA_FRAME_NUM": 0x2,
    "SSA_FRAME_SIZE": 0x4000,
    "ENCLAVE_STACK_SIZE": 0x40000,
    "ENCLAVE_SIG_STACK_SIZE": 0x10000,
    "DEFAULT_ENCLAVE_BASE": 0x0,
    "MMAP_MIN_ADDR": 0x10000,
    "PAGESIZE": 0x1000,
}


def _filler(label: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def standin_elf(
    label: str,
    text_size: int = 0x1800,
    data_size: int = 0x500,
    bss_size: int = 0x3000,
    needed: tuple[str, ...] = (),
    runpath: str | None = None,
) -> bytes:
    """A synthetic ELF64 x86-64 shared object: an R+X segment at vaddr 0 and an unaligned RW
    segment with .bss (memsz > filesz), sharing no page. Only program headers, no sections.
    With *needed* (or *runpath*), the data segment starts with a PT_DYNAMIC table naming those
    libraries (DT_NEEDED, DT_RUNPATH), so library-closure code reads it as from a real ELF."""
    dynamic = b""
    if needed or runpath:
        names = list(needed) + ([runpath] if runpath else [])
        strtab = b"\0"
        offsets = []
        for name in names:
            offsets.append(len(strtab))
            strtab += name.encode() + b"\0"
        count = len(names) + 3  # + DT_STRTAB, DT_STRSZ, DT_NULL
        tags = [(1, off) for off in offsets[: len(needed)]]  # DT_NEEDED
        if runpath:
            tags.append((29, offsets[-1]))  # DT_RUNPATH
        dynamic_size = count * 16
        data_size = max(data_size, dynamic_size + len(strtab))
    phnum = 3 if dynamic or needed or runpath else 2
    data_offset = max(0x2010, (text_size + 0xFFF) // 0x1000 * 0x1000 + 0x10)
    data_vaddr = data_offset + 0x1000  # same offset within its page as in the file
    image = bytearray(_filler(label, data_offset + data_size))
    header = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH",
        b"\x7fELF",
        2,
        1,
        1,
        0,
        0,
        b"\0" * 7,
        3,
        62,
        1,
        0x1040,
        64,
        0,
        0,
        64,
        56,
        phnum,
        64,
        0,
        0,
    )
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, text_size, text_size, 0x1000)
    phdrs += struct.pack(
        "<IIQQQQQQ",
        1,
        6,
        data_offset,
        data_vaddr,
        data_vaddr,
        data_size,
        data_size + bss_size,
        0x1000,
    )
    if phnum == 3:
        strtab_vaddr = data_vaddr + dynamic_size
        tags += [(5, strtab_vaddr), (10, len(strtab)), (0, 0)]  # DT_STRTAB, DT_STRSZ, DT_NULL
        dynamic = b"".join(struct.pack("<qQ", t, v) for t, v in tags)
        phdrs += struct.pack(
            "<IIQQQQQQ", 2, 6, data_offset, data_vaddr, data_vaddr, dynamic_size, dynamic_size, 8
        )
        image[data_offset : data_offset + dynamic_size + len(strtab)] = dynamic + strtab
    image[: len(header) + len(phdrs)] = header + phdrs
    return bytes(image)


def _write(root: Path, inner: str, data: bytes, mode: int = 0o644) -> None:
    path = root / inner.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _link(root: Path, inner: str, target: str) -> None:
    path = root / inner.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def _placeholder(what: str) -> bytes:
    return (
        f"enclave-build stand-in for {what}: NOT the real file; "
        "build on a real Gramine base to run enclaves.\n"
    ).encode() + _filler(what, 2048)


def make_standin_rootfs(root: str | Path) -> Path:
    """Write the stand-in tree under *root* (created if needed); returns *root*."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write(root, STANDIN_MARKER, StandInBase(GRAMINE_VERSION).to_json().encode())
    offsets = "# DO NOT MODIFY. THIS FILE WAS AUTO-GENERATED.\n\n" + "".join(
        f"{name} = {value:#x}\n" for name, value in GRAMINE_OFFSETS.items()
    )
    _write(root, f"{PYDIR}/_graminelibos_offsets.py", offsets.encode())
    _write(
        root,
        f"{PYDIR}/graminelibos/__init__.py",
        (
            f"'''stand-in of Gramine's Python package (enclave-build demo)'''\n"
            f"__version__ = '{GRAMINE_VERSION}'\n_CONFIG_PKGLIBDIR = '{PKGLIBDIR}'\n"
        ).encode(),
    )
    _write(root, f"{PKGLIBDIR}/sgx/libpal.so", standin_elf("libpal"), 0o755)
    _write(root, f"{PKGLIBDIR}/libsysdb.so", standin_elf("libsysdb", 0x2000), 0o755)
    for lib in (
        "ld-linux-x86-64.so.2",
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ):
        _write(root, f"{PKGLIBDIR}/runtime/glibc/{lib}", standin_elf(f"glibc/{lib}", 0x1000), 0o755)
    _write(
        root,
        "/usr/lib/x86_64-linux-gnu/libsecret_prov_attest.so",
        standin_elf("libsecret_prov_attest"),
        0o644,
    )
    _link(
        root,
        f"{PKGLIBDIR}/runtime/glibc/libsecret_prov_attest.so",
        "../../../libsecret_prov_attest.so",
    )
    _write(
        root,
        "/usr/bin/gramine-sgx",
        b"#!/bin/sh\necho 'stand-in gramine-sgx: no SGX here' >&2\nexit 1\n",
        0o755,
    )

    # Libraries and configuration the frameworks need (a merged-/usr Debian layout).
    arch = "/usr/lib/x86_64-linux-gnu"
    _link(root, "/lib", "usr/lib")
    _write(
        root,
        f"{arch}/libstdc++.so.6.0.30",
        standin_elf("libstdc++", needed=("libm.so.6", "libc.so.6", "libgcc_s.so.1")),
        0o644,
    )
    _link(root, f"{arch}/libstdc++.so.6", "libstdc++.so.6.0.30")
    _write(root, f"{arch}/libgcc_s.so.1", standin_elf("libgcc_s", 0x1000, needed=("libc.so.6",)))
    for lib in ("libz.so.1", "libexpat.so.1", "libffi.so.8"):
        _write(root, f"{arch}/{lib}", standin_elf(lib, 0x1000, needed=("libc.so.6",)))
    _write(root, f"{arch}/libcrypto.so.3", standin_elf("libcrypto", needed=("libc.so.6",)))
    _write(
        root, f"{arch}/libssl.so.3", standin_elf("libssl", needed=("libcrypto.so.3", "libc.so.6"))
    )
    _write(root, f"{arch}/libunused.so.1", standin_elf("libunused", 0x1000))  # never needed
    _write(root, "/etc/ld.so.cache", _placeholder("ld.so.cache"))
    _write(root, "/etc/resolv.conf", b"nameserver 127.0.0.53\n")
    _write(root, "/etc/nsswitch.conf", b"hosts: files dns\n")
    _write(
        root,
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n"
        b"enclave:x:10001:10001::/home/enclave:/usr/sbin/nologin\n"
        b"ovms:x:5000:5000::/home/ovms:/usr/sbin/nologin\n",
    )
    _write(root, "/etc/group", b"root:x:0:\nenclave:x:10001:\novms:x:5000:\n")

    # Framework runtimes.
    cxx = ("libstdc++.so.6", "libgcc_s.so.1", "libm.so.6", "libc.so.6")
    _write(
        root,
        "/usr/bin/tensorflow_model_server",
        standin_elf("tensorflow_model_server", needed=cxx + ("libz.so.1",)),
        0o755,
    )
    _write(
        root,
        "/ovms/bin/ovms",
        standin_elf("ovms", needed=("libovms_shared.so",) + cxx, runpath="$ORIGIN/../lib"),
        0o755,
    )
    _write(
        root,
        "/ovms/lib/libovms_shared.so",
        standin_elf("libovms_shared", needed=("libssl.so.3",) + cxx),
        0o755,
    )
    _write(
        root,
        "/ovms/lib/libopenvino_intel_cpu_plugin.so",
        standin_elf("libopenvino_intel_cpu_plugin", needed=cxx),
        0o755,
    )
    _python(root)
    return root


PY_STDLIB = "/usr/lib/python3.11"
PY_LOCAL = "/usr/local/lib/python3.11/dist-packages"
PY_DEBIAN = "/usr/lib/python3/dist-packages"
_EXT = ".cpython-311-x86_64-linux-gnu.so"


def _pyc(hash_based: bool) -> bytes:
    """A .pyc header (3.11 magic) with the hash-based flag set or not, and a stand-in body."""
    return (
        bytes.fromhex("a70d0d0a")
        + (3 if hash_based else 0).to_bytes(4, "little")
        + bytes(8)
        + b"stand-in code object"
    )


def _dist(
    root: Path,
    site: str,
    name: str,
    version: str,
    files: dict[str, bytes],
    requires: tuple[str, ...] = (),
) -> None:
    """A stand-in installed distribution: its files plus a .dist-info with METADATA/RECORD."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    files = {**files, f"{info}/METADATA": meta.encode(), f"{info}/WHEEL": b"Wheel-Version: 1.0\n"}
    record = "".join(
        f"{rel},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n"
        for rel, data in sorted(files.items())
    )
    record += f"{info}/RECORD,,\n../../../bin/{name}-stand-in,,\n"
    files[f"{info}/RECORD"] = record.encode()
    for rel, data in files.items():
        mode = 0o755 if rel.endswith(".so") else 0o644
        _write(root, f"{site}/{rel}", data, mode)


def _python(root: Path) -> None:
    """Stand-ins for Debian's python3.11 and the runtimes the gramine-python base installs."""
    _write(
        root,
        "/usr/bin/python3.11",
        standin_elf("python3.11", needed=("libm.so.6", "libz.so.1", "libexpat.so.1", "libc.so.6")),
        0o755,
    )
    _link(root, "/usr/bin/python3", "python3.11")
    for rel in (
        "os.py",
        "site.py",
        "ssl.py",
        "ctypes/__init__.py",
        "encodings/__init__.py",
        "encodings/utf_8.py",
        "json/__init__.py",
        "asyncio/__init__.py",
        "unittest/__init__.py",
        "unittest/test/test_case.py",
        "ctypes/test/test_x.py",
        "test/__init__.py",
        "test/test_os.py",
        "tkinter/__init__.py",
        "idlelib/__init__.py",
        "lib2to3/__init__.py",
        "ensurepip/__init__.py",
        "pydoc_data/topics.py",
        "turtledemo/__init__.py",
        "distutils/__init__.py",
        "config-3.11-x86_64-linux-gnu/Makefile",
    ):
        _write(root, f"{PY_STDLIB}/{rel}", _placeholder(f"python3.11/{rel}"))
    _write(root, f"{PY_STDLIB}/__pycache__/os.cpython-311.pyc", _pyc(True))
    _write(root, f"{PY_STDLIB}/__pycache__/site.cpython-311.pyc", _pyc(False))  # timestamp
    _write(root, f"{PY_STDLIB}/__pycache__/os.cpython-311.opt-1.pyc", _pyc(True))
    dynload = f"{PY_STDLIB}/lib-dynload"
    _write(
        root,
        f"{dynload}/_ssl{_EXT}",
        standin_elf("_ssl", needed=("libssl.so.3", "libcrypto.so.3", "libc.so.6")),
        0o644,
    )
    _write(
        root,
        f"{dynload}/_ctypes{_EXT}",
        standin_elf("_ctypes", needed=("libffi.so.8", "libc.so.6")),
        0o644,
    )
    _write(root, f"{dynload}/_testcapi{_EXT}", standin_elf("_testcapi"), 0o644)
    _write(
        root, f"{dynload}/_tkinter{_EXT}", standin_elf("_tkinter", needed=("libtk8.6.so",)), 0o644
    )

    elf = standin_elf
    _dist(
        root,
        PY_LOCAL,
        "numpy",
        "2.4.0",
        {
            "numpy/__init__.py": _placeholder("numpy"),
            f"numpy/_core/_multiarray_umath{_EXT}": elf(
                "numpy/_multiarray_umath",
                needed=("libscipy_openblas64_-standin.so", "libc.so.6"),
                runpath="$ORIGIN/../../numpy.libs",
            ),
            "numpy/_core/include/numpy/ndarraytypes.h": b"/* stand-in header */\n",
            "numpy/_core/tests/test_multiarray.py": _placeholder("numpy test"),
            "numpy/__init__.pyi": b"# stand-in stub\n",
            "numpy.libs/libscipy_openblas64_-standin.so": elf(
                "openblas",
                needed=("libgfortran-standin.so.5", "libm.so.6", "libc.so.6"),
                runpath="$ORIGIN",
            ),
            "numpy.libs/libgfortran-standin.so.5": elf("libgfortran", needed=("libc.so.6",)),
        },
    )
    _dist(
        root,
        PY_LOCAL,
        "grpcio",
        "1.76.0",
        {
            "grpc/__init__.py": _placeholder("grpc"),
            "grpc/aio/__init__.py": _placeholder("grpc.aio"),
            f"grpc/_cython/cygrpc{_EXT}": elf("cygrpc", needed=cxx_names()),
        },
        requires=("typing-extensions~=4.12",),
    )
    _dist(
        root,
        PY_LOCAL,
        "typing_extensions",
        "4.15.0",
        {"typing_extensions.py": _placeholder("typing_extensions")},
    )
    _dist(
        root,
        PY_LOCAL,
        "protobuf",
        "6.33.0",
        {
            "google/protobuf/__init__.py": _placeholder("protobuf"),
            "google/_upb/_message.abi3.so": elf("upb", needed=("libc.so.6",)),
        },
    )
    _dist(root, PY_LOCAL, "cbor2", "5.7.0", {"cbor2/__init__.py": _placeholder("cbor2")})
    _dist(
        root,
        PY_LOCAL,
        "httptools",
        "0.9.0",
        {
            "httptools/__init__.py": _placeholder("httptools"),
            f"httptools/parser/parser{_EXT}": elf("httptools/parser", needed=("libc.so.6",)),
        },
    )
    _dist(
        root,
        PY_LOCAL,
        "ai-edge-litert",
        "2.1.0",
        {
            "ai_edge_litert/__init__.py": _placeholder("ai_edge_litert"),
            "ai_edge_litert/interpreter.py": _placeholder("ai_edge_litert.interpreter"),
            "ai_edge_litert/_pywrap_tensorflow_interpreter_wrapper.so": elf(
                "litert", needed=cxx_names()
            ),
        },
        requires=(
            "numpy>=1.23.2",
            "tqdm; extra == 'model-utils'",
            "backports.strenum; python_version < '3.11'",
        ),
    )
    _dist(
        root,
        PY_LOCAL,
        "openvino",
        "2025.4.0",
        {
            "openvino/__init__.py": _placeholder("openvino"),
            f"openvino/_pyopenvino{_EXT}": elf(
                "_pyopenvino", needed=("libopenvino.so.2540",) + cxx_names(), runpath="$ORIGIN/libs"
            ),
            "openvino/libs/libopenvino.so.2540": elf(
                "libopenvino", needed=("libtbb.so.12",) + cxx_names(), runpath="$ORIGIN"
            ),
            "openvino/libs/libopenvino_intel_cpu_plugin.so": elf(
                "ov_cpu", needed=("libopenvino.so.2540",), runpath="$ORIGIN"
            ),
            "openvino/libs/libopenvino_intel_gpu_plugin.so": elf(
                "ov_gpu", needed=("libOpenCL.so.1",), runpath="$ORIGIN"
            ),  # not loadable here
            "openvino/libs/libtbb.so.12": elf("tbb", needed=("libc.so.6",)),
            "openvino/libs/plugins.xml": b"<ie><plugins/></ie>\n",
        },
        requires=("numpy<2.5,>=1.16.6", "openvino-telemetry>=2023.2.1", "packaging"),
    )
    _dist(
        root,
        PY_LOCAL,
        "openvino-telemetry",
        "2025.2.0",
        {"openvino_telemetry/__init__.py": _placeholder("openvino_telemetry")},
    )
    _dist(root, PY_LOCAL, "packaging", "25.0", {"packaging/__init__.py": _placeholder("packaging")})
    _dist(root, PY_LOCAL, "unused-runtime", "1.0", {"unused/__init__.py": _placeholder("unused")})
    _dist(
        root,
        PY_DEBIAN,
        "cryptography",
        "38.0.4",
        {
            "cryptography/__init__.py": _placeholder("cryptography"),
            "cryptography/hazmat/bindings/_rust.abi3.so": elf(
                "cryptography-rust", needed=("libssl.so.3", "libcrypto.so.3", "libc.so.6")
            ),
        },
        requires=("cffi>=1.12",),
    )
    _write(
        root,
        f"{PY_DEBIAN}/_cffi_backend{_EXT}",
        standin_elf("_cffi_backend", needed=("libffi.so.8", "libc.so.6")),
        0o644,
    )
    _write(root, f"{PY_DEBIAN}/graminelibos/sgx_sign.py", _placeholder("graminelibos"))


def cxx_names() -> tuple[str, ...]:
    return ("libstdc++.so.6", "libgcc_s.so.1", "libm.so.6", "libc.so.6")


#: Stand-ins of the runtimes other bases add to gramine-python's (base_images/), by name: what
#: ``enclave-build base standin DIR --runtimes NAME`` adds, so that the examples needing them
#: (examples/secret-server: base gramine-secret-server; examples/plugins/onnxruntime: its
#: base/Dockerfile) build on the stand-in as shipped. Each entry: (distribution, version,
#: files under site-packages, Requires-Dist). Like everything here, placeholders that run nothing.
STANDIN_RUNTIMES: dict[str, tuple[tuple[str, str, dict[str, bytes], tuple[str, ...]], ...]] = {
    "secret-server": (
        ("pyOpenSSL", "26.4.0", {"OpenSSL/__init__.py": b"# stand-in\n"}, ()),
        ("dcap-qvl", "0.7.0", {"dcap_qvl/__init__.py": b"# stand-in\n"}, ()),
        ("cffi", "2.1.1", {"cffi/__init__.py": b"# stand-in\n"}, ()),
        ("h2", "4.4.1", {"h2/__init__.py": b"# stand-in\n"}, ()),
    ),
    "onnxruntime": (
        (
            "onnxruntime",
            "1.32.0",
            {
                "onnxruntime/__init__.py": b"# stand-in\n",
                "onnxruntime/capi/onnxruntime_pybind11_state.so": b"stand-in, not an ELF\n",
            },
            ("numpy>=1.21.6", "protobuf", "packaging", "flatbuffers"),
        ),
        ("flatbuffers", "25.12.19", {"flatbuffers/__init__.py": b"#\n"}, ()),
    ),
}


def add_standin_runtimes(root: str | Path, names: tuple[str, ...] | list[str]) -> Path:
    """Add the :data:`STANDIN_RUNTIMES` *names* to the stand-in rootfs at *root* (and to its
    marker's list of runtimes)."""
    root = Path(root)
    unknown = sorted(set(names) - set(STANDIN_RUNTIMES))
    if unknown:
        raise UsageError(
            f"no stand-in runtimes {', '.join(unknown)}; "
            f"known: {', '.join(sorted(STANDIN_RUNTIMES))}"
        )
    marker = root / STANDIN_MARKER.lstrip("/")
    if not marker.is_file():
        raise UsageError(f"{root}: not a stand-in base (no {STANDIN_MARKER}); make one first")
    mark = StandInBase.parse(marker.read_text(), str(marker))
    for name in names:
        for dist, version, files, requires in STANDIN_RUNTIMES[name]:
            _dist(root, PY_LOCAL, dist, version, files, requires)
    added = tuple(sorted(set(mark.runtimes) | set(names)))
    _write(root, STANDIN_MARKER, StandInBase(mark.gramine, added).to_json().encode())
    return root
