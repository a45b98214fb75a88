"""KServe v2 over REST: the endpoints, on the HTTP/1.1 connection layer of :mod:`.http11`.

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/M[/versions/V]``,
``.../ready``, ``POST .../infer`` and ``GET /metrics``. Inference accepts JSON tensors and the
binary tensor data extension (:mod:`.rest_codec`); request bodies may be gzip/deflate encoded
(``Content-Encoding``), as tritonclient can send them; responses are not compressed.

Persistent connections (HTTP/1.1 keep-alive) are served one request at a time per connection.
Decoding that can take long (a large JSON document, many BYTES elements, decompression, large
JSON outputs) runs in a :class:`~.decode_pool.DecodePool` (per model, in turn), never on the
event loop. The JSON part of a request is at most ``limits.max_json_bytes`` (checked before the
body is read); what parsing, decoding and answering will allocate is reserved in the byte budget
before it is done. A body for an unknown model is read and dropped (nothing reserved) and
answered 404. A model restricted to named clients (``models[].clients``, see
:mod:`.client_access`) answers 403 to any other client, for inference (its body read and
dropped, nothing reserved) and metadata; its readiness stays open.

Hostile clients (:mod:`.http11`): strict framing (a POST needs one decimal ``Content-Length``:
411 without, 400 for a duplicate or anything but digits; ``Transfer-Encoding`` is refused with
411), request line over 8 KiB 414, header block over 64 KiB 431, deadlines for the first byte,
the header block, a stalled or slow body, idle keep-alive connections and clients that do not
read; body bytes reserved in ``limits.max_buffered_bytes`` as they arrive; at
``limits.max_connections`` the longest-idle connection is closed, and health checks are still
answered when every connection is busy. Every refusal closes the connection after reading (and
dropping) what the client still sends, so the client sees the answer instead of a reset.

Drain (SIGTERM): stop accepting, close idle connections, finish requests for ``drain_seconds``;
then requests still waiting for an interpreter (or still arriving, or being decoded) are
answered 503, and those already running finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import unquote

from . import __version__
from .client_access import Forbidden, identity_of_der
from .config import Limits
from .core import ByteBudget, Engine, Hold, LoadedModel, ServeError
from .costs import answer_cost, json_cost
from .decode_pool import DecodePool
from .http11 import HTTPLimits, HTTPServer, Request, Response, error_response
from .metrics import UNKNOWN_MODEL, Metrics
from .rest_codec import (
    INLINE_WORK_BYTES,
    decode_cost,
    decode_infer,
    decode_inputs,
    decode_work,
    decompress,
    encode_infer,
    encode_work,
    json_bytes,
    parse_body,
)

__all__ = ["RESTServer", "decode_infer", "encode_infer"]

log = logging.getLogger("model_server")

STATUS = {
    ServeError.INVALID: 400,
    ServeError.NOT_FOUND: 404,
    ServeError.UNAVAILABLE: 503,
    ServeError.TOO_LARGE: 413,
    ServeError.INTERNAL: 500,
}
_KIND = {
    400: ServeError.INVALID,
    404: ServeError.NOT_FOUND,
    408: ServeError.INVALID,
    411: ServeError.INVALID,
    413: ServeError.TOO_LARGE,
    503: ServeError.UNAVAILABLE,
}
#: Threads decoding large requests (see DecodePool): one model's documents take at most one.
DECODE_THREADS = 2
EXTENSIONS = ["binary_tensor_data"]
_HEALTH = frozenset(("/v2/health/live", "/v2/health/ready"))


def _json(status: int, obj) -> Response:
    return Response(status, json_bytes(obj))


class RESTServer:
    """The KServe v2 REST application (:class:`~.http11.Application`) and its listener."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        service_name: str,
        max_request_bytes: int,
        expose_metrics: bool = True,
        limits: Limits | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.expose_metrics = expose_metrics
        self.service_name = service_name
        self.max_request_bytes = max_request_bytes
        self.limits = limits or getattr(engine, "limits", None) or Limits()
        self.budget: ByteBudget = getattr(engine, "budget", None) or ByteBudget(
            self.limits.max_buffered_bytes
        )
        self.http = HTTPServer(
            self,
            HTTPLimits.from_limits(self.limits, max_request_bytes),
            self.budget,
            getattr(engine, "unsent", None),
        )
        self._decoder: DecodePool | None = None
        self._decoding: set[asyncio.Future] = set()  # requests being decoded (not admitted)
        metrics.track_refusals(engine.access.restricted, ("rest",))

    @property
    def draining(self) -> bool:
        return self.http.draining

    @property
    def open_connections(self) -> int:
        return len(self.http.connections)

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        return await self.http.start(host, port, ssl_context)

    async def drain(self, timeout: float, finish: float = 2.0) -> int:
        """Stop accepting, finish the requests being served for *timeout* seconds, then answer
        503 to those that have not started running and give the running ones *finish* seconds
        more. Returns how many were answered 503."""
        try:
            return await self.http.drain(
                timeout,
                f"server shutting down: the request had not "
                f"started within drain_seconds ({timeout:g} s)",
                finish,
                on_deadline=self._cut_decoding,
            )
        finally:
            if self._decoder is not None:
                self._decoder.close()  # (its threads are daemons: exit does not wait)

    def _cut_decoding(self) -> int:
        """The drain deadline: requests still being decoded (queued or running) are answered
        503 now; a decode already running finishes unseen in its thread."""
        cut = list(self._decoding)
        for future in cut:
            future.cancel()
        return len(cut)

    # ---------------------------------------------------------------- http11.Application

    def serves_when_full(self, request: Request) -> bool:
        return request.method == "GET" and request.target.split("?", 1)[0] in _HEALTH

    def admit_body(self, request: Request, length: int) -> bool | Response:
        """Only an inference request's body is received (its bytes reserved), and only for a
        model this server has and a JSON part within limits.max_json_bytes; any other body is
        read and dropped."""
        route = _infer_route(request)
        if route is None:
            return False
        try:
            model = self.engine.model(*route)
            refusal = self._forbidden(model, request)
            if refusal is not None:
                self.engine.counters.add("refused")
                return refusal  # the body is read and dropped, nothing reserved
            hl = request.headers.get("inference-header-content-length")
            encoding = request.headers.get("content-encoding", "").lower()
            if encoding in ("", "identity"):
                json_len = length if hl is None else _header_len(hl)
                self._check_json(json_len)
        except ServeError as exc:
            self.refused(request.target, STATUS[exc.kind])
            return error_response(STATUS[exc.kind], exc.message)
        return True

    def _forbidden(self, model: LoadedModel, request: Request) -> Response | None:
        """403 (counted) when *model* is restricted to named clients and this client is not
        one of them; None when it may use the model."""
        cert = request.peer_cert
        try:
            self.engine.access.check(model.name, lambda: identity_of_der(cert) if cert else None)
        except Forbidden as exc:
            self.metrics.refuse(model.name, "rest")
            return error_response(403, str(exc))
        return None

    def _check_json(self, json_len: int) -> None:
        limit = self.limits.max_json_bytes
        if json_len > limit:
            raise ServeError(
                ServeError.TOO_LARGE,
                f"the request's JSON is {json_len} bytes, "
                f"more than limits.max_json_bytes ({limit}); send large tensors "
                "as binary data (Inference-Header-Content-Length)",
            )

    def refused(self, target: str | None, status: int) -> None:
        if target is not None and target.split("?", 1)[0].rstrip("/").endswith("/infer"):
            self.metrics.observe(UNKNOWN_MODEL, "rest", _KIND.get(status, ServeError.INVALID), 0.0)
            self.engine.counters.add("refused")

    def handle(self, request: Request):
        path = request.target.split("?", 1)[0]
        parts = [unquote(p) for p in path.strip("/").split("/")]
        method = request.method
        engine = self.engine
        try:
            if parts[:1] == ["metrics"] and len(parts) == 1:
                if not self.expose_metrics:
                    return error_response(404, "metrics are disabled (config metrics = false)")
                if method != "GET":
                    return error_response(405, "use GET")
                text = self.metrics.render(
                    engine.queue_depth, engine.admission.in_flight, list(engine.models)
                )
                return Response(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
            if not parts or parts[0] != "v2":
                return error_response(404, f"no such endpoint {path}")
            rest = parts[1:]
            route = _infer_route(request)
            if route is not None:
                return self._infer(*route, request)
            if method != "GET":
                return error_response(
                    405 if rest[:1] in (["health"], ["models"], []) else 404,
                    f"{method} {path} is not supported",
                )
            if rest == []:
                return _json(
                    200,
                    {"name": self.service_name, "version": __version__, "extensions": EXTENSIONS},
                )
            if rest == ["health", "live"]:
                return _json(200, {"live": True})
            if rest == ["health", "ready"]:
                ready = engine.ready
                return _json(200 if ready else 503, {"ready": ready})
            if rest[:1] == ["models"] and len(rest) >= 2:
                name, tail = rest[1], rest[2:]
                version = ""
                if tail[:1] == ["versions"] and len(tail) >= 2:
                    version, tail = tail[1], tail[2:]
                model = engine.model(name, version)
                if tail == []:
                    refusal = self._forbidden(model, request)
                    if refusal is not None:
                        return refusal
                    return _json(
                        200,
                        {
                            "name": model.name,
                            "versions": [model.version],
                            "platform": model.platform,
                            "inputs": [s.as_dict() for s in model.inputs],
                            "outputs": [s.as_dict() for s in model.outputs],
                        },
                    )
                if tail == ["ready"]:
                    ready = engine.ready
                    return _json(200 if ready else 503, {"name": model.name, "ready": ready})
            return error_response(404, f"no such endpoint {path}")
        except ServeError as exc:
            return error_response(STATUS[exc.kind], exc.message)

    # ---------------------------------------------------------------- inference

    async def _off_loop(self, model: LoadedModel, fn, *args, decoding: bool = True):
        """``fn(*args)`` in the decode pool, in *model*'s turn. *decoding*: the request is not
        admitted yet, so the drain deadline may cut it."""
        if self._decoder is None:
            self._decoder = DecodePool(DECODE_THREADS)
        future = asyncio.wrap_future(self._decoder.submit(model.name, fn, *args))
        if not decoding:
            return await future
        self._decoding.add(future)
        try:
            return await future
        finally:
            self._decoding.discard(future)

    async def _decode(self, model, body, header_len: int | None, hold: Hold):
        """(request, arrays, outputs): in the decode pool when it is much work; what parsing
        and decoding allocate is reserved in *hold* before each is done."""
        limit = self.max_request_bytes
        json_len = len(body) if header_len is None else header_len
        self._check_json(json_len)
        head = body if header_len is None else memoryview(body)[:header_len]
        hold.grow(json_cost(head), "parsing the request's JSON")
        if json_len > INLINE_WORK_BYTES:
            return await self._off_loop(model, decode_infer, model, body, header_len, limit, hold)
        parsed = parse_body(body, header_len)
        hold.grow(decode_cost(parsed, json_len), "decoding the inputs")
        if decode_work(parsed) > INLINE_WORK_BYTES:
            arrays, outputs = await self._off_loop(model, decode_inputs, model, parsed, limit)
        else:
            arrays, outputs = decode_inputs(model, parsed, limit)
        return parsed.request, arrays, outputs

    async def _infer(self, name: str, version: str, request: Request) -> Response:
        t0 = time.perf_counter()
        engine = self.engine
        label = UNKNOWN_MODEL
        admitted = False
        hold = Hold(self.budget)
        headers = request.headers
        try:
            model = engine.model(name, version)
            label = model.name
            refusal = self._forbidden(model, request)
            if refusal is not None:
                engine.counters.add("refused")
                return refusal
            body = request.body
            encoding = headers.get("content-encoding", "").lower()
            if encoding not in ("", "identity"):
                # the decompressed copy is held too: room for the largest first
                hold.grow(self.max_request_bytes, "decompressing the body")
                if len(body) > INLINE_WORK_BYTES:
                    body = await self._off_loop(
                        model, decompress, body, encoding, self.max_request_bytes
                    )
                else:
                    body = decompress(body, encoding, self.max_request_bytes)
                hold.set(len(body), "the decompressed body")
            hl = headers.get("inference-header-content-length")
            header_len = _header_len(hl) if hl is not None else None
            req, arrays, outputs = await self._decode(model, body, header_len, hold)
            del body
            engine.counters.add("accepted")
            admitted = True
            try:
                result = await engine.infer(model, arrays, started=request.mark_running)
                del arrays
                hold.grow(
                    answer_cost(result, outputs, self.limits.max_response_bytes), "the answer"
                )
                if encode_work(result, outputs) > INLINE_WORK_BYTES:
                    out, ctype, extra = await self._off_loop(
                        model, encode_infer, model, req, result, outputs, decoding=False
                    )
                else:
                    out, ctype, extra = encode_infer(model, req, result, outputs)
            finally:
                engine.counters.add("answered")
            # the answer's bytes go with it, held until it is sent (see Connection._keep_unsent)
            if hold.held > len(out):
                hold.set(len(out), "the answer")
            answer_hold, hold = Hold(self.budget, hold.held), Hold(self.budget)
        except ServeError as exc:
            if not admitted:
                engine.counters.add("refused")
            self.metrics.observe(label, "rest", exc.kind, time.perf_counter() - t0)
            return error_response(STATUS[exc.kind], exc.message)
        except asyncio.CancelledError:
            # cut at the drain deadline, or the client left, before it ran: answered 503
            if not admitted:
                engine.counters.add("refused")
            self.metrics.observe(label, "rest", ServeError.UNAVAILABLE, time.perf_counter() - t0)
            raise
        except Exception as exc:  # answer, log, keep serving
            log.exception("REST infer failed")
            if not admitted:
                engine.counters.add("refused")
            self.metrics.observe(label, "rest", ServeError.INTERNAL, time.perf_counter() - t0)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            hold.release()
        engine.counters.add("ok")
        self.metrics.observe(label, "rest", "ok", time.perf_counter() - t0)
        return Response(200, out, ctype, extra, answer_hold)


def _infer_route(request: Request) -> tuple[str, str] | None:
    """(model, version) of ``POST /v2/models/M[/versions/V]/infer``, else None."""
    if request.method != "POST":
        return None
    path = request.target.split("?", 1)[0]
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if (
        parts[:2] != ["v2", "models"]
        or parts[-1] != "infer"
        or len(parts) not in (4, 6)
        or (len(parts) == 6 and parts[3] != "versions")
    ):
        return None
    return parts[2], parts[4] if len(parts) == 6 else ""


def _header_len(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ServeError(ServeError.INVALID, "bad Inference-Header-Content-Length") from None
    if n < 0:
        raise ServeError(ServeError.INVALID, "bad Inference-Header-Content-Length")
    return n
