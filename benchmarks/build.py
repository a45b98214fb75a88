"""Build speed: a no-change rebuild, and the layer writing of a large model.

``rebuild`` (the default): cold build vs. no-change rebuild of the tflite example (goal:
rebuild < 2 s). Both runs are the real CLI (`enclave-build build`) in subprocesses of this
script: the cold one with an empty cache directory (no hash cache, no blobs, no layer cache),
the rebuild with the cache the cold build left. The base is the stand-in Gramine rootfs (dir:),
the model the real face-detection TFLite file examples/demo.sh fetches (a generated file of the
same size if the demo has not run).

``layers``: enclave-build's layer writer (builder.image.layers.write_layer: tar, diff_id,
block gzip, digest, blob store) on one large generated model file, against floors run by this
script on the same bytes in the same run: ``cp`` of the file followed by ``gzip -6 -n`` of the
copy (the standard tool at the level we compress at), and ``cp`` alone (the I/O floor). Goal:
at most 2x the cp + gzip floor. ``--content random`` (the default; what an encrypted model
is), ``weights`` (float32 normal values: a model in clear) or ``text`` (compressible).

    python benchmarks/build.py [rebuild] [--runs 3]
    python benchmarks/build.py layers [--size 1.5G] [--content random] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# This directory is sys.path[0]; its secrets.py would shadow the standard library's (which
# numpy.random imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def run(args: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "enclave_build", *args], cwd=cwd, env=env, capture_output=True
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.decode())
    return elapsed


def rebuild(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="eb-bench-build-"))
    try:
        shutil.copytree(REPO / "examples" / "tflite", work / "tflite")
        (work / "models").mkdir()
        (work / "keys").mkdir()
        model = REPO / "examples/models/face_detection_short_range.tflite"
        target = work / "models/face_detection_short_range.tflite"
        if model.exists():
            shutil.copy(model, target)
        else:
            target.write_bytes(os.urandom(229032))
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
        run(["keygen", "--out", str(work / "keys/enclave-key.pem")], env, work)
        (work / "keys/demo-ca.pem").write_text(
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
        )
        run(["base", "standin", str(work / "rootfs")], env, work)
        build = [
            "build",
            "tflite/spec.toml",
            "--base",
            f"dir:{work / 'rootfs'}",
            "--output",
            str(work / "out"),
            "--quiet",
        ]
        colds, warms = [], []
        for _ in range(args.runs):
            shutil.rmtree(work / "cache", ignore_errors=True)
            colds.append(run(build, env, work))
            warms.append(run(build, env, work))
        version = run(["--version"], env, work)
        print(f"cold build (empty cache)    {min(colds):.2f} s")
        print(f"no-change rebuild           {min(warms):.2f} s   (goal < 2 s)")
        print(f"rebuild / cold              {min(warms) / min(colds):.2f}")
        print(f"CLI start-up alone          {version:.2f} s   (`enclave-build --version`)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


MAX_SIZE = 16 << 30
CHUNK = 1 << 20


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = text.upper().rstrip("B").rstrip("I"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    size = int(float(number) * units[unit])
    if not 0 < size <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"--size must be between 1 byte and {MAX_SIZE >> 30}G")
    return size


def generate(path: Path, size: int, content: str) -> None:
    """*size* bytes of *content*, written 1 MiB at a time."""
    import numpy as np

    rng = np.random.default_rng(19)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(CHUNK, left)
            if content == "random":
                chunk = os.urandom(n)
            elif content == "weights":
                chunk = (rng.standard_normal(n // 4 + 1) * 0.05).astype(np.float32).tobytes()[:n]
            else:
                letters = np.frombuffer(rng.bytes(n), dtype=np.uint8) & 15
                chunk = (letters + ord("a")).astype(np.uint8).tobytes()
            out.write(chunk)
            left -= n


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def layers(args: argparse.Namespace) -> None:
    from enclave_build.builder.image.layers import GZIP_LEVEL, LayerEntry, write_layer
    from enclave_build.builder.image.oci import BlobStore

    work = Path(tempfile.mkdtemp(prefix="eb-bench-layers-"))
    try:
        model = work / "model.bin"
        generate(model, args.size, args.content)
        ours, cp_gzip, cp_only = [], [], []
        blob_size = gzip_size = 0
        for run_index in range(args.runs):
            store_dir = work / f"store-{run_index}"
            store = BlobStore(store_dir / "blobs")
            entry = LayerEntry("/models/model.bin", "file", 0o644, source=model)
            holder: dict[str, Any] = {}

            def ours_once(entry=entry, store=store, store_dir=store_dir, holder=holder) -> None:
                holder["blob"] = write_layer([entry], store, None, None, store_dir / "cache")

            ours.append(timed(ours_once))
            blob_size = holder["blob"].descriptor.size
            shutil.rmtree(store_dir)
            copy, packed = work / "copy.bin", work / "copy.gz"

            def floor_gzip(copy: Path = copy, packed: Path = packed) -> None:
                subprocess.run(["cp", str(model), str(copy)], check=True)
                with open(packed, "wb") as out:
                    subprocess.run(
                        ["gzip", f"-{GZIP_LEVEL}", "-n", "-c", str(copy)], stdout=out, check=True
                    )

            cp_gzip.append(timed(floor_gzip))
            gzip_size = packed.stat().st_size
            copy.unlink()
            packed.unlink()
            cp_only.append(
                timed(lambda copy=copy: subprocess.run(["cp", str(model), str(copy)], check=True))
            )
            copy.unlink()
        best, floor, io_floor = min(ours), min(cp_gzip), min(cp_only)
        mb = args.size / 1e6
        print(
            f"model: {mb:.0f} MB of {args.content} bytes; {os.cpu_count()} cores; "
            f"best of {args.runs}"
        )
        print(
            f"enclave-build write_layer   {best:7.2f} s  {mb / best:7.1f} MB/s  "
            f"layer {blob_size / 1e6:.0f} MB"
        )
        print(
            f"cp + gzip -{GZIP_LEVEL} -n (floor)   {floor:7.2f} s  {mb / floor:7.1f} MB/s  "
            f"gzip  {gzip_size / 1e6:.0f} MB"
        )
        print(f"cp alone (I/O floor)        {io_floor:7.2f} s  {mb / io_floor:7.1f} MB/s")
        print(f"ours / (cp + gzip)          {best / floor:.2f}   (goal <= 2)")
        print(f"ours / cp                   {best / io_floor:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what")
    again = sub.add_parser("rebuild", help="cold build vs no-change rebuild (the default)")
    again.add_argument("--runs", type=int, default=3)
    layer = sub.add_parser("layers", help="layer writing of a large model vs cp + gzip")
    layer.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("1.5G"),
        help="model size, e.g. 1.5G (default), 200M; at most 16G",
    )
    layer.add_argument("--content", choices=["random", "weights", "text"], default="random")
    layer.add_argument("--runs", type=int, default=1)
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("rebuild", "layers", "-h", "--help"):
        argv = ["rebuild", *argv]  # `python benchmarks/build.py [--runs 3]` as before
    args = parser.parse_args(argv)
    (layers if args.what == "layers" else rebuild)(args)


if __name__ == "__main__":
    main()
