"""Answers written but not read keep their bytes in the byte budget until sent, and are
dropped when the budget needs room (model_server/unsent.py)."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from enclave_build.model_server.core import ByteBudget, Hold
from enclave_build.model_server.unsent import UnsentAnswers
from tests.rest_env import RestInThread

MIB = 1 << 20


class _Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def _held(budget: ByteBudget, n: int) -> Hold:
    budget.reserve(n)
    return Hold(budget, n)


def test_an_unsent_answer_holds_its_bytes_until_sent_once():
    budget = ByteBudget(100)
    unsent = UnsentAnswers(budget)
    dropped: list[str] = []
    hold = _held(budget, 40)
    entry = unsent.keep(hold, lambda: dropped.append("a"))
    assert hold.held == 0 and budget.used == 40 and unsent.count == 1
    unsent.sent(entry)
    unsent.sent(entry)  # (twice: once only)
    assert budget.used == 0 and unsent.count == 0 and not dropped
    assert unsent.keep(Hold(budget), lambda: None) is None  # nothing held, nothing kept


def test_the_budget_drops_answers_unsent_for_the_grace_oldest_first():
    """A reservation the budget refuses takes back answers unsent for `grace` seconds or more,
    the oldest first and only as many as it needs; younger ones stay. A waiting gRPC call
    (press) drops one."""
    clock = _Clock()
    budget = ByteBudget(100)
    unsent = UnsentAnswers(budget, grace=1.0, clock=clock)
    dropped: list[str] = []
    entries = {}
    entries["oldest"] = unsent.keep(_held(budget, 30), lambda: dropped.append("oldest"))
    clock.now += 0.5
    entries["old"] = unsent.keep(_held(budget, 30), lambda: dropped.append("old"))
    clock.now += 0.6  # oldest: 1.1 s, old: 0.6 s
    entries["young"] = unsent.keep(_held(budget, 30), lambda: dropped.append("young"))
    assert budget.used == 90
    assert budget.try_reserve(20)  # 10 free, 10 short: the oldest goes
    assert dropped == ["oldest"] and budget.used == 80 and unsent.count == 2
    assert not budget.try_reserve(30)  # the others are younger than the grace
    assert dropped == ["oldest"]
    clock.now += 0.5  # old: 1.1 s
    budget.press()
    assert dropped == ["oldest", "old"] and budget.used == 50
    unsent.sent(entries["oldest"])  # (its call ends later: nothing more given back)
    assert budget.used == 50
    unsent.sent(entries["young"])
    budget.release(20)
    assert budget.used == 0


def _large_request(values: int) -> bytes:
    x = np.ones((values // 2, 2), np.float32)
    head = json.dumps(
        {
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
    ).encode()
    body = head + x.tobytes()
    return (
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Inference-Header-Content-Length: {len(head)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _until(condition, what: str, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.integration
def test_rest_answers_not_read_stay_in_the_budget_and_go_when_it_needs_room():
    """Clients that send a request with a 6 MiB answer and never read it (more than the kernel's
    socket buffers take): the answers used to leave the budget once written (the server grew by
    each one, 268 MiB for 24 connections).
    Now each is held in the budget while it waits; when the budget needs room, unread answers
    waiting a second or more are dropped with their connections, and a client that reads its
    answers is served."""
    srv = RestInThread(
        max_request_bytes=8 * MIB,
        max_buffered_bytes=32 * MIB,
        header_timeout=30,
        idle_timeout=30,
        body_timeout=30,
    )
    request = _large_request((6 * MIB) // 4)  # 6 MiB in, 6 MiB out
    readers: list[socket.socket] = []
    try:
        for n in range(1, 4):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", srv.port))
            s.sendall(request)
            readers.append(s)
            _until(lambda n=n: srv.engine.unsent.count == n, f"{n} unsent answers held")
        assert srv.engine.budget.used >= 6 * MIB  # (what is left of three answers)
        time.sleep(1.1)  # (older than the grace)

        def read_one() -> bytes:
            with srv.connect() as c:
                c.sendall(request.replace(b"Host: x", b"Host: x\r\nConnection: close"))
                c.settimeout(10)
                answer = bytearray()
                while chunk := c.recv(1 << 20):
                    answer += chunk
            return bytes(answer[:12])

        # clients that read, four at once (more than the budget holds: some are told 503),
        # make the budget take back the unread answers ...
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: read_one(), range(8)))
        assert set(answers) <= {b"HTTP/1.1 200", b"HTTP/1.1 503"}, answers
        assert b"HTTP/1.1 200" in answers
        assert srv.engine.unsent.count < 3  # some unread answers were dropped ...
        dropped = 0
        for s in readers:
            s.settimeout(5)
            try:
                while s.recv(1 << 20):
                    pass
                dropped += 1  # ... their connections closed
            except ConnectionResetError:
                dropped += 1
            except TimeoutError:
                pass
        assert dropped >= 1
        assert read_one() == b"HTTP/1.1 200"  # ... and a client that reads is served
    finally:
        for s in readers:
            s.close()
        _until(lambda: srv.engine.budget.used == 0, "the budget given back")
        srv.close()


class _Call:
    """A grpc ServicerContext as the ModelInfer handler uses it; the call ends when the test
    says (its answer sent)."""

    def __init__(self) -> None:
        self.callbacks: list = []
        self.cancelled = False

    def abort(self, code, details):
        raise RuntimeError(code, details)

    def cancel(self) -> None:
        self.cancelled = True

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def is_active(self) -> bool:
        return not self.cancelled

    def add_callback(self, callback) -> bool:
        self.callbacks.append(callback)
        return True

    def end(self) -> None:
        for callback in self.callbacks:
            callback()


def test_a_grpc_answer_keeps_its_bytes_until_its_call_ends():
    """The handler's answer used to leave the budget when the handler returned, although grpc
    keeps it until the client reads it (a zero flow-control window: never). Now its bytes stay
    held until the call ends, and a waiting call's press cancels it after the grace."""
    from enclave_build.model_server import protocol as pb
    from enclave_build.model_server.config import Limits
    from enclave_build.model_server.core import Engine
    from enclave_build.model_server.grpc_service import GRPCService
    from enclave_build.model_server.metrics import Metrics
    from tests.rest_env import echo_model

    engine = Engine({"echo": echo_model()}, Limits(max_request_bytes=MIB))
    svc = GRPCService(engine, Metrics(), "t")
    req = pb.ModelInferRequest(model_name="echo")
    req.inputs.add(name="x", datatype="FP32", shape=[1000, 2])
    req.raw_input_contents.append(np.ones((1000, 2), np.float32).tobytes())
    call = _Call()
    answer = svc.model_infer(iter([req.SerializeToString()]), call)
    assert pb.ModelInferResponse.FromString(answer).outputs
    kept = svc.gate.keeping  # (the room its connection keeps for its next call)
    assert engine.unsent.count == 1 and engine.budget.used - kept >= len(answer) - 1024
    call.end()
    assert engine.unsent.count == 0 and engine.budget.used == kept
    # not read: a press after the grace cancels the call and gives its bytes back
    stuck = _Call()
    svc.model_infer(iter([req.SerializeToString()]), stuck)
    kept = svc.gate.keeping
    assert engine.budget.used > kept
    engine.budget.press()
    assert not stuck.cancelled  # (younger than the grace)
    engine.unsent.grace = 0.0
    engine.budget.press()
    assert stuck.cancelled and engine.budget.used == kept and engine.unsent.count == 0
    stuck.end()  # (the cancelled call ends: nothing more given back)
    assert engine.budget.used == kept
    engine.close()
