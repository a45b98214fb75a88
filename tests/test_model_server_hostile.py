"""The model server against hostile or broken input: stale outputs across requests, zero-sized
tensors, memory held across connections, HTTP request smuggling, slow and idle clients, and the
small protocol rules (JSON depth, FP32 range, header/URL size, gRPC contents)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from enclave_build.model_server.backends import InferenceError
from enclave_build.model_server.config import ConfigError, Limits, ModelConfig, parse_config
from enclave_build.model_server.core import ByteBudget, Engine, LoadedModel, ServeError
from enclave_build.model_server.datatypes import TensorError, from_list
from enclave_build.model_server.metrics import Metrics
from enclave_build.model_server.rest import decode_infer
from tests.ms_backends import NO_SOURCE

from . import models as test_models
from .rest_env import INFER as _INFER
from .rest_env import RestInThread
from .rest_env import post_request as _post
from .rest_env import read_all as _read_all
from .rest_env import wait_until as _wait_until
from .test_model_server import BASE, EchoBackend, _echo_model

# as the server compiles it: f32 (not bfloat16 on CPUs with bf16 units), one thread
F32_ONE_THREAD = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}


# ---------------------------------------------------------------- outputs of other requests


class _Src:
    def __init__(self, path) -> None:
        self.path = path


def test_openvino_never_returns_an_earlier_requests_outputs():
    """A reused InferRequest kept the (4, 2) result of a batch of 4 and handed it to the next
    client whose (tiny) input made the runtime write nothing."""
    pytest.importorskip("openvino")
    from enclave_build.model_server.backends.openvino import OpenVINOBackend

    path = test_models.ocr_cls_onnx()
    mc = ModelConfig("cls", "1", "openvino", str(path))
    backend = OpenVINOBackend(mc, _Src(path))
    model = LoadedModel(mc, [backend])
    out = "save_infer_model/scale_0.tmp_1"
    rng = np.random.default_rng(1)
    victim = backend.infer({"x": rng.standard_normal((4, 3, 48, 192)).astype(np.float32)})[out]
    assert victim.shape == (4, 2)
    for shape in [(1, 3, 1, 1), (1, 3, 8, 8)]:
        x = np.frombuffer(np.zeros(shape, np.float32).tobytes(), np.float32).reshape(shape)
        with pytest.raises(InferenceError, match=r"too small|shape"):
            backend.infer({"x": x})
    for shape in [(1, 3, 0, 0), (0, 3, 48, 192)]:
        with pytest.raises(ServeError, match="zero-sized") as info:  # refused generically
            model.check_input("x", "FP32", list(shape))
        assert info.value.kind == ServeError.INVALID
        with pytest.raises(InferenceError, match="zero-sized"):  # and by the backend
            backend.infer({"x": np.zeros(shape, np.float32)})
    import openvino as ov

    x = rng.standard_normal((1, 3, 48, 192)).astype(np.float32)
    want = ov.Core().compile_model(str(path), "CPU", F32_ONE_THREAD)(x)[0]
    got = backend.infer({"x": x})[out]  # the instance still serves correctly
    assert got.shape == (1, 2) and np.array_equal(got, want)


class _EmptyOK(EchoBackend):
    accepts_empty = True


def test_zero_sized_dynamic_dimension_refused_unless_the_backend_accepts_it():
    m = _echo_model()
    with pytest.raises(ServeError, match="zero-sized"):
        m.check_input("x", "FP32", [0, 2])
    mc = ModelConfig("e", "1", "x:y", "/none")
    assert LoadedModel(mc, [_EmptyOK(mc, NO_SOURCE)]).check_input("x", "FP32", [0, 2])


class _WrongShape(EchoBackend):
    def infer(self, inputs):
        return {"y": np.zeros((1, 3), np.float32), "n": np.array([1], np.int64)}


def test_core_refuses_outputs_that_do_not_fit_the_declared_shapes():
    mc = ModelConfig("w", "1", "x:y", "/none")
    m = LoadedModel(mc, [_WrongShape(mc, NO_SOURCE)])
    engine = Engine({"w": m}, Limits())
    with pytest.raises(ServeError, match=r"output 'y' has shape \[1, 3\]") as info:
        engine.infer_sync(m, {"x": np.ones((1, 2), np.float32)})
    assert info.value.kind == ServeError.INTERNAL
    engine.close()


class _FakeInterpreter:
    """Enough of LiteRT's Interpreter for the tflite backend; allocate_tensors fails once."""

    fail_next_allocate = False

    def __init__(self, model_path, num_threads):
        self.shape = [-1, 2]
        self.allocated = None
        self.calls = []

    def allocate_tensors(self):
        self.calls.append("allocate")
        if _FakeInterpreter.fail_next_allocate:
            _FakeInterpreter.fail_next_allocate = False
            raise RuntimeError("allocation failed")
        self.allocated = list(self.shape)

    def get_input_details(self):
        return [
            {
                "name": "x",
                "index": 0,
                "shape": np.array([1, 2]),
                "dtype": np.float32,
                "shape_signature": np.array([-1, 2]),
            }
        ]

    def get_output_details(self):
        return [
            {
                "name": "y",
                "index": 1,
                "shape": np.array([1, 2]),
                "dtype": np.float32,
                "shape_signature": np.array([-1, 2]),
            }
        ]

    def resize_tensor_input(self, index, shape):
        self.calls.append("resize")
        self.shape = list(shape)

    def set_tensor(self, index, value):
        if list(value.shape) != self.allocated:
            raise ValueError("tensor not allocated for this shape")
        self.value = np.array(value)

    def invoke(self):
        self.result = self.value * 2

    def get_tensor(self, index):
        return np.array(self.result)


