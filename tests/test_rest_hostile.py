"""The REST server against peers that try to exhaust it, on real sockets: slow bodies (byte
budget), silent and idle connections (connection cap, health probes), shapes that would size
the server's allocations, file-descriptor exhaustion, decoding that would block the event loop,
a SIGTERM drain with a queue, and JSON that must stay valid with NaN outputs."""

from __future__ import annotations

import asyncio
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
from tests.ms_backends import NO_SOURCE

from .ms_backends import BytesLength
from .rest_env import INFER as _INFER
from .rest_env import RestInThread
from .rest_env import post_request as _post
from .rest_env import read_all as _read_all
from .rest_env import wait_until as _wait_until

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
    srv = RestInThread(
        max_request_bytes=4096,
        max_buffered_bytes=8192,
        header_timeout=30,
        idle_timeout=30,
        body_timeout=60,
        body_stall_timeout=1.0,
    )
    slow = []
    try:
        for _ in range(4):
            s = srv.connect()
            s.settimeout(20)
            s.sendall(_post(b"{", "Content-Length: 4096\r\n"))
            slow.append(s)
        _wait_until(lambda: srv.rest.budget.used >= 4, "each slow body's byte reserved")
        answer = srv.exchange(
            _post(_INFER, f"Content-Length: {len(_INFER)}\r\nConnection: close\r\n")
        )
        assert _status(answer) == 200, answer
        t0 = time.monotonic()
        for s in slow:
            answer = _read_all(s)
            assert _status(answer) == 408 and b"limits.body_stall_timeout" in answer, answer
        assert time.monotonic() - t0 < 15  # the stall deadline, not body_timeout (60 s)
        _wait_until(lambda: srv.rest.budget.used == 0, "the stalled bodies' bytes released")
    finally:
        for s in slow:
            s.close()
        srv.close()


def test_a_dribbling_body_keeps_its_connection_but_not_the_budget():
    """A body that keeps arriving (at least min_body_rate) is not cut by the stall rule, and
    what it holds is only what it sent: a full-size request still fits beside it (the budget
    holds one full-size JSON request: its body and what parsing it takes)."""
    srv = RestInThread(
        max_request_bytes=4096,
        max_buffered_bytes=8 * 4096,
        header_timeout=30,
        idle_timeout=30,
        body_timeout=60,
        body_stall_timeout=2.0,
        min_body_rate=8,
    )
    stop = threading.Event()
    body = _INFER + b" " * (100 - len(_INFER))
    try:
        with srv.connect() as s:
            s.sendall(_post(body[:1], "Content-Length: 100\r\n"))

            def dribble():
                for i in range(1, 100):
                    if stop.wait(0.05):
                        return
                    s.sendall(body[i : i + 1])

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
                s.recv(1)  # still open after 1 s > first_byte_timeout
    finally:
        srv.close()


def test_health_is_answered_when_idle_connections_fill_the_cap():
    """max_connections idle sockets used to lock every client out (503), so a liveness probe
    failed and Kubernetes restarted the pod."""
    srv = RestInThread(max_connections=8, first_byte_timeout=30, idle_timeout=30, header_timeout=30)
    idle = []
    try:
        for _ in range(8):
            idle.append(srv.connect())
        _wait_until(lambda: srv.rest.open_connections == 8, "the server holds all eight")
        for _ in range(3):
            assert _status(srv.exchange(HEALTH)) == 200
            answer = srv.exchange(
                _post(_INFER, f"Content-Length: {len(_INFER)}\r\nConnection: close\r\n")
            )
            assert _status(answer) == 200, answer
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""  # the longest idle one made room
        assert srv.rest.open_connections <= 8
    finally:
        for s in idle:
            s.close()
        srv.close()


def _held_by_connections(srv: RestInThread) -> int:
    """Bytes the server holds for its connections: pipelined requests not yet served and
    answers not yet sent (read on the server's loop)."""

    async def held() -> int:
        return sum(
            len(c.pending) + c.transport.get_write_buffer_size() for c in srv.rest.http.connections
        )

    return asyncio.run_coroutine_threadsafe(held(), srv.loop).result(5)


