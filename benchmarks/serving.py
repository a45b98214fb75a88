"""Serving overhead: our model server (gRPC, and REST with binary tensors) against the same
runtime called directly, in the same run, on face_detection_short_range.tflite (LiteRT, one
interpreter thread).

For each concurrency C (default 1 and 8) the same load shape runs three ways:

* direct: C client processes, each calling its own LiteRT interpreter in a loop (what a user
  would get with no server at all);
* grpc / rest: C client processes, each sending tritonclient requests in a loop to one server
  process (``python -m model_server``) with ``min(C, cores)`` interpreter instances.

Clients and server share the machine's cores (as a co-located load generator does), so client
cost counts against the server; the direct baseline pays no client cost. Reported: p50/p99
latency per request, throughput, and the ratios (p50 overhead in ms, throughput vs direct).
Goal from the issue: p50 overhead <= 0.3 ms and throughput >= 90 % of direct on 2 cores.

    .venv/bin/python benchmarks/serving.py [--seconds 5] [--concurrency 1 8] [--pin]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# benchmarks/secrets.py would shadow the standard library's secrets module (numpy imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))


def _client(*args) -> None:
    queue = args[-1]
    try:
        _client_loop(*args)
    except BaseException as exc:  # noqa: BLE001 - report to the parent instead of hanging it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _client_loop(kind: str, address: str, model_path: str, seconds: float, warmup: float, start,
                 queue) -> None:
    x = np.random.default_rng(os.getpid()).random((1, 128, 128, 3), dtype=np.float32)
    if kind == "direct":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=model_path, num_threads=1)
        it.allocate_tensors()
        idx = it.get_input_details()[0]["index"]
        outs = [d["index"] for d in it.get_output_details()]

        def call():
            it.set_tensor(idx, x)
            it.invoke()
            return [it.get_tensor(o) for o in outs]
    elif kind == "grpc":
        import tritonclient.grpc as tc

        client = tc.InferenceServerClient(address)

        def call():
            inp = tc.InferInput("input", [1, 128, 128, 3], "FP32")
            inp.set_data_from_numpy(x)
            r = client.infer("fd", [inp])
            return r.as_numpy("regressors"), r.as_numpy("classificators")
    else:
        import tritonclient.http as tc

        client = tc.InferenceServerClient(address)

        def call():
            inp = tc.InferInput("input", [1, 128, 128, 3], "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            r = client.infer("fd", [inp])
            return r.as_numpy("regressors"), r.as_numpy("classificators")
    call()
    start.wait()
    t_end_warm = time.perf_counter() + warmup
    while time.perf_counter() < t_end_warm:
        call()
    lat = []
    t0 = time.perf_counter()
    t_end = t0 + seconds
    while True:
        t = time.perf_counter()
        if t >= t_end:
            break
        call()
        lat.append(time.perf_counter() - t)
    queue.put((lat, time.perf_counter() - t0))


def run_load(kind: str, concurrency: int, address: str, model: Path, seconds: float,
             warmup: float, pin: list[int] | None) -> dict:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    queue = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(kind, address, str(model), seconds, warmup,
                                               start, queue)) for _ in range(concurrency)]
    for p in procs:
        p.start()
        if pin:
            os.sched_setaffinity(p.pid, pin)
    time.sleep(2.0 if kind != "direct" else 1.0)     # imports and first call
    start.set()
    results = [queue.get(timeout=seconds + warmup + 120) for _ in procs]
    errors = [r[1] for r in results if r[0] == "error"]
    if errors:
        raise SystemExit(f"{kind} clients failed: {errors[0]}")
    for p in procs:
        p.join(30)
    lat = np.concatenate([np.asarray(r[0]) for r in results])
    throughput = sum(len(r[0]) / r[1] for r in results)
    return {"kind": kind, "concurrency": concurrency, "n": int(lat.size),
            "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "per_s": float(throughput)}


class ServerProc:
    def __init__(self, model: Path, instances: int, workdir: Path, pin: list[int] | None):
        cfg = {"version": 1, "service": "bench",
               "grpc": {"host": "127.0.0.1", "port": 0}, "rest": {"host": "127.0.0.1", "port": 0},
               "limits": {"max_request_bytes": 8 << 20, "max_concurrent_requests": 64,
                          "max_queue": 256},
               "drain_seconds": 5, "metrics": True,
               "models": [{"name": "fd", "backend": "tflite", "path": str(model),
                           "instances": instances, "threads": 1}]}
        path = workdir / f"bench-{instances}.json"
        path.write_text(json.dumps(cfg))
        self.proc = subprocess.Popen([sys.executable, "-m", "model_server", "--config",
                                      str(path)], stderr=subprocess.PIPE, text=True, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        if pin:
            os.sched_setaffinity(self.proc.pid, pin)
        self.lines = []
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"serving grpc (\S+) rest (\S+)", line)
            if m:
                self.grpc, self.rest = m.groups()
                break
        else:
            raise SystemExit("server did not start:\n" + "".join(self.lines))
        threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stderr],
                         daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--protocols", nargs="+", default=["grpc", "rest"],
                    choices=["grpc", "rest"])
    ap.add_argument("--instances", type=int, default=0,
                    help="server interpreter instances (default: min(concurrency, cores))")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    from tests.models import face_detection_tflite

    model = face_detection_tflite()
    cores = len(os.sched_getaffinity(0))
    print(f"model {model.name}, {cores} cores, {args.seconds:g} s per run, LiteRT 1 thread per "
          "interpreter; clients co-located with the server; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (other work on the machine "
          "skews every number)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.concurrency:
            direct = run_load("direct", c, "", model, args.seconds, args.warmup, None)
            rows.append(direct)
            instances = args.instances or min(c, cores)
            server = ServerProc(model, instances, Path(tmp), None)
            try:
                for proto in args.protocols:
                    addr = server.grpc if proto == "grpc" else server.rest
                    r = run_load(proto, c, addr, model, args.seconds, args.warmup, None)
                    r["instances"] = instances
                    r["p50_overhead_ms"] = r["p50_ms"] - direct["p50_ms"]
                    r["throughput_ratio"] = r["per_s"] / direct["per_s"]
                    rows.append(r)
            finally:
                server.stop()
    print(f"{'load':8} {'C':>2} {'inst':>4} {'n':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
          f"{'p50 +ms':>8} {'thr/direct':>10}")
    for r in rows:
        extra = (f"{r['p50_overhead_ms']:8.3f} {r['throughput_ratio']:10.2f}"
                 if "throughput_ratio" in r else f"{'':8} {'':10}")
        print(f"{r['kind']:8} {r['concurrency']:>2} {r.get('instances', ''):>4} {r['n']:>7} "
              f"{r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['per_s']:8.1f} {extra}")
    for r in rows:
        if "throughput_ratio" in r:
            goal = r["p50_overhead_ms"] <= 0.3 and r["throughput_ratio"] >= 0.9
            print(f"{r['kind']} C={r['concurrency']}: p50 overhead {r['p50_overhead_ms']:.3f} ms,"
                  f" throughput {r['throughput_ratio']:.0%} of direct -> goal "
                  f"{'met' if goal else 'NOT met'}")
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
