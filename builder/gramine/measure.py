"""MRENCLAVE of a Gramine enclave, computed the way gramine-sgx-sign 1.9 lays the enclave out.

The enclave image, from the top of the enclave down: the manifest (NUL-terminated), SSA frames,
TCS pages, TLS pages, one stack and one signal stack per thread, and ``libpal.so``; the space
between ``MMAP_MIN_ADDR`` and libpal is heap, added (EADD) but not measured unless EDMM is on, in
which case it is not added at all.

MRENCLAVE is SHA-256 over a stream of 64-byte records: ECREATE, then for every page an EADD and,
for measured pages, sixteen EEXTEND records each followed by 256 bytes of the page.

A 64 GiB enclave has 16 million heap pages. The record stream is therefore built with numpy in
chunks of many pages and fed to hashlib, never one Python iteration per page, so measuring runs
close to the speed of SHA-256 itself.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from enclave_build.contract.size import GRAMINE_SIZE, Size, SizeError

from ..errors import EnclaveBuildError
from .offsets import Offsets

PAGEINFO_R = 0x1
PAGEINFO_W = 0x2
PAGEINFO_X = 0x4
PAGEINFO_TCS = 0x100
PAGEINFO_REG = 0x200

_RECORD = 64  # bytes in an ECREATE / EADD / EEXTEND header
_CHUNK = 256  # bytes of page content per EEXTEND
_EXTENDS_PER_PAGE = 16
_MEASURED_PAGE_BYTES = _RECORD + _EXTENDS_PER_PAGE * (_RECORD + _CHUNK)  # 5184

_TAG_EADD = int.from_bytes(b"EADD".ljust(8, b"\0"), "little")
_TAG_EEXTEND = int.from_bytes(b"EEXTEND".ljust(8, b"\0"), "little")

# How many pages go into one hashlib.update(): bounds memory at ~4 MiB (unmeasured) and
# ~5 MiB (measured) per chunk while keeping numpy's per-call overhead negligible.
_UNMEASURED_CHUNK_PAGES = 1 << 16
_MEASURED_CHUNK_PAGES = 1 << 10


class MeasureError(EnclaveBuildError):
    """The manifest or libpal cannot be measured."""


class EnclaveTooSmall(MeasureError):
    """sgx.enclave_size cannot hold the threads' areas, the manifest and libpal; *needed* is
    the smallest power of two that can (with *threads* threads)."""

    def __init__(self, message: str, needed: int, threads: int):
        super().__init__(message)
        self.needed = needed
        self.threads = threads


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class EnclaveAttributes:
    """The manifest values that shape the enclave's memory (and so its measurement)."""

    enclave_size: int
    max_threads: int
    edmm_enable: bool


def parse_size(value: str | int) -> int:
    """Gramine's size syntax: an integer (decimal or 0x hex) with an optional K/M/G suffix."""
    try:
        return int(Size.parse(value, GRAMINE_SIZE))
    except SizeError:
        raise MeasureError(
            f"invalid size {value!r}: expected e.g. '256M', '4G' or '0x10000000'"
        ) from None


@dataclass(frozen=True)
class LoadSegment:
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int  # ELF p_flags: 4 = R, 2 = W, 1 = X


@dataclass(frozen=True)
class PalImage:
    """The PT_LOAD segments and entry point of ``libpal.so``, with its bytes."""

    data: bytes
    segments: tuple[LoadSegment, ...]
    entry: int

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "libpal.so") -> PalImage:
        try:
            elf = ELFFile(io.BytesIO(data))
            segments = tuple(
                LoadSegment(s["p_offset"], s["p_vaddr"], s["p_filesz"], s["p_memsz"], s["p_flags"])
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD"
            )
            entry = elf.header["e_entry"]
        except (ELFError, ValueError, KeyError) as exc:
            raise MeasureError(f"{source}: not a valid ELF file ({exc})") from exc
        if not segments:
            raise MeasureError(f"{source}: ELF file has no PT_LOAD segments")
        for seg in segments:
            if seg.offset + seg.filesz > len(data):
                raise MeasureError(f"{source}: PT_LOAD segment runs past the end of the file")
        return cls(data, segments, entry)

    @classmethod
    def load(cls, path: str | Path) -> PalImage:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MeasureError(f"{path}: cannot read libpal: {exc.strerror}") from exc
        return cls.from_bytes(data, str(path))