def test_pipelining_without_reading_the_answers_holds_a_bounded_amount():
    """A client pipelining infer requests with a tiny receive buffer and never reading its
    answers used to have the server buffer everything it sent (tens of MiB a second per
    connection); now the server stops reading such a connection once its pipelined bytes pass a
    small cap, stops serving it while its answers cannot be written, closes it when they stay
    unread for idle_timeout, and serves other clients meanwhile."""
    srv = RestInThread(idle_timeout=3, header_timeout=30, body_timeout=30)
    one = _post(_INFER, f"Content-Length: {len(_INFER)}\r\n")
    blob = one * ((1 << 20) // len(one))
    stop = threading.Event()
    attacker = socket.socket()
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    attacker.connect(("127.0.0.1", srv.port))
    attacker.settimeout(0.2)
    closed = threading.Event()

    def flood():
        while not stop.is_set():
            try:
                attacker.send(blob)
            except TimeoutError:
                continue
            except OSError:
                closed.set()
                return

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        most = 0
        for _ in range(20):
            time.sleep(0.1)
            most = max(most, _held_by_connections(srv))
            assert most <= 1 << 20, f"the server holds {most} bytes for one connection"
        # another client is served meanwhile
        assert _status(srv.exchange(HEALTH)) == 200
        answer = srv.exchange(
            _post(_INFER, f"Content-Length: {len(_INFER)}\r\nConnection: close\r\n")
        )
        assert _status(answer) == 200, answer
        # answers left unread for idle_timeout: the connection is dropped
        _wait_until(lambda: srv.rest.open_connections == 0, "the unread connection closed")
        assert _held_by_connections(srv) == 0
    finally:
        stop.set()
        flooder.join(5)
        attacker.close()
        srv.close()


def test_slow_header_blocks_cannot_hold_every_connection():
    """Connections dribbling a header block (slowloris) are not idle, but a new connection at
    the cap still gets in: the oldest of them is refused to make room."""
    srv = RestInThread(max_connections=4, first_byte_timeout=30, idle_timeout=30, header_timeout=30)
    slow = []
    try:
        for i in range(12):  # the cap, and the health-check headroom too
            s = srv.connect()
            s.sendall(b"GET /v2 HTTP/1.1\r\nX-Slow: ")
            slow.append(s)
            held = min(i + 1, 4)
            _wait_until(
                lambda held=held: srv.rest.open_connections == held,
                "the server holds the slow connection",
            )
        assert _status(srv.exchange(HEALTH)) == 200
        answer = srv.exchange(
            _post(_INFER, f"Content-Length: {len(_INFER)}\r\nConnection: close\r\n")
        )
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
    srv = RestInThread(
        max_connections=2,
        first_byte_timeout=30,
        idle_timeout=30,
        header_timeout=30,
        body_timeout=60,
        body_stall_timeout=60,
    )
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
        assert busy[0].recv(100).startswith(b"HTTP/1.1 400")  # ("{" + spaces: not JSON)
    finally:
        for s in busy:
            s.close()
        srv.close()


def test_expect_continue_and_oversize_bodies():
    """Kept from the stream-based server: 100 Continue before a body that fits; an oversize body
    announced with Expect is refused at once; one up to 4x the limit is read, dropped and
    answered 413 on a connection that stays usable."""
    srv = RestInThread(
        max_request_bytes=1000,
        idle_timeout=30,
        header_timeout=30,
        body_timeout=30,
        body_stall_timeout=30,
    )
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
    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": ["NaN", "Infinity"]}
            ],
            "outputs": [{"name": "y"}],
        }
    ).encode()
    answer = rest_echo.exchange(
        _post(body, f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    )
    assert _status(answer) == 200, answer
    (y,) = _strict_json(_body(answer))["outputs"]
    assert y["data"] == ["NaN", "Infinity"]
    got = np.array(y["data"], dtype=np.float32)  # as tritonclient's as_numpy reads it
    assert np.isnan(got[0]) and got[1] == np.inf
    # bare NaN / -Infinity tokens (what Python's json writes by default) are still accepted
    body = (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],'
        b'"data":[NaN,-Infinity]}],"outputs":[{"name":"y"}]}'
    )
    answer = rest_echo.exchange(
        _post(body, f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    )
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
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [count],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return (
        b"POST /v2/models/len/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Inference-Header-Content-Length: {len(head)}\r\n"
        f"Content-Length: {len(head) + len(raw)}\r\n\r\n".encode()
        + head
        + raw
    )


@pytest.mark.integration
def test_decoding_many_bytes_elements_does_not_block_health():
    """4 M tiny BYTES elements (16 MiB) take seconds to decode: off the event loop, health is
    answered meanwhile (it used to wait for the whole decode)."""
    count = 4_000_000
    # (a budget that holds what decoding 4 M elements takes: an object each)
    srv = RestInThread(
        {"len": _bytes_model()},
        max_request_bytes=20 << 20,
        header_timeout=30,
        idle_timeout=60,
        body_timeout=60,
        body_stall_timeout=30,
        max_buffered_bytes=512 << 20,
    )
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
        assert len(latencies) >= 5, (took, latencies)  # it took a while ...
        assert max(latencies) < 0.5, (took, max(latencies))  # ... and health kept answering
    finally:
        srv.close()


# ---------------------------------------------------------------- server processes


class ServerProcess:
    """``python -m enclave_build.model_server`` on 127.0.0.1 (REST only) with the test backends."""

    def __init__(
        self,
        tmp: Path,
        models: list[dict],
        limits: dict | None = None,
        drain_seconds: float = 10,
        nofile: int | None = None,
        tls: dict | None = None,
    ) -> None:
        cfg = {
            "version": 1,
            "service": "t",
            "grpc": None,
            "rest": {"host": "127.0.0.1", "port": 0},
            "limits": {"max_request_bytes": 1 << 20, **(limits or {})},
            "drain_seconds": drain_seconds,
            "models": models,
            "tls": tls,
        }
        path = tmp / f"server-{id(self)}.json"
        path.write_text(json.dumps(cfg))

        def lower_nofile():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enclave_build.model_server", "--config", str(path)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            preexec_fn=lower_nofile,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
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

    def reset_peak(self) -> int:
        """Reset VmHWM to the current resident memory; returns that (KiB)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return self.status("VmRSS")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

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
        cases = [  # (more than max_request_bytes could ever carry: 413; else 400)
            (
                b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[300000000],'
                b'"parameters":{"binary_data_size":4}}]}',
                b"\0\0\0\0",
                413,
            ),
            (
                b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[300000000],"data":["a"]}]}',
                b"",
                413,
            ),
            (
                b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[200000],'
                b'"parameters":{"binary_data_size":4}}]}',
                b"\0\0\0\0",
                400,
            ),
            (
                b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[200000],"data":["a"]}]}',
                b"",
                400,
            ),
            (
                b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],'
                b'"data":[1000000000,1000000000]}]}',
                b"",
                400,
            ),
            (
                b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[4000000000],'
                b'"parameters":{"binary_data_size":0}}]}',
                b"",
                413,
            ),
        ]
        for head, raw, status in cases:
            extra = (
                f"Inference-Header-Content-Length: {len(head)}\r\n"
                if raw or b"binary_data_size" in head
                else ""
            )
            body = head + raw
            answer = s.exchange(
                b"POST /v2/models/len/infer HTTP/1.1\r\nHost: x\r\n"
                b"Connection: close\r\n"
                + extra.encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            grown = s.status("VmHWM") - before
            assert grown < 64 * 1024, f"{head}: peak resident memory grew by {grown} KiB"
            assert _status(answer) == status, (head, answer)
            message = _strict_json(_body(answer))["error"]
            assert message and (
                "bytes" in message or "elements" in message or "strings" in message
            ), message
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
    s = ServerProcess(
        tmp_path,
        [BYTES_MODEL],
        nofile=160,
        limits={
            "max_connections": 1000,
            "first_byte_timeout": 60,
            "idle_timeout": 60,
            "header_timeout": 60,
        },
    )
    idle = []
    try:
        for _ in range(300):
            idle.append(s.connect())
        time.sleep(1.0)  # (not a synchronisation: lets the server accept the backlog)
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
    s = ServerProcess(
        tmp_path,
        [
            {
                "name": "slow",
                "backend": "tests.ms_backends:SlowDouble",
                "path": "/none",
                "options": {"seconds": 1.0},
            }
        ],
        drain_seconds=2,
    )
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    ).encode()
    request = (
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        with ThreadPoolExecutor(10) as pool:
            answers = [pool.submit(s.exchange, request, 60) for _ in range(10)]

            def queued() -> int:
                metrics = _body(
                    s.exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                )
                return int(re.search(rb"^model_server_queue_depth (\d+)", metrics, re.M).group(1))

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
    assert 0 not in statuses, results  # every client got an answer
    assert set(statuses) == {200, 503}, statuses
    for a in results:
        if _status(a) == 503:  # cut by the engine's queue or by REST itself, both name it
            assert re.search(rb"drain_seconds \(?2 s", a), a
    assert statuses.count(200) <= 5  # 1 s each, 2 s of drain (+ running)
    assert elapsed < 2 + 1 + 3, elapsed  # the deadline, the one running, slack
    cut = statuses.count(503)
    by_queue = re.search(r"; (\d+) still queued at the drain deadline", s.stderr)
    by_rest = re.search(r"; (\d+) REST requests cut off at the drain deadline", s.stderr)
    assert (int(by_queue.group(1)) if by_queue else 0) + (
        int(by_rest.group(1)) if by_rest else 0
    ) == cut, s.stderr
    assert re.search(r"0 unanswered", s.stderr), s.stderr


# ---------------------------------------------------------------- what a body may cost

MIB = 1 << 20


def _binary_post(model: str, head: bytes, data: bytes, extra: str = "") -> bytes:
    return (
        (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\n"
            f"Content-Length: {len(head) + len(data)}\r\n{extra}\r\n"
        ).encode()
        + head
        + data
    )


def _json_post(model: str, body: bytes) -> bytes:
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.integration
def test_bodies_that_grow_once_decoded_cost_what_the_budget_allows(tmp_path):
    """What parsing and decoding a body allocates is reserved before it is done, and the JSON
    part of a request is at most max_json_bytes: a 57 MiB body of empty lists took the server
    from 69 MiB to 1.5 GiB, 57 MiB of 1-byte BYTES elements to 950 MiB. Scaled down (budget
    32 MiB): each is refused (413), and the server's peak memory grows by about the body."""
    s = ServerProcess(
        tmp_path,
        [BYTES_MODEL],
        limits={
            "max_request_bytes": 8 * MIB,
            "max_buffered_bytes": 32 * MIB,
            "max_json_bytes": MIB,
        },
    )
    try:
        junk = (
            b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[1],"data":["a"]}],'
            b'"junk":[' + b"[]," * (7 * MIB // 3) + b"[]]}"
        )
        n = 7 * MIB // 5
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "s",
                        "datatype": "BYTES",
                        "shape": [n],
                        "parameters": {"binary_data_size": 5 * n},
                    }
                ]
            }
        ).encode()
        tiny = head, b"\1\0\0\0a" * n
        strings = (
            b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[190000],"data":['
            + b",".join([b'"ab"'] * 190000)
            + b"]}]}"
        )
        assert len(strings) < MIB
        before = s.reset_peak()
        for request, what in [
            (_json_post("len", junk), b"limits.max_json_bytes"),
            (_binary_post("len", *tiny), b"limits.max_buffered_bytes"),
            (_json_post("len", strings), b"limits.max_buffered_bytes"),
        ]:
            answer = s.exchange(request, timeout=60)
            assert _status(answer) == 413 and what in answer, answer[:300]
        grown = s.status("VmHWM") - before
        assert grown < 24 * 1024, f"peak resident memory grew by {grown} KiB"
        answer = s.exchange(_bytes_request(0, [b"a", b"", b"bc"]))  # still serving
        assert _status(answer) == 200, answer
    finally:
        assert s.stop() == 0, s.stderr


@pytest.mark.integration
def test_one_models_large_documents_do_not_hold_back_another_model(tmp_path):
    """Large bodies are decoded off the event loop. All of them used to go through one decode
    thread, first come first served, so another model's request waited for the whole backlog.
    Now models take turns (one job each at a time): model b's request is answered before
    model a's backlog is through."""
    s = ServerProcess(
        tmp_path,
        [dict(BYTES_MODEL, name="a"), dict(BYTES_MODEL, name="b")],
        limits={"max_request_bytes": 8 * MIB, "max_buffered_bytes": 1 << 30},
    )
    a_request = _bytes_request(1_000_000).replace(b"/models/len/", b"/models/a/")
    b_request = _bytes_request(200_000).replace(b"/models/len/", b"/models/b/")
    done: list[str] = []
    try:
        with ThreadPoolExecutor(4) as pool:

            def send(name: str, request: bytes) -> None:
                answer = s.exchange(request, timeout=60)
                assert _status(answer) == 200, answer[:200]
                done.append(name)

            backlog = [pool.submit(send, f"a{i}", a_request) for i in range(3)]
            time.sleep(0.3)  # (not a synchronisation: a's requests arrive first)
            b = pool.submit(send, "b", b_request)
            for f in backlog + [b]:
                f.result()
        assert done.index("b") < done.index(done[-1]) and done[-1].startswith("a"), done
        assert done.index("b") <= 1, done
    finally:
        assert s.stop() == 0, s.stderr


@pytest.mark.integration
def test_trickled_bodies_at_the_cap_leave_room_for_health(tmp_path):
    """max_connections bodies sent one byte every 2 s (under body_stall_timeout), and more on
    the health-check headroom (GET /v2/health/live with a Content-Length): health probes used
    to fail (47 of 50). Now a headroom connection may not send a body, and a new connection
    evicts the body that has been silent the longest."""
    s = ServerProcess(
        tmp_path,
        [BYTES_MODEL],
        limits={
            "max_connections": 16,
            "body_timeout": 60,
            "body_stall_timeout": 10,
            "first_byte_timeout": 30,
            "header_timeout": 30,
            "idle_timeout": 30,
        },
    )
    socks = []
    stop = threading.Event()
    try:
        for i in range(16 + 8):
            sock = s.connect()
            path, method = (
                ("/v2/health/live", "GET") if i >= 16 else ("/v2/models/len/infer", "POST")
            )
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx".encode()
            )
            socks.append(sock)
            time.sleep(0.02)  # (each one is a body arriving before the next connects)

        def trickle():
            while not stop.wait(2.0):
                for sock in socks:
                    try:
                        sock.sendall(b"x")
                    except OSError:
                        pass

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)
        statuses = []
        for _ in range(8):
            try:
                statuses.append(_status(s.exchange(HEALTH, timeout=5)))
            except OSError as exc:
                statuses.append(type(exc).__name__)
            time.sleep(0.5)
        assert statuses == [200] * 8, statuses
    finally:
        stop.set()
        for sock in socks:
            sock.close()
        assert s.stop() == 0, s.stderr


