"""HTTP/1.1 for the REST API: one :class:`asyncio.Protocol` per connection, request heads
parsed by httptools (llhttp), bodies framed by ``Content-Length`` only, one request at a time
per connection.

Each connection has one deadline (one timer, re-armed lazily) whose meaning follows its state:

* waiting for a request's first byte: ``first_byte_timeout`` on a new connection (at most
  ``idle_timeout``), ``idle_timeout`` between keep-alive requests (then it is closed without
  an answer);
* receiving the header block: ``header_timeout`` from its first byte (408);
* receiving the body: no pause longer than ``body_stall_timeout`` and the whole body within
  ``body_timeout`` (408);
* a response the client does not read: ``idle_timeout`` (then the connection is dropped).

Body bytes are reserved in the server-wide byte budget as they arrive (not when a length is
announced), so a peer holds only what it really sent; when the budget is used up the request is
refused with 503. At ``max_connections`` a new connection evicts a lingering refusal, else the
connection idle the longest, else the oldest one still sending its header block; when every
connection is receiving a body or being served, up to :data:`HEADROOM` more connections are
admitted for health checks only. Every refusal is answered with ``Connection: close`` and the
connection keeps reading (and dropping) what the client still sends for a while, so the client
reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Coroutine, Protocol

import httptools

from .config import Limits
from .core import ByteBudget

log = logging.getLogger("model_server")

HEADER_LIMIT = 64 << 10      # request line + headers
URL_LIMIT = 8 << 10          # request line
LINGER_BYTES = 8 << 20       # after a refusal: read and drop up to this much ...
LINGER_SECONDS = 5.0         # ... for up to this long, then close
OVER_CAP_LINGER = (64 << 10, 0.5)   # the same for a connection refused at the cap
HEADROOM = 8                 # connections past max_connections, for health checks only
PENDING_LIMIT = 64 << 10     # pipelined bytes buffered while a request is served
DISCARD_FACTOR = 4           # oversize bodies up to this many times the limit are read and dropped
_SINGLE = frozenset(("content-length", "transfer-encoding", "inference-header-content-length",
                     "content-encoding"))   # framing headers that must not repeat
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
           413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable"}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in REASONS.items()}


@dataclass(frozen=True)
class HTTPLimits:
    """What the connection layer enforces (from :class:`~enclave_build.contract.server_config.Limits`)."""

    max_request_bytes: int
    max_connections: int
    first_byte_timeout: float
    header_timeout: float
    body_timeout: float
    body_stall_timeout: float
    idle_timeout: float

    @classmethod
    def from_limits(cls, limits: Limits, max_request_bytes: int | None = None) -> "HTTPLimits":
        return cls(max_request_bytes or limits.max_request_bytes, limits.max_connections,
                   limits.first_byte_timeout, limits.header_timeout, limits.body_timeout,
                   limits.body_stall_timeout, limits.idle_timeout)


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]       # lower-case names
    keep_alive: bool
    body: bytes | memoryview = b""
    #: Not yet running on an interpreter: if the client goes away, the request is cancelled and
    #: its place in the queue given back. The application clears it once the request runs.
    interruptible: bool = True

    def mark_running(self) -> None:
        """The request got its interpreter: it runs to its end whatever happens."""
        self.interruptible = False


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] | None = None


def error_response(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": message}).encode())


class Application(Protocol):
    """What the connection layer calls."""

    def handle(self, request: Request) -> Response | Coroutine[Any, Any, Response]:
        """The answer (at once, or as a coroutine run as a task)."""

    def refused(self, target: str | None, status: int) -> None:
        """A request was refused by the connection layer (framing, size, budget, deadline)."""

    def serves_when_full(self, request: Request) -> bool:
        """Whether *request* is served on a connection admitted past max_connections."""


# connection states
_IDLE, _HEAD, _BODY, _DISCARD, _BUSY, _FLUSH, _LINGER, _CLOSED = range(8)
_RECEIVING = (_HEAD, _BODY, _DISCARD)


class _Refuse(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Connection(asyncio.Protocol):
    """One client connection (see the module documentation)."""

    def __init__(self, server: "HTTPServer") -> None:
        self.server = server
        assert server.loop is not None   # connections are made once the server listens
        self.loop: asyncio.AbstractEventLoop = server.loop
        self.limits = server.limits
        self.transport: asyncio.Transport   # set by connection_made, before anything else
        self.state = _IDLE
        self.restricted = False       # admitted past max_connections: health checks only
        self.fresh = True             # no request yet
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.head = bytearray()       # a header block arriving in pieces
        self.pending = bytearray()    # bytes after the current request (pipelined)
        self.reading_paused = False
        self.writing_paused = False
        self.peer_eof = False
        self.req: Request | None = None
        self.task: asyncio.Task | None = None
        self.parts: list = []         # body pieces received
        self.need = 0                 # body bytes still to come
        self.reserved = 0             # body bytes reserved in the budget
        self.body_start = 0.0
        self.linger_left = 0
        self.refusing = False         # lingering after a refusal (reading and dropping)
        self.discard_message = ""
        # header parsing (httptools callbacks)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._dup: str | None = None
        self._complete = False

    @property
    def current(self) -> Request:
        """The request being received or answered (states _BODY to _BUSY)."""
        assert self.req is not None
        return self.req

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        verdict = self.server.admit(self)
        if verdict == "refuse":
            self._refuse(503, f"too many connections (limits.max_connections "
                         f"{self.server.cap})", OVER_CAP_LINGER)
            return
        self.restricted = verdict == "restricted"
        self.server.idle[self] = None
        self._arm(self.loop.time() + min(self.limits.first_byte_timeout,
                                         self.limits.idle_timeout))

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _BODY:
            self._body(data)
        elif state == _IDLE:
            if data[:1] in (b"\r", b"\n"):       # empty lines between requests are allowed
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            self._begin()
            self._header(data)
        elif state == _HEAD:
            self._header(data)
        elif state in (_BUSY, _FLUSH):
            self.pending += data
            if len(self.pending) > PENDING_LIMIT and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
        elif state == _DISCARD:
            self._discard(data)
        elif state == _LINGER:
            self.linger_left -= len(data)
            if self.linger_left <= 0:
                self._close()

    def eof_received(self) -> bool:
        self.peer_eof = True
        # a client may half-close after sending its requests: answer them, then close
        return self.state in (_BUSY, _FLUSH) or bool(self.pending)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.state == _FLUSH:
            self._next()

    def connection_lost(self, exc) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self._release()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        task = self.task
        if task is not None and not task.done() and self.req is not None \
                and self.req.interruptible:
            task.cancel()           # the client is gone: give its place in the queue back
        self.parts = []
        self.server.closed(self)

    # ------------------------------------------------------------ deadline

    def _arm(self, when: float) -> None:
        self.deadline = when
        timer = self.timer
        if timer is None:
            self.timer = self.loop.call_at(when, self._tick)
        elif timer.when() > when:
            timer.cancel()
            self.timer = self.loop.call_at(when, self._tick)
        # else: the timer fires earlier and re-arms itself for the later deadline

    def _tick(self) -> None:
        self.timer = None
        if self.state == _CLOSED or not self.deadline:
            return
        if self.loop.time() + 1e-3 < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._tick)
            return
        self.deadline = 0.0
        self._expired()

    def _expired(self) -> None:
        state = self.state
        limits = self.limits
        if state == _HEAD:
            self._refuse(408, f"request headers not received within "
                         f"{limits.header_timeout:g} s (limits.header_timeout)")
        elif state == _BODY:
            if self.loop.time() >= self.body_start + limits.body_timeout - 1e-3:
                message = (f"request body not received within {limits.body_timeout:g} s "
                           "(limits.body_timeout)")
            else:
                message = (f"request body stalled: no bytes for {limits.body_stall_timeout:g} s "
                           "(limits.body_stall_timeout)")
            self.server.app.refused(self.current.target, 408)
            self._refuse(408, message)
        elif state == _BUSY:
            return
        elif state == _FLUSH:                   # the client does not read its answer
            self.transport.abort()
        elif state == _LINGER:
            if self.transport.is_closing() or self.transport.get_write_buffer_size():
                self.transport.abort()          # an answer nobody reads
            else:
                self._close()
        else:                                   # idle, or dropping an oversize body
            self._close()

    def _body_deadline(self) -> float:
        return min(self.body_start + self.limits.body_timeout,
                   self.loop.time() + self.limits.body_stall_timeout)

    # ------------------------------------------------------------ request head

    def _begin(self) -> None:
        self.state = _HEAD
        self.server.idle.pop(self, None)
        self._arm(self.loop.time() + self.limits.header_timeout)

    def _header(self, data) -> None:
        buf: bytes | bytearray
        if self.head:
            scan = max(0, len(self.head) - 3)
            self.head += data
            buf = self.head
        else:
            scan = 0
            buf = data if isinstance(data, bytes) else bytes(data)
        end = buf.find(b"\r\n\r\n", scan)
        if end < 0:
            if len(buf) > HEADER_LIMIT:
                self._refuse(*_oversize_head(buf))
            elif buf is not self.head:
                self.head += buf
            return
        end += 4
        if end > HEADER_LIMIT:
            self._refuse(*_oversize_head(buf))
            return
        block: bytes | memoryview
        if buf is self.head:
            block = bytes(buf[:end])
            rest = memoryview(bytes(buf[end:]))
            self.head = bytearray()
        else:
            view = memoryview(buf)
            block, rest = view[:end], view[end:]
        try:
            req = self._parse(block)
            self._start(req, rest)
        except _Refuse as exc:
            self._refuse(exc.status, exc.message)

    def _parse(self, block) -> Request:
        self._url = b""
        self._headers = {}
        self._dup = None
        self._complete = False
        parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(block)
        except httptools.HttpParserUpgrade:
            pass                  # Upgrade / CONNECT: not supported, answered as a plain request
        except httptools.HttpParserError as exc:
            if b"transfer-encoding" in bytes(block).lower():
                self.server.app.refused(_target(self._url), 411)
                raise _Refuse(411, "Transfer-Encoding (chunked bodies) is not supported; send "
                                   "Content-Length") from None
            if self._dup or "Duplicate" in str(exc):
                self.server.app.refused(_target(self._url), 400)
                raise _Refuse(400, f"header {self._dup or 'content-length'} given more than "
                                   "once") from None
            if "Content-Length" in str(exc):
                self.server.app.refused(_target(self._url), 400)
                raise _Refuse(400, f"bad Content-Length (decimal digits only): {exc}") from None
            raise _Refuse(400, f"malformed request: {exc}") from None
        if not self._complete:
            raise _Refuse(400, "malformed request")
        if len(self._url) > URL_LIMIT:
            raise _Refuse(414, f"request line longer than {URL_LIMIT} bytes")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refuse(400, f"HTTP/{version} is not supported")
        if self._dup:
            self.server.app.refused(_target(self._url), 400)
            raise _Refuse(400, f"header {self._dup} given more than once")
        headers = self._headers
        conn = headers.get("connection", "").lower()
        keep = conn != "close" if version == "1.1" else conn == "keep-alive"
        return Request(parser.get_method().decode("latin-1"), _target(self._url), headers,
                       keep and not self.server.draining and not self.restricted)

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key in self._headers and key in _SINGLE:
            self._dup = key
        self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._complete = True

    # ------------------------------------------------------------ framing and body

    def _start(self, req: Request, rest) -> None:
        """A parsed head: check the framing, then read the body or answer."""
        app = self.server.app
        limits = self.limits
        self.req = req
        self.fresh = False
        headers = req.headers
        if "transfer-encoding" in headers:
            app.refused(req.target, 411)
            raise _Refuse(411, "Transfer-Encoding (chunked bodies) is not supported; send "
                               "Content-Length")
        cl = headers.get("content-length")
        if cl is None:
            if req.method in ("POST", "PUT", "PATCH"):
                app.refused(req.target, 411)
                raise _Refuse(411, f"{req.method} needs a Content-Length")
            length = 0
        else:
            length = int(cl)          # llhttp accepted it: decimal digits, no overflow
        if self.restricted and not app.serves_when_full(req):
            app.refused(req.target, 503)
            self._refuse(503, f"too many connections (limits.max_connections "
                         f"{self.server.cap})", OVER_CAP_LINGER)
            return
        if length > limits.max_request_bytes:
            message = (f"request body of {length} bytes exceeds {limits.max_request_bytes} "
                       "(limits.max_request_bytes)")
            app.refused(req.target, 413)
            if headers.get("expect", "").lower() == "100-continue" or \
                    length > DISCARD_FACTOR * limits.max_request_bytes:
                raise _Refuse(413, message)
            self.state = _DISCARD         # read and drop the body, so the client sees the 413
            self.need = length
            self.discard_message = message
            self.body_start = self.loop.time()
            self._arm(self._body_deadline())
            if rest:
                self._discard(rest)
            return
        if length:
            if headers.get("expect", "").lower() == "100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.state = _BODY
            self.need = length
            self.body_start = self.loop.time()
            self._arm(self._body_deadline())
            if rest:
                self._body(rest)
            return
        self._dispatch(b"", rest)

    def _body(self, data) -> None:
        n = len(data)
        need = self.need
        take = min(n, need)
        if not self.server.budget.try_reserve(take):
            budget = self.server.budget
            self.server.app.refused(self.current.target, 503)
            self._refuse(503, f"server busy: no room for {take} more request bytes "
                         f"(limits.max_buffered_bytes {budget.limit})")
            return
        self.reserved += take
        if n > need:
            view = memoryview(data)
            self.parts.append(view[:need])
            rest = view[need:]
        else:
            self.parts.append(data)
            rest = None
        self.need = need - take
        if self.need:
            self._arm(self._body_deadline())
            return
        parts = self.parts
        self.parts = []
        self._dispatch(parts[0] if len(parts) == 1 else b"".join(parts), rest)

    def _discard(self, data) -> None:
        n = len(data)
        if n < self.need:
            self.need -= n
            self._arm(self._body_deadline())
            return
        rest = memoryview(data)[self.need:] if n > self.need else None
        self.need = 0
        self._dispatch(b"", rest, error_response(413, self.discard_message))

    # ------------------------------------------------------------ answering

    def _dispatch(self, body, rest, answer: Response | None = None) -> None:
        req = self.current
        req.body = body
        self.state = _BUSY
        self.deadline = 0.0
        if rest:
            self.pending += rest
        if answer is not None:
            self._respond(answer)
            return
        try:
            result = self.server.app.handle(req)
        except Exception as exc:  # answer, log, keep serving
            log.exception("REST request failed")
            result = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        if isinstance(result, Response):
            self._respond(result)
        else:
            self.task = self.loop.create_task(result)
            self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.task = None
        if self.state == _CLOSED:
            return
        if task.cancelled():
            resp = error_response(503, self.server.cut_message)
        elif task.exception() is not None:
            exc = task.exception()
            log.error("REST request failed", exc_info=exc)
            resp = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        else:
            resp = task.result()
        self._respond(resp)

    def _respond(self, resp: Response) -> None:
        keep = self.current.keep_alive and not self.server.draining and \
            (not self.peer_eof or bool(self.pending))
        self._release()
        self.req = None
        self._write(resp, keep)
        if not keep:
            self._close()
            return
        if self.writing_paused:       # the client is not reading: wait (idle_timeout) for it
            self.state = _FLUSH
            self._arm(self.loop.time() + self.limits.idle_timeout)
            return
        self._next()

    def _next(self) -> None:
        """Ready for the connection's next request."""
        self.state = _IDLE
        self.server.idle[self] = None
        self._arm(self.loop.time() + self.limits.idle_timeout)
        self.server.notify()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.pending:
            self.loop.call_soon(self._resume_pending)

    def _resume_pending(self) -> None:
        if self.state != _IDLE or not self.pending:
            return
        data = bytes(self.pending)
        self.pending = bytearray()
        self.data_received(data)
        if self.peer_eof and not self.pending and self.state in (_IDLE, _HEAD, _BODY, _DISCARD):
            self._close()             # the client sent nothing more: an incomplete request

    def _write(self, resp: Response, keep: bool) -> None:
        body = resp.body
        parts = [_STATUS_LINES.get(resp.status) or
                 f"HTTP/1.1 {resp.status} Status\r\n".encode(),
                 b"Content-Type: ", resp.content_type.encode("latin-1"),
                 b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        if resp.headers:
            for k, v in resp.headers.items():
                parts.append(f"{k}: {v}\r\n".encode("latin-1"))
        if not keep:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        self.transport.write(b"".join(parts))    # one send: a copy is cheaper than a syscall

    def _refuse(self, status: int, message: str,
                linger: tuple[int, float] = (LINGER_BYTES, LINGER_SECONDS)) -> None:
        """Answer *status* with Connection: close, then read and drop what the client still
        sends (at most *linger* = bytes, seconds), so closing with unread data does not reset
        the answer away."""
        if self.state in (_CLOSED, _LINGER):
            return
        self._release()
        self.parts = []
        self.pending = bytearray()
        self.head = bytearray()
        self.server.idle.pop(self, None)
        self.state = _LINGER
        self.server.notify()
        try:
            self._write(error_response(status, message), False)
            if self.transport.can_write_eof():
                self.transport.write_eof()
        except (RuntimeError, OSError):
            self._close()
            return
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        self.linger_left = linger[0]
        self.refusing = True
        self._arm(self.loop.time() + linger[1])

    def _release(self) -> None:
        if self.reserved:
            self.server.budget.release(self.reserved)
            self.reserved = 0

    def _close(self) -> None:
        """Close once what was written is sent (within idle_timeout, else drop it)."""
        if self.state == _CLOSED:
            return
        self.server.idle.pop(self, None)
        self.state = _LINGER              # until connection_lost: nothing more is read
        self.refusing = False
        self.linger_left = 0
        self.transport.close()
        if self.transport.get_write_buffer_size():
            self._arm(self.loop.time() + self.limits.idle_timeout)
        self.server.notify()

    # ------------------------------------------------------------ server-side control

    @property
    def active(self) -> bool:
        """A request is being received or served."""
        return self.state in (_HEAD, _BODY, _DISCARD, _BUSY)

    @property
    def idle(self) -> bool:
        return self.state == _IDLE

    @property
    def evictable(self) -> int:
        """0: closing (a refusal lingering), 1: idle, 2: still sending its header block, -1:
        not evictable (a body arriving, a request being served)."""
        if self.state == _LINGER:
            return 0 if self.refusing else -1      # (a normal close: its answer is flushing)
        return {_IDLE: 1, _HEAD: 2}.get(self.state, -1)

    def evict(self) -> None:
        """Make room at the cap: drop a lingering refusal, close an idle connection (its
        client reconnects when it needs to), refuse a header block still arriving."""
        state = self.state
        if state == _LINGER:
            self.transport.abort()
        elif state == _HEAD:
            self.server.idle.pop(self, None)
            try:
                self._write(error_response(503, f"too many connections (limits.max_connections "
                                           f"{self.server.cap})"), False)
            except (RuntimeError, OSError):
                pass
            self._close()
        else:
            self._close()

    def cut(self, message: str) -> bool:
        """Drain deadline: refuse what is still arriving (503). False when nothing was cut
        (idle: closed; handed to the application: it answers, e.g. the engine fails what is
        still queued at the same deadline, and what runs on an interpreter finishes)."""
        state = self.state
        if state == _IDLE:
            self._close()
            return False
        if state in _RECEIVING:
            if self.req is not None:
                self.server.app.refused(self.req.target, 503)
            self._refuse(503, message, OVER_CAP_LINGER)
            return True
        return False


def _target(url: bytes) -> str:
    return url.decode("latin-1")


def _oversize_head(buf) -> tuple[int, str]:
    if b"\r\n" not in bytes(buf[:URL_LIMIT + 2]):
        return 414, f"request line longer than {URL_LIMIT} bytes"
    return 431, f"request headers larger than {HEADER_LIMIT} bytes"


class HTTPServer:
    """The listener and its connections: admission at the cap, eviction, drain."""

    def __init__(self, app: Application, limits: HTTPLimits, budget: ByteBudget) -> None:
        self.app = app
        self.limits = limits
        self.budget = budget
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: dict[Connection, None] = {}
        self.idle: dict[Connection, None] = {}     # waiting for a request, longest first
        self.cap = limits.max_connections
        self.draining = False
        self.cut_message = "server shutting down"
        self.server: asyncio.base_events.Server | None = None
        self._changed: asyncio.Event | None = None

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        self.loop = asyncio.get_running_loop()
        kw = {}
        if ssl_context is not None:
            kw = {"ssl": ssl_context, "ssl_handshake_timeout": self.limits.header_timeout,
                  "ssl_shutdown_timeout": LINGER_SECONDS}
        self.server = await self.loop.create_server(lambda: Connection(self), host, port,
                                                    reuse_address=True, **kw)
        return self.server.sockets[0].getsockname()[1]

    def admit(self, conn: Connection) -> str:
        """"ok", "restricted" (past the cap: health checks only) or "refuse"."""
        if len(self.connections) >= self.cap:
            victim = self._victim()
            if victim is not None:
                victim.evict()
            elif len(self.connections) < self.cap + HEADROOM:
                self.connections[conn] = None
                return "restricted"
            else:
                return "refuse"
        self.connections[conn] = None
        return "ok"

    def _victim(self) -> Connection | None:
        """The connection to close for a new one: a lingering refusal, else the connection
        idle the longest, else the oldest still sending its header block."""
        if self.idle:
            first_idle = next(iter(self.idle))
        else:
            first_idle = None
        best, rank = None, 3
        for conn in self.connections:       # (in the order they were admitted)
            r = conn.evictable
            if r == 0:
                return conn
            if r == 2 and rank > 2:
                best, rank = conn, 2
        return first_idle or best

    def closed(self, conn: Connection) -> None:
        self.connections.pop(conn, None)
        self.idle.pop(conn, None)
        self.notify()

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    @property
    def active(self) -> int:
        return sum(1 for c in self.connections if c.active)

    async def _wait(self, condition, until: float) -> bool:
        """Wait until *condition()* holds or the loop's clock reaches *until*."""
        self._changed = self._changed or asyncio.Event()
        loop = asyncio.get_running_loop()
        while not condition():
            left = until - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return condition()
        return True

    async def drain(self, timeout: float, message: str, finish: float = 2.0) -> int:
        """Stop accepting, close idle connections, let requests finish for *timeout* seconds;
        then answer what has not started running 503 (*message*) and wait up to *finish*
        seconds for the ones running on an interpreter. Returns how many requests were answered
        503 at the deadline."""
        self.draining = True
        self.cut_message = message
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()   # (also when the server never started listening)
        if self.server is not None:
            self.server.close()
        for conn in list(self.idle):
            conn.evict()
        deadline = loop.time() + timeout
        cut = 0
        if not await self._wait(lambda: not self.active, deadline):
            cut = sum(conn.cut(message) for conn in list(self.connections))
            # what runs on an interpreter cannot be stopped: its answer is still sent
            await self._wait(lambda: not any(c.state == _BUSY for c in self.connections),
                             loop.time() + finish)
        for conn in list(self.connections):
            if not conn.active:
                conn.evict()
        # answers still in a transport's buffer are sent before the loop ends
        await self._wait(lambda: not self.connections, loop.time() + 2.0)
        return cut