# --------------------------------------------------------------------------------------------
# Layout


@dataclass
class _Area:
    desc: str
    size: int
    flags: int
    content: bytes | None = None  # None = zero-filled
    measure: bool = True
    addr: int = 0


def _round_up(value: int, page: int) -> int:
    return (value + page - 1) // page * page


def _round_down(value: int, page: int) -> int:
    return value - value % page


def _pal_span(pal: PalImage, page: int) -> tuple[int, int]:
    lo = min(_round_down(s.vaddr, page) for s in pal.segments)
    hi = max(_round_up(s.vaddr + s.memsz, page) for s in pal.segments)
    return lo, hi


@dataclass(frozen=True)
class _Layout:
    areas: list[_Area]
    pal_addr: int
    pal_base: int  # address that ELF vaddr 0 maps to
    heap_min: int


def _layout(attrs: EnclaveAttributes, manifest: bytes, pal: PalImage, offs: Offsets) -> _Layout:
    page = offs.PAGESIZE
    threads = attrs.max_threads
    base = offs.DEFAULT_ENCLAVE_BASE
    heap_min = offs.MMAP_MIN_ADDR
    manifest_mem = manifest + b"\0"

    lo, hi = _pal_span(pal, page)
    if lo != 0:
        raise MeasureError("libpal.so must be position-independent (lowest PT_LOAD vaddr 0)")

    areas = [
        _Area(
            "manifest", _round_up(len(manifest_mem), page), PAGEINFO_R | PAGEINFO_REG, manifest_mem
        ),
        _Area(
            "ssa",
            threads * offs.SSA_FRAME_SIZE * offs.SSA_FRAME_NUM,
            PAGEINFO_R | PAGEINFO_W | PAGEINFO_REG,
        ),
        _Area("tcs", threads * offs.TCS_SIZE, PAGEINFO_TCS),
        _Area("tls", threads * page, PAGEINFO_R | PAGEINFO_W | PAGEINFO_REG),
    ]
    areas += [
        _Area("stack", offs.ENCLAVE_STACK_SIZE, PAGEINFO_R | PAGEINFO_W | PAGEINFO_REG)
        for _ in range(threads)
    ]
    areas += [
        _Area("sig_stack", offs.ENCLAVE_SIG_STACK_SIZE, PAGEINFO_R | PAGEINFO_W | PAGEINFO_REG)
        for _ in range(threads)
    ]
    areas.append(_Area("pal", hi - lo, PAGEINFO_REG))

    top = base + attrs.enclave_size
    for area in areas:
        area.size = _round_up(area.size, page)
        area.addr = top - area.size
        if area.addr < heap_min:
            fixed = sum(_round_up(a.size, page) for a in areas)
            needed = 1 << max(0, heap_min - base + fixed - 1).bit_length()
            raise EnclaveTooSmall(
                f"sgx.enclave_size {attrs.enclave_size:#x} is too small for {threads} threads, "
                f"the manifest and libpal; use a larger power of two (at least {needed:#x})",
                needed,
                threads,
            )
        top = area.addr
    pal_area = areas[-1]

    _fill_tcs_and_tls(areas, attrs, len(manifest_mem), pal, pal_area.addr, heap_min, offs)

    if not attrs.edmm_enable and pal_area.addr > heap_min:
        # Heap: added so the enclave can use it, but its (zero) content is not measured.
        areas.append(
            _Area(
                "free",
                pal_area.addr - heap_min,
                PAGEINFO_R | PAGEINFO_W | PAGEINFO_X | PAGEINFO_REG,
                measure=False,
                addr=heap_min,
            )
        )
    return _Layout(areas, pal_area.addr, pal_area.addr - lo, heap_min)