def test_tflite_backend_reallocates_after_a_failed_resize():
    from enclave_build.model_server.backends import tflite

    made: list[_FakeInterpreter] = []

    def interpreter(**kwargs):
        made.append(_FakeInterpreter(**kwargs))
        return made[-1]

    b = tflite.TFLiteBackend(
        ModelConfig("t", "1", "tflite", "/none"), _Src("/none"), interpreter=interpreter
    )
    x3 = np.ones((3, 2), np.float32)
    _FakeInterpreter.fail_next_allocate = True
    with pytest.raises(RuntimeError):
        b.infer({"x": x3})
    # the same shape again: resized and allocated again, not invoked on stale tensors
    assert b.infer({"x": x3})["y"].tolist() == (x3 * 2).tolist()
    assert made[0].calls[-2:] == ["resize", "allocate"]
    with pytest.raises(InferenceError, match="zero-sized"):
        b.infer({"x": np.ones((0, 2), np.float32)})


# ---------------------------------------------------------------- small protocol rules


def test_fp32_out_of_range_is_refused_not_inf():
    with pytest.raises(TensorError, match="out of range for FP32"):
        from_list([1.0, 1e39], "FP32", [2])
    assert from_list([1e39], "FP64", [1]).tolist() == [1e39]
    assert np.isinf(from_list([float("inf")], "FP32", [1])).all()  # explicit inf stays


def test_deep_json_and_non_integer_binary_size_are_client_errors():
    deep = b'{"inputs":' + b"[" * 100000 + b"]" * 100000 + b"}"
    with pytest.raises(ServeError, match="nested too deeply") as info:
        decode_infer(_echo_model(), deep, None)
    assert info.value.kind == ServeError.INVALID
    head = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], '
        b'"parameters": {"binary_data_size": "x"}}]}'
    )
    with pytest.raises(ServeError, match="binary_data_size 'x' is not an integer"):
        decode_infer(_echo_model(), head + b"\0" * 8, len(head))


def test_grpc_raw_and_typed_contents_together_are_refused():
    from enclave_build.model_server import protocol as pb
    from enclave_build.model_server.grpc_service import decode_request

    req = pb.ModelInferRequest(model_name="echo")
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    req.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    with pytest.raises(ServeError, match="raw_input_contents and typed contents") as info:
        decode_request(_echo_model(), req)
    assert info.value.kind == ServeError.INVALID


