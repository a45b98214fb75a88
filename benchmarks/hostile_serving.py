"""Legitimate clients while hostile ones attack: the model server's limits, measured.

One model server process (``python -m enclave_build.model_server``) serves three small models:
``fast`` (y = 2x, 2 ms per request, 2 instances), ``slow`` (the same, 0.5 s per request, 1
instance) and ``bytes`` (the byte length of each BYTES element), with ``max_request_bytes`` 16 MiB
(so the byte budget, ``max_buffered_bytes``, is 64 MiB) and otherwise default limits. For each
attack, in one run:

* the legitimate load: ``--clients`` threads sending inference requests to ``fast`` in a loop
  (half REST JSON on keep-alive connections, half gRPC), plus a health probe every 0.25 s on a
  new REST connection (what a kubelet does), for ``--seconds``;
* the attack, from a separate process, started before the load (the load starts once the attack
  says it is in place, e.g. holds its connections) and stopped after it.

The first row is the same load without any attack (the baseline); the TLS row has its own
server (REST and gRPC over TLS) and its own baseline. Each row prints the legitimate requests
served out of those sent, their p99 latency and its ratio to the baseline's, the health probes
answered, the server's peak resident memory growth during the attack (VmHWM, reset before each
attack through /proc/PID/clear_refs, against VmRSS before), and what the attacker achieved.

Goals, stated in the output and checked per row against the quiet run measured just before
in the same run (the same server): every legitimate request and health probe answered; REST
and gRPC clients each served at least a third of the requests they were in the quiet run (a
client kept waiting sends few requests and fails none); p99 within 3x of the quiet run's; peak
RSS growth within the byte budget (64 MiB). Each row says ``met``, or ``NOT MET``
and which goal failed. One row is a known limit (``idle-over-grpc-cap``, below) and says so; the
exit code is 0 when every other row met every goal, 1 otherwise.

Attacks (each reproduces a defect a hostile-input pass found):

* ``bytes-shape-rest`` / ``bytes-shape-grpc``: tiny requests declaring BYTES shape
  [300000000] (an allocation sized by the shape used to take 2.4 GB);
* ``bytes-int-json``: BYTES ``data`` of integers ([1000000000, 1000000000] once meant 2 GB of
  zeros);
* ``duplicate-outputs``: 1 MiB requests naming output ``y`` 400 times, REST and gRPC (the
  server built a 419 MB answer);
* ``json-amplification``: REST bodies of empty JSON lists, 57 MiB (over ``max_json_bytes``)
  and 4 MiB (within it: parsed, ~20x its size, reserved in the budget first);
* ``bytes-amplification``: 16 MiB of 1-byte BYTES elements (REST binary) and of empty
  ``bytes_contents`` (gRPC) (an object per element: 950 MB, 2.2 GB);
* ``grpc-typed-flood``: 4 concurrent 15 MiB messages of ``fp32_contents`` (a Python float per
  element: 2.1 GB);
* ``grpc-partial-messages``: 16 connections each announcing a 16 MiB message and never sending
  its last bytes (grpc buffered them all, past the budget);
* ``slow-bodies``: 16 REST connections announcing the largest body and sending 1 byte a second;
* ``nearly-complete-bodies``: 4 REST bodies of the largest size, all but complete, then 1 byte
  every 8 s (they held the whole budget for body_timeout);
* ``trickled-bodies-at-cap``: 256 REST bodies and 8 more on the health headroom (GET with a
  Content-Length), 1 byte every 4 s (health probes failed);
* ``stalled-streams``: one HTTP/2 connection opening 324 ModelInfer streams that never send
  their message (once held every gRPC call slot, health included);
* ``message-less-streams``: the same over 12 connections of 32 streams (held every handler
  thread: a legitimate call waited 19 s);
* ``kept-rooms``: two connections each sending a tiny valid message every 0.6 s, so the rooms
  a connection may keep for its next call stay kept, and a third holding the last room with 32
  message-less streams (gRPC was served 4 times in 5 s);
* ``churning-streams``: 40 connections opening 8 message-less streams each, closed and
  reopened every second (a full waiting room dropped legitimate calls: RESOURCE_EXHAUSTED);
* ``prompt-waiters``: 4 connections, each sending one tiny valid message at once (so it counts
  as prompt), then 31 message-less streams, again once they have all ended: a full waiting room
  drops the waiters of connections that are not prompt first, so a new legitimate connection's
  call is dropped (RESOURCE_EXHAUSTED) in favour of the attackers' dozens of waiting streams;
* ``churning-streams-fast``: 80 connections opening 32 message-less streams each, closed and
  reopened every 0.2 s (legitimate gRPC calls wait behind the churned calls and are cancelled);
* ``pipeline-no-read``: two REST connections pipelining requests without reading an answer
  (everything they sent was buffered; then other clients' p99 grew 54x);
* ``unread-rest-answers``: REST connections each sending one request whose answer is 15 MiB
  (binary output) and never reading it, a new one every 0.3 s, up to 24 (the answer leaves the
  byte budget once written to the connection's buffer: memory beyond the budget);
* ``unread-grpc-answers``: 2 HTTP/2 connections announcing SETTINGS_INITIAL_WINDOW_SIZE 0, so
  the server may send no answer DATA, each completing 8 ModelInfer calls of 15 MiB (each answer
  stays in grpc's send buffers, outside the budget, for as long as the connection lives);
* ``idle-connections``: 256 idle REST and 900 idle gRPC connections (HTTP/2 preface sent, so
  grpc keeps them until idle_timeout; once filled REST's connection cap and ran the process out
  of file descriptors);
* ``idle-over-grpc-cap``: the same with 1,200 gRPC connections, more than
  ``limits.max_grpc_connections`` (1,024); the load starts once the attacker holds the cap.
  grpc cannot close an idle connection to make room for a new one (REST can), so while the
  attacker holds the cap, new gRPC connections are refused (existing ones, REST and health keep
  working). This row shows that limit; the fix is a per-client connection limit in front of the
  server (an ingress or load balancer);
* ``slow-model-flood``: 80 clients keeping the slow model busy (its backlog once delayed every
  other model);
* ``tls-handshake-stall`` (TLS server): 250 TCP connections to the REST port that never send a
  ClientHello (handshakes were not counted against max_connections; descriptors ran out).

    .venv/bin/python benchmarks/hostile_serving.py [--seconds 5] [--clients 4]
        [--attacks slow-bodies,stalled-streams]
"""

