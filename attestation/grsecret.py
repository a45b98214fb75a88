"""Occlum's ``ratls.GrSecret/GetSecret`` gRPC service, spoken over an already-attested TLS
connection (HTTP/2 from the ``h2`` library, gRPC message framing and protobuf messages here).

Why not grpcio's server: the TLS peer is an enclave with a fresh self-signed RA-TLS certificate
that must be *verified by its quote* before anything is served, and grpcio's Python server has
no hook for a custom certificate verifier. So the secret server does the TLS itself (pyOpenSSL,
ALPN ``h2``, every client certificate accepted by the handshake and then verified as RA-TLS,
exactly as for Gramine's secret_prov exchange) and hands the connection to :func:`serve`.

The service, as Occlum's ``ratls.proto`` declares it (package ``ratls``; proto3)::

    service GrSecret { rpc GetSecret (SecretRequest) returns (SecretReply) {} }
    message SecretRequest { string name = 1; }
    message SecretReply { string secret = 1; }    // the secret, base64

``SecretReply.secret`` is written as Occlum's own server writes it: the JSON text of the base64
string, double quotes included (its server prints the ``secret_config.json`` value with cJSON).
Occlum's client decoder skips characters outside the base64 alphabet, and it needs those two
extra characters: without them it drops the secret's last byte. Its decoder also turns each
``=`` of padding into a NUL byte, so a secret whose length is not a multiple of 3 reaches
Occlum's init with 1 or 2 NUL bytes appended (the server warns about such secrets).

Per connection, :func:`serve` answers unary GetSecret calls until the client closes, *max_requests*
were answered, or it has been idle (no open call) for *idle* seconds, then sends GOAWAY. Each
call's outcome comes from the *handler* (name -> :class:`RpcOutcome`); statuses are proper gRPC
statuses with a reason in ``grpc-message``: UNAUTHENTICATED (no usable RA-TLS evidence),
PERMISSION_DENIED (attested, not allowed), NOT_FOUND (no such secret), UNAVAILABLE (no
collateral, or an uploaded key not there yet), INVALID_ARGUMENT, UNIMPLEMENTED (another method,
compression), RESOURCE_EXHAUSTED (oversized message).

**Hostile peers.** Every call is answered and audited, HTTP-level refusals (405 for a method other
than POST, 415 for a content type that is not gRPC) included, and counts towards *max_requests*.
A call's audit line is written once its whole response was handed to TLS; a response still
held back by the client's flow-control window when the connection ends (a client that stops
reading) is audited with "response not delivered" and why. Besides h2's own checks (frame
sizes, CONTINUATION backlog, window overflow, concurrent streams) a connection is ended with
GOAWAY ENHANCE_YOUR_CALM, and the reason reported, when it opens more streams than
*max_requests* + :data:`MAX_STREAMS` (HTTP/2 "rapid reset": streams opened and reset at once
cost the server work but are never calls), or sends more than :data:`MAX_CONTROL_FRAMES` frames
that carry no call. Frames are counted one by one (h2 is given the client's bytes a frame at a
time), not by the events h2 makes of them: h2 turns several kinds into no event at all (ALTSVC,
WINDOW_UPDATE or RST_STREAM on a closed stream, DATA on a reset one) and acknowledgements of
PING and SETTINGS into events of their own.
A frame carries a call when it starts a request (HEADERS) or brings request data (in at most
:data:`MAX_CALL_DATA_FRAMES` frames per call: a request is one small message) or its end to a
call not answered yet; every other one (PING, SETTINGS and their ACKs, PRIORITY, WINDOW_UPDATE,
RST_STREAM, unknown types, empty DATA, the HEADERS and CONTINUATION frames of a header block
but its last, frames on closed streams) counts against the budget. The
header list limit the server announces (:data:`MAX_HEADER_LIST`) is the one its decoder
enforces from the first frame on.
"""

from __future__ import annotations

import base64
import errno
import json
import select
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from h2.settings import SettingCodes
from OpenSSL import SSL

PACKAGE = "ratls"
SERVICE = f"{PACKAGE}.GrSecret"
METHOD_PATH = f"/{SERVICE}/GetSecret"
ALPN = b"h2"