def _fill_tcs_and_tls(
    areas: list[_Area],
    attrs: EnclaveAttributes,
    manifest_mem_size: int,
    pal: PalImage,
    pal_addr: int,
    heap_min: int,
    offs: Offsets,
) -> None:
    page = offs.PAGESIZE
    base = offs.DEFAULT_ENCLAVE_BASE
    by_desc = {a.desc: a for a in areas if a.desc not in ("stack", "sig_stack")}
    ssa, tcs, tls = by_desc["ssa"], by_desc["tcs"], by_desc["tls"]
    stacks = [a for a in areas if a.desc == "stack"]
    sig_stacks = [a for a in areas if a.desc == "sig_stack"]

    tcs_data = np.zeros(tcs.size, dtype=np.uint8)
    tls_data = np.zeros(tls.size, dtype=np.uint8)

    def put(buf: np.ndarray, offset: int, value: int, width: int) -> None:
        buf[offset : offset + width] = np.frombuffer(value.to_bytes(width, "little"), np.uint8)

    for t in range(attrs.max_threads):
        ssa_addr = ssa.addr + offs.SSA_FRAME_SIZE * offs.SSA_FRAME_NUM * t
        tc = t * offs.TCS_SIZE
        put(tcs_data, tc + offs.TCS_OSSA, ssa_addr - base, 8)
        put(tcs_data, tc + offs.TCS_NSSA, offs.SSA_FRAME_NUM, 4)
        put(tcs_data, tc + offs.TCS_OENTRY, pal_addr + pal.entry - base, 8)
        put(tcs_data, tc + offs.TCS_OGS_BASE, tls.addr - base + page * t, 8)
        put(tcs_data, tc + offs.TCS_OFS_LIMIT, 0xFFF, 4)
        put(tcs_data, tc + offs.TCS_OGS_LIMIT, 0xFFF, 4)

        tl = t * page
        for field, value in (
            (offs.SGX_COMMON_SELF, tls.addr + page * t),
            (offs.SGX_COMMON_STACK_PROTECTOR_CANARY, offs.STACK_PROTECTOR_CANARY_DEFAULT),
            (offs.SGX_ENCLAVE_SIZE, attrs.enclave_size),
            (offs.SGX_TCS_OFFSET, tcs.addr - base + offs.TCS_SIZE * t),
            (offs.SGX_INITIAL_STACK_ADDR, stacks[t].addr + stacks[t].size),
            (offs.SGX_SIG_STACK_LOW, sig_stacks[t].addr),
            (offs.SGX_SIG_STACK_HIGH, sig_stacks[t].addr + sig_stacks[t].size),
            (offs.SGX_SSA, ssa_addr),
            (offs.SGX_GPR, ssa_addr + offs.SSA_FRAME_SIZE - offs.SGX_GPR_SIZE),
            (offs.SGX_MANIFEST_SIZE, manifest_mem_size),
            (offs.SGX_HEAP_MIN, heap_min),
            (offs.SGX_HEAP_MAX, pal_addr),
        ):
            put(tls_data, tl + field, value, 8)

    tcs.content = tcs_data.tobytes()
    tls.content = tls_data.tobytes()


# --------------------------------------------------------------------------------------------
# The record stream