from __future__ import annotations

import argparse
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
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# benchmarks/secrets.py would shadow the standard library's secrets module (numpy imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

READY = re.compile(r"serving grpc (\S+):(\d+) rest (\S+):(\d+)")
X = np.array([[1.0, 2.0]], dtype=np.float32)
GOAL_P99_RATIO = 3.0
#: Each protocol's legitimate clients must get at least this share of the requests they had
#: answered in the quiet run (a client kept waiting makes few requests, and fails none).
GOAL_SHARE = 1 / 3


# ---------------------------------------------------------------- the server


#: The benchmark server's limits: a 16 MiB request, so the byte budget is 64 MiB.
LIMITS = {"max_request_bytes": 16 << 20}
MAX_REQUEST = LIMITS["max_request_bytes"]
BUDGET_MIB = 4 * MAX_REQUEST / (1 << 20)
#: The goal for peak RSS growth: the byte budget.
GOAL_RSS_MIB = BUDGET_MIB
#: Extra arguments of the model server (e.g. --log-level INFO when looking into a row).
EXTRA_ARGS: list[str] = []


class Server:
    def __init__(self, directory: Path, tls: bool = False) -> None:
        config = {
            "version": 1,
            "service": "hostile-bench",
            "grpc": {"host": "127.0.0.1", "port": 0},
            "rest": {"host": "127.0.0.1", "port": 0},
            "drain_seconds": 5,
            "metrics": True,
            "keys": None,
            "tls": None,
            "limits": LIMITS,
            "models": [
                {
                    "name": "fast",
                    "version": "1",
                    "backend": "tests.ms_backends:SlowDouble",
                    "path": "/none",
                    "instances": 2,
                    "options": {"seconds": 0.002},
                },
                {
                    "name": "slow",
                    "version": "1",
                    "backend": "tests.ms_backends:SlowDouble",
                    "path": "/none",
                    "instances": 1,
                    "options": {"seconds": 0.5},
                },
                {
                    "name": "bytes",
                    "version": "1",
                    "backend": "tests.ms_backends:BytesLength",
                    "path": "/none",
                },
            ],
        }
        self.ca: Path | None = None
        if tls:
            from enclave_build.attestation.synthetic import tls_ca_and_server

            self.ca, cert, key = tls_ca_and_server(directory / "tls")
            config["tls"] = {"cert": str(cert), "key": str(key)}
        path = directory / ("model-server-tls.json" if tls else "model-server.json")
        path.write_text(json.dumps(config))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enclave_build.model_server",
                "--config",
                str(path),
                *EXTRA_ARGS,
            ],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
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

    @property
    def tls(self) -> bool:
        return self.ca is not None

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
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("" if keep else "Connection: close\r\n")
        + "\r\n"
    ).encode() + body


FAST_JSON = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
).encode()


