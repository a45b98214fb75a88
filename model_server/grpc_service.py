"""KServe v2 over gRPC: ``inference.GRPCInferenceService``.

Handlers are registered with a generic handler (no generated ``_pb2_grpc`` module). Requests
arrive as bytes and are parsed in the handler, so a garbage message is answered with
INVALID_ARGUMENT (instead of grpc's generic deserialization failure) and the server carries on.

The server is grpc's threaded one (not grpc.aio): a handler thread parses the request, waits for
admission and an interpreter, runs the model and serializes the answer itself, so a request
costs one thread hand-off (grpc's poller to the handler) instead of poller -> event loop ->
inference thread -> event loop. Admission, queueing and the interpreter pools are the ones REST
shares (:class:`~model_server.core.Engine`, thread-safe). The handler pool holds enough threads
for every request admission may hold (in flight plus queued) and a few for health checks, so
requests past the queue are still refused with UNAVAILABLE; threads are started on demand only.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from . import __version__, protocol as pb
from .core import Engine, LoadedModel, ServeError, log
from .datatypes import (CONTENTS_FIELD, TensorError, from_list, from_numpy_dtype, from_raw,
                        to_raw)
from .metrics import UNKNOWN_MODEL, Metrics

CODES = {
    ServeError.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ServeError.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ServeError.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ServeError.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ServeError.INTERNAL: grpc.StatusCode.INTERNAL,
}
EXTENSIONS = ("binary_tensor_data",)
_LIVE = b"\x08\x01"          # ServerLiveResponse(live=True)


def _parse(cls, raw: bytes):
    try:
        return cls.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ServeError(ServeError.INVALID, f"malformed {cls.DESCRIPTOR.name}: {exc}") from None


def _typed_contents(tensor, datatype: str, shape: list[int]) -> np.ndarray:
    """An input sent as InferTensorContents (the client's choice: per-element conversion)."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TensorError(f"input {tensor.name!r}: {datatype} must be sent in "
                          "raw_input_contents")
    return from_list(list(getattr(tensor.contents, field)), datatype, shape)


def decode_request(model: LoadedModel, req) -> tuple[dict[str, np.ndarray], list[str]]:
    raw = req.raw_input_contents
    if raw and any(t.HasField("contents") for t in req.inputs):
        raise ServeError(ServeError.INVALID, "raw_input_contents and typed contents in one "
                         "request: use one or the other (KServe v2)")
    if raw and len(raw) != len(req.inputs):
        raise ServeError(ServeError.INVALID, f"{len(req.inputs)} inputs but {len(raw)} "
                         "raw_input_contents")
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
                arrays[tensor.name] = _typed_contents(tensor, tensor.datatype, shape)
    except TensorError as exc:
        raise ServeError(ServeError.INVALID, str(exc)) from None
    outputs = model.check_outputs(o.name for o in req.outputs)
    return arrays, outputs


def encode_response(model: LoadedModel, req_id: str, result: dict[str, np.ndarray],
                    outputs: list[str]) -> bytes:
    resp = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=req_id)
    for name in outputs:
        arr = result[name]
        resp.outputs.add(name=name, datatype=from_numpy_dtype(arr.dtype), shape=arr.shape)
        resp.raw_output_contents.append(to_raw(arr))
    return resp.SerializeToString()


