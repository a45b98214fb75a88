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

The tree is deterministic: the same call writes the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

PKGLIBDIR = "/usr/lib/x86_64-linux-gnu/gramine"
PYDIR = "/usr/lib/python3/dist-packages"

# Gramine 1.9's x86-64 layout constants (the values its build writes to _graminelibos_offsets.py).
_OFFSETS = {
    "SGX_FLAGS_DEBUG": 0x2, "SGX_FLAGS_MODE64BIT": 0x4, "SGX_XFRM_LEGACY": 0x3,
    "SGX_XFRM_AVX": 0x4, "SGX_XFRM_MPX": 0x18, "SGX_XFRM_AVX512": 0xE4, "SGX_XFRM_PKRU": 0x200,
    "SGX_XFRM_AMX": 0x60000, "SGX_MISCSELECT_EXINFO": 0x1, "SE_KEY_SIZE": 0x180,
    "SGX_FLAGS_MASK_CONST": 0xFFFFFFFFFFFFFFFF, "SGX_XFRM_MASK_CONST": 0xFFFFFFFFFFF9FF1B,
    "SGX_MISCSELECT_MASK_CONST": 0xFFFFFFFF, "STACK_PROTECTOR_CANARY_DEFAULT": 0xBADBADBADBAD,
    "SGX_GPR_SIZE": 0xB8, "SGX_COMMON_SELF": 0x0, "SGX_COMMON_STACK_PROTECTOR_CANARY": 0x8,
    "SGX_ENCLAVE_SIZE": 0x110, "SGX_TCS_OFFSET": 0x118, "SGX_INITIAL_STACK_ADDR": 0x120,
    "SGX_SIG_STACK_LOW": 0x130, "SGX_SIG_STACK_HIGH": 0x138, "SGX_SSA": 0x148, "SGX_GPR": 0x150,
    "SGX_MANIFEST_SIZE": 0x1A0, "SGX_HEAP_MIN": 0x1A8, "SGX_HEAP_MAX": 0x1B0,
    "TCS_FLAGS": 0x8, "TCS_OSSA": 0x10, "TCS_CSSA": 0x18, "TCS_NSSA": 0x1C, "TCS_OENTRY": 0x20,
    "TCS_OFS_BASE": 0x30, "TCS_OGS_BASE": 0x38, "TCS_OFS_LIMIT": 0x40, "TCS_OGS_LIMIT": 0x44,
    "TCS_SIZE": 0x1000,
    "SGX_ARCH_SIGSTRUCT_HEADER": 0x0, "SGX_ARCH_SIGSTRUCT_VENDOR": 0x10,
    "SGX_ARCH_SIGSTRUCT_DATE": 0x14, "SGX_ARCH_SIGSTRUCT_HEADER2": 0x18,
    "SGX_ARCH_SIGSTRUCT_SWDEFINED": 0x28, "SGX_ARCH_SIGSTRUCT_MODULUS": 0x80,
    "SGX_ARCH_SIGSTRUCT_EXPONENT": 0x200, "SGX_ARCH_SIGSTRUCT_SIGNATURE": 0x204,
    "SGX_ARCH_SIGSTRUCT_MISC_SELECT": 0x384, "SGX_ARCH_SIGSTRUCT_MISC_MASK": 0x388,
    "SGX_ARCH_SIGSTRUCT_ATTRIBUTES": 0x3A0, "SGX_ARCH_SIGSTRUCT_ATTRIBUTE_MASK": 0x3B0,
    "SGX_ARCH_SIGSTRUCT_ENCLAVE_HASH": 0x3C0, "SGX_ARCH_SIGSTRUCT_ISV_PROD_ID": 0x400,
    "SGX_ARCH_SIGSTRUCT_ISV_SVN": 0x402, "SGX_ARCH_SIGSTRUCT_Q1": 0x410,
    "SGX_ARCH_SIGSTRUCT_Q2": 0x590, "SGX_ARCH_SIGSTRUCT_SIZE": 0x710,
    "SSA_FRAME_NUM": 0x2, "SSA_FRAME_SIZE": 0x4000, "ENCLAVE_STACK_SIZE": 0x40000,
    "ENCLAVE_SIG_STACK_SIZE": 0x10000, "DEFAULT_ENCLAVE_BASE": 0x0, "MMAP_MIN_ADDR": 0x10000,
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


def standin_elf(label: str, text_size: int = 0x1800, data_size: int = 0x500,
                bss_size: int = 0x3000) -> bytes:
    """A synthetic ELF64 x86-64 shared object: an R+X segment at vaddr 0 and an unaligned RW
    segment with .bss (memsz > filesz), sharing no page. Only program headers, no sections."""
    phnum = 2
    data_offset = max(0x2010, (text_size + 0xFFF) // 0x1000 * 0x1000 + 0x10)
    data_vaddr = data_offset + 0x1000  # same offset within its page as in the file
    image = bytearray(_filler(label, data_offset + data_size))
    header = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
        3, 62, 1, 0x1040, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, text_size, text_size, 0x1000)
    phdrs += struct.pack("<IIQQQQQQ", 1, 6, data_offset, data_vaddr, data_vaddr, data_size,
                         data_size + bss_size, 0x1000)
    image[:len(header) + len(phdrs)] = header + phdrs
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
    return (f"enclave-build stand-in for {what}: NOT the real file; "
            "build on a real Gramine base to run enclaves.\n").encode() + _filler(what, 2048)


def make_standin_rootfs(root: str | Path) -> Path:
    """Write the stand-in tree under *root* (created if needed); returns *root*."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    offsets = "# DO NOT MODIFY. THIS FILE WAS AUTO-GENERATED.\n\n" + "".join(
        f"{name} = {value:#x}\n" for name, value in _OFFSETS.items())
    _write(root, f"{PYDIR}/_graminelibos_offsets.py", offsets.encode())
    _write(root, f"{PYDIR}/graminelibos/__init__.py",
           (f"'''stand-in of Gramine's Python package (enclave-build demo)'''\n"
            f"__version__ = '1.9'\n_CONFIG_PKGLIBDIR = '{PKGLIBDIR}'\n").encode())
    _write(root, f"{PKGLIBDIR}/sgx/libpal.so", standin_elf("libpal"), 0o755)
    _write(root, f"{PKGLIBDIR}/libsysdb.so", standin_elf("libsysdb", 0x2000), 0o755)
    for lib in ("ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libpthread.so.0",
                "libdl.so.2", "librt.so.1"):
        _write(root, f"{PKGLIBDIR}/runtime/glibc/{lib}", standin_elf(f"glibc/{lib}", 0x1000), 0o755)
    _write(root, "/usr/lib/x86_64-linux-gnu/libsecret_prov_attest.so",
           standin_elf("libsecret_prov_attest"), 0o644)
    _link(root, f"{PKGLIBDIR}/runtime/glibc/libsecret_prov_attest.so",
          "../../../libsecret_prov_attest.so")
    _write(root, "/usr/bin/gramine-sgx", b"#!/bin/sh\necho 'stand-in gramine-sgx: no SGX here' >&2\nexit 1\n", 0o755)

    # Libraries and configuration every framework trusts.
    _write(root, "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30", standin_elf("libstdc++"), 0o644)
    _link(root, "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "libstdc++.so.6.0.30")
    _write(root, "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1", standin_elf("libgcc_s", 0x1000))
    _write(root, "/etc/ld.so.cache", _placeholder("ld.so.cache"))
    _write(root, "/etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n")
    _write(root, "/etc/resolv.conf", b"nameserver 127.0.0.53\n")
    _write(root, "/etc/nsswitch.conf", b"hosts: files dns\n")

    # Framework runtimes.
    _write(root, "/usr/bin/tensorflow_model_server", standin_elf("tensorflow_model_server"), 0o755)
    _write(root, "/ovms/bin/ovms", standin_elf("ovms"), 0o755)
    _write(root, "/ovms/lib/libovms_shared.so", standin_elf("libovms_shared"), 0o755)
    _write(root, "/usr/bin/python3.11", standin_elf("python3.11"), 0o755)
    _link(root, "/usr/bin/python3", "python3.11")
    _write(root, "/usr/lib/python3/dist-packages/numpy/__init__.py", _placeholder("numpy"))
    _write(root, "/opt/enclave-build/server/enclave_model_server/__init__.py",
           _placeholder("enclave_model_server"))
    return root