def test_config_buffer_connection_and_timeout_limits():
    c = parse_config(dict(BASE, limits={"max_request_bytes": 1000}))
    assert c.limits.max_buffered_bytes == 4000 and c.limits.max_connections == 256
    assert c.limits.header_timeout == 10 and c.limits.idle_timeout == 30
    c = parse_config(
        dict(
            BASE, limits={"max_request_bytes": 1000, "max_buffered_bytes": 10, "idle_timeout": 0.5}
        )
    )
    assert c.limits.max_buffered_bytes == 1000 and c.limits.idle_timeout == 0.5
    with pytest.raises(ConfigError, match=r"limits.header_timeout"):
        parse_config(dict(BASE, limits={"header_timeout": 0}))
    assert c.limits.first_byte_timeout == 5 and c.limits.body_stall_timeout == 10
    c = parse_config(dict(BASE, limits={"first_byte_timeout": 0.25, "body_stall_timeout": 2}))
    assert c.limits.first_byte_timeout == 0.25 and c.limits.body_stall_timeout == 2
    for key in ("first_byte_timeout", "body_stall_timeout"):
        with pytest.raises(ConfigError, match=f"limits.{key}"):
            parse_config(dict(BASE, limits={key: -1}))
    with pytest.raises(ConfigError, match=r"limits.max_connections"):
        parse_config(dict(BASE, limits={"max_connections": "9"}))


def test_byte_budget():
    b = ByteBudget(10)
    assert b.try_reserve(6) and not b.try_reserve(5)
    with pytest.raises(ServeError, match="max_buffered_bytes") as info:
        b.reserve(5)
    assert info.value.kind == ServeError.UNAVAILABLE
    b.release(6)
    assert b.try_reserve(10) and b.used == 10


class _Ctx:
    def __init__(self, peer: str = "ipv4:127.0.0.1:1") -> None:
        self._peer = peer

    def abort(self, code, details):
        raise RuntimeError(code, details)

    def cancel(self):
        raise AssertionError("not cancelled in these tests")

    def peer(self):
        return self._peer

    def is_active(self):
        return True

    def add_callback(self, callback) -> bool:
        """grpc's: *callback* runs when the call ends; here the answer is taken as sent when
        the handler returns (False: "already ended", so the server runs it at once)."""
        return False


def test_grpc_message_refused_when_the_buffer_budget_is_used_up():
    """Room for a message (max_request_bytes) is reserved before it is received; when other
    requests hold the budget, the call is refused RESOURCE_EXHAUSTED once the gate's wait ends,
    and counted."""
    import grpc

    from enclave_build.model_server import protocol as pb
    from enclave_build.model_server.grpc_service import GRPCService
    from enclave_build.model_server.receive_gate import ReceiveGate

    m = _echo_model()
    engine = Engine({"echo": m}, Limits(max_request_bytes=1000, max_buffered_bytes=1000))
    gate = ReceiveGate(engine.budget, 1000, grace=0.01, max_waiting=1)
    svc = GRPCService(engine, Metrics(), "t", gate=gate)
    req = pb.ModelInferRequest(model_name="echo")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    raw = req.SerializeToString()
    assert pb.ModelInferResponse.FromString(svc.model_infer(iter([raw]), _Ctx())).outputs
    assert engine.budget.used == 0
    engine.budget.reserve(900)  # held by other requests
    with pytest.raises(RuntimeError) as info:
        svc.model_infer(iter([raw]), _Ctx())
    assert info.value.args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_buffered_bytes" in info.value.args[1]
    assert engine.counters.refused == 1 and engine.budget.used == 900
    engine.close()