MAX_REQUEST = 4096  # bytes of one SecretRequest (a name)
MAX_NAME = 256
MAX_STREAMS = 8  # concurrent calls per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
MAX_HEADER_LIST = 16384
MAX_CONTROL_FRAMES = 1024  # frames per connection that carry no call (see the module docstring)
MAX_CALL_DATA_FRAMES = 16  # DATA frames of one call that count as carrying it
FRAME_HEADER = 9  # bytes: length (3), type, flags, stream id (4)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Status:
    """gRPC status codes used here."""

    OK = 0
    CANCELLED = 1
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16

    NAMES: ClassVar[dict[int, str]] = {
        0: "OK",
        1: "CANCELLED",
        3: "INVALID_ARGUMENT",
        5: "NOT_FOUND",
        7: "PERMISSION_DENIED",
        8: "RESOURCE_EXHAUSTED",
        12: "UNIMPLEMENTED",
        13: "INTERNAL",
        14: "UNAVAILABLE",
        16: "UNAUTHENTICATED",
    }


# --------------------------------------------------------------------------- messages


def _message_classes():
    """SecretRequest and SecretReply, built from a descriptor declared here (no generated code,
    so no gencode/runtime version check)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="enclave_build/ratls_grsecret.proto", package=PACKAGE, syntax="proto3"
    )
    for name, field_name in (("SecretRequest", "name"), ("SecretReply", "secret")):
        message = proto.message_type.add(name=name)
        message.field.add(
            name=field_name,
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    service = proto.service.add(name="GrSecret")
    service.method.add(
        name="GetSecret",
        input_type=f".{PACKAGE}.SecretRequest",
        output_type=f".{PACKAGE}.SecretReply",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{n}"))
        for n in ("SecretRequest", "SecretReply")
    )


SecretRequest, SecretReply = _message_classes()


def encode_secret(secret: bytes) -> str:
    """The SecretReply.secret text for *secret*: base64 in double quotes, as Occlum's server
    sends it (see the module docstring)."""
    return json.dumps(base64.b64encode(secret).decode("ascii"))


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return struct.pack(">BI", 0, len(message)) + message


def _percent_encode(text: str) -> str:
    """grpc-message encoding: printable ASCII except '%' as is, every other byte %XX."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode("utf-8")
    )


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class RpcOutcome:
    code: int
    message: str = ""
    secret: bytes | None = None  # only with code OK


@dataclass
class ServeSummary:
    requests: int = 0  # calls answered (any status)
    end: str = "client closed the connection"
    clean: bool = True  # False: ended by an error, a limit or the deadline
    streams: int = 0  # streams the client opened
    control_frames: int = 0  # frames that carried no call

    def abort(self, reason: str) -> None:
        self.end, self.clean = reason, False


@dataclass
class _Call:
    headers: dict[str, str]
    name: str = ""  # SecretRequest.name, once parsed
    body: bytearray = field(default_factory=bytearray)
    data_frames: int = 0  # DATA frames with payload received for it
    out: bytes = b""  # response DATA not yet sent (flow control)
    trailers: list | None = None  # sent once out is empty
    answered: bool = False
    outcome: RpcOutcome | None = None  # audited once the response is handed to TLS


Handler = Callable[[str], RpcOutcome]
Request = Callable[[str, RpcOutcome], None]  # audit hook: (name, outcome) per answered call


