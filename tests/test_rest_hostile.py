"""The REST server against peers that try to exhaust it, on real sockets: slow bodies (byte
budget), silent and idle connections (connection cap, health probes), shapes that would size
the server's allocations, file-descriptor exhaustion, decoding that would block the event loop,
a SIGTERM drain with a queue, and JSON that must stay valid with NaN outputs."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from enclave_build.model_server.config import ModelConfig
from enclave_build.model_server.core import LoadedModel

from .ms_backends import BytesLength
from .rest_env import INFER as _INFER
from .rest_env import RestInThread
from .rest_env import post_request as _post
from .rest_env import read_all as _read_all
from .rest_env import wait_until as _wait_until
from tests.ms_backends import NO_SOURCE

REPO = Path(__file__).resolve().parent.parent
HEALTH = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def _strict_json(data: bytes):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(data, parse_constant=refuse)


# ---------------------------------------------------------------- byte budget, slow bodies


def test_slow_bodies_hold_only_what_they_sent_and_stall_out():
    """Four peers announcing the largest body and sending one byte used to reserve the whole
    budget (every other request got 503); now they hold 4 bytes, and a body that stops arriving
    is answered 408 after body_stall_timeout, long before body_timeout."""
    srv = RestInThread(max_request_bytes=4096, max_buffered_bytes=8192, header_timeout=30,
                       idle_timeout=30, body_timeout=60, body_stall_timeout=1.0)
    slow = []
    try:
        for _ in range(4):
            s = srv.connect()
            s.settimeout(20)
            s.sendall(_post(b"{", "Content-Length: 4096\r\n"))
            slow.append(s)
        _wait_until(lambda: srv.rest.budget.used >= 4, "each slow body's byte reserved")
        answer = srv.exchange(_post(_INFER, f"Content-Length: {len(_INFER)}\r\n"
                                            "Connection: close\r\n"))
        assert _status(answer) == 200, answer
        t0 = time.monotonic()
        for s in slow:
            answer = _read_all(s)
            assert _status(answer) == 408 and b"limits.body_stall_timeout" in answer, answer
        assert time.monotonic() - t0 < 15          # the stall deadline, not body_timeout (60 s)
        _wait_until(lambda: srv.rest.budget.used == 0, "the stalled bodies' bytes released")
    finally:
        for s in slow:
            s.close()
        srv.close()


def test_a_dribbling_body_keeps_its_connection_but_not_the_budget():
    """A body that keeps arriving slowly is not cut by the stall rule, and what it holds is only
    what it sent: a full-size request still fits beside it."""
    srv = RestInThread(max_request_bytes=4096, max_buffered_bytes=4096, header_timeout=30,
                       idle_timeout=30, body_timeout=60, body_stall_timeout=2.0)
    stop = threading.Event()
    body = _INFER + b" " * (100 - len(_INFER))
    try:
        with srv.connect() as s:
            s.sendall(_post(body[:1], "Content-Length: 100\r\n"))

            def dribble():
                for i in range(1, 100):
                    if stop.wait(0.05):
                        return
                    s.sendall(body[i:i + 1])
            t = threading.Thread(target=dribble)
            t.start()
            _wait_until(lambda: srv.rest.budget.used >= 2, "the dribbled body is being held")
            full = _INFER + b" " * (4000 - len(_INFER))
            answer = srv.exchange(_post(full, "Content-Length: 4000\r\nConnection: close\r\n"))
            assert _status(answer) == 200, answer
            t.join(30)
            s.settimeout(10)
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        stop.set()
        srv.close()


# ---------------------------------------------------------------- connections


def test_silent_connection_is_closed_at_the_first_byte_deadline():
    srv = RestInThread(first_byte_timeout=0.3, idle_timeout=30, header_timeout=30)
    try:
        with srv.connect() as s:
            t0 = time.monotonic()
            assert _read_all(s) == b""
            assert time.monotonic() - t0 < 4
        # a keep-alive connection between requests waits idle_timeout, not the first-byte one
        with srv.connect() as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            s.settimeout(1.0)
            with pytest.raises(socket.timeout):
                s.recv(1)                        # still open after 1 s > first_byte_timeout
    finally:
        srv.close()


def test_health_is_answered_when_idle_connections_fill_the_cap():
    """max_connections idle sockets used to lock every client out (503), so a liveness probe
    failed and Kubernetes restarted the pod."""
    srv = RestInThread(max_connections=8, first_byte_timeout=30, idle_timeout=30,
                       header_timeout=30)
    idle = []
    try:
        for _ in range(8):
            idle.append(srv.connect())
        _wait_until(lambda: srv.rest.open_connections == 8, "the server holds all eight")
        for _ in range(3):
            assert _status(srv.exchange(HEALTH)) == 200
            answer = srv.exchange(_post(_INFER, f"Content-Length: {len(_INFER)}\r\n"
                                                "Connection: close\r\n"))
            assert _status(answer) == 200, answer
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""              # the longest idle one made room
        assert srv.rest.open_connections <= 8
    finally:
        for s in idle:
            s.close()
        srv.close()


def test_slow_header_blocks_cannot_hold_every_connection():
    """Connections dribbling a header block (slowloris) are not idle, but a new connection at
    the cap still gets in: the oldest of them is refused to make room."""
    srv = RestInThread(max_connections=4, first_byte_timeout=30, idle_timeout=30,
                       header_timeout=30)
    slow = []
    try:
        for i in range(12):          # the cap, and the health-check headroom too
            s = srv.connect()
            s.sendall(b"GET /v2 HTTP/1.1\r\nX-Slow: ")
            slow.append(s)
            held = min(i + 1, 4)
            _wait_until(lambda held=held: srv.rest.open_connections == held,
                        "the server holds the slow connection")
        assert _status(srv.exchange(HEALTH)) == 200
        answer = srv.exchange(_post(_INFER, f"Content-Length: {len(_INFER)}\r\n"
                                            "Connection: close\r\n"))
        assert _status(answer) == 200, answer
        slow[0].settimeout(5)
        answer = _read_all(slow[0])
        assert _status(answer) == 503 and b"limits.max_connections 4" in answer, answer
    finally:
        for s in slow:
            s.close()
        srv.close()


def test_health_is_answered_when_every_connection_is_busy():
    """No idle connection to close: a few more connections are admitted for health checks only;
    anything else on them is refused with a 503 that names the limit."""
    srv = RestInThread(max_connections=2, first_byte_timeout=30, idle_timeout=30,
                       header_timeout=30, body_timeout=60, body_stall_timeout=60)
    busy = []
    try:
        for _ in range(2):
            s = srv.connect()
            s.sendall(_post(b"{", "Content-Length: 100\r\n"))
            busy.append(s)
        _wait_until(lambda: srv.rest.budget.used >= 2, "both connections receiving a body")
        assert _status(srv.exchange(HEALTH)) == 200
        ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        assert _status(srv.exchange(ready)) == 200
        answer = srv.exchange(_post(_INFER, f"Content-Length: {len(_INFER)}\r\n"))
        assert _status(answer) == 503 and b"limits.max_connections 2" in answer, answer
        busy[0].sendall(b" " * 99)
        busy[0].settimeout(10)
        assert busy[0].recv(100).startswith(b"HTTP/1.1 400")      # ("{" + spaces: not JSON)
    finally:
        for s in busy:
            s.close()
        srv.close()


def test_expect_continue_and_oversize_bodies():
    """Kept from the stream-based server: 100 Continue before a body that fits; an oversize body
    announced with Expect is refused at once; one up to 4x the limit is read, dropped and
    answered 413 on a connection that stays usable."""
    srv = RestInThread(max_request_bytes=1000, idle_timeout=30, header_timeout=30,
                       body_timeout=30, body_stall_timeout=30)
    try:
        with srv.connect() as s:
            s.sendall(_post(b"", f"Content-Length: {len(_INFER)}\r\nExpect: 100-continue\r\n"))
            assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(_INFER)
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
            s.sendall(_post(b"", "Content-Length: 5000\r\nExpect: 100-continue\r\n"))
            answer = _read_all(s)
            assert _status(answer) == 413 and b"limits.max_request_bytes" in answer
        with srv.connect() as s:
            s.sendall(_post(b"x" * 3000, "Content-Length: 3000\r\n"))
            answer = s.recv(1000)
            assert _status(answer) == 413 and b"Connection: close" not in answer, answer
            s.sendall(_post(_INFER, f"Content-Length: {len(_INFER)}\r\n"))
            assert s.recv(1000).startswith(b"HTTP/1.1 200")
    finally:
        srv.close()


# ---------------------------------------------------------------- JSON outputs


def test_json_outputs_stay_valid_json_with_nan_and_infinity(rest_echo):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "data": ["NaN", "Infinity"]}],
                       "outputs": [{"name": "y"}]}).encode()
    answer = rest_echo.exchange(_post(body, f"Content-Length: {len(body)}\r\n"
                                            "Connection: close\r\n"))
    assert _status(answer) == 200, answer
    (y,) = _strict_json(_body(answer))["outputs"]
    assert y["data"] == ["NaN", "Infinity"]
    got = np.array(y["data"], dtype=np.float32)          # as tritonclient's as_numpy reads it
    assert np.isnan(got[0]) and got[1] == np.inf
    # bare NaN / -Infinity tokens (what Python's json writes by default) are still accepted
    body = (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],'
            b'"data":[NaN,-Infinity]}],"outputs":[{"name":"y"}]}')
    answer = rest_echo.exchange(_post(body, f"Content-Length: {len(body)}\r\n"
                                            "Connection: close\r\n"))
    assert _strict_json(_body(answer))["outputs"][0]["data"] == ["NaN", "-Infinity"]
    body = b'{"id": 7, "inputs": []}'
    answer = rest_echo.exchange(_post(body, f"Content-Length: {len(body)}\r\n"))
    assert _status(answer) == 400 and b"'id' must be a string" in answer


@pytest.fixture
def rest_echo():
    srv = RestInThread()
    yield srv
    srv.close()


# ---------------------------------------------------------------- the event loop stays free


def _bytes_model() -> LoadedModel:
    mc = ModelConfig("len", "1", "tests.ms_backends:BytesLength", "/none")
    return LoadedModel(mc, [BytesLength(mc, NO_SOURCE)])


def _bytes_request(count: int, elements: list[bytes] | None = None) -> bytes:
    """A binary BYTES request: *elements*, or *count* empty strings."""
    if elements is None:
        raw = b"\0\0\0\0" * count
    else:
        raw = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
        count = len(elements)
    head = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [count],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return (b"POST /v2/models/len/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Inference-Header-Content-Length: {len(head)}\r\n"
              f"Content-Length: {len(head) + len(raw)}\r\n\r\n".encode() + head + raw)


@pytest.mark.integration
def test_decoding_many_bytes_elements_does_not_block_health():
    """4 M tiny BYTES elements (16 MiB) take seconds to decode: off the event loop, health is
    answered meanwhile (it used to wait for the whole decode)."""
    count = 4_000_000
    srv = RestInThread({"len": _bytes_model()}, max_request_bytes=20 << 20, header_timeout=30,
                       idle_timeout=60, body_timeout=60, body_stall_timeout=30)
    request = _bytes_request(count)
    try:
        with ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            big = pool.submit(lambda: srv.exchange(request))
            latencies = []
            while not big.done():
                t = time.monotonic()
                answer = srv.exchange(HEALTH)
                latencies.append(time.monotonic() - t)
                assert _status(answer) == 200
                time.sleep(0.02)
            took = time.monotonic() - t0
            answer = big.result()
        assert _status(answer) == 200, answer[:300]
        head_len = int(re.search(rb"Inference-Header-Content-Length: (\d+)", answer).group(1))
        lengths = np.frombuffer(_body(answer)[head_len:], np.int64)
        assert lengths.shape == (count,) and not lengths.any()
        assert len(latencies) >= 5, (took, latencies)        # it took a while ...
        assert max(latencies) < 0.5, (took, max(latencies))  # ... and health kept answering
    finally:
        srv.close()


# ---------------------------------------------------------------- server processes


class ServerProcess:
    """``python -m enclave_build.model_server`` on 127.0.0.1 (REST only) with the test backends."""

    def __init__(self, tmp: Path, models: list[dict], limits: dict | None = None,
                 drain_seconds: float = 10, nofile: int | None = None) -> None:
        cfg = {"version": 1, "service": "t", "grpc": None,
               "rest": {"host": "127.0.0.1", "port": 0},
               "limits": {"max_request_bytes": 1 << 20, **(limits or {})},
               "drain_seconds": drain_seconds, "models": models}
        path = tmp / f"server-{id(self)}.json"
        path.write_text(json.dumps(cfg))

        def lower_nofile():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enclave_build.model_server", "--config", str(path)],
            stderr=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=lower_nofile,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        self.lines: list[str] = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"serving rest (\S+):(\d+)", line)
                if m:
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(60) and self.proc.poll() is None, self.stderr

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def exchange(self, data: bytes, timeout: float = 10) -> bytes:
        with self.connect(timeout) as s:
            s.sendall(data)
            return _read_all(s)

    def status(self, key: str) -> int:
        """A /proc/PID/status value in KiB (VmHWM: peak resident memory)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


