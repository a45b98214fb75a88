"""KServe v2 over REST: a small HTTP/1.1 server on asyncio streams (standard library only, so
it runs on whatever Python the enclave base carries).

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/M[/versions/V]``,
``.../ready``, ``POST .../infer`` and ``GET /metrics``. Inference accepts JSON tensors and the
binary tensor data extension as tritonclient.http sends it: header
``Inference-Header-Content-Length: N``, the first N body bytes the JSON request, then each
input with ``parameters.binary_data_size`` in input order. Outputs are binary when asked for
(``parameters.binary_data`` per output, or the request's ``parameters.binary_data_output``),
written after the JSON response the same way. Request bodies may be gzip/deflate encoded
(``Content-Encoding``), as tritonclient can send them; responses are not compressed.

Persistent connections (HTTP/1.1 keep-alive) are served one request at a time per connection.

Hostile clients: at most ``limits.max_connections`` open connections (one more gets 503 and is
closed); a request's body bytes are reserved in the server-wide ``limits.max_buffered_bytes``
budget before it is read (503 when there is no room); the header block must arrive within
``limits.header_timeout`` of its first byte, a body within ``limits.body_timeout``, and a
keep-alive connection idle for ``limits.idle_timeout`` is closed. Framing is strict, so a body
is never read as the next request: a POST needs one decimal ``Content-Length`` (411 without,
400 for a duplicate or anything but digits), ``Transfer-Encoding`` is refused (411). A request
line over 8 KiB gets 414, a header block over 64 KiB 431. Every refusal closes the connection
after reading (and dropping) what the client still sends, so the client sees the answer
instead of a reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from urllib.parse import unquote

import numpy as np

from . import __version__
from .config import Limits
from .core import ByteBudget, Engine, LoadedModel, ServeError
from .datatypes import TensorError, from_list, from_numpy_dtype, from_raw, to_list, to_raw
from .metrics import UNKNOWN_MODEL, Metrics

log = logging.getLogger("model_server")

STATUS = {
    ServeError.INVALID: 400, ServeError.NOT_FOUND: 404, ServeError.UNAVAILABLE: 503,
    ServeError.TOO_LARGE: 413, ServeError.INTERNAL: 500,
}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           414: "URI Too Long", 415: "Unsupported Media Type",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 503: "Service Unavailable"}
HEADER_LIMIT = 64 << 10
URL_LIMIT = 8 << 10          # request line
LINGER_BYTES = 8 << 20       # after a refusal: read and drop up to this much ...
LINGER_SECONDS = 5.0         # ... for up to this long, then close
OVER_CAP_LINGER = (64 << 10, 0.5)   # the same for a connection over max_connections
_SINGLE = ("content-length", "transfer-encoding", "inference-header-content-length",
           "content-encoding")   # framing headers that must not repeat
EXTENSIONS = ["binary_tensor_data"]
_DISCARD_FACTOR = 4   # oversize bodies up to this many times the limit are read and dropped


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error(status: int, message: str) -> tuple[int, bytes, str, dict]:
    return status, _json_bytes({"error": message}), "application/json", {}


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServeError(ServeError.INVALID, f"unsupported Content-Encoding {encoding!r}")
    d = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServeError(ServeError.INVALID, f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise ServeError(ServeError.TOO_LARGE, f"decompressed body exceeds {limit} bytes "
                         "(limits.max_request_bytes)")
    return out


def decode_infer(model: LoadedModel, body: bytes, header_len: int | None
                 ) -> tuple[dict, dict[str, np.ndarray], list[tuple[str, bool]]]:
    if header_len is None:
        head, binary = body, memoryview(b"")
    else:
        if not 0 <= header_len <= len(body):
            raise ServeError(ServeError.INVALID, f"Inference-Header-Content-Length {header_len} "
                             f"does not fit a body of {len(body)} bytes")
        view = memoryview(body)
        head, binary = view[:header_len], view[header_len:]
    try:
        req = json.loads(bytes(head) if isinstance(head, memoryview) else head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServeError(ServeError.INVALID, f"request is not JSON: {exc}") from None
    except RecursionError:
        raise ServeError(ServeError.INVALID, "request JSON is nested too deeply") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ServeError(ServeError.INVALID, "request must be a JSON object with an 'inputs' list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    try:
        for t in req["inputs"]:
            if not isinstance(t, dict):
                raise ServeError(ServeError.INVALID, "each input must be an object")
            name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
            if not isinstance(name, str) or not isinstance(datatype, str) or \
                    not isinstance(shape, list) or \
                    not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
                raise ServeError(ServeError.INVALID, "each input needs name (string), datatype "
                                 "(string) and shape (list of integers)")
            model.check_input(name, datatype, shape)
            if name in arrays:
                raise ServeError(ServeError.INVALID, f"input {name!r} given twice")
            params = t.get("parameters") or {}
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if size is not None:
                if not isinstance(size, int) or isinstance(size, bool):
                    raise ServeError(ServeError.INVALID, f"input {name!r}: binary_data_size "
                                     f"{size!r} is not an integer")
                if size < 0 or offset + size > len(binary):
                    raise ServeError(ServeError.INVALID, f"input {name!r}: binary_data_size "
                                     f"{size!r} does not fit the {len(binary) - offset} binary "
                                     "bytes left")
                arrays[name] = from_raw(binary[offset:offset + size], datatype, shape)
                offset += size
            elif "data" in t:
                arrays[name] = from_list(t["data"], datatype, shape)
            else:
                raise ServeError(ServeError.INVALID, f"input {name!r} has neither data nor "
                                 "binary_data_size")
    except TensorError as exc:
        raise ServeError(ServeError.INVALID, str(exc)) from None
    except RecursionError:
        raise ServeError(ServeError.INVALID, "tensor data is nested too deeply") from None
    if offset != len(binary):
        raise ServeError(ServeError.INVALID, f"{len(binary) - offset} binary bytes after the last "
                         "input")
    params = req.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) \
        else False
    wanted = req.get("outputs")
    if wanted is None:
        outputs = [(n, default_binary) for n in model.output_names]
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and
                                                   isinstance(o.get("name"), str) for o in wanted):
            raise ServeError(ServeError.INVALID, "'outputs' must be a list of {name, parameters}")
        model.check_outputs(o["name"] for o in wanted)
        outputs = []
        for o in wanted:
            op = o.get("parameters") or {}
            outputs.append((o["name"], bool(op.get("binary_data", default_binary))
                            if isinstance(op, dict) else default_binary))
    return req, arrays, outputs


def encode_infer(model: LoadedModel, req: dict, result: dict[str, np.ndarray],
                 outputs: list[tuple[str, bool]]) -> tuple[bytes, str, dict]:
    out_meta = []
    blobs = []
    for name, binary in outputs:
        arr = result[name]
        entry = {"name": name, "datatype": from_numpy_dtype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = to_raw(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = to_list(arr)
        out_meta.append(entry)
    resp = {"model_name": model.name, "model_version": model.version, "outputs": out_meta}
    if "id" in req:
        resp["id"] = req["id"]
    head = _json_bytes(resp)
    if not blobs:
        return head, "application/json", {}
    return b"".join([head, *blobs]), "application/octet-stream", \
        {"Inference-Header-Content-Length": str(len(head))}


class _Close(Exception):
    """End this connection now (the client vanished, timed out or is being refused)."""


class RESTServer:
    def __init__(self, engine: Engine, metrics: Metrics, service_name: str,
                 max_request_bytes: int, expose_metrics: bool = True,
                 limits: Limits | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.expose_metrics = expose_metrics
        self.service_name = service_name
        self.max_request_bytes = max_request_bytes
        self.limits = limits or getattr(engine, "limits", None) or Limits()
        self.budget: ByteBudget = getattr(engine, "budget", None) or \
            ByteBudget(self.limits.max_buffered_bytes)
        self.draining = False
        self._idle: dict[asyncio.StreamWriter, bool] = {}   # writer -> idle (between requests)
        self._busy = 0
        self._drained = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        kw = {"ssl_handshake_timeout": self.limits.header_timeout} if ssl_context else {}
        self.server = await asyncio.start_server(self._connection, host, port, ssl=ssl_context,
                                                 limit=HEADER_LIMIT, reuse_address=True, **kw)
        return self.server.sockets[0].getsockname()[1]

    async def drain(self, timeout: float) -> int:
        """Stop accepting, finish the requests being served, close idle connections. Returns
        the number of requests still running at the timeout."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for writer, idle in list(self._idle.items()):
            if idle:
                writer.close()
        deadline = time.monotonic() + timeout
        while self._busy and time.monotonic() < deadline:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        for writer in list(self._idle):
            writer.close()
        # let the connections finish closing: an answer still in a transport's buffer is sent
        # before the loop ends (drain() only waits for the buffer to drop below the high mark)
        close_by = min(deadline, time.monotonic() + 2.0)
        while self._idle and time.monotonic() < close_by:
            await asyncio.sleep(0.01)
        return self._busy

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if len(self._idle) >= self.limits.max_connections:
            # a short lingering close: a client that sent its request before our 503 arrived
            # reads the 503 instead of a reset; short, since these connections are not counted
            try:
                await self._refuse(reader, writer, 503, f"too many connections (limits."
                                   f"max_connections {self.limits.max_connections})",
                                   OVER_CAP_LINGER)
            finally:
                writer.close()
            return
        self._idle[writer] = True
        try:
            while not self.draining:
                self._idle[writer] = True
                head = await self._read_head(reader, writer)
                if head is None or writer.is_closing():   # closed by drain() meanwhile: the
                    return                                # answer could not be sent
                self._idle[writer] = False
                self._busy += 1
                try:
                    keep = await self._request(reader, writer, head)
                finally:
                    self._busy -= 1
                    if not self._busy:
                        self._drained.set()
                if not keep:
                    return
        except (_Close, ConnectionError, OSError, asyncio.IncompleteReadError):
            return
        except Exception:  # noqa: BLE001 - one broken connection must not stop the server
            log.exception("REST connection failed")
        finally:
            try:
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except Exception:  # noqa: BLE001 - closed already, reset, or too slow
                pass
            self._idle.pop(writer, None)

    async def _read_head(self, reader, writer) -> bytes | None:
        """The next request's header block, or None: the connection is to be closed (idle too
        long, closed by the client, or refused here)."""
        try:       # idle: waiting for the next request's first byte
            first = await asyncio.wait_for(reader.readexactly(1), self.limits.idle_timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            return None
        try:       # then the whole header block, against one deadline
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          self.limits.header_timeout)
        except asyncio.TimeoutError:        # (before OSError: TimeoutError is one)
            await self._refuse(reader, writer, 408, f"request headers not received within "
                               f"{self.limits.header_timeout:g} s (limits.header_timeout)")
            return None
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return None
        except asyncio.LimitOverrunError:
            seen = first + await reader.read(HEADER_LIMIT)
            if b"\r\n" not in seen[:URL_LIMIT + 2]:
                await self._refuse(reader, writer, 414, f"request line longer than "
                                   f"{URL_LIMIT} bytes")
            else:
                await self._refuse(reader, writer, 431, f"request headers larger than "
                                   f"{HEADER_LIMIT} bytes")
            return None
        return first + rest

    async def _refuse(self, reader, writer, status: int, message: str,
                      linger: tuple[int, float] = (LINGER_BYTES, LINGER_SECONDS)) -> None:
        """Answer *status* with Connection: close, then read and drop what the client still
        sends (at most *linger* = bytes, seconds), so closing with unread data does not reset
        the answer away."""
        try:
            await self._write(writer, *_error(status, message), False)
            if writer.can_write_eof():
                writer.write_eof()
            left, deadline = linger[0], time.monotonic() + linger[1]
            while left > 0:
                chunk = await asyncio.wait_for(reader.read(min(left, 1 << 16)),
                                               max(0.0, deadline - time.monotonic()))
                if not chunk:
                    break
                left -= len(chunk)
        except (asyncio.TimeoutError, _Close, ConnectionError, OSError, RuntimeError):
            pass

    async def _write(self, writer, status: int, body: bytes, ctype: str, extra: dict,
                     keep: bool) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
                 f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        if not keep:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(head + body)       # one send: a copy of the body is cheaper than a syscall
        try:                            # a client that does not read its answer is dropped
            await asyncio.wait_for(writer.drain(), self.limits.idle_timeout)
        except asyncio.TimeoutError:
            raise _Close() from None

    async def _request(self, reader, writer, head: bytes) -> bool:
        try:
            text = head.decode("latin-1")
            request_line, *header_lines = text[:-4].split("\r\n")
        except ValueError:
            request_line, header_lines = "", []
        if len(request_line) > URL_LIMIT:
            await self._refuse(reader, writer, 414, f"request line longer than {URL_LIMIT} "
                               "bytes")
            return False
        try:
            method, target, version = request_line.split(" ")
        except ValueError:
            await self._refuse(reader, writer, 400, "malformed request line")
            return False
        headers: dict[str, str] = {}
        for line in header_lines:
            k, sep, v = line.partition(":")
            if not sep:
                await self._refuse(reader, writer, 400, "malformed header line")
                return False
            k = k.strip().lower()
            if k in headers and k in _SINGLE:
                await self._refuse(reader, writer, 400, f"header {k} given more than once")
                return False
            headers[k] = v.strip()
        conn = headers.get("connection", "").lower()
        keep = (version == "HTTP/1.1" and conn != "close") or conn == "keep-alive"
        keep = keep and not self.draining
        if "transfer-encoding" in headers:
            self._observe_fail(target, ServeError.INVALID)
            await self._refuse(reader, writer, 411, "Transfer-Encoding (chunked bodies) is not "
                               "supported; send Content-Length")
            return False
        cl = headers.get("content-length")
        if cl is None:
            if method in ("POST", "PUT", "PATCH"):
                self._observe_fail(target, ServeError.INVALID)
                await self._refuse(reader, writer, 411, f"{method} needs a Content-Length")
                return False
            length = 0
        elif not (cl.isascii() and cl.isdigit()) or len(cl) > 20:
            self._observe_fail(target, ServeError.INVALID)
            await self._refuse(reader, writer, 400, "bad Content-Length (decimal digits only)")
            return False
        else:
            length = int(cl)
        if length > self.max_request_bytes:
            message = (f"request body of {length} bytes exceeds {self.max_request_bytes} "
                       "(limits.max_request_bytes)")
            self._observe_fail(target, ServeError.TOO_LARGE)
            if headers.get("expect", "").lower() == "100-continue" or \
                    length > _DISCARD_FACTOR * self.max_request_bytes:
                await self._refuse(reader, writer, 413, message)
                return False
            left = length                      # read and drop, so the client sees the 413
            deadline = time.monotonic() + self.limits.body_timeout
            while left:
                try:
                    chunk = await asyncio.wait_for(reader.read(min(left, 1 << 20)),
                                                   max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    return False
                if not chunk:
                    return False
                left -= len(chunk)
            await self._write(writer, *_error(413, message), keep)
            return keep
        if not self.budget.try_reserve(length):
            self._observe_fail(target, ServeError.UNAVAILABLE)
            await self._refuse(reader, writer, 503, f"server busy: no room for {length} more "
                               f"request bytes (limits.max_buffered_bytes "
                               f"{self.budget.limit})")
            return False
        try:
            if headers.get("expect", "").lower() == "100-continue" and length:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await asyncio.wait_for(reader.readexactly(length),
                                              self.limits.body_timeout) if length else b""
            except asyncio.IncompleteReadError:
                return False
            except asyncio.TimeoutError:
                self._observe_fail(target, ServeError.INVALID)
                await self._refuse(reader, writer, 408, f"request body not received within "
                                   f"{self.limits.body_timeout:g} s (limits.body_timeout)")
                return False
            status, out, ctype, extra = await self._route(method, target, headers, body)
            del body
            await self._write(writer, status, out, ctype, extra, keep)
        finally:
            self.budget.release(length)
        return keep

    def _observe_fail(self, target: str, kind: str) -> None:
        if target.rstrip("/").endswith("/infer"):
            self.metrics.observe(UNKNOWN_MODEL, "rest", kind, 0.0)
            self.engine.counters.add("refused")

    async def _route(self, method: str, target: str, headers: dict, body: bytes):
        path = target.split("?", 1)[0]
        parts = [unquote(p) for p in path.strip("/").split("/")]
        engine = self.engine
        try:
            if parts[:1] == ["metrics"] and len(parts) == 1:
                if not self.expose_metrics:
                    return _error(404, "metrics are disabled (config metrics = false)")
                if method != "GET":
                    return _error(405, "use GET")
                text = self.metrics.render(engine.queue_depth, engine.admission.in_flight,
                                           list(engine.models))
                return 200, text.encode(), "text/plain; version=0.0.4; charset=utf-8", {}
            if not parts or parts[0] != "v2":
                return _error(404, f"no such endpoint {path}")
            rest = parts[1:]
            if method == "POST" and len(rest) in (3, 5) and rest[0] == "models" \
                    and rest[-1] == "infer" and (len(rest) == 3 or rest[2] == "versions"):
                return await self._infer(rest[1], rest[3] if len(rest) == 5 else "", headers,
                                         body)
            if method != "GET":
                return _error(405 if rest[:1] in (["health"], ["models"], []) else 404,
                              f"{method} {path} is not supported")
            if rest == []:
                return 200, _json_bytes({"name": self.service_name, "version": __version__,
                                         "extensions": EXTENSIONS}), "application/json", {}
            if rest == ["health", "live"]:
                return 200, _json_bytes({"live": True}), "application/json", {}
            if rest == ["health", "ready"]:
                ready = engine.ready
                return (200 if ready else 503), _json_bytes({"ready": ready}), \
                    "application/json", {}
            if rest[:1] == ["models"] and len(rest) >= 2:
                name, tail = rest[1], rest[2:]
                version = ""
                if tail[:1] == ["versions"] and len(tail) >= 2:
                    version, tail = tail[1], tail[2:]
                model = engine.model(name, version)
                if tail == []:
                    return 200, _json_bytes({
                        "name": model.name, "versions": [model.version],
                        "platform": model.platform,
                        "inputs": [s.as_dict() for s in model.inputs],
                        "outputs": [s.as_dict() for s in model.outputs]}), "application/json", {}
                if tail == ["ready"]:
                    ready = engine.ready
                    return (200 if ready else 503), _json_bytes(
                        {"name": model.name, "ready": ready}), "application/json", {}
            return _error(404, f"no such endpoint {path}")
        except ServeError as exc:
            return _error(STATUS[exc.kind], exc.message)

    async def _infer(self, name: str, version: str, headers: dict, body: bytes):
        t0 = time.perf_counter()
        engine = self.engine
        label = UNKNOWN_MODEL
        admitted = False
        held = 0
        try:
            model = engine.model(name, version)
            label = model.name
            encoding = headers.get("content-encoding", "").lower()
            body = _decompress(body, encoding, self.max_request_bytes)
            if encoding not in ("", "identity"):
                self.budget.reserve(len(body))          # the decompressed copy is held too
                held = len(body)
            hl = headers.get("inference-header-content-length")
            try:
                header_len = int(hl) if hl is not None else None
            except ValueError:
                raise ServeError(ServeError.INVALID, "bad Inference-Header-Content-Length") \
                    from None
            req, arrays, outputs = decode_infer(model, body, header_len)
            engine.counters.add("accepted")
            admitted = True
            try:
                result = await engine.infer(model, arrays)
                out, ctype, extra = encode_infer(model, req, result, outputs)
            finally:
                engine.counters.add("answered")
        except ServeError as exc:
            if not admitted:
                engine.counters.add("refused")
            self.metrics.observe(label, "rest", exc.kind, time.perf_counter() - t0)
            return _error(STATUS[exc.kind], exc.message)
        except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
            log.exception("REST infer failed")
            if not admitted:
                engine.counters.add("refused")
            self.metrics.observe(label, "rest", ServeError.INTERNAL, time.perf_counter() - t0)
            return _error(500, f"internal error: {exc}")
        finally:
            if held:
                self.budget.release(held)
        engine.counters.add("ok")
        self.metrics.observe(label, "rest", "ok", time.perf_counter() - t0)
        return 200, out, ctype, extra