class _MeasurementStream:
    """Feeds ECREATE/EADD/EEXTEND records into SHA-256, many pages per update."""

    def __init__(self, enclave_size: int, offs: Offsets):
        self.page = offs.PAGESIZE
        if self.page != _EXTENDS_PER_PAGE * _CHUNK:
            raise MeasureError(f"unsupported PAGESIZE {self.page:#x} (expected 0x1000)")
        self.base = offs.DEFAULT_ENCLAVE_BASE
        self.enclave_size = enclave_size
        self.hash = hashlib.sha256()
        ecreate = bytearray(_RECORD)
        ecreate[0:8] = b"ECREATE\0"
        ecreate[8:12] = (offs.SSA_FRAME_SIZE // self.page).to_bytes(4, "little")
        ecreate[12:20] = enclave_size.to_bytes(8, "little")
        self.hash.update(ecreate)
        self._arange = np.arange(_UNMEASURED_CHUNK_PAGES, dtype=np.uint64) * np.uint64(self.page)

    def _check(self, addr: int, npages: int) -> int:
        offset = addr - self.base
        if offset < 0 or offset + npages * self.page > self.enclave_size:
            raise MeasureError("memory area outside the enclave (enclave_size too small)")
        return offset

    def add_unmeasured(self, addr: int, npages: int, flags: int) -> None:
        """EADD only, for heap pages whose content is not measured."""
        offset = self._check(addr, npages)
        records = np.zeros((min(npages, _UNMEASURED_CHUNK_PAGES), 8), dtype="<u8")
        records[:, 0] = _TAG_EADD
        records[:, 2] = flags
        done = 0
        while done < npages:
            n = min(npages - done, _UNMEASURED_CHUNK_PAGES)
            records[:n, 1] = self._arange[:n] + np.uint64(offset + done * self.page)
            self.hash.update(records[:n].data.cast("B"))
            done += n

    def add_measured(self, addr: int, content: np.ndarray, flags: int) -> None:
        """EADD and 16 EEXTENDs per page; *content* is uint8 of whole pages."""
        npages = len(content) // self.page
        offset = self._check(addr, npages)
        pages = content.reshape(npages, _EXTENDS_PER_PAGE, _CHUNK)
        chunk = min(npages, _MEASURED_CHUNK_PAGES)
        stream = np.zeros((chunk, _MEASURED_PAGE_BYTES // 8), dtype="<u8")
        stream[:, 0] = _TAG_EADD
        stream[:, 2] = flags
        headers = stream[:, 8:].reshape(chunk, _EXTENDS_PER_PAGE, (_RECORD + _CHUNK) // 8)
        headers[:, :, 0] = _TAG_EEXTEND
        within = np.arange(_EXTENDS_PER_PAGE, dtype=np.uint64) * np.uint64(_CHUNK)
        as_bytes = stream.view(np.uint8)[:, _RECORD:].reshape(
            chunk, _EXTENDS_PER_PAGE, _RECORD + _CHUNK
        )
        done = 0
        while done < npages:
            n = min(npages - done, chunk)
            page_offsets = self._arange[:n] + np.uint64(offset + done * self.page)
            stream[:n, 1] = page_offsets
            headers[:n, :, 1] = page_offsets[:, None] + within[None, :]
            as_bytes[:n, :, _RECORD:] = pages[done : done + n]
            self.hash.update(stream[:n].data.cast("B"))
            done += n


def _area_pages(area: _Area, page: int) -> np.ndarray:
    buf = np.zeros(area.size, dtype=np.uint8)
    if area.content:
        buf[: len(area.content)] = np.frombuffer(area.content, np.uint8)
    return buf


def _measure_pal(
    stream: _MeasurementStream, pal: PalImage, pal_base: int, area_flags: int, page: int
) -> None:
    """Each PT_LOAD segment page by page; pages shared by two segments are added twice."""
    data = np.frombuffer(pal.data, np.uint8)
    for seg in pal.segments:
        flags = area_flags
        if seg.flags & 4:
            flags |= PAGEINFO_R
        if seg.flags & 2:
            flags |= PAGEINFO_W
        if seg.flags & 1:
            flags |= PAGEINFO_X
        mem_start = _round_down(pal_base + seg.vaddr, page)
        mem_size = _round_up(pal_base + seg.vaddr + seg.memsz, page) - mem_start
        file_start = _round_down(seg.offset, page)
        buf = np.zeros(mem_size, dtype=np.uint8)
        lead = seg.offset - file_start
        length = min(seg.filesz, mem_size - lead)
        buf[lead : lead + length] = data[seg.offset : seg.offset + length]
        stream.add_measured(mem_start, buf, flags)


def measure_enclave(
    manifest: bytes, attrs: EnclaveAttributes, pal: PalImage, offs: Offsets
) -> bytes:
    """Return MRENCLAVE (32 bytes) for *manifest* (exact bytes, without the trailing NUL)."""
    if attrs.enclave_size <= 0 or attrs.enclave_size & (attrs.enclave_size - 1):
        raise MeasureError(f"sgx.enclave_size {attrs.enclave_size:#x} is not a power of two")
    if attrs.max_threads < 1:
        raise MeasureError("sgx.max_threads must be at least 1")
    page = offs.PAGESIZE
    layout = _layout(attrs, manifest, pal, offs)
    stream = _MeasurementStream(attrs.enclave_size, offs)
    for area in layout.areas:
        if area.desc == "pal":
            _measure_pal(stream, pal, layout.pal_base, area.flags, page)
        elif area.measure:
            stream.add_measured(area.addr, _area_pages(area, page), area.flags)
        else:
            stream.add_unmeasured(area.addr, area.size // page, area.flags)
    return stream.hash.digest()
