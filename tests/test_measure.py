"""MRENCLAVE layout: checked against a plain page-by-page reference written from the SDM
record formats, on small enclaves, and for clear errors on bad inputs."""

from __future__ import annotations

import hashlib
import struct

import pytest

from enclave_build.builder.gramine.measure import (
    EnclaveAttributes,
    MeasureError,
    PalImage,
    measure_enclave,
    parse_size,
)
from enclave_build.builder.gramine.offsets import Offsets, OffsetsError
from enclave_build.builder.standin import GRAMINE_OFFSETS, standin_elf

OFFS = Offsets(dict(GRAMINE_OFFSETS))
PAGE = 4096


def _reference(manifest: bytes, attrs: EnclaveAttributes, pal: PalImage) -> bytes:
    """Slow, obvious implementation: one Python iteration per page and per 256-byte chunk."""
    h = hashlib.sha256()
    h.update(
        struct.pack("<8sLQ44s", b"ECREATE", OFFS.SSA_FRAME_SIZE // PAGE, attrs.enclave_size, b"")
    )

    def page(addr, flags, content, measured):
        h.update(struct.pack("<8sQQ40s", b"EADD", addr, flags, b""))
        if measured:
            for i in range(0, PAGE, 256):
                h.update(struct.pack("<8sQ48s", b"EEXTEND", addr + i, b""))
                h.update(content[i : i + 256])

    up = lambda n: (n + PAGE - 1) // PAGE * PAGE
    t = attrs.max_threads
    mem = manifest + b"\0"
    sizes = [
        ("manifest", up(len(mem)), 0x201),
        ("ssa", t * 0x8000, 0x203),
        ("tcs", t * 0x1000, 0x100),
        ("tls", t * 0x1000, 0x203),
    ]
    sizes += [("stack", 0x40000, 0x203)] * t + [("sig", 0x10000, 0x203)] * t
    span = max(up(s.vaddr + s.memsz) for s in pal.segments)
    sizes.append(("pal", span, 0x200))
    top, placed = attrs.enclave_size, []
    for name, size, flags in sizes:
        top -= size
        placed.append((name, top, size, flags))
    addr = {n: a for n, a, _, _ in placed}
    stacks = [a for n, a, _, _ in placed if n == "stack"]
    sigs = [a for n, a, _, _ in placed if n == "sig"]
    pal_addr = addr["pal"]
    tcs = bytearray(t * 0x1000)
    tls = bytearray(t * 0x1000)
    for i in range(t):
        ssa = addr["ssa"] + 0x8000 * i
        struct.pack_into("<Q", tcs, i * 0x1000 + 0x10, ssa)
        struct.pack_into("<L", tcs, i * 0x1000 + 0x1C, 2)
        struct.pack_into("<Q", tcs, i * 0x1000 + 0x20, pal_addr + pal.entry)
        struct.pack_into("<Q", tcs, i * 0x1000 + 0x38, addr["tls"] + 0x1000 * i)
        struct.pack_into("<L", tcs, i * 0x1000 + 0x40, 0xFFF)
        struct.pack_into("<L", tcs, i * 0x1000 + 0x44, 0xFFF)
        for off, val in (
            (0x0, addr["tls"] + 0x1000 * i),
            (0x8, 0xBADBADBADBAD),
            (0x110, attrs.enclave_size),
            (0x118, addr["tcs"] + 0x1000 * i),
            (0x120, stacks[i] + 0x40000),
            (0x130, sigs[i]),
            (0x138, sigs[i] + 0x10000),
            (0x148, ssa),
            (0x150, ssa + 0x4000 - 0xB8),
            (0x1A0, len(mem)),
            (0x1A8, 0x10000),
            (0x1B0, pal_addr),
        ):
            struct.pack_into("<Q", tls, i * 0x1000 + off, val)
    content = {"manifest": mem, "tcs": bytes(tcs), "tls": bytes(tls)}
    for name, a, size, flags in placed:
        if name == "pal":
            for seg in pal.segments:
                fl = (
                    0x200
                    | (1 if seg.flags & 4 else 0)
                    | (2 if seg.flags & 2 else 0)
                    | (4 if seg.flags & 1 else 0)
                )
                start = (a + seg.vaddr) // PAGE * PAGE
                end = up(a + seg.vaddr + seg.memsz)
                image = bytearray(end - start)
                lead = seg.offset % PAGE
                image[lead : lead + seg.filesz] = pal.data[seg.offset : seg.offset + seg.filesz]
                for p in range(start, end, PAGE):
                    page(p, fl, bytes(image[p - start : p - start + PAGE]), True)
            continue
        data = content.get(name, b"").ljust(size, b"\0")
        for p in range(a, a + size, PAGE):
            page(p, flags, data[p - a : p - a + PAGE], True)
    if not attrs.edmm_enable:
        for p in range(0x10000, pal_addr, PAGE):
            page(p, 0x207, b"", False)
    return h.digest()


@pytest.mark.parametrize("edmm", [False, True])
@pytest.mark.parametrize("threads", [4, 5])
def test_vectorized_measurement_equals_page_loop_reference(edmm, threads):
    pal = PalImage.from_bytes(standin_elf("ref-pal"))
    manifest = b'[libos]\nentrypoint = "/x"\n' * 300  # > one page
    attrs = EnclaveAttributes(64 << 20, threads, edmm)
    assert measure_enclave(manifest, attrs, pal, OFFS) == _reference(manifest, attrs, pal)


def test_edmm_changes_measurement():
    pal = PalImage.from_bytes(standin_elf("p"))
    a = measure_enclave(b"m", EnclaveAttributes(64 << 20, 4, False), pal, OFFS)
    b = measure_enclave(b"m", EnclaveAttributes(64 << 20, 4, True), pal, OFFS)
    assert a != b


def test_enclave_too_small_is_a_clear_error():
    pal = PalImage.from_bytes(standin_elf("p"))
    with pytest.raises(MeasureError, match="too small for 64 threads"):
        measure_enclave(b"m", EnclaveAttributes(16 << 20, 64, False), pal, OFFS)


def test_non_power_of_two_size_is_refused():
    pal = PalImage.from_bytes(standin_elf("p"))
    with pytest.raises(MeasureError, match="not a power of two"):
        measure_enclave(b"m", EnclaveAttributes(3 << 30, 4, False), pal, OFFS)


def test_not_an_elf_is_refused():
    with pytest.raises(MeasureError, match=r"libpal.so: not a valid ELF file"):
        PalImage.from_bytes(b"#!/bin/sh\n" * 100, "libpal.so")


@pytest.mark.parametrize(
    "text,value",
    [("256M", 256 << 20), ("4G", 4 << 30), ("64K", 65536), ("0x1000", 4096), ("1024", 1024)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_offsets_are_parsed_as_data_never_executed(tmp_path):
    marker = tmp_path / "executed"
    text = "".join(f"{k} = {v:#x}\n" for k, v in GRAMINE_OFFSETS.items())
    evil = text + f"import os; os.system('touch {marker}')\n"
    with pytest.raises(OffsetsError, match=r":\d+: expected a 'NAME = 0xHEX' line"):
        Offsets.parse(evil, "evil.py")
    assert not marker.exists()
    assert Offsets.parse(text).PAGESIZE == 4096


def test_offsets_missing_constants_are_named():
    with pytest.raises(OffsetsError, match="missing PAGESIZE"):
        Offsets.parse("SSA_FRAME_SIZE = 0x4000\n", "partial.py")