class HttpClient:
    """A keep-alive HTTP/1.1 client on one socket (reconnects when the server closes)."""

    def __init__(
        self, address: tuple[str, int], timeout: float = 30.0, ca: Path | None = None
    ) -> None:
        self.address, self.timeout = address, timeout
        self.sock: socket.socket | None = None
        self.file: Any = None
        self.context: Any = None
        if ca is not None:
            import ssl

            self.context = ssl.create_default_context(cafile=str(ca))

    def exchange(self, request: bytes) -> int:
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.context is not None:
                    self.sock = self.context.wrap_socket(self.sock, server_hostname="localhost")
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
    served: dict[str, int] = field(default_factory=lambda: {"rest": 0, "grpc": 0})
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

    def channel():
        if not server.tls:
            return grpc.insecure_channel(server.grpc)
        return grpc.secure_channel(
            server.grpc,
            grpc.ssl_channel_credentials(server.ca.read_bytes()),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )

    def rest_client() -> None:
        http = HttpClient(server.rest, ca=server.ca)
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
                    result.served["rest"] += 1
                else:
                    result.failed += 1
                    result.note(f"rest {status}")
        http.close()

    def grpc_client() -> None:
        chan = channel()
        stub = chan.unary_unary(f"/{pb.SERVICE_FULL_NAME}/ModelInfer")
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
                    result.served["grpc"] += 1
                else:
                    result.failed += 1
                    result.note(what)
        chan.close()

    def health() -> None:
        probe = b"GET /v2/health/ready HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        while time.monotonic() < end:
            http = HttpClient(server.rest, timeout=5, ca=server.ca)
            try:
                ok = http.exchange(probe) == 200
            except OSError:
                ok = False
            http.close()
            with lock:
                result.health_total += 1
                result.health_ok += ok
            time.sleep(0.25)

    threads = [
        threading.Thread(target=rest_client if i % 2 == 0 else grpc_client) for i in range(clients)
    ] + [threading.Thread(target=health)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


# ---------------------------------------------------------------- attacks (own process)


@dataclass
class Attack:
    """What an attack (in its own process) is given: the server's addresses, *stop* (set when
    the load is over), *ready* (set once the attack is in place; the load waits for it), and
    *note* (a shared string: what the attacker achieved, for the row)."""

    rest: tuple[str, int]
    grpc: str
    stop: Any  # multiprocessing Events and a shared char array (untyped proxies)
    ready: Any
    note: Any

    def say(self, text: str) -> None:
        data = text.encode()[:255]
        self.note.value = data


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _loop_until(stop, fn) -> None:
    while not stop.is_set():
        try:
            fn()
        except OSError:
            time.sleep(0.01)


def _threads(n: int, fn) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def _grpc_stub(address: str):
    import grpc

    from enclave_build.model_server import protocol as pb

    channel = grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    stub: Any = channel.unary_unary(f"/{pb.SERVICE_FULL_NAME}/ModelInfer")

    def call(raw: bytes) -> None:
        try:
            stub(raw, timeout=60)
        except grpc.RpcError:
            pass

    return call


def _binary_request(model: str, header: dict, data: bytes) -> bytes:
    head = json.dumps(header).encode()
    return (
        (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\n"
            f"Content-Length: {len(head) + len(data)}\r\n\r\n"
        ).encode()
        + head
        + data
    )


def attack_bytes_shape_rest(a: Attack) -> None:
    head = (
        b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[300000000],'
        b'"parameters":{"binary_data_size":4}}]}'
    )
    body = head + b"\0\0\0\0"
    request = (
        b"POST /v2/models/bytes/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Inference-Header-Content-Length: {len(head)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    http = HttpClient(a.rest, timeout=30)
    _loop_until(a.stop, lambda: http.exchange(request))


def attack_bytes_shape_grpc(a: Attack) -> None:
    from enclave_build.model_server import protocol as pb

    req = pb.ModelInferRequest(model_name="bytes")
    req.inputs.add(name="s", datatype="BYTES", shape=[300000000])
    req.raw_input_contents.append(b"\0\0\0\0")
    raw = req.SerializeToString()
    call = _grpc_stub(a.grpc)
    _loop_until(a.stop, lambda: call(raw))


def attack_bytes_int_json(a: Attack) -> None:
    body = (
        b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],"data":[1000000000,1000000000]}]}'
    )
    http = HttpClient(a.rest, timeout=30)
    request = _rest_request("bytes", body)
    _loop_until(a.stop, lambda: http.exchange(request))


def attack_duplicate_outputs(a: Attack) -> None:
    from enclave_build.model_server import protocol as pb

    x = np.zeros((131072, 2), np.float32)  # 1 MiB
    req = pb.ModelInferRequest(model_name="fast")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    for _ in range(400):
        req.outputs.add(name="y")
    raw = req.SerializeToString()
    rest = _binary_request(
        "fast",
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}] * 400,
        },
        x.tobytes(),
    )
    call = _grpc_stub(a.grpc)
    http = HttpClient(a.rest, timeout=60)

    def once() -> None:
        call(raw)
        http.exchange(rest)

    _loop_until(a.stop, once)


def attack_json_amplification(a: Attack) -> None:
    def junk(size: int) -> bytes:
        return (
            b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[1],"data":["a"]}],'
            b'"junk":[' + b"[]," * (size // 3) + b"[]]}"
        )

    big, within = _rest_request("bytes", junk(57 << 20)), _rest_request("bytes", junk(4 << 20))

    def client(request: bytes):
        def run() -> None:
            http = HttpClient(a.rest, timeout=120)
            _loop_until(a.stop, lambda: http.exchange(request))

        return run

    _threads(1, client(big))
    _threads(2, client(within))
    a.stop.wait()


