"""Unit tests of the model server's parts (no server process): the runtime-built KServe v2
messages against tritonclient's own generated ones, tensor encodings, config errors, admission
control, REST request decoding, metrics text, backend loading."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import numpy as np
import pytest

from enclave_build.model_server import datatypes
from enclave_build.model_server import protocol as pb
from enclave_build.model_server.admission import InstancePool
from enclave_build.model_server.backends import (
    Backend,
    BackendError,
    TensorSpec,
    from_numpy_dtype,
    load_backend_class,
    to_numpy_dtype,
)
from enclave_build.model_server.config import ConfigError, Limits, ModelConfig, parse_config
from enclave_build.model_server.core import LoadedModel, ServeError
from enclave_build.model_server.metrics import Metrics
from enclave_build.model_server.rest import decode_infer, encode_infer
from tests.ms_backends import NO_SOURCE

# ---------------------------------------------------------------- protocol


def _triton_pb2():
    pytest.importorskip("grpc")
    return pytest.importorskip("tritonclient.grpc.service_pb2")


def _repeated(field) -> bool:
    # protobuf >= 6.31 has is_repeated (and deprecates label); 5.x only has label
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


@pytest.mark.parametrize("name", list(pb.MESSAGES))
def test_message_fields_match_tritonclient(name):
    """Every field we declare has the same number, type and label as in tritonclient's
    generated protocol (the KServe v2 definition Triton extends)."""
    s = _triton_pb2()
    theirs = s.DESCRIPTOR.message_types_by_name[name.split(".")[0]]
    for part in name.split(".")[1:]:
        theirs = theirs.nested_types_by_name[part]
    ours = pb.POOL.FindMessageTypeByName(f"inference.{name}")
    assert len(ours.fields) == len(pb.MESSAGES[name])
    for f in ours.fields:
        t = theirs.fields_by_name[f.name]
        assert (f.number, f.type, _repeated(f)) == (t.number, t.type, _repeated(t)), f.full_name
        if f.message_type is not None:
            assert f.message_type.name == t.message_type.name


def test_infer_request_round_trips_through_tritonclient_messages():
    s = _triton_pb2()
    r = s.ModelInferRequest(model_name="m", model_version="2", id="req-1")
    t = r.inputs.add(name="in", datatype="FP32", shape=[1, 2])
    t.parameters["binary_data_size"].int64_param = 8
    t.contents.fp32_contents.extend([1.5, -2.0])
    r.outputs.add(name="out").parameters["classification"].int64_param = 0
    r.parameters["priority"].uint64_param = 3
    r.parameters["timeout"].double_param = 0.5
    r.raw_input_contents.append(b"\x00" * 8)
    ours = pb.ModelInferRequest.FromString(r.SerializeToString())
    # Map fields have no defined order on the wire: compare deterministic serializations.
    assert ours.SerializeToString(deterministic=True) == r.SerializeToString(deterministic=True)
    assert ours.inputs[0].parameters["binary_data_size"].int64_param == 8
    assert list(ours.inputs[0].contents.fp32_contents) == [1.5, -2.0]
    assert ours.parameters["priority"].uint64_param == 3

    resp = pb.ModelInferResponse(model_name="m", id="req-1")
    resp.outputs.add(name="o", datatype="INT64", shape=[3])
    resp.raw_output_contents.append(np.arange(3, dtype="<i8").tobytes())
    theirs = s.ModelInferResponse.FromString(resp.SerializeToString())
    assert list(theirs.outputs[0].shape) == [3]
    assert np.frombuffer(theirs.raw_output_contents[0], "<i8").tolist() == [0, 1, 2]


def test_service_declares_the_six_rpcs():
    svc = pb.POOL.FindServiceByName("inference.GRPCInferenceService")
    assert sorted(m.name for m in svc.methods) == sorted(
        ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]
    )


# ---------------------------------------------------------------- datatypes


@pytest.mark.parametrize(
    "dt",
    [
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
    ],
)
def test_raw_round_trip_is_zero_copy(dt):
    a = (np.arange(12) % 2 == 0) if dt == "BOOL" else np.arange(12).astype(to_numpy_dtype(dt))
    raw = bytes(datatypes.raw_view(a.reshape(3, 4)))
    back = datatypes.from_raw(raw, dt, [3, 4])
    assert from_numpy_dtype(back.dtype) == dt
    assert np.array_equal(back.reshape(-1), a)
    assert not back.flags.owndata  # a view over the request bytes, not a copy


def test_raw_size_mismatch_is_a_tensor_error():
    with pytest.raises(datatypes.TensorError, match="needs 16 bytes, got 12"):
        datatypes.from_raw(b"\0" * 12, "FP32", [2, 2])


def test_bytes_tensor_encoding():
    a = np.array([b"ab", b"", "\u00e9".encode()], dtype=object)
    raw = bytes(datatypes.raw_view(a))
    assert raw[:6] == b"\x02\0\0\0ab"
    assert list(datatypes.from_raw(raw, "BYTES", [3])) == list(a)
    with pytest.raises(datatypes.TensorError):
        datatypes.from_raw(raw[:-1], "BYTES", [3])
    with pytest.raises(datatypes.TensorError):
        datatypes.from_raw(raw + b"x", "BYTES", [3])


def test_unknown_datatype_names_the_supported_ones():
    with pytest.raises(datatypes.TensorError, match="FP32"):
        to_numpy_dtype("FLOAT")
    with pytest.raises(BackendError):
        TensorSpec("x", "float32", [1])


def test_tensor_spec_accepts():
    spec = TensorSpec("x", "FP32", [-1, 3])
    assert spec.accepts([5, 3]) and not spec.accepts([5, 4]) and not spec.accepts([3])


# ---------------------------------------------------------------- config

BASE: dict[str, Any] = {
    "version": 1,
    "service": "s",
    "models": [{"name": "m", "backend": "tflite", "path": "/m.tflite"}],
}


def test_config_defaults_and_limits():
    c = parse_config(dict(BASE, limits={"max_queue": 0}))
    assert c.limits.max_queue == 0 and c.limits.max_concurrent_requests == 64
    assert c.grpc.port == 8001 and c.rest.port == 8000 and c.models[0].instances == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 2}, "version must be 1"),
        ({"grcp": {}}, "unknown key"),
        ({"limits": {"max_queue": -1}}, "limits.max_queue"),
        ({"limits": {"max_reqest_bytes": 5}}, "unknown key"),
        (
            {"grpc": {"host": "x", "port": 70000}},
            "grpc.port: 70000 is out of range; allowed: 0 to 65535",
        ),
        (
            {"models": [{"name": "m", "path": "/x"}]},
            r"models\[0\].backend: required key is missing",
        ),
        ({"models": [BASE["models"][0], BASE["models"][0]]}, "unique"),
    ],
)
def test_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(dict(BASE, **change))


# ---------------------------------------------------------------- backends


class EchoBackend(Backend):
    platform = "echo"

    def inputs(self):
        return [TensorSpec("x", "FP32", [-1, 2])]

    def outputs(self):
        return [TensorSpec("y", "FP32", [-1, 2]), TensorSpec("n", "INT64", [1])]

    def infer(self, inputs):
        x = inputs["x"]
        return {"y": x * 2, "n": np.array([x.shape[0]], dtype=np.int64)}


def _echo_model() -> LoadedModel:
    mc = ModelConfig("echo", "1", f"{__name__}:EchoBackend", "/none")
    return LoadedModel(mc, [EchoBackend(mc, NO_SOURCE)])


def test_backend_by_module_path_and_unknown_name():
    assert load_backend_class(f"{__name__}:EchoBackend") is EchoBackend
    with pytest.raises(BackendError, match=r"no backend named 'nope'.*tflite"):
        load_backend_class("nope")
    with pytest.raises(BackendError, match="cannot import"):
        load_backend_class("no_such_module_xyz:Backend")


def test_model_validation_messages():
    m = _echo_model()
    with pytest.raises(ServeError, match="no input 'z'"):
        m.check_input("z", "FP32", [1, 2])
    with pytest.raises(ServeError, match="datatype 'INT32'"):
        m.check_input("x", "INT32", [1, 2])
    with pytest.raises(ServeError, match=r"shape \[1, 3\]"):
        m.check_input("x", "FP32", [1, 3])
    with pytest.raises(ServeError, match="no output 'q'"):
        m.check_outputs(["q"])
    assert m.check_outputs([]) == ["y", "n"]


# ---------------------------------------------------------------- REST decoding


def test_rest_binary_request_and_response_layout():
    m = _echo_model()
    x = np.array([[1, 2], [3, 4]], dtype=np.float32)
    head = json.dumps(
        {
            "id": "7",
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 2],
                    "parameters": {"binary_data_size": 16},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "n"}],
        }
    ).encode()
    req, arrays, outputs = decode_infer(m, head + x.tobytes(), len(head))
    assert np.array_equal(arrays["x"], x) and outputs == [("y", True), ("n", False)]
    body, ctype, extra = encode_infer(m, req, EchoBackend.infer(None, arrays), outputs)
    n = int(extra["Inference-Header-Content-Length"])
    meta = json.loads(body[:n])
    assert ctype == "application/octet-stream" and meta["id"] == "7"
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert meta["outputs"][1]["data"] == [2]
    assert np.array_equal(np.frombuffer(body[n:], np.float32).reshape(2, 2), x * 2)


def test_rest_json_request_and_binary_output_default():
    m = _echo_model()
    body = json.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [[0.5, 1.5]]}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    _req, arrays, outputs = decode_infer(m, body, None)
    assert arrays["x"].tolist() == [[0.5, 1.5]] and outputs == [("y", True), ("n", True)]


_BIN_HEAD = (
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], '
    b'"parameters": {"binary_data_size": 8}}]}'
)


@pytest.mark.parametrize(
    "body, header_len, message",
    [
        (b"{not json", None, "not JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2]}]}', None, "neither data"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1]}]}',
            None,
            "needs 2 elements",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": ["a", "b"]}]}',
            None,
            "does not convert",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], '
            b'"parameters": {"binary_data_size": 8}}]}',
            200,
            "does not fit a body",
        ),
        (_BIN_HEAD + b"\0" * 12, len(_BIN_HEAD), "4 binary bytes after"),
    ],
)
def test_rest_bad_requests(body, header_len, message):
    with pytest.raises(ServeError, match=message) as info:
        decode_infer(_echo_model(), body, header_len)
    assert info.value.kind == ServeError.INVALID


# ---------------------------------------------------------------- admission


def test_pool_bounds_running_and_queued_requests():
    async def scenario():
        pool = InstancePool("m", ["a", "b"], max_queue=1)
        got = {await pool.acquire(), await pool.acquire()}
        assert got == {"a", "b"} and pool.idle == 0
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        assert pool.waiting == 1 and not waiter.done()
        with pytest.raises(ServeError, match=r"model 'm' is busy.*max_queue is 1") as info:
            await pool.acquire()  # 2 running + 1 queued: refused
        assert info.value.kind == ServeError.UNAVAILABLE
        pool.release("a")  # handed straight to the waiter
        assert await asyncio.wait_for(waiter, 10) == "a"
        assert pool.idle == 0 and pool.waiting == 0
        pool.release("a")
        pool.release("b")
        assert pool.idle == 2

    asyncio.run(scenario())


def test_cancelled_waiter_leaves_no_instance_behind():
    async def scenario():
        pool = InstancePool("m", ["a"], max_queue=4)
        await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        pool.release("a")
        assert pool.idle == 1 and pool.waiting == 0

    asyncio.run(scenario())


def test_pool_hands_instances_between_threads_and_tasks():
    """gRPC handler threads and REST tasks wait in one queue per model: an instance released
    by either side goes to the longest waiter on the other, FIFO, and the queue bound counts
    both."""
    import threading

    async def scenario():
        pool = InstancePool("m", ["i"], max_queue=2)
        await pool.acquire()  # a REST request holds the instance
        got = threading.Event()

        def handler_thread():
            item = pool.acquire_sync()  # queued behind it
            got.set()
            time.sleep(0.05)
            pool.release(item)  # hands over to the task below

        t = threading.Thread(target=handler_thread)
        t.start()
        while pool.waiting < 1:
            await asyncio.sleep(0.001)
        task = asyncio.ensure_future(pool.acquire())
        while pool.waiting < 2:
            await asyncio.sleep(0.001)
        with pytest.raises(ServeError) as info:
            await pool.acquire()  # 1 running + 2 queued: refused
        assert info.value.kind == ServeError.UNAVAILABLE
        pool.release("i")
        assert await asyncio.wait_for(task, 10) == "i"  # woken from the thread
        assert got.is_set() and pool.idle == 0 and pool.waiting == 0
        t.join(10)
        pool.release("i")
        assert pool.idle == 1

    asyncio.run(scenario())


def test_infer_sync_shares_the_pool_with_async_requests():
    import threading

    from enclave_build.model_server.core import Engine

    m = _echo_model()
    engine = Engine({"echo": m}, Limits(max_concurrent_requests=4, max_queue=8))
    x = np.ones((3, 2), np.float32)
    out = engine.infer_sync(m, {"x": x})
    assert out["y"].tolist() == (x * 2).tolist() and out["n"].tolist() == [3]
    results = []

    def worker():
        for _ in range(50):
            results.append(int(engine.infer_sync(m, {"x": x})["n"][0]))
            engine.counters.add("ok")

    async def tasks():
        return [await engine.infer(m, {"x": x}) for _ in range(50)]

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    assert len(asyncio.run(tasks())) == 50
    for t in threads:
        t.join(30)
    assert results == [3] * 200 and engine.counters.ok == 200
    assert engine.admission.in_flight == 0 and m.pool.idle == 1
    with pytest.raises(ServeError, match="missing input"):
        engine.infer_sync(m, {})
    engine.close()


# ---------------------------------------------------------------- metrics

SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\})? '
    r"(-?[0-9.e+-]+|\+Inf|NaN)$"
)


def parse_prometheus(text: str) -> dict[str, list[tuple[str, float]]]:
    """A strict reader of the text exposition format: every line a comment or a sample, every
    sample's family declared by a TYPE line first."""
    types: dict[str, str] = {}
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no TYPE line"
        samples.setdefault(name, []).append((m.group(2) or "", float(m.group(4))))
    return samples


def test_metrics_text_parses_and_histogram_is_cumulative():
    m = Metrics()
    for s in (0.0004, 0.003, 0.003, 7.0, 20.0):
        m.observe("fd", "grpc", "ok", s)
    m.observe('we"ird\\', "rest", "invalid", 0.01)
    samples = parse_prometheus(m.render(queue_depth=3, in_flight=1, models=["fd"]))
    buckets = [
        v
        for labels, v in samples["model_server_request_duration_seconds_bucket"]
        if 'model="fd"' in labels
    ]
    assert buckets == sorted(buckets) and buckets[0] == 1 and buckets[-1] == 5
    assert dict(samples["model_server_queue_depth"])[""] == 3
    assert ('{model="fd",protocol="grpc",status="ok"}', 5.0) in samples[
        "model_server_requests_total"
    ]
    assert samples["model_server_process_resident_bytes"][0][1] > 1 << 20