BYTES_MODEL = {"name": "len", "backend": "tests.ms_backends:BytesLength", "path": "/none"}


@pytest.mark.integration
def test_tiny_bodies_with_huge_shapes_allocate_nothing(tmp_path):
    """An 85-byte body whose BYTES shape says 300 million elements took the server from 70 MB to
    2.4 GB (peak resident); integer BYTES elements became bytes(N) (a 96-byte body, 2 GB of
    zeros). Now each is refused from the bytes actually sent, and memory stays flat."""
    s = ServerProcess(tmp_path, [BYTES_MODEL])
    try:
        assert _status(s.exchange(HEALTH)) == 200
        before = s.status("VmHWM")
        cases = [   # (more than max_request_bytes could ever carry: 413; else 400)
            (b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[300000000],'
             b'"parameters":{"binary_data_size":4}}]}', b"\0\0\0\0", 413),
            (b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[300000000],'
             b'"data":["a"]}]}', b"", 413),
            (b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[200000],'
             b'"parameters":{"binary_data_size":4}}]}', b"\0\0\0\0", 400),
            (b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[200000],'
             b'"data":["a"]}]}', b"", 400),
            (b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],'
             b'"data":[1000000000,1000000000]}]}', b"", 400),
            (b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[4000000000],'
             b'"parameters":{"binary_data_size":0}}]}', b"", 413),
        ]
        for head, raw, status in cases:
            extra = f"Inference-Header-Content-Length: {len(head)}\r\n" if raw or \
                b"binary_data_size" in head else ""
            body = head + raw
            answer = s.exchange(b"POST /v2/models/len/infer HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n" + extra.encode() +
                                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            grown = s.status("VmHWM") - before
            assert grown < 64 * 1024, f"{head}: peak resident memory grew by {grown} KiB"
            assert _status(answer) == status, (head, answer)
            message = _strict_json(_body(answer))["error"]
            assert message and ("bytes" in message or "elements" in message
                                or "strings" in message), message
        # and the same model still serves a real request
        answer = s.exchange(_bytes_request(0, [b"a", b"", b"bc"]))
        assert _status(answer) == 200, answer
        head_len = int(re.search(rb"Inference-Header-Content-Length: (\d+)", answer).group(1))
        assert np.frombuffer(_body(answer)[head_len:], np.int64).tolist() == [1, 0, 2]
    finally:
        assert s.stop() == 0, s.stderr


@pytest.mark.integration
def test_descriptor_exhaustion_neither_spins_nor_locks_out_health(tmp_path):
    """With fewer file descriptors than max_connections, the cap is lowered (the server says
    so) and new connections evict idle ones instead of the accept loop running out of
    descriptors: health is answered while hundreds of idle sockets are open."""
    s = ServerProcess(tmp_path, [BYTES_MODEL], nofile=160,
                      limits={"max_connections": 1000, "first_byte_timeout": 60,
                              "idle_timeout": 60, "header_timeout": 60})
    idle = []
    try:
        for _ in range(300):
            idle.append(s.connect())
        time.sleep(1.0)          # (not a synchronisation: lets the server accept the backlog)
        cpu0 = s.cpu_seconds()
        for _ in range(5):
            assert _status(s.exchange(HEALTH, timeout=5)) == 200
        time.sleep(1.0)
        assert s.cpu_seconds() - cpu0 < 1.5, "the server spins"
        assert s.proc.poll() is None
        assert "serving at most" in s.stderr and "RLIMIT_NOFILE 160" in s.stderr, s.stderr
    finally:
        for sock in idle:
            sock.close()
        assert s.stop() == 0, s.stderr


@pytest.mark.integration
def test_sigterm_drain_is_bounded_and_every_queued_request_is_answered(tmp_path):
    """One interpreter, 1 s per request, 10 requests queued, drain_seconds 2: the requests still
    queued at the deadline are answered 503 (they used to be dropped without an answer, or to
    keep the process alive long past the kubelet's grace period), the one running finishes,
    and the process exits 0 soon after the deadline."""
    s = ServerProcess(tmp_path, [{"name": "slow", "backend": "tests.ms_backends:SlowDouble",
                                  "path": "/none", "options": {"seconds": 1.0}}],
                      drain_seconds=2)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "data": [1, 2]}]}).encode()
    request = (b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    try:
        with ThreadPoolExecutor(10) as pool:
            answers = [pool.submit(s.exchange, request, 60) for _ in range(10)]

            def queued() -> int:
                metrics = _body(s.exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                           b"Connection: close\r\n\r\n"))
                return int(re.search(rb"^model_server_queue_depth (\d+)", metrics, re.M)
                           .group(1))
            _wait_until(lambda: queued() >= 8, "requests queued behind the interpreter")
            t0 = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            rc = s.proc.wait(30)
            elapsed = time.monotonic() - t0
            results = [a.result() for a in answers]
    finally:
        s.stop()
    statuses = sorted(_status(a) for a in results)
    assert rc == 0, s.stderr
    assert 0 not in statuses, results                     # every client got an answer
    assert set(statuses) == {200, 503}, statuses
    for a in results:
        if _status(a) == 503:     # cut by the engine's queue or by REST itself, both name it
            assert re.search(rb"drain_seconds \(?2 s", a), a
    assert statuses.count(200) <= 5                       # 1 s each, 2 s of drain (+ running)
    assert elapsed < 2 + 1 + 3, elapsed                   # the deadline, the one running, slack
    cut = statuses.count(503)
    by_queue = re.search(r"; (\d+) still queued at the drain deadline", s.stderr)
    by_rest = re.search(r"; (\d+) REST requests cut off at the drain deadline", s.stderr)
    assert (int(by_queue.group(1)) if by_queue else 0) + \
        (int(by_rest.group(1)) if by_rest else 0) == cut, s.stderr
    assert re.search(r"0 unanswered", s.stderr), s.stderr
