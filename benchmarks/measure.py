"""MRENCLAVE of a 64 GiB non-EDMM enclave vs. hashlib SHA-256 over the same number of bytes.

A non-EDMM enclave adds every heap page (EADD, 64 bytes each, unmeasured content), so 64 GiB
means ~16.8 million EADD records (~1 GiB of SHA-256 input) plus the measured pages. Both timings
run in this process; the ratio is what matters (goal: <= 1.3).

    python benchmarks/measure.py [--size 64G] [--threads 16]
"""

from __future__ import annotations

import argparse
import hashlib
import time

from enclave_build.builder.gramine.measure import (
    EnclaveAttributes,
    PalImage,
    measure_enclave,
    parse_size,
)
from enclave_build.builder.gramine.offsets import Offsets
from enclave_build.builder.standin import GRAMINE_OFFSETS, standin_elf


def stream_bytes(size: int, threads: int, manifest_len: int, pal: PalImage) -> int:
    """How many bytes the measurement feeds to SHA-256 (same layout as measure.py)."""
    page = 4096
    up = lambda n: (n + page - 1) // page * page
    measured_pages = (
        up(manifest_len + 1) + threads * (0x8000 + 0x1000 + 0x1000 + 0x40000 + 0x10000)
    ) // page
    measured_pages += sum(
        (up(s.vaddr + s.memsz) - s.vaddr // page * page) // page for s in pal.segments
    )
    span = max(up(s.vaddr + s.memsz) for s in pal.segments)
    used = up(manifest_len + 1) + threads * (0x8000 + 0x1000 + 0x1000 + 0x40000 + 0x10000) + span
    heap_pages = (size - used - 0x10000) // page
    return 64 + measured_pages * (64 + 16 * (64 + 256)) + heap_pages * 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64G")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    size = parse_size(args.size)
    offs = Offsets(dict(GRAMINE_OFFSETS))
    pal = PalImage.from_bytes(standin_elf("bench-pal", 0x200000, 0x20000, 0x100000))
    manifest = b'[libos]\nentrypoint = "/app"\n' * 100
    attrs = EnclaveAttributes(size, args.threads, False)
    nbytes = stream_bytes(size, args.threads, len(manifest), pal)

    best_measure = best_hash = float("inf")
    chunk = bytes(4 << 20)
    for _ in range(args.repeat):
        start = time.perf_counter()
        measure_enclave(manifest, attrs, pal, offs)
        best_measure = min(best_measure, time.perf_counter() - start)

        start = time.perf_counter()
        h = hashlib.sha256()
        left = nbytes
        while left > 0:
            n = min(left, len(chunk))
            h.update(chunk[:n] if n < len(chunk) else chunk)
            left -= n
        h.digest()
        best_hash = min(best_hash, time.perf_counter() - start)

    print(f"enclave size        {args.size} ({args.threads} threads, non-EDMM)")
    print(f"SHA-256 input       {nbytes / 2**30:.2f} GiB")
    print(f"measure_enclave     {best_measure:.3f} s  ({nbytes / best_measure / 1e9:.2f} GB/s)")
    print(f"hashlib baseline    {best_hash:.3f} s  ({nbytes / best_hash / 1e9:.2f} GB/s)")
    print(f"ratio               {best_measure / best_hash:.2f}  (goal <= 1.3)")


if __name__ == "__main__":
    main()
