"""HTTP/1.1 for the REST API: one :class:`asyncio.Protocol` per connection, request heads
parsed by httptools (llhttp), bodies framed by ``Content-Length`` only, one request at a time
per connection.

Each connection has one deadline (one timer, re-armed lazily) whose meaning follows its state:

* waiting for a request's first byte: ``first_byte_timeout`` on a new connection (at most
  ``idle_timeout``), ``idle_timeout`` between keep-alive requests (then it is closed without
  an answer);
* receiving the header block: ``header_timeout`` from its first byte (408);
* receiving the body: at least ``min_body_rate`` bytes a second over each
  ``body_stall_timeout`` window, and the whole body within ``body_timeout`` (408);
* a response the client does not read: ``idle_timeout`` (then the connection is dropped).

With TLS the connection is admitted (and counted against the cap) before its handshake, which
must end within ``first_byte_timeout``; at most :data:`HANDSHAKES` are in progress at once (a
new one drops the oldest).

Before a body is read the application says whether it wants it (:meth:`Application.admit_body`):
a body for an unknown model, or a JSON part over its limit, is read and dropped without
reserving anything, then answered. Body bytes the application wants are reserved in the
server-wide byte budget as they arrive (not when a length is announced), so a peer holds only
what it really sent; when the budget is used up, the body that has been silent the longest (at
least :data:`SLOW_BODY_SECONDS`) is refused to make room, else the request is refused with 503.
At ``max_connections`` a new connection evicts a lingering refusal, else the connection idle the
longest, else the oldest one still sending its header block, else the body silent the longest;
when none of those exists, up to :data:`HEADROOM` more connections are admitted for health
checks only (without a body). Every refusal is answered with ``Connection: close`` and the
connection keeps reading (and dropping) what the client still sends for a while, so the client
reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import httptools

from .config import Limits
from .core import ByteBudget, Hold
from .unsent import Unsent, UnsentAnswers

log = logging.getLogger("model_server")

HEADER_LIMIT = 64 << 10  # request line + headers
URL_LIMIT = 8 << 10  # request line
LINGER_BYTES = 8 << 20  # after a refusal: read and drop up to this much ...
LINGER_SECONDS = 5.0  # ... for up to this long, then close
OVER_CAP_LINGER = (64 << 10, 0.5)  # the same for a connection refused at the cap
HEADROOM = 8  # connections past max_connections, for health checks only
SLOW_BODY_SECONDS = 1.0  # a body silent this long may be refused to make room
HANDSHAKES = 32  # TLS handshakes at once (each holds asyncio's 256 KiB buffer)
PENDING_LIMIT = 64 << 10  # pipelined bytes buffered while a request is served
#: Answers larger than this are written after their head, not joined to it (a copy of a large
#: body would double what it holds while it is written).
SEPARATE_BODY = 256 << 10
DISCARD_FACTOR = 4  # oversize bodies up to this many times the limit are read and dropped
_SINGLE = frozenset(
    ("content-length", "transfer-encoding", "inference-header-content-length", "content-encoding")
)  # framing headers that must not repeat
REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
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
    min_body_rate: int = 0

    @classmethod
    def from_limits(cls, limits: Limits, max_request_bytes: int | None = None) -> HTTPLimits:
        return cls(
            max_request_bytes or limits.max_request_bytes,
            limits.max_connections,
            limits.first_byte_timeout,
            limits.header_timeout,
            limits.body_timeout,
            limits.body_stall_timeout,
            limits.idle_timeout,
            limits.min_body_rate,
        )


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    keep_alive: bool
    body: bytes | bytearray | memoryview = b""
    #: Not yet running on an interpreter: if the client goes away, the request is cancelled and
    #: its place in the queue given back. The application clears it once the request runs.
    interruptible: bool = True
    #: The client's certificate (DER) when mutual TLS verified one; None otherwise.
    peer_cert: bytes | None = None

    def mark_running(self) -> None:
        """The request got its interpreter: it runs to its end whatever happens."""
        self.interruptible = False


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] | None = None
    #: The bytes the answer holds in the budget: they stay held until it is sent (see
    #: :mod:`.unsent`); None: nothing held.
    hold: Hold | None = None


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

    def admit_body(self, request: Request, length: int) -> bool | Response:
        """Before a body of *length* bytes is read: True to receive it (its bytes reserved as
        they arrive), False to read and drop it (the request is handled without it), or the
        Response to answer once it has been read and dropped (nothing reserved)."""


# connection states
_IDLE, _HEAD, _BODY, _DISCARD, _BUSY, _FLUSH, _LINGER, _CLOSED, _HANDSHAKE = range(9)
_RECEIVING = (_HEAD, _BODY, _DISCARD)
_BODIES = (_BODY, _DISCARD)


class _Refuse(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Connection(asyncio.Protocol):
    """One client connection (see the module documentation)."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        assert server.loop is not None  # connections are made once the server listens
        self.loop: asyncio.AbstractEventLoop = server.loop
        self.limits = server.limits
        self.transport: asyncio.Transport  # set by connection_made, before anything else
        self.state = _IDLE
        self.restricted = False  # admitted past max_connections: health checks only
        self.fresh = True  # no request yet
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.head = bytearray()  # a header block arriving in pieces
        self.pending = bytearray()  # bytes after the current request (pipelined)
        self.reading_paused = False
        self.writing_paused = False
        self.peer_eof = False
        self.req: Request | None = None
        self.task: asyncio.Task | None = None
        self.body: bytearray | None = None  # a body arriving in pieces
        self.need = 0  # body bytes still to come
        self.reserved = 0  # body bytes reserved in the budget
        self.unsent: Unsent | None = None  # an answer's bytes held until it is sent
        self.body_start = 0.0
        self.window_start = 0.0  # the current body_stall_timeout window ...
        self.window_bytes = 0  # ... and the body bytes received in it
        self.last_bytes = 0.0  # when body bytes last arrived
        self.linger_left = 0
        self.refusing = False  # lingering after a refusal (reading and dropping)
        self.discard_answer: Response | None = None  # after dropping the body (None: serve)
        self.handshake: asyncio.Task | None = None
        self.peer_cert: bytes | None = None  # the client's certificate (DER), mutual TLS
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
        tls = self.server.ssl_context
        verdict = self.server.admit(self)
        if verdict == "refuse":
            if tls is not None:  # (no TLS yet: nothing to say in plain text)
                self.state = _CLOSED
                transport.abort()
                return
            self._refuse(
                503,
                f"too many connections (limits.max_connections {self.server.cap})",
                OVER_CAP_LINGER,
            )
            return
        self.restricted = verdict == "restricted"
        self.server.idle[self] = None
        self._arm(self.loop.time() + min(self.limits.first_byte_timeout, self.limits.idle_timeout))
        if tls is not None:
            self.state = _HANDSHAKE
            transport.pause_reading()  # nothing reaches this protocol before the handshake
            self.server.handshake_begins(self)
            self.handshake = self.loop.create_task(self._start_tls(transport, tls))

    async def _start_tls(self, raw, context) -> None:
        try:
            transport = await self.loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.limits.first_byte_timeout,
                ssl_shutdown_timeout=LINGER_SECONDS,
            )
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - failed, timed out, evicted or cut: each ends the handshake
            self.handshake = None
            raw.abort()
            self.connection_lost(None)  # (asyncio tells the protocol nothing before it)
            return
        self.handshake = None
        if transport is None:  # (a server-side start_tls always gives one)
            raw.abort()
            self.connection_lost(None)
            return
        if self.state != _HANDSHAKE:  # closed meanwhile
            transport.abort()
            return
        self.server.handshaking.pop(self, None)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.peer_cert = ssl_object.getpeercert(binary_form=True)
        self.state = _IDLE
        self._arm(self.loop.time() + min(self.limits.first_byte_timeout, self.limits.idle_timeout))
        if self.pending:
            self._resume_pending()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _BODY:
            self._body(data)
        elif state == _IDLE:
            if self.pending:  # earlier pipelined bytes go first (_resume_pending is due)
                self._hold(data)
                return
            if data[:1] in (b"\r", b"\n"):  # empty lines between requests are allowed
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            self._begin()
            self._header(data)
        elif state == _HEAD:
            self._header(data)
        elif state in (_BUSY, _FLUSH):
            self._hold(data)
        elif state == _DISCARD:
            self._discard(data)
        elif state == _LINGER:
            self.linger_left -= len(data)
            if self.linger_left <= 0:
                self._close()
        elif state == _HANDSHAKE:
            # the handshake is done (TLS delivers nothing before) but start_tls has not
            # returned yet: kept for when it has
            self.pending += data

    def _hold(self, data) -> None:
        """Keep pipelined bytes for later; past PENDING_LIMIT nothing more is read until
        they have been served (so a client that never reads its answers holds a bounded amount)."""
        self.pending += data
        if len(self.pending) > PENDING_LIMIT and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.peer_eof = True
        # a client may half-close after sending its requests: answer them, then close
        return self.state in (_BUSY, _FLUSH) or bool(self.pending)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.unsent is not None:  # (the answer is (almost) all sent)
            self.server.unsent.sent(self.unsent)
            self.unsent = None
        if self.state == _FLUSH:
            self._next()

    def connection_lost(self, exc) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self.server.handshaking.pop(self, None)
        if self.handshake is not None:
            self.handshake.cancel()
        self._release()
        if self.unsent is not None:
            self.server.unsent.sent(self.unsent)
            self.unsent = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        task = self.task
        if task is not None and not task.done() and self.req is not None and self.req.interruptible:
            task.cancel()  # the client is gone: give its place in the queue back
        self.body = None
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
            self._refuse(
                408,
                f"request headers not received within "
                f"{limits.header_timeout:g} s (limits.header_timeout)",
            )
        elif state in _BODIES:
            now = self.loop.time()
            floor = limits.min_body_rate * limits.body_stall_timeout
            if now >= self.body_start + limits.body_timeout - 1e-3:
                message = (
                    f"request body not received within {limits.body_timeout:g} s "
                    "(limits.body_timeout)"
                )
            elif not self.window_bytes:
                message = (
                    f"request body stalled: no bytes for {limits.body_stall_timeout:g} s "
                    "(limits.body_stall_timeout)"
                )
            elif self.window_bytes < floor:
                message = (
                    f"request body too slow: {self.window_bytes} bytes in the last "
                    f"{limits.body_stall_timeout:g} s (limits.body_stall_timeout), less "
                    f"than limits.min_body_rate ({limits.min_body_rate} bytes/s)"
                )
            else:  # fast enough: the next window
                self.window_start, self.window_bytes = now, 0
                self._arm(self._body_deadline())
                return
            if state == _BODY:
                self.server.app.refused(self.current.target, 408)
            self._refuse(408, message)
        elif state == _HANDSHAKE:
            self._abort()
        elif state == _BUSY:
            return
        elif state == _FLUSH:  # the client does not read its answer
            self.transport.abort()
        elif state == _LINGER:
            if self.transport.is_closing() or self.transport.get_write_buffer_size():
                self.transport.abort()  # an answer nobody reads
            else:
                self._close()
        else:  # idle
            self._close()

    def _body_deadline(self) -> float:
        return min(
            self.body_start + self.limits.body_timeout,
            self.window_start + self.limits.body_stall_timeout,
        )

    def _body_begins(self, length: int) -> None:
        self.need = length
        self.body_start = self.window_start = self.last_bytes = self.loop.time()
        self.window_bytes = 0
        self._arm(self._body_deadline())

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
            pass  # Upgrade / CONNECT: not supported, answered as a plain request
        except httptools.HttpParserError as exc:
            if b"transfer-encoding" in bytes(block).lower():
                self.server.app.refused(_target(self._url), 411)
                raise _Refuse(
                    411, "Transfer-Encoding (chunked bodies) is not supported; send Content-Length"
                ) from None
            if self._dup or "Duplicate" in str(exc):
                self.server.app.refused(_target(self._url), 400)
                raise _Refuse(
                    400, f"header {self._dup or 'content-length'} given more than once"
                ) from None
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
        return Request(
            parser.get_method().decode("latin-1"),
            _target(self._url),
            headers,
            keep and not self.server.draining and not self.restricted,
            peer_cert=self.peer_cert,
        )

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
            raise _Refuse(
                411, "Transfer-Encoding (chunked bodies) is not supported; send Content-Length"
            )
        cl = headers.get("content-length")
        if cl is None:
            if req.method in ("POST", "PUT", "PATCH"):
                app.refused(req.target, 411)
                raise _Refuse(411, f"{req.method} needs a Content-Length")
            length = 0
        else:
            length = int(cl)  # llhttp accepted it: decimal digits, no overflow
        if self.restricted and (length or not app.serves_when_full(req)):
            app.refused(req.target, 503)
            self._refuse(
                503,
                f"too many connections (limits.max_connections "
                f"{self.server.cap}): this connection is for health checks only, "
                "without a body",
                OVER_CAP_LINGER,
            )
            return
        expect = headers.get("expect", "").lower() == "100-continue"
        if length > limits.max_request_bytes:
            message = (
                f"request body of {length} bytes exceeds {limits.max_request_bytes} "
                "(limits.max_request_bytes)"
            )
            app.refused(req.target, 413)
            if expect or length > DISCARD_FACTOR * limits.max_request_bytes:
                raise _Refuse(413, message)
            self._drop_body(length, error_response(413, message), rest)
            return
        if length:
            verdict = app.admit_body(req, length)
            if verdict is not True:
                answer = verdict if isinstance(verdict, Response) else None
                if answer is not None and expect:  # the client waits: no body to drop
                    self._refuse(answer.status, "", answer=answer)
                    return
                self._drop_body(length, answer, rest)
                return
            if expect:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.state = _BODY
            self._body_begins(length)
            if rest:
                self._body(rest)
            return
        self._dispatch(b"", rest)

    def _drop_body(self, length: int, answer: Response | None, rest) -> None:
        """Read and drop a body of *length* bytes (nothing reserved), then answer *answer*, or
        serve the request without its body when None."""
        self.state = _DISCARD
        self.discard_answer = answer
        self._body_begins(length)
        if rest:
            self._discard(rest)

    def _body(self, data) -> None:
        n = len(data)
        need = self.need
        take = min(n, need)
        budget = self.server.budget
        # a body arriving in pieces grows a buffer, which allocates up to 1/8 ahead
        cost = take if take == need and self.body is None else take + (take >> 3)
        if not budget.try_reserve(cost) and not (
            self.server.make_room(self) and budget.try_reserve(cost)
        ):
            self.server.app.refused(self.current.target, 503)
            self._refuse(
                503,
                f"server busy: no room for {take} more request bytes "
                f"(limits.max_buffered_bytes {budget.limit})",
            )
            return
        self.reserved += cost
        self.window_bytes += take
        self.last_bytes = self.loop.time()
        if n > need:
            view = memoryview(data)
            piece, rest = view[:need], view[need:]
        else:
            piece, rest = data, None
        self.need = need - take
        body = self.body
        if not self.need and body is None:
            self._dispatch(piece, rest)  # the whole body in one piece: no copy
            return
        # pieces are appended to one buffer (never all held and then joined: twice the bytes)
        if body is None:
            self.body = bytearray(piece)
        else:
            body += piece
        if self.need:
            return
        body, self.body = self.body, None
        self._dispatch(body, rest)

    def _discard(self, data) -> None:
        n = len(data)
        self.window_bytes += min(n, self.need)
        self.last_bytes = self.loop.time()
        if n < self.need:
            self.need -= n
            return
        rest = memoryview(data)[self.need :] if n > self.need else None
        self.need = 0
        answer, self.discard_answer = self.discard_answer, None
        self._dispatch(b"", rest, answer)

    # ------------------------------------------------------------ answering

    def _dispatch(self, body, rest, answer: Response | None = None) -> None:
        req = self.current
        req.body = body
        self.state = _BUSY
        self.deadline = 0.0
        if rest:
            self._hold(rest)
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
            if not task.cancelled() and task.exception() is None:
                answer = task.result()
                if answer.hold is not None:  # (never to be written)
                    answer.hold.release()
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
        keep = (
            self.current.keep_alive
            and not self.server.draining
            and (not self.peer_eof or bool(self.pending))
        )
        self._release()
        self.req = None
        self._write(resp, keep)
        if resp.hold is not None:
            self._keep_unsent(resp.hold)
        if not keep:
            self._close()
            return
        if self.writing_paused:  # the client is not reading: wait (idle_timeout) for it
            self.state = _FLUSH
            self._arm(self.loop.time() + self.limits.idle_timeout)
            return
        self._next()

    def _keep_unsent(self, hold: Hold) -> None:
        """The answer just written holds *hold*: its bytes stay held while it waits in the
        write buffer (writing paused), else go back now (what is left, under the buffer's high
        water mark, is sent without the client's help)."""
        if not self.writing_paused or self.state == _CLOSED:
            hold.release()
            return
        self.unsent = self.server.unsent.keep(hold, self._drop_unsent)

    def _drop_unsent(self) -> None:
        """The budget took back the bytes of this connection's unsent answer (any thread): the
        connection goes, and the answer with it."""
        try:
            self.loop.call_soon_threadsafe(self._abort_unread)
        except RuntimeError:  # (the loop is closed)
            pass

    def _abort_unread(self) -> None:
        self.unsent = None  # (its bytes are the budget's again)
        if self.state != _CLOSED:
            log.info("REST: closing a connection whose answer was not read (the budget needs room)")
            self.transport.abort()

    def _next(self) -> None:
        """Ready for the connection's next request."""
        self.state = _IDLE
        self.server.idle[self] = None
        self._arm(self.loop.time() + self.limits.idle_timeout)
        self.server.notify()
        if self.reading_paused and len(self.pending) <= PENDING_LIMIT:
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
            self._close()  # the client sent nothing more: an incomplete request

    def _write(self, resp: Response, keep: bool) -> None:
        body = resp.body
        parts = [
            _STATUS_LINES.get(resp.status) or f"HTTP/1.1 {resp.status} Status\r\n".encode(),
            b"Content-Type: ",
            resp.content_type.encode("latin-1"),
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        if resp.headers:
            for k, v in resp.headers.items():
                parts.append(f"{k}: {v}\r\n".encode("latin-1"))
        if not keep:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if len(body) > SEPARATE_BODY:  # (no copy of a large body joined to its head)
            self.transport.write(b"".join(parts))
            self.transport.write(body)
            return
        parts.append(body)
        self.transport.write(b"".join(parts))  # one send: a copy is cheaper than a syscall

    def _refuse(
        self,
        status: int,
        message: str,
        linger: tuple[int, float] = (LINGER_BYTES, LINGER_SECONDS),
        answer: Response | None = None,
    ) -> None:
        """Answer *status* (or *answer*) with Connection: close, then read and drop what the
        client still sends (at most *linger* = bytes, seconds), so closing with unread data
        does not reset the answer away."""
        if self.state in (_CLOSED, _LINGER):
            return
        if self.state == _HANDSHAKE:
            self._abort()
            return
        self._release()
        self.body = None
        self.pending = bytearray()
        self.head = bytearray()
        self.server.idle.pop(self, None)
        self.state = _LINGER
        self.server.notify()
        try:
            self._write(answer or error_response(status, message), False)
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
        self.state = _LINGER  # until connection_lost: nothing more is read
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
        """0: closing (a refusal lingering), 1: idle (or in its TLS handshake), 2: still
        sending its header block, 3: a body silent for SLOW_BODY_SECONDS, -1: not evictable
        (a body arriving, a request being served)."""
        state = self.state
        if state == _LINGER:
            return 0 if self.refusing else -1  # (a normal close: its answer is flushing)
        if state in _BODIES:
            return 3 if self.loop.time() - self.last_bytes >= SLOW_BODY_SECONDS else -1
        return {_IDLE: 1, _HANDSHAKE: 1, _HEAD: 2}.get(state, -1)

    def evict(self) -> None:
        """Make room at the cap: drop a lingering refusal, close an idle connection (its
        client reconnects when it needs to), refuse a header block still arriving or a body that
        has stopped arriving."""
        state = self.state
        if state == _LINGER:
            self.transport.abort()
        elif state == _HANDSHAKE:
            self._abort()
        elif state in _BODIES:
            self.evict_body()
        elif state == _HEAD:
            self.server.idle.pop(self, None)
            try:
                self._write(
                    error_response(
                        503, f"too many connections (limits.max_connections {self.server.cap})"
                    ),
                    False,
                )
            except (RuntimeError, OSError):
                pass
            self._close()
        else:
            self._close()

    def evict_body(self) -> None:
        """Refuse a body that has stopped arriving (no bytes for SLOW_BODY_SECONDS), for a
        connection or a request that needs the room."""
        silent = self.loop.time() - self.last_bytes
        if self.state == _BODY:
            self.server.app.refused(self.current.target, 408)
        self._refuse(
            408,
            f"request body too slow: no bytes for {silent:.1f} s while the "
            "server needed the room for others",
        )

    def _abort(self) -> None:
        """Drop a connection still in its TLS handshake."""
        task, self.handshake = self.handshake, None
        if task is not None:
            task.cancel()  # (it may not have started: cleaned up here)
        self.transport.abort()
        self.connection_lost(None)

    def cut(self, message: str) -> bool:
        """Drain deadline: refuse what is still arriving (503). False when nothing was cut
        (idle: closed; handed to the application: it answers, e.g. the engine fails what is
        still queued at the same deadline, and what runs on an interpreter finishes)."""
        state = self.state
        if state == _IDLE:
            self._close()
            return False
        if state == _HANDSHAKE:
            self._abort()
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
    if b"\r\n" not in bytes(buf[: URL_LIMIT + 2]):
        return 414, f"request line longer than {URL_LIMIT} bytes"
    return 431, f"request headers larger than {HEADER_LIMIT} bytes"


class HTTPServer:
    """The listener and its connections: admission at the cap, eviction, drain."""

    def __init__(
        self,
        app: Application,
        limits: HTTPLimits,
        budget: ByteBudget,
        unsent: UnsentAnswers | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.budget = budget
        self.unsent = unsent or UnsentAnswers(budget)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: dict[Connection, None] = {}
        self.idle: dict[Connection, None] = {}  # waiting for a request, longest first
        self.cap = limits.max_connections
        self.draining = False
        self.cut_message = "server shutting down"
        self.server: asyncio.base_events.Server | None = None
        self.ssl_context = None
        self._changed: asyncio.Event | None = None
        budget.on_pressure(self.reclaim)
        self.handshaking: dict[Connection, None] = {}  # in their TLS handshake, oldest first

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        """Listen; with *ssl_context*, each connection's TLS handshake starts once it is
        admitted (so connections in their handshake count against the cap)."""
        self.loop = asyncio.get_running_loop()
        self.ssl_context = ssl_context
        self.server = await self.loop.create_server(
            lambda: Connection(self), host, port, reuse_address=True
        )
        return self.server.sockets[0].getsockname()[1]

    def admit(self, conn: Connection) -> str:
        """ "ok", "restricted" (past the cap: health checks only) or "refuse"."""
        if len(self.connections) >= self.cap:
            victim = self._victim()
            if victim is not None:
                victim.evict()
            elif len(self.connections) < self.cap + HEADROOM:
                self.connections[conn] = None
                return "restricted"
            else:
                # every place taken by bodies that keep arriving (however slowly): the one
                # silent the longest makes room, so a health check always gets in
                victim = self._quietest_body()
                if victim is None:
                    return "refuse"
                victim.evict_body()
                self.connections[conn] = None
                return "restricted"
        self.connections[conn] = None
        return "ok"

    @property
    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on (what asks for it runs only once serving has begun)."""
        assert self.loop is not None
        return self.loop

    def _quietest_body(
        self, besides: Connection | None = None, silent: float = 0.0
    ) -> Connection | None:
        """The connection whose body (received or dropped) has been silent the longest, at
        least *silent* seconds."""
        quietest = None
        now = self.running_loop.time()
        for conn in self.connections:
            if (
                conn is not besides
                and conn.state in _BODIES
                and now - conn.last_bytes >= silent
                and (quietest is None or conn.last_bytes < quietest.last_bytes)
            ):
                quietest = conn
        return quietest

    def _victim(self) -> Connection | None:
        """The connection to close for a new one: a lingering refusal, else the connection
        idle the longest, else the oldest still sending its header block, else the body silent
        the longest."""
        if self.idle:
            first_idle = next(iter(self.idle))
        else:
            first_idle = None
        best, rank = None, 4
        for conn in self.connections:  # (in the order they were admitted)
            r = conn.evictable
            if r == 0:
                return conn
            if r == 2 and rank > 2:
                best, rank = conn, 2
            elif r == 3 and (
                rank > 3 or (rank == 3 and best is not None and conn.last_bytes < best.last_bytes)
            ):
                best, rank = conn, 3
        return first_idle or best

    def handshake_begins(self, conn: Connection) -> None:
        """At most HANDSHAKES at once: the oldest one still going is dropped for a new one
        (a handshake takes milliseconds; one that has not ended is most likely silent)."""
        if len(self.handshaking) >= HANDSHAKES:
            next(iter(self.handshaking))._abort()
        self.handshaking[conn] = None

    def reclaim(self) -> None:
        """Another protocol waits for room in the budget (any thread): make some, on the loop."""
        loop = self.loop
        if loop is None:  # not started
            return
        try:
            loop.call_soon_threadsafe(self.make_room, None)
        except RuntimeError:  # closed
            pass

    def make_room(self, needy: Connection | None) -> bool:
        """The byte budget is used up: refuse the body silent the longest (at least
        SLOW_BODY_SECONDS) other than *needy*'s, so its bytes go back. False if there is none."""
        quietest = None
        now = self.running_loop.time()
        for conn in self.connections:
            if (
                conn is not needy
                and conn.state == _BODY
                and conn.reserved
                and now - conn.last_bytes >= SLOW_BODY_SECONDS
                and (quietest is None or conn.last_bytes < quietest.last_bytes)
            ):
                quietest = conn
        if quietest is None:
            return False
        quietest.evict_body()
        return True

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
            except TimeoutError:
                return condition()
        return True

    async def drain(
        self,
        timeout: float,
        message: str,
        finish: float = 2.0,
        on_deadline: Callable[[], int] | None = None,
    ) -> int:
        """Stop accepting, close idle connections, let requests finish for *timeout* seconds;
        then answer what has not started running 503 (*message*; *on_deadline* cuts what the
        application holds before running it and returns how many) and wait up to *finish*
        seconds for the ones running on an interpreter. Returns how many requests were answered
        503 at the deadline."""
        self.draining = True
        self.cut_message = message
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()  # (also when the server never started listening)
        if self.server is not None:
            self.server.close()
        for conn in list(self.idle):
            conn.evict()
        deadline = loop.time() + timeout
        cut = 0
        if not await self._wait(lambda: not self.active, deadline):
            cut = sum(conn.cut(message) for conn in list(self.connections))
            if on_deadline is not None:
                cut += on_deadline()
            # what runs on an interpreter cannot be stopped: its answer is still sent
            await self._wait(
                lambda: not any(c.state == _BUSY for c in self.connections), loop.time() + finish
            )
        for conn in list(self.connections):
            if not conn.active:
                conn.evict()
        # answers still in a transport's buffer are sent before the loop ends
        await self._wait(lambda: not self.connections, loop.time() + 2.0)
        return cut
