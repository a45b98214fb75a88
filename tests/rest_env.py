"""A REST server in the test process, on 127.0.0.1, for tests that talk to it over real
sockets: the RESTServer in its own event-loop thread, plus small socket helpers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from enclave_build.model_server.config import Limits, ModelConfig
from enclave_build.model_server.core import Engine, LoadedModel
from enclave_build.model_server.metrics import Metrics
from enclave_build.model_server.rest import RESTServer
from tests.ms_backends import NO_SOURCE

from .test_model_server import EchoBackend

#: A JSON inference request for the echo model (x: FP32 [1, 2]).
INFER = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,2]}]}'


def echo_model() -> LoadedModel:
    mc = ModelConfig("echo", "1", "tests.test_model_server:EchoBackend", "/none")
    return LoadedModel(mc, [EchoBackend(mc, NO_SOURCE)])


class RestInThread:
    """A RESTServer on 127.0.0.1 serving *models* (default: the echo model), in its own event
    loop thread. Short deadlines unless *limits* say otherwise."""

    def __init__(self, models: dict[str, LoadedModel] | None = None, **limits) -> None:
        limits = {
            "max_request_bytes": 4096,
            "header_timeout": 0.5,
            "idle_timeout": 0.8,
            "body_timeout": 0.5,
            **limits,
        }
        self.limits = Limits(**limits)
        self.engine = Engine(models or {"echo": echo_model()}, self.limits)
        self.loop = asyncio.new_event_loop()
        self.rest = RESTServer(
            self.engine, Metrics(), "t", self.limits.max_request_bytes, True, self.limits
        )
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.port = self.loop.run_until_complete(self.rest.start("127.0.0.1", 0))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.rest.drain(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.engine.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def exchange(self, data: bytes, shutdown: bool = True) -> bytes:
        """Send, half-close, read everything until the server closes."""
        with self.connect() as s:
            s.sendall(data)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
            return read_all(s)


def read_all(s: socket.socket) -> bytes:
    """Everything until the peer closes."""
    out = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


def post_request(body: bytes, headers: str) -> bytes:
    """A POST of *body* to the echo model's infer endpoint with *headers* (CRLF-terminated)."""
    return b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n" + headers.encode() + b"\r\n" + body


def wait_until(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout:g} s: {what}"
        time.sleep(0.01)