@pytest.mark.integration
def test_tls_handshakes_count_against_the_connection_cap(tmp_path):
    """Connections in their TLS handshake were not counted (asyncio reported them only after
    the handshake): 250 silent TCP connections to a TLS port exhausted the process's
    descriptors (limit 200) and health failed; here 400 against a limit of 300. Now a connection is admitted before its handshake
    (which must end within first_byte_timeout), and evicted like an idle one at the cap."""
    import ssl

    from enclave_build.attestation.synthetic import tls_ca_and_server

    ca, cert, key = tls_ca_and_server(tmp_path / "tls")
    s = ServerProcess(
        tmp_path,
        [BYTES_MODEL],
        nofile=300,
        tls={"cert": str(cert), "key": str(key)},
        limits={"max_connections": 16, "first_byte_timeout": 30},
    )
    context = ssl.create_default_context(cafile=str(ca))
    silent = []

    def health() -> bytes:
        raw = s.connect(timeout=3)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(HEALTH)  # (right after the handshake: it must not be lost)
            return _read_all(tls)

    try:
        for _ in range(10):
            assert _status(health()) == 200
        for _ in range(400):
            silent.append(s.connect())
        time.sleep(1.0)  # (not a synchronisation: lets the server accept the backlog)
        assert s.open_files() < 100
        for _ in range(3):
            assert _status(health()) == 200
    finally:
        for sock in silent:
            sock.close()
        assert s.stop() == 0, s.stderr
    assert "Too many open files" not in s.stderr, s.stderr


