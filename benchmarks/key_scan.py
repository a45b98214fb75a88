"""Key-material scan of a large clear model (builder.key_scan) next to SHA-256 of the same file.

A build scans every byte it adds in clear once (then remembers the file as clean), so a
1.5 GB model with ``encrypt = false`` costs one scan on its first build. The file is in the
page cache for both (it was just written, and read once before timing), so the comparison is
CPU work. Content: random bytes (a float model compresses as badly), or ``--int8`` small
integers, where the DER anchors the scanner looks for occur far more often. Two wrap keys, as
a build with two model owners has.

    python benchmarks/key_scan.py [--size-mib 1024] [--int8] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from enclave_build.builder.key_scan import KeyScanner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--int8", action="store_true", help="small integers instead of random")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="eb-scan-", dir=args.dir) as tmp:
        path = Path(tmp) / "model.bin"
        block = os.urandom(8 << 20)
        if args.int8:  # -3..3 as int8
            block = block.translate(bytes(((i % 7) - 3) & 0xFF for i in range(256)))
        with open(path, "wb") as out:
            for _ in range(max(1, args.size_mib // 8)):
                out.write(block)
        size = path.stat().st_size
        with open(path, "rb") as handle:
            while handle.read(8 << 20):
                pass

        start = time.perf_counter()
        with open(path, "rb") as handle:
            hashlib.file_digest(handle, "sha256")
        sha = time.perf_counter() - start

        scanner = KeyScanner({"a-key": os.urandom(16), "b-key": os.urandom(16)})
        start = time.perf_counter()
        found = scanner.scan_file(path)
        scan = time.perf_counter() - start
        assert found is None, found

    mb = size / 1e6
    print(f"{'int8' if args.int8 else 'random'} content, {mb:.0f} MB")
    print(f"sha256 (one core)   {sha:6.2f} s  {mb / sha:7.0f} MB/s")
    print(
        f"key scan            {scan:6.2f} s  {mb / scan:7.0f} MB/s  "
        f"({scan / sha:.2f}x the SHA-256 time)"
    )


if __name__ == "__main__":
    main()
