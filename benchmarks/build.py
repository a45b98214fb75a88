"""Cold build vs. no-change rebuild of the tflite example (goal: rebuild < 2 s).

Both runs are the real CLI (`enclave-build build`) in subprocesses of this script: the cold one
with an empty cache directory (no hash cache, no blobs, no layer cache), the rebuild with the
cache the cold build left. The base is the stand-in Gramine rootfs (dir:), the model the real
face-detection TFLite file examples/demo.sh fetches (a generated file of the same size if the
demo has not run).

    python benchmarks/build.py [--runs 3]
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

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "enclave_build", *args], cwd=cwd, env=env,
                          capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.decode())
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
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
        (work / "keys/demo-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        run(["base", "standin", str(work / "rootfs")], env, work)
        build = ["build", "tflite/spec.toml", "--base", f"dir:{work / 'rootfs'}", "--output",
                 str(work / "out"), "--quiet"]
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


if __name__ == "__main__":
    main()