class GRPCService:
    def __init__(self, engine: Engine, metrics: Metrics, service_name: str) -> None:
        self.engine = engine
        self.metrics = metrics
        self.service_name = service_name

    def _fail(self, context, exc: ServeError):
        context.abort(CODES[exc.kind], exc.message)      # raises

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
        return pb.ServerMetadataResponse(name=self.service_name, version=__version__,
                                         extensions=EXTENSIONS).SerializeToString()

    def model_metadata(self, raw: bytes, context) -> bytes:
        try:
            req = _parse(pb.ModelMetadataRequest, raw)
            m = self.engine.model(req.name, req.version)
        except ServeError as exc:
            self._fail(context, exc)
        resp = pb.ModelMetadataResponse(name=m.name, versions=[m.version], platform=m.platform)
        for spec in m.inputs:
            resp.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in m.outputs:
            resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return resp.SerializeToString()

    def model_infer(self, raw: bytes, context) -> bytes:
        t0 = time.perf_counter()
        label = UNKNOWN_MODEL
        engine = self.engine
        held = len(raw)
        if not engine.budget.try_reserve(held):      # bytes held while queued and inferring
            engine.counters.add("refused")
            self.metrics.observe(label, "grpc", ServeError.TOO_LARGE, time.perf_counter() - t0)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server busy: no room for {held} more request bytes "
                          f"(limits.max_buffered_bytes {engine.budget.limit})")
        admitted = False
        try:
            req = _parse(pb.ModelInferRequest, raw)
            model = engine.model(req.model_name, req.model_version)
            label = model.name
            arrays, outputs = decode_request(model, req)
            engine.counters.add("accepted")
            admitted = True
            try:
                result = engine.infer_sync(model, arrays)      # in this thread
                body = encode_response(model, req.id, result, outputs)
            finally:
                engine.counters.add("answered")
        except ServeError as exc:
            if not admitted:
                engine.counters.add("refused")
            self.metrics.observe(label, "grpc", exc.kind, time.perf_counter() - t0)
            self._fail(context, exc)
        except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
            log.exception("gRPC ModelInfer failed")
            if not admitted:
                engine.counters.add("refused")
            self.metrics.observe(label, "grpc", ServeError.INTERNAL, time.perf_counter() - t0)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
        finally:
            engine.budget.release(held)
        engine.counters.add("ok")
        self.metrics.observe(label, "grpc", "ok", time.perf_counter() - t0)
        return body

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn):
            return grpc.unary_unary_rpc_method_handler(fn)   # bytes in, bytes out
        return grpc.method_handlers_generic_handler(pb.SERVICE_FULL_NAME, {
            "ServerLive": unary(self.server_live),
            "ServerReady": unary(self.server_ready),
            "ModelReady": unary(self.model_ready),
            "ServerMetadata": unary(self.server_metadata),
            "ModelMetadata": unary(self.model_metadata),
            "ModelInfer": unary(self.model_infer),
        })


class HandlerPool(ThreadPoolExecutor):
    """grpc's handler threads. Where threads are scarce (an enclave's ``max_threads``), a thread
    that cannot be started is not an error: the call waits for a busy thread instead."""

    _warned = False

    def _adjust_thread_count(self) -> None:
        try:
            super()._adjust_thread_count()
        except RuntimeError as exc:                  # "can't start new thread"
            if not self._threads:
                raise
            if not HandlerPool._warned:
                HandlerPool._warned = True
                log.warning("gRPC: cannot start another handler thread (%s); calls wait for "
                            "one of the %d running", exc, len(self._threads))


def handler_threads(max_concurrent: int, max_queue: int) -> int:
    """Every request admission may hold (in flight or queued), plus a few for health checks."""
    return max(1, max_concurrent) + max(0, max_queue) + 4


def make_server(service: GRPCService, max_request_bytes: int, threads: int = 8
                ) -> tuple[grpc.Server, HandlerPool]:
    """At most *threads* calls at a time (one more is refused RESOURCE_EXHAUSTED by grpc before
    its message is read), so at most *threads* x *max_request_bytes* bytes are ever being
    received; what stays held past parsing (queued, inferring) is reserved in the engine's
    ``limits.max_buffered_bytes`` budget, shared with REST."""
    pool = HandlerPool(max_workers=threads, thread_name_prefix="grpc")
    server = grpc.server(pool, handlers=(service.handler(),), options=[
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", threads),
    ], maximum_concurrent_rpcs=threads)
    return server, pool


def stop_server(server: grpc.Server, pool: HandlerPool, grace: float | None) -> None:
    """Stop accepting, let running calls finish (up to *grace* seconds), wait for the threads."""
    server.stop(grace).wait()
    pool.shutdown(wait=True)
