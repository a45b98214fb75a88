"""Trusted-file hashing of a generated 2 GiB tree: cold (no cache) vs. warm (cache) vs. sha256sum.

All three run in this script on the same tree, which is in the page cache for all of them (it
was just written, and the first timed run reads it once more beforehand), so the comparison is
CPU work, not disk. Goals: cold >= 3x faster than `sha256sum` on 2 cores; warm <= 5% of cold.

    python benchmarks/hash_tree.py [--size-mib 2048] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from enclave_build.builder.hashing import HashCache, hash_files


def make_tree(root: Path, total: int) -> list[Path]:
    """Files of mixed sizes (4 KiB .. 64 MiB) in nested directories, like a model server image."""
    sizes = (
        [64 << 20] * 8 + [16 << 20] * 32 + [1 << 20] * 256 + [64 << 10] * 1024 + [4 << 10] * 2048
    )
    scale = total / sum(sizes)
    block = os.urandom(1 << 20)
    paths = []
    for i, size in enumerate(sizes):
        size = max(1, int(size * scale))
        path = root / f"d{i % 7}" / f"s{i % 13}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            left = size
            while left:
                n = min(left, len(block))
                out.write(block[:n])
                left -= n
            out.write(i.to_bytes(4, "little"))  # make every file distinct
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="eb-hash-", dir=args.dir))
    try:
        paths = make_tree(work / "tree", args.size_mib << 20)
        total = sum(p.stat().st_size for p in paths)
        listing = work / "files.txt"
        listing.write_text("\n".join(map(str, paths)) + "\n")
        subprocess.run(["cat", *map(str, paths[:1])], stdout=subprocess.DEVNULL, check=True)

        start = time.perf_counter()
        subprocess.run(f"xargs -a {listing} -d '\\n' sha256sum > /dev/null", shell=True, check=True)
        t_sum = time.perf_counter() - start

        cache_path = work / "cache.sqlite"
        start = time.perf_counter()
        cold = hash_files(paths, cache=HashCache(cache_path))
        t_cold = time.perf_counter() - start

        start = time.perf_counter()
        warm = hash_files(paths, cache=HashCache(cache_path))
        t_warm = time.perf_counter() - start
        assert warm == cold

        print(
            f"tree                {len(paths)} files, {total / 2**30:.2f} GiB, {os.cpu_count()} cores"
        )
        print(f"sha256sum           {t_sum:.3f} s  ({total / t_sum / 1e6:.0f} MB/s)")
        print(f"cold (no cache)     {t_cold:.3f} s  ({total / t_cold / 1e6:.0f} MB/s)")
        print(f"warm (cache)        {t_warm:.3f} s")
        print(f"cold vs sha256sum   {t_sum / t_cold:.1f}x faster  (goal >= 3x)")
        print(f"warm / cold         {100 * t_warm / t_cold:.1f}%  (goal <= 5%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
