"""KServe v2 over gRPC: ``inference.GRPCInferenceService``.

Handlers are registered with a generic handler (no generated ``_pb2_grpc`` module). Requests
arrive as bytes and are parsed in the handler, so a garbage message is answered with
INVALID_ARGUMENT (instead of grpc's generic deserialization failure) and the server carries on.

The server is grpc's threaded one (not grpc.aio): a handler thread parses the request, waits for
its model's instance, runs the model and serializes the answer itself, so a request costs one
thread hand-off (grpc's poller to the handler) instead of poller -> event loop -> inference
thread -> event loop. Admission and the per-model queues are the ones REST shares
(:class:`~model_server.core.Engine`, thread-safe).

A model restricted to named clients (``models[].clients``, :mod:`.client_access`) answers any
other client PERMISSION_DENIED for ModelInfer (after its message arrived: the model is named in
it) and ModelMetadata; ModelReady stays open.

Hostile clients:

* Two sets of threads. Health and metadata calls (ServerLive, ServerReady, ModelReady,
  ServerMetadata, ModelMetadata) run in a small pool of their own, started with the server, so
  they are answered however many inference calls are open. ModelInfer runs in a
  :class:`~model_server.handler_pool.HandlerPool` sized for every request admission may hold.
* ModelInfer is registered as a client-streaming method: its handler starts before the request
  message has arrived (a unary handler's thread would wait inside grpc, out of reach). It first
  takes a room for the largest message in the byte budget (:mod:`.receive_gate`: grpc buffers
  a whole message once asked for it; rooms are shared fairly between connections), then asks
  for the message with a deadline of ``limits.body_timeout``, and cancels the call if none has
  arrived by then (or when the gate gives its room to a call of another connection), which
  frees the thread. A call that finds no room within twice ``limits.first_byte_timeout`` is
  refused (RESOURCE_EXHAUSTED), so calls without a message hold a few threads, never all of
  them. The client sees CANCELLED; the log says which limit. A request refused for lack of room
  in the budget after its message arrived makes its connection wait before its next room.
* Before the message is parsed, what parsing it allocates is reserved (:mod:`.pb_cost`), then
  what decoding its inputs allocates (typed contents are read with numpy, an object per element
  only for BYTES), then its answer (at most ``limits.max_response_bytes``); the request holds
  them until it is answered. HTTP/2 BDP probing is off, so a stream the server has not asked to
  read buffers at most its initial 64 KiB window.
* Connections: at most ``limits.max_grpc_connections`` (one more is closed at once), each with
  at most ``limits.max_streams_per_connection`` calls at once (HTTP/2
  SETTINGS_MAX_CONCURRENT_STREAMS), ``limits.first_byte_timeout`` (at most
  ``limits.header_timeout``) for the handshake and ``limits.idle_timeout`` without calls before
  the server closes it. grpc offers no way to close an idle connection to make room for a new
  one, so the cap is set well above REST's (which does that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from . import __version__
from . import protocol as pb
from .client_access import Forbidden, grpc_identity
from .config import Limits
from .core import Engine, Hold, LoadedModel, ServeError, log
from .costs import answer_cost, bytes_tensor_cost
from .datatypes import (
    BYTES_ELEMENT_MIN,
    CONTENTS_FIELD,
    TensorError,
    from_numpy_dtype,
    from_raw,
    from_repeated,
    raw_view,
    to_numpy_dtype,
)
from .errors import BudgetShort
from .handler_pool import HandlerPool
from .metrics import UNKNOWN_MODEL, Metrics
from .pb_cost import parse_cost
from .receive_gate import Holder, ReceiveGate
from .watchdog import Watchdog

CODES = {
    ServeError.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ServeError.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ServeError.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ServeError.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ServeError.INTERNAL: grpc.StatusCode.INTERNAL,
}
EXTENSIONS = ("binary_tensor_data",)
_LIVE = b"\x08\x01"  # ServerLiveResponse(live=True)


def _parse(cls, raw: bytes):
    try:
        return cls.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ServeError(ServeError.INVALID, f"malformed {cls.DESCRIPTOR.name}: {exc}") from None


def _typed_contents(tensor, datatype: str, shape: list[int]):
    """An input sent as InferTensorContents (the client's choice: per-element conversion),
    read into the array without a Python object per number."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TensorError(f"input {tensor.name!r}: {datatype} must be sent in raw_input_contents")
    return getattr(tensor.contents, field)


def decode_cost(req, raw: Sequence[bytes | memoryview] | None = None) -> int:
    """What decoding a parsed request's inputs allocates: typed contents become arrays (BYTES:
    an object per element), raw BYTES tensors an object per element; raw numeric tensors are
    views (nothing). *raw*: the request's ``raw_input_contents`` (default: read from *req*)."""
    if raw is None:
        raw = req.raw_input_contents
    cost = 0
    for i, tensor in enumerate(req.inputs):
        datatype = tensor.datatype
        if raw:
            if datatype == "BYTES" and i < len(raw):
                data = raw[i]
                cost += bytes_tensor_cost(len(data) // BYTES_ELEMENT_MIN, len(data))
            continue
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            continue
        values = getattr(tensor.contents, field)
        if datatype == "BYTES":
            cost += bytes_tensor_cost(len(values), tensor.contents.ByteSize())
        else:
            cost += len(values) * to_numpy_dtype(datatype).itemsize
    return cost


def decode_request(
    model: LoadedModel, req, raw: Sequence[bytes | memoryview] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The request's input arrays and requested outputs. *raw*: its ``raw_input_contents``,
    by default read from *req* (a copy of each); views of the message's bytes
    (:func:`raw_inputs`) make the arrays views of the message, without a copy."""
    if raw is None:
        raw = req.raw_input_contents
    if raw and any(t.HasField("contents") for t in req.inputs):
        raise ServeError(
            ServeError.INVALID,
            "raw_input_contents and typed contents in one "
            "request: use one or the other (KServe v2)",
        )
    if raw and len(raw) != len(req.inputs):
        raise ServeError(
            ServeError.INVALID, f"{len(req.inputs)} inputs but {len(raw)} raw_input_contents"
        )
    outputs = model.check_outputs(o.name for o in req.outputs)
    arrays: dict[str, np.ndarray] = {}
    try:
        for i, tensor in enumerate(req.inputs):
            shape = list(tensor.shape)
            model.check_input(tensor.name, tensor.datatype, shape)
            if tensor.name in arrays:
                raise ServeError(ServeError.INVALID, f"input {tensor.name!r} given twice")
            if raw:
                arrays[tensor.name] = from_raw(raw[i], tensor.datatype, shape)
            else:
                arrays[tensor.name] = from_repeated(
                    _typed_contents(tensor, tensor.datatype, shape), tensor.datatype, shape
                )
    except TensorError as exc:
        raise ServeError(ServeError.INVALID, str(exc)) from None
    return arrays, outputs


def raw_inputs(req, message: bytes, spans: list[tuple[int, int]]) -> Sequence[bytes | memoryview]:
    """The parsed *req*'s ``raw_input_contents`` as read-only views of *message* (its wire
    bytes) at *spans* (from :func:`~model_server.pb_cost.parse_cost`); the parsed elements
    themselves should the walk and the parser ever disagree on their number."""
    if len(spans) != len(req.raw_input_contents):
        return req.raw_input_contents
    view = memoryview(message)
    return [view[start:end] for start, end in spans]


#: ModelInferResponse.raw_output_contents (field 6, length-delimited): its key byte.
_RAW_OUTPUT_KEY = b"\x32"


def encode_response(
    model: LoadedModel, req_id: str, result: dict[str, np.ndarray], outputs: list[str]
) -> bytes:
    """The serialized ModelInferResponse: its metadata serialized by protobuf, then each output's
    raw_output_contents field written after it (a message's fields may come in any order), so
    the tensors are copied once, into the answer."""
    resp = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=req_id)
    parts: list[bytes | memoryview] = [b""]
    for name in outputs:
        arr = result[name]
        resp.outputs.add(name=name, datatype=from_numpy_dtype(arr.dtype), shape=arr.shape)
        data = raw_view(arr)
        parts += (_RAW_OUTPUT_KEY, _varint(len(data)), data)
    parts[0] = resp.SerializeToString()
    return b"".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class GRPCService:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        service_name: str,
        receive_timeout: float | None = None,
        gate: ReceiveGate | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.service_name = service_name
        limits = engine.limits
        self.receive_timeout = receive_timeout or limits.body_timeout
        threads = handler_threads(limits.max_concurrent_requests, limits.max_queue)
        self.gate = gate or ReceiveGate(
            engine.budget,
            limits.max_request_bytes,
            grace=min(limits.first_byte_timeout, self.receive_timeout),
            max_waiting=max(1, threads // 8),
        )
        self._watchdog: Watchdog | None = None
        metrics.track_refusals(engine.access.restricted, ("grpc",))

    def start(self) -> None:
        """Start the deadline thread (before the server takes calls)."""
        if self._watchdog is None:
            self._watchdog = Watchdog(self.receive_timeout, name="grpc-deadlines")

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

    def _receive(self, requests, context: grpc.ServicerContext, holder: Holder) -> bytes:
        """The call's request message, or the call ends (RpcError/abort) when none arrives
        within ``receive_timeout``, the client sends none, or the gate evicts it."""
        watchdog = self._watchdog
        deadline = watchdog.arm(context.cancel) if watchdog is not None else None
        try:
            return next(requests)
        except StopIteration:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "ModelInfer: the call ended without a request message",
            )
        except grpc.RpcError:
            if deadline is not None and deadline.fired:
                log.info(
                    "gRPC ModelInfer from %s: no request message within "
                    "limits.body_timeout (%g s); call cancelled",
                    context.peer(),
                    self.receive_timeout,
                )
            raise
        finally:
            if watchdog is not None and deadline is not None:
                watchdog.disarm(deadline)

    def _fail(self, context, exc: ServeError):
        context.abort(CODES[exc.kind], exc.message)  # raises

    def _allow(self, model: LoadedModel, context) -> None:
        """Forbidden (counted) when *model* is restricted to named clients and the caller is
        not one of them."""
        try:
            self.engine.access.check(model.name, lambda: grpc_identity(context))
        except Forbidden:
            self.metrics.refuse(model.name, "grpc")
            raise

    def _deny(self, context, exc: Forbidden):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))  # raises

    def server_live(self, raw: bytes, context) -> bytes:
        return _LIVE

    def server_ready(self, raw: bytes, context) -> bytes:
        return pb.ServerReadyResponse(ready=self.engine.ready).SerializeToString()

    def model_ready(self, raw: bytes, context) -> bytes:
        try:
            req = _parse(pb.ModelReadyRequest, raw)
            self.engine.model(req.name, req.version)
        except ServeError as exc:
            if exc.kind == ServeError.NOT_FOUND:
                return pb.ModelReadyResponse(ready=False).SerializeToString()
            self._fail(context, exc)
        return pb.ModelReadyResponse(ready=self.engine.ready).SerializeToString()

    def server_metadata(self, raw: bytes, context) -> bytes:
        return pb.ServerMetadataResponse(
            name=self.service_name, version=__version__, extensions=EXTENSIONS
        ).SerializeToString()

    def model_metadata(self, raw: bytes, context) -> bytes:
        try:
            req = _parse(pb.ModelMetadataRequest, raw)
            m = self.engine.model(req.name, req.version)
            self._allow(m, context)
        except ServeError as exc:
            self._fail(context, exc)
        except Forbidden as exc:
            self._deny(context, exc)
        resp = pb.ModelMetadataResponse(name=m.name, versions=[m.version], platform=m.platform)
        for spec in m.inputs:
            resp.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in m.outputs:
            resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return resp.SerializeToString()

    def model_infer(self, requests, context) -> bytes:
        engine = self.engine
        if not context.is_active():  # its client went away while the call queued: no room
            return b""
        # room, before the message
        holder = self.gate.enter(context.cancel, context.peer(), context.is_active)
        if holder is None:
            engine.counters.add("refused")
            self.metrics.observe(UNKNOWN_MODEL, "grpc", ServeError.UNAVAILABLE, 0.0)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "server busy: no room to receive the request message (other calls' "
                "messages hold limits.max_buffered_bytes "
                f"{engine.budget.limit}); retry",
            )
            raise AssertionError("unreachable: context.abort raises")
        hold = Hold(engine.budget)
        try:
            raw = self._receive(requests, context, holder)
            hold.held = self.gate.hand_over(holder, len(raw))  # now held by this request
        finally:
            self.gate.leave(holder)
        try:
            answer = self._infer(raw, hold, context)
        except BaseException:
            hold.release()
            raise
        # the answer's bytes stay held until grpc has sent it (the call ends): a client that
        # does not read (a zero flow-control window) cannot keep it in memory beyond the budget
        if hold.held > len(answer):
            hold.set(len(answer), "the answer")
        unsent = engine.unsent.keep(hold, context.cancel)
        if unsent is not None and not context.add_callback(lambda: engine.unsent.sent(unsent)):
            engine.unsent.sent(unsent)  # (the call has already ended)
        return answer

    def _infer(self, raw: bytes, hold: Hold, context) -> bytes:
        t0 = time.perf_counter()
        label = UNKNOWN_MODEL
        engine = self.engine
        admitted = False
        try:
            spans: list[tuple[int, int]] = []
            hold.set(len(raw) + parse_cost(raw, spans), "parsing the request")
            req = _parse(pb.ModelInferRequest, raw)
            model = engine.model(req.model_name, req.model_version)
            label = model.name
            self._allow(model, context)
            contents = raw_inputs(req, raw, spans)  # the tensors stay in the message's bytes
            hold.grow(decode_cost(req, contents), "decoding the inputs")
            arrays, outputs = decode_request(model, req, contents)
            engine.counters.add("accepted")
            admitted = True
            try:
                result = engine.infer_sync(model, arrays)  # in this thread
                del arrays
                hold.grow(
                    answer_cost(
                        result, ((n, True) for n in outputs), engine.limits.max_response_bytes
                    ),
                    "the answer",
                )
                body = encode_response(model, req.id, result, outputs)
            finally:
                engine.counters.add("answered")
        except ServeError as exc:
            if not admitted:
                engine.counters.add("refused")
            if isinstance(exc, BudgetShort):
                self.gate.busy(context.peer())  # its next call: later (see ReceiveGate.busy)
            self.metrics.observe(label, "grpc", exc.kind, time.perf_counter() - t0)
            self._fail(context, exc)
        except Forbidden as exc:
            engine.counters.add("refused")
            self._deny(context, exc)
        except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
            log.exception("gRPC ModelInfer failed")
            if not admitted:
                engine.counters.add("refused")
            self.metrics.observe(label, "grpc", ServeError.INTERNAL, time.perf_counter() - t0)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        engine.counters.add("ok")
        self.metrics.observe(label, "grpc", "ok", time.perf_counter() - t0)
        return body

    def handler(self, control_pool: ThreadPoolExecutor | None = None) -> grpc.GenericRpcHandler:
        """The service's methods; health and metadata run in *control_pool* when given (grpc
        reads ``experimental_thread_pool`` off a handler's behaviour)."""

        def control(fn):
            def behaviour(raw: bytes, context) -> bytes:
                return fn(raw, context)

            if control_pool is not None:
                # grpc's per-method thread pool: an attribute its handler reads off the function
                behaviour.experimental_thread_pool = control_pool  # type: ignore[attr-defined]
            return grpc.unary_unary_rpc_method_handler(behaviour)  # bytes in, bytes out

        return grpc.method_handlers_generic_handler(
            pb.SERVICE_FULL_NAME,
            {
                "ServerLive": control(self.server_live),
                "ServerReady": control(self.server_ready),
                "ModelReady": control(self.model_ready),
                "ServerMetadata": control(self.server_metadata),
                "ModelMetadata": control(self.model_metadata),
                # client-streaming: the handler runs before the message arrives (see _receive)
                "ModelInfer": grpc.stream_unary_rpc_method_handler(self.model_infer),
            },
        )


#: Threads for health and metadata calls, started with the server.
CONTROL_THREADS = 2


def control_pool(threads: int = CONTROL_THREADS) -> ThreadPoolExecutor:
    """A pool whose *threads* are all started now (where threads are scarce, an enclave's
    ``max_threads``, they exist before inference calls could take every one)."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc-health")
    started = threading.Barrier(threads + 1)
    for _ in range(threads):
        pool.submit(started.wait)
    started.wait()
    return pool


def handler_threads(max_concurrent: int, max_queue: int) -> int:
    """Every request admission may hold (in flight or queued), plus a few for calls that are
    being refused or are still receiving their message."""
    return max(1, max_concurrent) + max(0, max_queue) + 4


class GRPCServer:
    """grpc's server with the service, its two thread pools and the connection limits."""

    def __init__(self, service: GRPCService, limits: Limits, threads: int) -> None:
        self.service = service
        self.pool = HandlerPool(threads, on_capacity=service.engine.share_handler_threads)
        service.engine.share_handler_threads(threads)
        self.control = control_pool()
        # grpc only submits to its pool: any Executor does (its stub says ThreadPoolExecutor)
        pool: ThreadPoolExecutor = self.pool  # type: ignore[assignment]
        self.server = grpc.server(
            pool, handlers=[service.handler(self.control)], options=server_options(limits)
        )

    def start(self) -> None:
        self.service.start()
        self.server.start()

    def stop(self, grace: float | None, finish: float | None = None) -> bool:
        """Stop accepting, let running calls finish (up to *grace* seconds; grpc then cancels
        them), and wait up to *finish* more seconds (None: as long as they run) for the handler
        threads, whose inference grpc cannot interrupt. True when every thread has ended."""
        self.server.stop(grace).wait()
        ended = self.pool.stop(wait=True, timeout=finish)
        self.control.shutdown(wait=True)
        self.service.stop()
        return ended


#: An answer's message beyond its output tensors (names, datatypes, shapes, ids).
RESPONSE_OVERHEAD = 1 << 20


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """grpc core's channel arguments for the limits (see the module docstring)."""
    return [
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        ("grpc.max_send_message_length", limits.max_response_bytes + RESPONSE_OVERHEAD),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ("grpc.max_allowed_incoming_connections", limits.max_grpc_connections),
        (
            "grpc.server_handshake_timeout_ms",
            max(1, round(min(limits.first_byte_timeout, limits.header_timeout) * 1000)),
        ),
        ("grpc.max_connection_idle_ms", max(1, round(limits.idle_timeout * 1000))),
        ("grpc.http2.bdp_probe", 0),
    ]