@pytest.mark.integration
def test_at_most_32_tls_handshakes_at_once(tmp_path):
    """Each connection in its TLS handshake holds asyncio's 256 KiB read buffer: 250 silent ones
    under the default connection cap took 64 MiB. At most 32 handshakes are in progress at once
    (a new one drops the oldest), so silent TLS connections hold 32 descriptors and buffers."""
    import ssl

    from enclave_build.attestation.synthetic import tls_ca_and_server

    ca, cert, key = tls_ca_and_server(tmp_path / "tls")
    s = ServerProcess(
        tmp_path,
        [BYTES_MODEL],
        tls={"cert": str(cert), "key": str(key)},
        limits={"first_byte_timeout": 30},
    )
    context = ssl.create_default_context(cafile=str(ca))
    silent = []
    try:
        idle = s.open_files()
        before = s.reset_peak()
        for _ in range(200):
            silent.append(s.connect())
        time.sleep(1.0)  # (not a synchronisation: lets the server accept them all)
        assert s.open_files() - idle <= 32 + 8, s.open_files() - idle
        grown = s.status("VmHWM") - before
        assert grown < 24 * 1024, f"peak resident memory grew by {grown} KiB"
        with context.wrap_socket(s.connect(), server_hostname="localhost") as tls:
            tls.sendall(HEALTH)
            assert _status(_read_all(tls)) == 200
    finally:
        for sock in silent:
            sock.close()
        assert s.stop() == 0, s.stderr