def attack_bytes_amplification(a: Attack) -> None:
    from enclave_build.model_server import protocol as pb

    n = (MAX_REQUEST - 1024) // 5
    rest = _binary_request(
        "bytes",
        {
            "inputs": [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [n],
                    "parameters": {"binary_data_size": 5 * n},
                }
            ]
        },
        b"\1\0\0\0a" * n,
    )
    count = (MAX_REQUEST - 1024) // 2
    req = pb.ModelInferRequest(model_name="bytes")
    t = req.inputs.add(name="s", datatype="BYTES", shape=[count])
    t.contents.bytes_contents.extend([b""] * count)
    raw = req.SerializeToString()
    call = _grpc_stub(a.grpc)
    http = HttpClient(a.rest, timeout=60)

    def once() -> None:
        http.exchange(rest)
        call(raw)

    _loop_until(a.stop, once)


def attack_grpc_typed_flood(a: Attack) -> None:
    from enclave_build.model_server import protocol as pb

    n = (MAX_REQUEST - (1 << 20)) // 4 // 2 * 2
    req = pb.ModelInferRequest(model_name="fast")
    t = req.inputs.add(name="x", datatype="FP32", shape=[n // 2, 2])
    t.contents.fp32_contents.extend(np.full(n, 0.5, np.float32))
    raw = req.SerializeToString()

    def client() -> None:
        call = _grpc_stub(a.grpc)
        _loop_until(a.stop, lambda: call(raw))

    _threads(4, client)
    a.stop.wait()


def attack_grpc_partial_messages(a: Attack) -> None:
    from tests.h2_client import H2Connection

    def holder() -> None:
        while not a.stop.is_set():
            try:
                conn = H2Connection(a.grpc)
                conn.open_stream(1)
                # all but the last KiB, then keep the stream open until stopped or ended
                conn.send_partial([1], MAX_REQUEST - 1024, MAX_REQUEST - 2048, 30)
                conn.close()
            except OSError:
                time.sleep(0.1)

    _threads(16, holder)
    a.ready.set()
    a.stop.wait()


def _slow_body_sockets(
    a: Attack, count: int, request: bytes, first: bytes, every: float, tail: bytes = b"x"
) -> None:
    """*count* connections sending *request* + *first*, then *tail* every *every* seconds;
    answered or closed ones are reopened."""

    def open_one() -> socket.socket | None:
        try:
            s = socket.create_connection(a.rest, timeout=5)
            s.sendall(request + first)
            s.setblocking(False)
            return s
        except OSError:
            return None

    socks = []
    for _ in range(count):
        socks.append(open_one())
        time.sleep(0.005)
    a.ready.set()
    while not a.stop.wait(every):
        for i, s in enumerate(socks):
            try:
                if s is None:
                    raise OSError
                try:
                    s.recv(1, socket.MSG_PEEK)  # an answer (a refusal) or the end: come back
                    raise OSError
                except BlockingIOError:
                    pass
                s.send(tail)
            except OSError:
                if s is not None:
                    s.close()
                socks[i] = open_one()
    for s in socks:
        if s is not None:
            s.close()


def attack_slow_bodies(a: Attack) -> None:
    _slow_body_sockets(
        a,
        16,
        b"POST /v2/models/fast/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {MAX_REQUEST}\r\n\r\n".encode(),
        b"",
        1.0,
    )


def attack_nearly_complete_bodies(a: Attack) -> None:
    request = (
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\n"
        b"Inference-Header-Content-Length: 100\r\n"
        + f"Content-Length: {MAX_REQUEST}\r\n\r\n".encode()
    )
    _slow_body_sockets(a, 4, request, bytes(MAX_REQUEST - 16), 8.0, b" ")


def attack_trickled_bodies_at_cap(a: Attack) -> None:
    post = b"POST /v2/models/fast/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    get = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    threading.Thread(target=_slow_body_sockets, args=(a, 8, get, b"x", 4.0), daemon=True).start()
    time.sleep(0.1)
    _slow_body_sockets(a, 256, post, b"x", 4.0)


def _stream_holders(a: Attack, connections: int, streams: int) -> None:
    """*connections* HTTP/2 connections, each opening *streams* ModelInfer streams that never
    send their message; a connection whose streams have all ended (refused, reset or cancelled)
    is replaced by a new one."""
    from tests.h2_client import H2Connection

    def ended(frames) -> bool:
        done = {
            f.stream_id
            for f in frames
            if type(f).__name__ == "RstStreamFrame"
            or (type(f).__name__ == "HeadersFrame" and "END_STREAM" in f.flags)
        }
        return a.stop.is_set() or len(done) >= streams

    def connection() -> None:
        while not a.stop.is_set():
            try:
                conn = H2Connection(a.grpc)
                for stream in range(1, 2 * streams, 2):
                    conn.open_stream(stream)
                frames: list = []
                while not ended(frames) and not conn.closed:
                    frames += conn.read_frames(0.5, until=ended)
                conn.close()
            except OSError:
                time.sleep(0.1)

    _threads(connections, connection)
    time.sleep(0.5)
    a.ready.set()
    a.stop.wait()


def attack_stalled_streams(a: Attack) -> None:
    _stream_holders(a, 1, 324)


def attack_message_less_streams(a: Attack) -> None:
    _stream_holders(a, 12, 32)


def attack_kept_rooms(a: Attack) -> None:
    """Two connections each sending one tiny valid ModelInfer every 0.6 s (under the second a
    connection keeps the room its last message arrived in), so both rooms that may be kept stay
    kept, and a third connection holding the last room with message-less streams."""
    import grpc

    from enclave_build.model_server import protocol as pb

    req = pb.ModelInferRequest(model_name="fast")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(X.tobytes())
    raw = req.SerializeToString()

    def keeper(n: int) -> None:
        # (a distinct channel argument: a connection of its own, not a shared subchannel)
        channel = grpc.insecure_channel(a.grpc, options=[("bench.keeper", n)])
        stub: Any = channel.unary_unary(f"/{pb.SERVICE_FULL_NAME}/ModelInfer")
        while not a.stop.wait(0.6):
            try:
                stub(raw, timeout=30)
            except grpc.RpcError:
                pass
        channel.close()

    for n in range(2):
        threading.Thread(target=keeper, args=(n,), daemon=True).start()
    time.sleep(1.0)
    _stream_holders(a, 1, 32)


def attack_churning_streams(a: Attack) -> None:
    """40 connections each opening 8 ModelInfer streams that never send a message, closing
    after a second and opening again: the waiting room sees a steady flow of new calls."""
    from tests.h2_client import H2Connection

    def churn() -> None:
        while not a.stop.is_set():
            try:
                conn = H2Connection(a.grpc)
                for stream in range(1, 16, 2):
                    conn.open_stream(stream)
                conn.read_frames(1.0)
                conn.close()
            except OSError:
                time.sleep(0.1)

    _threads(40, churn)
    time.sleep(0.5)
    a.ready.set()
    a.stop.wait()


def attack_prompt_waiters(a: Attack, connections: int = 4, streams: int = 31) -> None:
    """*connections* raw HTTP/2 connections, each in a loop: one tiny valid ModelInfer sent at
    once (its connection is then prompt), then *streams* ModelInfer streams that never send
    their message; when they have all ended, again."""
    from enclave_build.model_server import protocol as pb
    from tests.h2_client import H2Connection

    req = pb.ModelInferRequest(model_name="fast")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(X.tobytes())
    raw = req.SerializeToString()

    def ended(ids: set[int]):
        def check(frames) -> bool:
            done = {
                f.stream_id
                for f in frames
                if type(f).__name__ == "RstStreamFrame"
                or (type(f).__name__ == "HeadersFrame" and "END_STREAM" in f.flags)
            }
            return a.stop.is_set() or ids <= done

        return check

    def connection() -> None:
        while not a.stop.is_set():
            try:
                conn = H2Connection(a.grpc)
                sid = 1
                while not a.stop.is_set() and not conn.closed:
                    conn.open_stream(sid)
                    conn.send_message(sid, raw)
                    conn.read_frames(2.0, until=ended({sid}))
                    ids = set(range(sid + 2, sid + 2 + 2 * streams, 2))
                    for stream in sorted(ids):
                        conn.open_stream(stream)
                    sid += 2 + 2 * streams
                    frames: list = []
                    done = ended(ids)
                    while not done(frames) and not conn.closed:
                        frames += conn.read_frames(0.5, until=done)
                conn.close()
            except OSError:
                time.sleep(0.1)

    _threads(connections, connection)
    time.sleep(1.0)
    a.ready.set()
    a.stop.wait()


def attack_churning_streams_fast(a: Attack) -> None:
    """80 connections each opening 32 ModelInfer streams that never send a message, closing
    after 0.2 s and opening again."""
    from tests.h2_client import H2Connection

    def churn() -> None:
        while not a.stop.is_set():
            try:
                conn = H2Connection(a.grpc)
                for stream in range(1, 64, 2):
                    conn.open_stream(stream)
                conn.read_frames(0.2)
                conn.close()
            except OSError:
                time.sleep(0.05)

    _threads(80, churn)
    time.sleep(0.5)
    a.ready.set()
    a.stop.wait()


def attack_pipeline_no_read(a: Attack) -> None:
    """Two REST connections pipelining infer requests as fast as they can with a tiny receive
    buffer, never reading an answer."""
    one = _rest_request("fast", FAST_JSON)
    blob = one * ((1 << 20) // len(one))

    def flood() -> None:
        while not a.stop.is_set():
            try:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(a.rest)
                s.settimeout(0.2)
                while not a.stop.is_set():
                    try:
                        s.send(blob)
                    except TimeoutError:
                        continue
            except OSError:
                time.sleep(0.05)

    _threads(2, flood)
    a.stop.wait()


def _large_answer_request() -> bytes:
    """A REST request to ``fast`` with 15 MiB of binary input, its answer asked in binary (as
    large)."""
    x = np.zeros(((MAX_REQUEST - (1 << 20)) // 8, 2), np.float32)
    head = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    return _binary_request("fast", head, x.tobytes())


def attack_unread_rest_answers(a: Attack) -> None:
    """REST connections (4 KiB receive buffers) each sending one request whose answer is 15
    MiB and never reading it; a new one every 0.3 s, at most 24 held."""
    request = _large_answer_request()
    socks: list[socket.socket] = []
    while not a.stop.is_set() and len(socks) < 24:
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(a.rest)
            s.sendall(request)
            socks.append(s)
        except OSError:
            pass
        a.say(f"{len(socks)} connections with an unread 15 MiB answer")
        if len(socks) >= 4:
            a.ready.set()
        a.stop.wait(0.3)
    a.ready.set()
    a.stop.wait()
    for s in socks:
        s.close()


def attack_unread_grpc_answers(a: Attack, connections: int = 2, streams: int = 8) -> None:
    """*connections* raw HTTP/2 connections announcing SETTINGS_INITIAL_WINDOW_SIZE 0 (the server
    may send no DATA on their streams until they say so, and they never do), each sending
    *streams* complete ModelInfer requests of 15 MiB; the answers are never read."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    from enclave_build.model_server import protocol as pb

    x = np.zeros(((MAX_REQUEST - (1 << 20)) // 8, 2), np.float32)
    req = pb.ModelInferRequest(model_name="fast")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    message = req.SerializeToString()
    framed = b"\x00" + len(message).to_bytes(4, "big") + message
    host, port = a.grpc.rsplit(":", 1)
    headed = [0]
    lock = threading.Lock()

    def connection() -> None:
        while not a.stop.is_set():
            try:
                sock = socket.create_connection((host, int(port)), timeout=5)
                conn = h2.connection.H2Connection(
                    h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
                )
                conn.local_settings = h2.settings.Settings(
                    client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
                )
                conn.initiate_connection()
                sent: dict[int, int] = {}
                for _ in range(streams):
                    stream = conn.get_next_available_stream_id()
                    conn.send_headers(
                        stream,
                        [
                            (":method", "POST"),
                            (":scheme", "http"),
                            (":authority", "localhost"),
                            (":path", "/inference.GRPCInferenceService/ModelInfer"),
                            ("content-type", "application/grpc"),
                            ("te", "trailers"),
                        ],
                    )
                    sent[stream] = 0
                sock.sendall(conn.data_to_send())
                sock.settimeout(0.05)
                while not a.stop.is_set():
                    for stream, done in list(sent.items()):  # as far as the server's windows allow
                        while done < len(framed):
                            room = min(
                                conn.local_flow_control_window(stream), conn.max_outbound_frame_size
                            )
                            if room <= 0:
                                break
                            chunk = framed[done : done + room]
                            done += len(chunk)
                            conn.send_data(stream, chunk, end_stream=done >= len(framed))
                        if done >= len(framed):
                            del sent[stream]
                        else:
                            sent[stream] = done
                    sock.sendall(conn.data_to_send())
                    try:
                        data = sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ResponseReceived):
                            with lock:
                                headed[0] += 1
                                a.say(f"{headed[0]} answers of 15 MiB begun, never read")
                        elif isinstance(event, h2.events.StreamReset):
                            sent.pop(event.stream_id, None)
                    sock.sendall(conn.data_to_send())
                sock.close()
            except Exception:  # noqa: BLE001 - h2 protocol errors too: start again
                time.sleep(0.2)

    _threads(connections, connection)
    a.stop.wait()


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def attack_idle_connections(a: Attack, grpc_count: int = 900, wait_for: int = 0) -> None:
    """256 idle REST and *grpc_count* idle gRPC connections (the HTTP/2 preface and settings
    sent, so grpc keeps them until idle_timeout), reopened when closed. With *wait_for*, the
    load starts once that many gRPC connections are held (the server keeps them open)."""
    _raise_nofile()
    host, port = a.grpc.rsplit(":", 1)
    targets = [a.rest] * 256 + [(host, int(port))] * grpc_count
    socks: list[socket.socket | None] = [None] * len(targets)
    tried = most = 0
    started = time.monotonic()
    while not a.stop.is_set():
        held = 0
        for i, target in enumerate(targets):  # (re)open whatever the server closed
            s = socks[i]
            if s is not None:
                try:
                    alive = s.recv(65536, socket.MSG_PEEK) != b""
                except BlockingIOError:
                    alive = True
                except OSError:
                    alive = False
                if alive:
                    held += i >= 256
                    continue
                s.close()
            try:
                socks[i] = socket.create_connection(target, timeout=2)
                if i >= 256:
                    socks[i].sendall(_PREFACE)
                socks[i].setblocking(False)
                tried += i >= 256
            except OSError:
                socks[i] = None
        most = max(most, held)
        a.say(f"{held} gRPC connections held (most {most}; {tried} opened)")
        if held >= wait_for or time.monotonic() - started > 30:
            a.ready.set()
        a.stop.wait(0.5)
    for s in socks:
        if s is not None:
            s.close()


def attack_idle_over_grpc_cap(a: Attack) -> None:
    attack_idle_connections(a, grpc_count=1200, wait_for=1024)


def attack_slow_model_flood(a: Attack) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
    ).encode()
    request = _rest_request("slow", body)

    def client() -> None:
        http = HttpClient(a.rest, timeout=120)
        _loop_until(a.stop, lambda: http.exchange(request))
        http.close()

    _threads(80, client)
    a.stop.wait()


def attack_tls_handshake_stall(a: Attack) -> None:
    _raise_nofile()
    socks = []
    for _ in range(250):
        try:
            socks.append(socket.create_connection(a.rest, timeout=2))
        except OSError:
            break
    a.say(f"{len(socks)} silent TCP connections")
    a.ready.set()
    while not a.stop.wait(1.0):
        for i, s in enumerate(socks):  # reopen what the server closed
            s.setblocking(False)
            try:
                closed = s.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                s.close()
                try:
                    socks[i] = socket.create_connection(a.rest, timeout=2)
                except OSError:
                    pass
    for s in socks:
        s.close()


ATTACKS = {
    "bytes-shape-rest": attack_bytes_shape_rest,
    "bytes-shape-grpc": attack_bytes_shape_grpc,
    "bytes-int-json": attack_bytes_int_json,
    "duplicate-outputs": attack_duplicate_outputs,
    "json-amplification": attack_json_amplification,
    "bytes-amplification": attack_bytes_amplification,
    "grpc-typed-flood": attack_grpc_typed_flood,
    "grpc-partial-messages": attack_grpc_partial_messages,
    "slow-bodies": attack_slow_bodies,
    "nearly-complete-bodies": attack_nearly_complete_bodies,
    "trickled-bodies-at-cap": attack_trickled_bodies_at_cap,
    "stalled-streams": attack_stalled_streams,
    "message-less-streams": attack_message_less_streams,
    "kept-rooms": attack_kept_rooms,
    "churning-streams": attack_churning_streams,
    "prompt-waiters": attack_prompt_waiters,
    "churning-streams-fast": attack_churning_streams_fast,
    "pipeline-no-read": attack_pipeline_no_read,
    "unread-rest-answers": attack_unread_rest_answers,
    "unread-grpc-answers": attack_unread_grpc_answers,
    "idle-connections": attack_idle_connections,
    "idle-over-grpc-cap": attack_idle_over_grpc_cap,
    "slow-model-flood": attack_slow_model_flood,
    "tls-handshake-stall": attack_tls_handshake_stall,
}
#: Attacks run against the TLS server (with its own quiet baseline).
TLS_ATTACKS = {"tls-handshake-stall"}
#: Rows expected not to meet the goals, and why (printed with the row; not counted in the exit
#: code).
KNOWN_LIMITS = {
    "idle-over-grpc-cap": "known limit: grpc cannot close an idle connection to make room for "
    "a new one, so new gRPC channels are refused while the attacker holds "
    "max_grpc_connections; put a per-client connection limit in front",
    "churning-streams-fast": "known limit: 12,800 new streams a second are more than grpc's "
    "Python server accepts calls; grpc core cancels new streams (legitimate ones too) while "
    "its queue of calls not yet accepted is full; put a per-client stream rate limit in front",
    "grpc-typed-flood": "known limit: grpc's own copies of a large message (received, and an "
    "answer being sent) are outside the byte budget; bounded, not by the budget alone",
    "unread-grpc-answers": "known limit: answers not read keep their bytes in the budget and "
    "are cancelled when it needs room, but grpc's copies of large messages are outside it "
    "(bounded: the same with 6 connections as with 2)",
}


#: Attacks that say when they are in place (the others are from their first request).
SIGNALS_READY = {
    "grpc-partial-messages",
    "slow-bodies",
    "nearly-complete-bodies",
    "trickled-bodies-at-cap",
    "stalled-streams",
    "message-less-streams",
    "kept-rooms",
    "churning-streams",
    "prompt-waiters",
    "churning-streams-fast",
    "unread-rest-answers",
    "idle-connections",
    "idle-over-grpc-cap",
    "tls-handshake-stall",
}


def _attacker(name: str, attack: Attack) -> None:
    sys.path.insert(0, str(REPO))
    if name not in SIGNALS_READY:
        attack.ready.set()
    try:
        ATTACKS[name](attack)
    finally:
        attack.ready.set()


# ---------------------------------------------------------------- the run


@dataclass
class Row:
    name: str
    load: LoadResult
    rss_growth_mib: float
    note: str = ""
    baseline: float = float("nan")
    quiet: LoadResult | None = None  # the quiet run of the same server


def measure(server: Server, name: str | None, seconds: float, clients: int) -> Row:
    stop, ready = mp.Event(), mp.Event()
    note: Any = mp.Array("c", 256)
    proc = None
    before = server.status_kib("VmRSS")
    server.reset_peak()
    if name is not None:
        attack = Attack(server.rest, server.grpc, stop, ready, note)
        proc = mp.Process(target=_attacker, args=(name, attack), daemon=True)
        proc.start()
        ready.wait(60)
        time.sleep(1.0)
    try:
        load = run_load(server, seconds, clients)
    finally:
        peak = server.status_kib("VmHWM")
        stop.set()
        if proc is not None:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
    time.sleep(2.0)  # let the server close what the attack left before the next row
    label = name or ("(no attack, TLS)" if server.tls else "(no attack)")
    return Row(label, load, max(0, peak - before) / 1024, note.value.decode())


def shortfalls(row: Row) -> list[str]:
    """The goals *row* missed (none: met)."""
    load = row.load
    ratio = load.p99() / row.baseline if row.baseline else float("nan")
    missed = []
    if load.failed:
        missed.append(f"{load.failed} legitimate requests failed")
    for protocol, served in load.served.items():
        floor = GOAL_SHARE * (row.quiet.served[protocol] if row.quiet else 0)
        if served < floor:
            missed.append(f"{protocol} served {served} < {floor:.0f}")
    if load.health_ok < load.health_total:
        missed.append(f"{load.health_total - load.health_ok} health probes failed")
    if not ratio <= GOAL_P99_RATIO:
        missed.append(f"p99 {ratio:.2f}x > {GOAL_P99_RATIO:g}x")
    if row.rss_growth_mib > GOAL_RSS_MIB:
        missed.append(f"peak RSS +{row.rss_growth_mib:.0f} > {GOAL_RSS_MIB:g} MiB")
    return missed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="legitimate load per row")
    p.add_argument("--clients", type=int, default=4, help="legitimate client threads")
    p.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help=f"comma-separated; default all: {', '.join(ATTACKS)}",
    )
    args = p.parse_args()
    names = [n for n in args.attacks.split(",") if n]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        p.error(f"no such attack {unknown[0]!r}; attacks: {', '.join(ATTACKS)}")
    _raise_nofile()
    rows = []
    done = 0
    with tempfile.TemporaryDirectory(prefix="hostile-serving-") as tmp:
        for tls in (False, True):
            batch = [n for n in names if (n in TLS_ATTACKS) == tls]
            if not batch:
                continue
            server = Server(Path(tmp), tls=tls)
            try:
                quiet = measure(server, None, args.seconds, args.clients)
                quiet.baseline = quiet.load.p99()
                quiet.quiet = quiet.load
                rows.append(quiet)
                for name in batch:
                    done += 1
                    print(
                        f"hostile_serving: attack {done}/{len(names)}: {name}",
                        file=sys.stderr,
                        flush=True,
                    )
                    row = measure(server, name, args.seconds, args.clients)
                    row.baseline = quiet.baseline
                    row.quiet = quiet.load
                    rows.append(row)
            finally:
                server.stop()
    print(
        f"hostile_serving: {args.clients} legitimate clients (REST + gRPC) + a health probe "
        f"every 0.25 s, {args.seconds:g} s per row; byte budget {BUDGET_MIB:g} MiB; "
        f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{'attack':<24} {'served':>13} {'REST':>6} {'gRPC':>6} {'p99 ms':>8} {'vs quiet':>8} "
        f"{'health':>9} {'peak RSS +MiB':>13}  goal"
    )
    failing = []
    for row in rows:
        load = row.load
        ratio = load.p99() / row.baseline if row.baseline else float("nan")
        missed = shortfalls(row)
        if missed and row.name not in KNOWN_LIMITS:
            failing.append(row.name)
        extra = [f"{k}: {v}" for k, v in load.errors.items()] + ([row.note] if row.note else [])
        if row.name in KNOWN_LIMITS:
            extra.append(KNOWN_LIMITS[row.name])
        print(
            f"{row.name:<24} {len(load.latencies):>6}/{load.total:<6} "
            f"{load.served['rest']:>6} {load.served['grpc']:>6} {load.p99():>8.2f} "
            f"{ratio:>7.2f}x {load.health_ok:>4}/{load.health_total:<4} "
            f"{row.rss_growth_mib:>13.1f}  "
            + (f"NOT MET ({'; '.join(missed)})" if missed else "met")
            + (f"  [{'; '.join(extra)}]" if extra else "")
        )
    print(
        f"goals: every legitimate request and health probe answered, REST and gRPC clients "
        f"each served at least {GOAL_SHARE:.0%} of their requests in the quiet run, p99 <= "
        f"{GOAL_P99_RATIO:g}x the quiet run, peak RSS growth <= {GOAL_RSS_MIB:g} MiB (the "
        "byte budget), per attack: "
        + (f"NOT met by {', '.join(failing)}" if failing else "met")
        + (" (known limits aside)" if any(r.name in KNOWN_LIMITS for r in rows) else "")
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