class _Connection:
    def __init__(
        self, tls: SSL.Connection, handler: Handler, on_answer: Request | None, max_requests: int
    ):
        self.tls = tls
        self.max_requests = max_requests
        self.max_streams = max_requests + MAX_STREAMS
        self.handler = handler
        self.on_answer = on_answer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.calls: dict[int, _Call] = {}
        self.summary = ServeSummary()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.tls.sendall(data)

    # ----------------------------------------------------------------- responses

    def _audit(self, call: _Call, outcome: RpcOutcome) -> None:
        if self.on_answer is not None:
            self.on_answer(call.name, outcome)

    def _respond(self, stream_id: int, call: _Call, outcome: RpcOutcome) -> None:
        call.answered = True
        self.summary.requests += 1
        headers = [(":status", "200"), ("content-type", "application/grpc")]
        if outcome.code == Status.OK and outcome.secret is not None:
            reply = SecretReply(secret=encode_secret(outcome.secret)).SerializeToString()
            self.h2.send_headers(stream_id, headers)
            call.out = frame(reply)
            call.trailers = [("grpc-status", "0")]
            call.outcome = outcome
            self._drain(stream_id, call)
            return
        code = outcome.code if outcome.code != Status.OK else Status.INTERNAL
        headers += [("grpc-status", str(code)), ("grpc-message", _percent_encode(outcome.message))]
        self.h2.send_headers(stream_id, headers, end_stream=True)  # trailers-only response
        self.calls.pop(stream_id, None)
        self._audit(call, outcome)

    def _undelivered(self, call: _Call, why: str) -> None:
        outcome, call.outcome = call.outcome, None
        assert outcome is not None  # only answered calls are undelivered
        self._audit(
            call, RpcOutcome(outcome.code, f"{outcome.message} (response not delivered: {why})")
        )

    def undelivered(self, why: str) -> None:
        """Audit the answered calls whose response is still (partly) unsent, saying *why*."""
        for stream_id, call in list(self.calls.items()):
            if call.outcome is not None:
                self.calls.pop(stream_id, None)
                self._undelivered(call, why)

    def _drain(self, stream_id: int, call: _Call) -> None:
        """Send what flow control allows of the response; the trailers when all is sent."""
        while call.out:
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                return  # wait for WINDOW_UPDATE
            chunk, call.out = call.out[:window], call.out[window:]
            self.h2.send_data(stream_id, chunk)
        if call.trailers is not None:
            self.h2.send_headers(stream_id, call.trailers, end_stream=True)
            call.trailers = None
            self.calls.pop(stream_id, None)
            if call.outcome is not None:
                outcome, call.outcome = call.outcome, None
                self._audit(call, outcome)

    def _http_error(self, stream_id: int, call: _Call, status: str, code: int, reason: str) -> None:
        """Refuse a request that is not a gRPC call with an HTTP status; counted and audited
        like a call (*code* is the gRPC status the audit line names)."""
        call.answered = True
        self.summary.requests += 1
        self.h2.send_headers(stream_id, [(":status", status)], end_stream=True)
        self.calls.pop(stream_id, None)
        self._audit(call, RpcOutcome(code, f"HTTP {status}: {reason}"))

    # ----------------------------------------------------------------- requests

    def _request(self, event: h2.events.RequestReceived) -> None:
        headers: dict[str, str] = {}
        for name, value in event.headers or ():
            # h2 decoded them (header_encoding) and validated them
            assert isinstance(name, str) and isinstance(value, str)
            headers[name] = value
        call = _Call(headers)
        self.calls[event.stream_id] = call
        method = headers.get(":method", "")
        content_type = headers.get("content-type", "")
        if self.summary.requests >= self.max_requests:
            self.calls.pop(event.stream_id, None)
            self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif method != "POST":
            self._http_error(
                event.stream_id,
                call,
                "405",
                Status.UNIMPLEMENTED,
                f"method {method[:20]!r}; gRPC calls are POST",
            )
        elif not content_type.startswith("application/grpc"):
            self._http_error(
                event.stream_id,
                call,
                "415",
                Status.INVALID_ARGUMENT,
                f"content-type {content_type[:60]!r}; gRPC calls are application/grpc",
            )

    def _data(self, event: h2.events.DataReceived) -> None:
        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        call = self.calls.get(event.stream_id)
        if call is None or call.answered:
            return
        call.body += event.data
        if len(call.body) > MAX_REQUEST + 5:
            self._respond(
                event.stream_id,
                call,
                RpcOutcome(Status.RESOURCE_EXHAUSTED, f"request larger than {MAX_REQUEST} bytes"),
            )
            self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _ended(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.answered:
            return
        self._respond(stream_id, call, self._call_outcome(call))

    def _call_outcome(self, call: _Call) -> RpcOutcome:
        path = call.headers.get(":path", "")
        if path != METHOD_PATH:
            return RpcOutcome(
                Status.UNIMPLEMENTED,
                f"unknown method {path[:100]!r}; this server offers {METHOD_PATH}",
            )
        body = bytes(call.body)
        if len(body) < 5:
            return RpcOutcome(Status.INVALID_ARGUMENT, "no request message")
        compressed, length = struct.unpack(">BI", body[:5])
        if compressed:
            return RpcOutcome(Status.UNIMPLEMENTED, "compressed messages are not supported")
        if length != len(body) - 5:
            return RpcOutcome(Status.INVALID_ARGUMENT, "exactly one request message is expected")
        request = SecretRequest()
        try:
            request.ParseFromString(body[5:])
        except DecodeError:
            return RpcOutcome(Status.INVALID_ARGUMENT, "the request is not a SecretRequest")
        name = request.name
        if not name:
            return RpcOutcome(Status.INVALID_ARGUMENT, "SecretRequest.name is empty")
        if len(name) > MAX_NAME:  # the audit line gets its start only
            call.name = name[:64] + f"... ({len(name)} characters)"
            return RpcOutcome(
                Status.INVALID_ARGUMENT, f"SecretRequest.name is longer than {MAX_NAME} characters"
            )
        call.name = name
        outcome = self.handler(name)
        if outcome.code == Status.OK and outcome.secret is None:
            return RpcOutcome(Status.INTERNAL, "no secret")
        return outcome

    # ----------------------------------------------------------------- loop

    def _open_call(self, stream_id: int) -> bool:
        call = self.calls.get(stream_id)
        return call is not None and not call.answered

    def events(self, events: list, frame: bool = True) -> bool:
        """Act on the h2 events of one received *frame* (False: of the preface); False when
        the connection is over. A frame that carries no call counts against the budget."""
        carries_call = False
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                carries_call = True
            elif isinstance(event, h2.events.DataReceived) and self._open_call(event.stream_id):
                call = self.calls[event.stream_id]
                if event.data:
                    call.data_frames += 1
                    carries_call |= call.data_frames <= MAX_CALL_DATA_FRAMES
                carries_call |= event.stream_ended is not None  # (an empty one may end it)
            elif isinstance(event, h2.events.StreamEnded):
                carries_call |= self._open_call(event.stream_id)
            if isinstance(event, h2.events.RequestReceived):
                self.summary.streams += 1
                self._request(event)
                if event.stream_ended is not None:
                    self._ended(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event)
                if event.stream_ended is not None:
                    self._ended(event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._ended(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                reset = self.calls.pop(event.stream_id, None)
                if reset is not None and reset.outcome is not None:
                    self._undelivered(reset, "the client reset the stream")
            elif isinstance(event, h2.events.WindowUpdated):
                for stream_id, call in list(self.calls.items()):
                    if call.answered:
                        self._drain(stream_id, call)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.summary.end = "client sent GOAWAY"
                return False
        if frame and not carries_call:
            self.summary.control_frames += 1
        return self._within_budget()

    def _within_budget(self) -> bool:
        """False (GOAWAY ENHANCE_YOUR_CALM queued, the reason in the summary) when the client
        opened too many streams or sent too many frames that carry no call."""
        if self.summary.streams > self.max_streams:
            reason = (
                f"{self.summary.streams} streams opened on one connection (at most "
                f"{self.max_streams}: max_requests + {MAX_STREAMS}); streams opened and "
                "reset without a call are an HTTP/2 rapid-reset attack"
            )
        elif self.summary.control_frames > MAX_CONTROL_FRAMES:
            reason = (
                f"more than {MAX_CONTROL_FRAMES} frames without a call (PING, SETTINGS, "
                "PRIORITY, WINDOW_UPDATE, RST_STREAM, ALTSVC, empty DATA, unknown types, "
                "frames on closed streams): a flood"
            )
        else:
            return True
        self.summary.abort(reason)
        self.h2.close_connection(
            h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"too many frames"
        )
        return False


class _Frames:
    """Cuts the client's bytes into the preface and then whole frames, so that h2 is given
    one frame at a time and each can be counted (see the module docstring). A frame longer than
    h2 accepts is handed over as soon as its header is in (h2 refuses it from the header), and
    everything after it too: nothing is buffered beyond one frame."""

    def __init__(self) -> None:
        self.preface = len(PREFACE)  # preface bytes still to come
        self.buffer = bytearray()
        self.passthrough = False

    def split(self, data: bytes, max_frame: int) -> Iterator[tuple[bytes, bool]]:
        """(bytes for h2, whether they are one whole frame), in order."""
        if self.passthrough:
            yield data, False
            return
        self.buffer += data
        if self.preface:
            take = min(self.preface, len(self.buffer))
            self.preface -= take
            chunk = bytes(self.buffer[:take])
            del self.buffer[:take]
            yield chunk, False
        while not self.preface and len(self.buffer) >= FRAME_HEADER:
            size = FRAME_HEADER + int.from_bytes(self.buffer[:3], "big")
            if size > FRAME_HEADER + max_frame:
                self.passthrough = True
                chunk = bytes(self.buffer)
                self.buffer.clear()
                yield chunk, False
                return
            if len(self.buffer) < size:
                return
            chunk = bytes(self.buffer[:size])
            del self.buffer[:size]
            yield chunk, True


def _readable(tls: SSL.Connection, seconds: float) -> bool:
    if tls.pending():
        return True
    if seconds <= 0:
        return False
    try:
        ready, _, _ = select.select([tls.fileno()], [], [], seconds)
    except (OSError, ValueError):
        return True  # let recv report the state of the socket
    return bool(ready)


def serve(
    tls: SSL.Connection,
    handler: Handler,
    *,
    deadline: float,
    idle: float = 2.0,
    max_requests: int = 32,
    on_answer: Request | None = None,
) -> ServeSummary:
    """Serve GrSecret calls on *tls* (handshake done, ALPN h2 negotiated) until the client
    closes, *max_requests* calls were answered, no call was open for *idle* seconds, or the
    monotonic *deadline* passes; then GOAWAY. HTTP/2 protocol errors end the connection
    (GOAWAY with the error) and are reported in the summary; TLS and socket errors propagate
    (answered calls whose response was not sent yet are audited first)."""
    conn = _Connection(tls, handler, on_answer, max_requests)
    try:
        return _serve(conn, deadline, idle, max_requests)
    except BaseException as exc:
        conn.undelivered(f"the connection failed: {type(exc).__name__}: {str(exc)[:120]}")
        raise


def _serve(conn: _Connection, deadline: float, idle: float, max_requests: int) -> ServeSummary:
    tls = conn.tls
    conn.h2.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            SettingCodes.ENABLE_PUSH: 0,
        },
    )
    # The announced header list limit, enforced from the first frame (h2 would apply it to its
    # decoder only once the client acknowledged a change from its default of 64 KiB).
    conn.h2.decoder.max_header_list_size = MAX_HEADER_LIST
    conn.h2.initiate_connection()
    conn.flush()
    frames = _Frames()
    last_activity = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            conn.summary.abort("connection deadline reached")
            break
        if conn.summary.requests >= max_requests and not conn.calls:
            conn.summary.end = f"{max_requests} calls answered on one connection"
            break
        wait = deadline - now
        if not conn.calls:
            wait = min(wait, last_activity + idle - now)
            if wait <= 0:
                conn.summary.end = "idle"
                break
        if not _readable(tls, wait):
            continue
        try:
            data = tls.recv(65536)
        except SSL.ZeroReturnError:
            data = b""
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] in (-1, errno.ECONNRESET):  # the client went away
                data = b""
            else:
                raise
        if not data:
            if time.monotonic() >= deadline:  # the server's watchdog shut the socket
                conn.summary.abort("connection deadline reached")
                conn.undelivered(
                    "connection deadline reached; the client's flow-control window held it back"
                )
            else:
                conn.undelivered("the client closed the connection first")
            return conn.summary
        last_activity = time.monotonic()
        try:
            going = True
            for chunk, whole in frames.split(data, conn.h2.max_inbound_frame_size):
                going = conn.events(conn.h2.receive_data(chunk), frame=whole)
                if not going:
                    break
        except (h2.exceptions.ProtocolError, UnicodeDecodeError) as exc:
            conn.summary.abort(f"HTTP/2 protocol error: {type(exc).__name__}: {str(exc)[:200]}")
            conn.undelivered(conn.summary.end)
            try:
                conn.flush()  # h2 queued a GOAWAY with the error code
            except (SSL.Error, OSError):
                pass
            return conn.summary
        if not going:
            conn.undelivered(conn.summary.end)
        conn.flush()
        if not going:
            return conn.summary
    conn.undelivered(f"{conn.summary.end}; the client's flow-control window held it back")
    conn.h2.close_connection()
    conn.flush()
    return conn.summary