@pytest.mark.integration
def test_nearly_complete_bodies_cannot_hold_the_budget(tmp_path):
    """Four nearly complete bodies trickling a byte every few seconds held the whole byte budget
    for body_timeout, for any model name (the model was checked after the body). Now a body for
    a model that does not exist is dropped without reserving anything (404), and when the
    budget is used up the body silent the longest makes room: a legitimate request is
    answered."""
    s = ServerProcess(
        tmp_path,
        [
            {
                "name": "slow",
                "backend": "tests.ms_backends:SlowDouble",
                "path": "/none",
                "options": {"seconds": 0},
            }
        ],
        limits={
            "max_request_bytes": MIB,
            "max_buffered_bytes": 4 * MIB,
            "body_timeout": 60,
            "body_stall_timeout": 30,
            "min_body_rate": 1,
        },
    )
    holders = []
    try:
        for model in ("nope", "nope", "slow", "slow", "slow", "slow"):
            sock = s.connect()
            sock.sendall(
                f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n"
                f"Inference-Header-Content-Length: 100\r\n"
                f"Content-Length: {MIB}\r\n\r\n".encode()
                + bytes(MIB - 16)
            )
            holders.append(sock)
        time.sleep(1.5)  # (the holders go silent)
        x = np.ones((25000, 2), np.float32)
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [25000, 2],
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        ).encode()
        for _ in range(2):
            answer = s.exchange(_binary_post("slow", head, x.tobytes()), timeout=30)
            assert _status(answer) == 200, answer[:300]
        holders[0].sendall(bytes(16))
        holders[0].settimeout(10)
        answer = holders[0].recv(200)
        assert _status(answer) == 404 and b"unknown model 'nope'" in answer, answer
    finally:
        for sock in holders:
            sock.close()
        assert s.stop() == 0, s.stderr