def test_grpc_connection_refused_for_the_budget_waits_before_its_next_room():
    """A request the byte budget cannot take once its message has arrived (here parsing it
    would hold more than the whole budget) is refused, and its connection's next call gets a
    room only after BUSY_WAIT seconds, so a client sending what the server cannot take does
    not have it receive message after message; another connection is served meanwhile."""
    import grpc

    from enclave_build.model_server import protocol as pb
    from enclave_build.model_server.grpc_service import GRPCService
    from enclave_build.model_server.receive_gate import ReceiveGate

    class Clock:
        now = 100.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    engine = Engine(
        {"echo": _echo_model()}, Limits(max_request_bytes=1000, max_buffered_bytes=4000)
    )
    gate = ReceiveGate(engine.budget, 1000, grace=5, max_waiting=4, clock=clock, busy_wait=0.5)
    svc = GRPCService(engine, Metrics(), "t", gate=gate)
    good = pb.ModelInferRequest(model_name="echo")
    good.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    good.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    bad = pb.ModelInferRequest()
    bad.CopyFrom(good)
    for _ in range(20):  # parsing them would hold more than 4000 bytes
        bad.outputs.add(name="y")
    with pytest.raises(RuntimeError) as info:
        svc.model_infer(iter([bad.SerializeToString()]), _Ctx())
    assert info.value.args[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    answers = {}
    later = threading.Thread(
        target=lambda: answers.setdefault(
            "same", svc.model_infer(iter([good.SerializeToString()]), _Ctx())
        )
    )
    later.start()
    _wait_until(lambda: gate.waiting == 1, "the connection's next call waits")
    other = svc.model_infer(iter([good.SerializeToString()]), _Ctx("ipv4:127.0.0.1:2"))
    assert pb.ModelInferResponse.FromString(other).outputs
    assert gate.waiting == 1 and "same" not in answers
    clock.now += 0.6
    later.join(5)
    assert pb.ModelInferResponse.FromString(answers["same"]).outputs
    engine.close()


# ---------------------------------------------------------------- REST on a real socket


@pytest.fixture
def rest():
    srv = RestInThread()
    yield srv
    srv.close()


def test_rest_request_smuggling_is_refused_and_the_connection_closed(rest):
    ok = rest.exchange(_post(_INFER, f"Content-Length: {len(_INFER)}\r\nConnection: close\r\n"))
    assert ok.startswith(b"HTTP/1.1 200")
    smuggled = b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n"
    cases = {
        "duplicate": f"Content-Length: {len(_INFER)}\r\nContent-Length: {len(_INFER)}\r\n",
        "conflicting": f"Content-Length: {len(_INFER)}\r\nContent-Length: 5\r\n",
        "plus sign": f"Content-Length: +{len(_INFER)}\r\n",
        "missing": "",
        "chunked": "Transfer-Encoding: chunked\r\n",
        "chunked + length": f"Content-Length: {len(_INFER)}\r\nTransfer-Encoding: chunked\r\n",
    }
    for name, headers in cases.items():
        answer = rest.exchange(_post(_INFER + smuggled, headers))
        status = answer.split(b" ", 2)[1]
        assert status == (
            b"400" if name in ("duplicate", "conflicting", "plus sign") else b"411"
        ), (name, answer)
        assert answer.count(b"HTTP/1.1 ") == 1, (name, answer)  # nothing parsed after it
        assert b"Connection: close" in answer, name


def test_rest_header_body_and_idle_deadlines(rest):
    t0 = time.monotonic()
    with rest.connect() as idle, rest.connect() as partial, rest.connect() as body:
        partial.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        body.sendall(_post(b"{", "Content-Length: 100\r\n"))  # never ends its body
        assert _read_all(partial).startswith(b"HTTP/1.1 408")
        assert _read_all(body).startswith(b"HTTP/1.1 408")
        assert _read_all(idle) == b""  # closed silently
    assert time.monotonic() - t0 < 4
    # a slowloris dribbling header lines is answered at the header deadline too
    with rest.connect() as s:
        t0 = time.monotonic()
        s.sendall(b"GET /v2 HTTP/1.1\r\n")
        stop = threading.Event()

        def dribble():
            try:
                while not stop.is_set():
                    s.sendall(b"X-a: b\r\n")
                    time.sleep(0.1)
            except OSError:
                pass

        t = threading.Thread(target=dribble)
        t.start()
        try:
            assert s.recv(100).startswith(b"HTTP/1.1 408")
            assert time.monotonic() - t0 < 4  # 0.5 s for the whole block, not per line
        finally:
            stop.set()
            t.join(5)


def test_rest_connection_cap_closes_the_longest_idle_connection():
    """At max_connections a new connection is served: the connection idle the longest is
    closed to make room (it was refused with 503 before, so idle sockets locked clients out)."""
    # timeouts long enough that the idle connections are still open, however slowly the
    # machine runs, when the third one arrives
    srv = RestInThread(max_connections=2, idle_timeout=30, first_byte_timeout=30)
    try:
        a = srv.connect()
        _wait_until(lambda: srv.rest.open_connections == 1, "the server holds the first")
        b = srv.connect()
        _wait_until(lambda: srv.rest.open_connections == 2, "the server holds both connections")
        answer = srv.exchange(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert _read_all(a) == b""  # the oldest idle one was closed
        b.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_all(b).startswith(b"HTTP/1.1 200")  # the younger one still serves
        a.close()
        b.close()
    finally:
        srv.close()


def _binary_body(size: int) -> tuple[bytes, str]:
    """A binary-tensor inference body of exactly *size* bytes for the echo model (x: N x 2
    zeros; only the small output "n" asked for), and its Inference-Header-Content-Length."""
    n = (size - 200) // 8
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [n, 2],
                    "parameters": {"binary_data_size": 8 * n},
                }
            ],
            "outputs": [{"name": "n", "parameters": {"binary_data": True}}],
        }
    ).encode()
    head += b" " * (size - 8 * n - len(head))
    return head + bytes(8 * n), f"Inference-Header-Content-Length: {len(head)}\r\n"


