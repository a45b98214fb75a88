"""Legitimate clients while hostile ones attack: the model server's limits, measured.

One model server process (``python -m enclave_build.model_server``) serves three small models: ``fast``
(y = 2x, 2 ms per request, 2 instances), ``slow`` (the same, 0.5 s per request, 1 instance) and
``bytes`` (the byte length of each BYTES element). For each attack, in one run:

* the legitimate load: ``--clients`` threads sending inference requests to ``fast`` in a loop
  (half REST JSON on keep-alive connections, half gRPC), plus a health probe every 0.25 s on a
  new REST connection (what a kubelet does), for ``--seconds``;
* the attack, from a separate process, started a second before the load and stopped after it.

The first row is the same load without any attack (the baseline). Each row prints the
legitimate requests served out of those sent, their p99 latency and its ratio to the
baseline's, the health probes answered, and the server's peak resident memory growth during
the attack (VmHWM, reset before each attack through /proc/PID/clear_refs, against VmRSS before).

Goals: every legitimate request served, p99 within 3x of the quiet run, peak RSS growth
<= 64 MiB per attack. The exit code is 0 when every goal held, 1 otherwise.

Attacks (the defects they reproduce were found by a hostile-input pass):

* ``bytes-shape-rest`` / ``bytes-shape-grpc``: tiny requests declaring BYTES shape
  [300000000] (an allocation sized by the shape used to take 2.4 GB);
* ``bytes-int-json``: BYTES ``data`` of integers ([1000000000, 1000000000] once meant 2 GB of
  zeros);
* ``slow-bodies``: 16 REST connections announcing 64 MiB bodies and sending 1 byte a second
  (once held the whole request-byte budget);
* ``stalled-streams``: one HTTP/2 connection opening 324 ModelInfer streams that never send
  their message (once held every gRPC call slot, health included);
* ``idle-connections``: 256 idle REST and 900 idle gRPC connections (once filled REST's
  connection cap and ran the process out of file descriptors);
* ``idle-over-grpc-cap``: the same with 1,200 gRPC connections, more than
  ``limits.max_grpc_connections`` (1,024). grpc cannot close an idle connection to make room
  for a new one (REST can), so while the attacker holds the cap, new gRPC connections are
  refused (existing ones, REST and health keep working). This row shows that limit; the fix
  is a per-client connection limit in front of the server (an ingress or load balancer);
* ``slow-model-flood``: 80 clients keeping the slow model busy (its backlog once delayed every
  other model).

    .venv/bin/python benchmarks/hostile_serving.py [--seconds 5] [--clients 4]
        [--attacks slow-bodies,stalled-streams]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# benchmarks/secrets.py would shadow the standard library's secrets module (numpy imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

READY = re.compile(r"serving grpc (\S+):(\d+) rest (\S+):(\d+)")
X = np.array([[1.0, 2.0]], dtype=np.float32)
GOAL_P99_RATIO = 3.0
GOAL_RSS_MIB = 64.0


# ---------------------------------------------------------------- the server


class Server:
    def __init__(self, directory: Path) -> None:
        config = {
            "version": 1, "service": "hostile-bench",
            "grpc": {"host": "127.0.0.1", "port": 0}, "rest": {"host": "127.0.0.1", "port": 0},
            "drain_seconds": 5, "metrics": True, "keys": None, "tls": None, "limits": {},
            "models": [
                {"name": "fast", "version": "1", "backend": "tests.ms_backends:SlowDouble",
                 "path": "/none", "instances": 2, "options": {"seconds": 0.002}},
                {"name": "slow", "version": "1", "backend": "tests.ms_backends:SlowDouble",
                 "path": "/none", "instances": 1, "options": {"seconds": 0.5}},
                {"name": "bytes", "version": "1", "backend": "tests.ms_backends:BytesLength",
                 "path": "/none"}],
        }
        path = directory / "model-server.json"
        path.write_text(json.dumps(config))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "enclave_build.model_server", "--config",
                                      str(path)], cwd=REPO, env=env, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr: list[str] = []
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("the model server exited:\n" + "".join(self.stderr))
            self.stderr.append(line)
            match = READY.search(line)
            if match:
                self.grpc = f"127.0.0.1:{match.group(2)}"
                self.rest = ("127.0.0.1", int(match.group(4)))
                break
        else:
            raise RuntimeError("the model server did not start")
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def status_kib(self, key: str) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------- legitimate load


def _rest_request(model: str, body: bytes, keep: bool = True) -> bytes:
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("" if keep else "Connection: close\r\n") + "\r\n").encode() + body


FAST_JSON = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                    "data": [1.0, 2.0]}]}).encode()


class HttpClient:
    """A keep-alive HTTP/1.1 client on one socket (reconnects when the server closes)."""

    def __init__(self, address: tuple[str, int], timeout: float = 30.0) -> None:
        self.address, self.timeout = address, timeout
        self.sock: socket.socket | None = None
        self.file: io.BufferedReader | None = None

    def exchange(self, request: bytes) -> int:
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.file = self.sock.makefile("rb")
            try:
                self.sock.sendall(request)
                status_line = self.file.readline()
                if not status_line:
                    raise ConnectionError("closed")
                length, close = 0, False
                while True:
                    line = self.file.readline()
                    if line in (b"\r\n", b""):
                        break
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"connection" and v.strip().lower() == b"close":
                        close = True
                self.file.read(length)
                if close:
                    self.close()
                return int(status_line.split()[1])
            except (ConnectionError, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = self.file = None


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    health_ok: int = 0
    health_total: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.latencies) + self.failed

    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99)) * 1000 if self.latencies else float("nan")

    def note(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def run_load(server: Server, seconds: float, clients: int) -> LoadResult:
    import grpc

    from enclave_build.model_server import protocol as pb

    result = LoadResult()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    req = pb.ModelInferRequest(model_name="fast")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(X.tobytes())
    grpc_request = req.SerializeToString()

    def rest_client() -> None:
        http = HttpClient(server.rest)
        request = _rest_request("fast", FAST_JSON)
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                status: int | str = http.exchange(request)
            except OSError as exc:
                status = type(exc).__name__
            elapsed = time.perf_counter() - t0
            with lock:
                if status == 200:
                    result.latencies.append(elapsed)
                else:
                    result.failed += 1
                    result.note(f"rest {status}")
        http.close()

    def grpc_client() -> None:
        channel = grpc.insecure_channel(server.grpc)
        stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{pb.SERVICE_FULL_NAME}/ModelInfer")
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                stub(grpc_request, timeout=30)
                ok, what = True, ""
            except grpc.RpcError as exc:
                ok, what = False, f"grpc {exc.code().name}"
            elapsed = time.perf_counter() - t0
            with lock:
                if ok:
                    result.latencies.append(elapsed)
                else:
                    result.failed += 1
                    result.note(what)
        channel.close()

    def health() -> None:
        probe = b"GET /v2/health/ready HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        while time.monotonic() < end:
            http = HttpClient(server.rest, timeout=5)
            try:
                ok = http.exchange(probe) == 200
            except OSError:
                ok = False
            http.close()
            with lock:
                result.health_total += 1
                result.health_ok += ok
            time.sleep(0.25)

    threads = [threading.Thread(target=rest_client if i % 2 == 0 else grpc_client)
               for i in range(clients)] + [threading.Thread(target=health)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


# ---------------------------------------------------------------- attacks (own process)


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _loop_until(stop, fn) -> None:
    while not stop.is_set():
        try:
            fn()
        except OSError:
            time.sleep(0.01)


def attack_bytes_shape_rest(rest, grpc_address, stop) -> None:
    head = (b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[300000000],'
            b'"parameters":{"binary_data_size":4}}]}')
    body = head + b"\0\0\0\0"
    request = (b"POST /v2/models/bytes/infer HTTP/1.1\r\nHost: x\r\n"
               + f"Inference-Header-Content-Length: {len(head)}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    http = HttpClient(rest, timeout=30)
    _loop_until(stop, lambda: http.exchange(request))


def attack_bytes_shape_grpc(rest, grpc_address, stop) -> None:
    import grpc

    from enclave_build.model_server import protocol as pb

    req = pb.ModelInferRequest(model_name="bytes")
    req.inputs.add(name="s", datatype="BYTES", shape=[300000000])
    req.raw_input_contents.append(b"\0\0\0\0")
    raw = req.SerializeToString()
    stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = grpc.insecure_channel(
        grpc_address).unary_unary(f"/{pb.SERVICE_FULL_NAME}/ModelInfer")

    def once() -> None:
        try:
            stub(raw, timeout=30)
        except grpc.RpcError:
            pass
    _loop_until(stop, once)


def attack_bytes_int_json(rest, grpc_address, stop) -> None:
    body = (b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],'
            b'"data":[1000000000,1000000000]}]}')
    http = HttpClient(rest, timeout=30)
    request = _rest_request("bytes", body)
    _loop_until(stop, lambda: http.exchange(request))


def attack_slow_bodies(rest, grpc_address, stop) -> None:
    socks = []
    for _ in range(16):
        s = socket.create_connection(rest, timeout=5)
        s.sendall(b"POST /v2/models/fast/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 67108864\r\n\r\n")
        socks.append(s)
    while not stop.wait(1.0):
        for i, s in enumerate(socks):
            try:
                s.sendall(b"x")
            except OSError:          # refused or timed out: the attacker comes back
                s.close()
                try:
                    socks[i] = socket.create_connection(rest, timeout=5)
                    socks[i].sendall(b"POST /v2/models/fast/infer HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 67108864\r\n\r\n")
                except OSError:
                    pass
    for s in socks:
        s.close()


def attack_stalled_streams(rest, grpc_address, stop) -> None:
    from tests.h2_client import H2Connection

    def connect() -> H2Connection:
        conn = H2Connection(grpc_address)
        for stream in range(1, 2 * 324, 2):
            conn.open_stream(stream)
        return conn
    conn = connect()
    while not stop.wait(0.5):
        conn.read_frames(0.05)
        if conn.closed:              # cancelled at the message deadline: come back
            conn.close()
            conn = connect()
    conn.close()


def attack_idle_connections(rest, grpc_address, stop, grpc_count: int = 900) -> None:
    _raise_nofile()
    host, port = grpc_address.rsplit(":", 1)
    targets = [rest] * 256 + [(host, int(port))] * grpc_count
    socks: list[socket.socket | None] = [None] * len(targets)
    while not stop.is_set():
        for i, target in enumerate(targets):     # (re)open whatever the server closed
            s = socks[i]
            if s is not None:
                try:
                    s.setblocking(False)
                    alive = s.recv(1, socket.MSG_PEEK) != b""
                except BlockingIOError:
                    alive = True
                except OSError:
                    alive = False
                if alive:
                    continue
                s.close()
            try:
                socks[i] = socket.create_connection(target, timeout=2)
            except OSError:
                socks[i] = None
        stop.wait(0.5)
    for s in socks:
        if s is not None:
            s.close()


def attack_idle_over_grpc_cap(rest, grpc_address, stop) -> None:
    attack_idle_connections(rest, grpc_address, stop, grpc_count=1200)


def attack_slow_model_flood(rest, grpc_address, stop) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "data": [1.0, 2.0]}]}).encode()
    request = _rest_request("slow", body)

    def client() -> None:
        http = HttpClient(rest, timeout=120)
        _loop_until(stop, lambda: http.exchange(request))
        http.close()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(80)]
    for t in threads:
        t.start()
    stop.wait()


ATTACKS = {
    "bytes-shape-rest": attack_bytes_shape_rest,
    "bytes-shape-grpc": attack_bytes_shape_grpc,
    "bytes-int-json": attack_bytes_int_json,
    "slow-bodies": attack_slow_bodies,
    "stalled-streams": attack_stalled_streams,
    "idle-connections": attack_idle_connections,
    "idle-over-grpc-cap": attack_idle_over_grpc_cap,
    "slow-model-flood": attack_slow_model_flood,
}


def _attacker(name: str, rest, grpc_address, stop) -> None:
    sys.path.insert(0, str(REPO))
    ATTACKS[name](rest, grpc_address, stop)


# ---------------------------------------------------------------- the run


@dataclass
class Row:
    name: str
    load: LoadResult
    rss_growth_mib: float


def measure(server: Server, name: str | None, seconds: float, clients: int) -> Row:
    before = server.status_kib("VmRSS")
    server.reset_peak()
    stop = mp.Event()
    proc = None
    if name is not None:
        proc = mp.Process(target=_attacker, args=(name, server.rest, server.grpc, stop),
                          daemon=True)
        proc.start()
        time.sleep(1.0)
    try:
        load = run_load(server, seconds, clients)
    finally:
        stop.set()
        if proc is not None:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
    peak = server.status_kib("VmHWM")
    time.sleep(1.0)             # let the server close what the attack left before the next row
    return Row(name or "(no attack)", load, max(0, peak - before) / 1024)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="legitimate load per row")
    p.add_argument("--clients", type=int, default=4, help="legitimate client threads")
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help=f"comma-separated; default all: {', '.join(ATTACKS)}")
    args = p.parse_args()
    names = [n for n in args.attacks.split(",") if n]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        p.error(f"no such attack {unknown[0]!r}; attacks: {', '.join(ATTACKS)}")
    _raise_nofile()
    with tempfile.TemporaryDirectory(prefix="hostile-serving-") as tmp:
        server = Server(Path(tmp))
        try:
            rows = [measure(server, None, args.seconds, args.clients)]
            for name in names:
                rows.append(measure(server, name, args.seconds, args.clients))
        finally:
            server.stop()
    quiet = rows[0].load.p99()
    print(f"hostile_serving: {args.clients} legitimate clients (REST + gRPC) + a health probe "
          f"every 0.25 s, {args.seconds:g} s per row; {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'attack':<18} {'served':>13} {'p99 ms':>8} {'vs quiet':>8} {'health':>9} "
          f"{'peak RSS +MiB':>13}  goal")
    all_met = True
    for row in rows:
        load = row.load
        ratio = load.p99() / quiet if quiet else float("nan")
        met = (load.failed == 0 and load.health_ok == load.health_total
               and ratio <= GOAL_P99_RATIO and row.rss_growth_mib <= GOAL_RSS_MIB)
        all_met &= met
        print(f"{row.name:<18} {len(load.latencies):>6}/{load.total:<6} {load.p99():>8.2f} "
              f"{ratio:>7.2f}x {load.health_ok:>4}/{load.health_total:<4} "
              f"{row.rss_growth_mib:>13.1f}  {'met' if met else 'NOT MET'}"
              + (f"  ({', '.join(f'{k}: {v}' for k, v in load.errors.items())})"
                 if load.errors else ""))
    print(f"goals: 100% served, p99 <= {GOAL_P99_RATIO:g}x the quiet run, peak RSS growth <= "
          f"{GOAL_RSS_MIB:g} MiB per attack: {'all met' if all_met else 'NOT all met'}")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