@pytest.mark.integration
def test_sigterm_drain_cuts_requests_being_decoded(tmp_path):
    """Requests waiting to be decoded kept the process alive past the drain bound (exit after
    10.2 s with a 5 s bound: the decode thread was joined at exit) and were not counted. Now at
    the drain deadline they are answered 503 and counted as refused, and the process exits
    within drain_seconds + 2 s."""
    s = ServerProcess(
        tmp_path,
        [BYTES_MODEL],
        drain_seconds=1,
        limits={"max_request_bytes": 16 * MIB, "max_buffered_bytes": 1 << 30},
    )
    request = _bytes_request(3_000_000)
    socks = []
    try:
        before = s.status("VmRSS")
        for _ in range(4):
            sock = s.connect(timeout=30)
            sock.sendall(request)
            socks.append(sock)
        _wait_until(lambda: s.status("VmRSS") - before > 64 * 1024, "a decode under way")
        started = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        rc = s.proc.wait(30)
        took = time.monotonic() - started
        answers = [_read_all(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
        s.stop()
    assert rc == 0, s.stderr
    assert took < 1 + 2 + 2, (took, s.stderr)
    statuses = [_status(a) for a in answers]
    ok, cut = statuses.count(200), statuses.count(503)
    assert ok + cut == 4 and cut >= 2, answers  # (one decode may end within 1 s)
    for answer in answers:
        assert _status(answer) == 200 or b"drain_seconds (1 s)" in answer, answer[:300]
    stopped = re.search(
        r"stopped: (\d+) inference requests admitted, (\d+) answered "
        r"\((\d+) ok\), (\d+) unanswered; (\d+) refused",
        s.stderr,
    )
    assert stopped and stopped.groups() == tuple(map(str, (ok, ok, ok, 0, cut))), s.stderr
    assert re.search(rf"; {cut} REST requests cut off at the drain deadline", s.stderr), s.stderr


# ---------------------------------------------------------------- connection layer rules


def test_a_body_below_min_body_rate_is_answered_408():
    srv = RestInThread(
        max_request_bytes=4096,
        header_timeout=30,
        idle_timeout=30,
        body_timeout=60,
        body_stall_timeout=0.5,
        min_body_rate=100,
    )
    try:
        with srv.connect() as s:
            s.sendall(_post(b"{", "Content-Length: 4000\r\n"))
            for _ in range(30):  # 20 bytes a second: too slow
                try:
                    s.sendall(b" ")
                except OSError:
                    break
                time.sleep(0.05)
            s.settimeout(10)
            answer = _read_all(s)
        assert _status(answer) == 408 and b"limits.min_body_rate (100 bytes/s)" in answer, answer
        _wait_until(lambda: srv.rest.budget.used == 0, "its bytes released")
    finally:
        srv.close()


def test_a_body_for_an_unknown_model_or_too_much_json_reserves_nothing():
    srv = RestInThread(
        max_request_bytes=4096,
        max_json_bytes=1000,
        header_timeout=30,
        idle_timeout=30,
        body_timeout=60,
        body_stall_timeout=30,
    )
    try:
        with srv.connect() as s:
            s.sendall(
                b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 3000\r\n\r\n" + b" " * 2000
            )
            time.sleep(0.2)
            assert srv.rest.budget.used == 0
            s.sendall(b" " * 1000)
            answer = s.recv(1000)
            assert _status(answer) == 404 and b"unknown model 'nope'" in answer, answer
            s.sendall(_post(b" " * 2000, "Content-Length: 2000\r\n"))
            answer = s.recv(1000)
            assert _status(answer) == 413 and b"limits.max_json_bytes (1000)" in answer, answer
        answer = srv.exchange(_post(b"", "Content-Length: 2000\r\nExpect: 100-continue\r\n"))
        assert _status(answer) == 413, answer  # at once: no body to drop
    finally:
        srv.close()


def test_health_headroom_takes_no_body():
    """Past max_connections (every connection receiving a body) a few connections are admitted
    for health checks: one sending a body is refused."""
    srv = RestInThread(
        max_connections=2,
        first_byte_timeout=30,
        idle_timeout=30,
        header_timeout=30,
        body_timeout=60,
        body_stall_timeout=60,
    )
    busy = []
    try:
        for _ in range(2):
            s = srv.connect()
            s.sendall(_post(b"{", "Content-Length: 100\r\n"))
            busy.append(s)
        _wait_until(lambda: srv.rest.budget.used >= 2, "both connections receiving a body")
        answer = srv.exchange(
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        )
        assert _status(answer) == 503 and b"without a body" in answer, answer
        assert _status(srv.exchange(HEALTH)) == 200
    finally:
        for s in busy:
            s.close()
        srv.close()


@pytest.mark.parametrize("data", [b"[null,1]", b"[true,false]", b'["1e39",1]'])
def test_json_fp32_takes_numbers_only(rest_echo, data):
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":' + data + b"}]}"
    answer = rest_echo.exchange(
        _post(body, f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    )
    assert _status(answer) == 400 and b"does not convert to FP32" in answer, answer