def test_rest_buffer_budget_across_connections():
    """Body bytes are reserved as they arrive: with a budget of 100 KiB and one body holding 60
    KiB received bytes, a second 64 KiB body does not fit and is refused with 503; once the
    first is done, there is room again."""
    size = 64 << 10
    srv = RestInThread(
        max_request_bytes=size, max_buffered_bytes=100 << 10, body_timeout=5, body_stall_timeout=5
    )
    try:
        body, binary = _binary_body(size)
        length = f"Content-Length: {size}\r\n"
        with srv.connect() as holder:
            holder.sendall(_post(body[: 60 << 10], length + binary))
            _wait_until(lambda: srv.rest.budget.used >= 60 << 10, "the first body's bytes reserved")
            answer = srv.exchange(_post(body, length + binary))
            assert answer.startswith(b"HTTP/1.1 503") and b"max_buffered_bytes" in answer
            holder.sendall(body[60 << 10 :])
            assert holder.recv(100).startswith(b"HTTP/1.1 200")
        answer = srv.exchange(_post(body, length + "Connection: close\r\n" + binary))
        assert answer.startswith(b"HTTP/1.1 200"), answer
        _wait_until(lambda: srv.rest.budget.used == 0, "every reservation released")
    finally:
        srv.close()


def test_rest_oversize_header_and_url_are_answered_not_reset(rest):
    answer = rest.exchange(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2_000_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    answer = rest.exchange(b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414")
    answer = rest.exchange(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414")


def test_rest_deep_json_is_a_400(rest):
    deep = b'{"inputs":' + b"[" * 100000 + b"]" * 100000 + b"}"
    # (a budget that holds what parsing 100,000 lists could take, so the parser is reached)
    srv = RestInThread(max_request_bytes=1 << 20, max_buffered_bytes=16 << 20)
    try:
        answer = srv.exchange(_post(deep, f"Content-Length: {len(deep)}\r\nConnection: close\r\n"))
    finally:
        srv.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"nested too deeply" in answer
    assert srv.engine.counters.refused == 1
