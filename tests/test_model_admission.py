"""Admission in the model server's core: per-model queues (one model's traffic cannot hold
another model's requests back), the server-wide backstop, and the drain deadline that fails
every queued request while admitted ones finish. Unit tests on the engine, without sockets;
the same behaviour over real gRPC and REST connections is in test_grpc_hostile."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, ClassVar

import numpy as np
import pytest

from enclave_build.model_server.backends import Backend, TensorSpec
from enclave_build.model_server.config import ConfigError, Limits, ModelConfig, parse_config
from enclave_build.model_server.core import Engine, LoadedModel, ServeError
from tests.ms_backends import NO_SOURCE

BASE: dict[str, Any] = {
    "version": 1,
    "service": "s",
    "models": [{"name": "m", "backend": "tflite", "path": "/m.tflite"}],
}


# ---------------------------------------------------------------- configuration


def test_config_grpc_connection_limits_and_model_queue():
    c = parse_config(BASE)
    assert c.limits.max_grpc_connections == 1024 and c.limits.max_streams_per_connection == 32
    assert c.models[0].max_queue is None  # derived from the server's limits
    c = parse_config(
        dict(
            BASE,
            limits={"max_grpc_connections": 8, "max_streams_per_connection": 2},
            models=[dict(BASE["models"][0], max_queue=0)],
        )
    )
    assert c.limits.max_grpc_connections == 8 and c.limits.max_streams_per_connection == 2
    assert c.models[0].max_queue == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"limits": {"max_grpc_connections": 0}}, "limits.max_grpc_connections"),
        ({"limits": {"max_streams_per_connection": True}}, "limits.max_streams_per_connection"),
        ({"models": [dict(BASE["models"][0], max_queue=-1)]}, r"models\[0\].max_queue"),
        ({"models": [dict(BASE["models"][0], max_queue="4")]}, r"models\[0\].max_queue"),
    ],
)
def test_config_errors_name_the_limit(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(dict(BASE, **change))


# ---------------------------------------------------------------- per-model queues


class GatedBackend(Backend):
    """Echoes its input once the test opens the gate (a slow model held still)."""

    platform = "gated"
    gates: ClassVar[dict[str, threading.Event]] = {}

    def inputs(self):
        return [TensorSpec("x", "FP32", [-1, 2])]

    def outputs(self):
        return [TensorSpec("y", "FP32", [-1, 2])]

    def infer(self, inputs):
        GatedBackend.gates[self.model.name].wait(30)
        return {"y": inputs["x"] * 2}


def gated_model(name: str, instances: int = 1, max_queue: int | None = None) -> LoadedModel:
    GatedBackend.gates[name] = threading.Event()
    mc = ModelConfig(
        name, "1", f"{__name__}:GatedBackend", "/none", instances=instances, max_queue=max_queue
    )
    return LoadedModel(mc, [GatedBackend(mc, NO_SOURCE) for _ in range(instances)])


X = np.ones((1, 2), np.float32)


def _infer_in_thread(engine: Engine, model: LoadedModel, outcomes: list) -> threading.Thread:
    def run():
        try:
            engine.infer_sync(model, {"x": X})
            outcomes.append("ok")
        except ServeError as exc:
            outcomes.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 15
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_queues_are_per_model_by_default_shares_of_the_server_queue():
    slow, idle, big = gated_model("slow"), gated_model("idle"), gated_model("big", instances=2)
    engine = Engine(
        {m.name: m for m in (slow, idle, big)}, Limits(max_concurrent_requests=8, max_queue=20)
    )
    # max_queue shared in proportion to instances (1:1:2), rounded down
    assert (slow.pool.max_queue, idle.pool.max_queue, big.pool.max_queue) == (5, 5, 10)
    explicit = gated_model("explicit", max_queue=0)
    engine2 = Engine({"explicit": explicit, "slow": gated_model("slow2")}, Limits(max_queue=9))
    assert explicit.pool.max_queue == 0 and engine2.models["slow"].pool.max_queue == 4
    engine.close()
    engine2.close()


def test_a_slow_models_backlog_does_not_hold_back_another_model():
    """Requests pile up on a slow model (its instance busy, its queue full, more refused at
    once): a request to another model of the same server still runs at once. Server-wide
    admission used to queue it behind the slow model's backlog."""
    slow, idle = gated_model("slow"), gated_model("idle")
    engine = Engine({"slow": slow, "idle": idle}, Limits(max_concurrent_requests=2, max_queue=4))
    outcomes: list = []
    threads = [_infer_in_thread(engine, slow, outcomes) for _ in range(8)]
    # 1 running + its queue (2 of the server's 4) waiting; the other 5 refused at once
    _wait_for(lambda: slow.pool.waiting == 2 and len(outcomes) == 5, "slow model's backlog")
    busy = [o for o in outcomes if isinstance(o, ServeError)]
    assert len(busy) == 5 and all(e.kind == ServeError.UNAVAILABLE for e in busy)
    assert "model 'slow' is busy" in busy[0].message and "max_queue is 2" in busy[0].message
    GatedBackend.gates["idle"].set()
    mine: list = []
    other = _infer_in_thread(engine, idle, mine)
    other.join(15)
    assert mine == ["ok"], mine  # answered while the slow model is still held
    assert slow.pool.waiting == 2
    GatedBackend.gates["slow"].set()
    for t in threads:
        t.join(15)
    assert outcomes.count("ok") == 3 and engine.admission.in_flight == 0
    engine.close()


def test_server_wide_bound_refuses_and_never_queues():
    a, b = gated_model("a", max_queue=5), gated_model("b")
    engine = Engine({"a": a, "b": b}, Limits(max_concurrent_requests=1, max_queue=2))
    outcomes: list = []
    threads = [_infer_in_thread(engine, a, outcomes) for _ in range(3)]
    _wait_for(lambda: engine.admission.in_flight == 3, "three admitted")
    with pytest.raises(ServeError, match=r"server busy: 3 requests admitted .*= 3\)") as info:
        engine.infer_sync(b, {"x": X})
    assert info.value.kind == ServeError.UNAVAILABLE
    GatedBackend.gates["a"].set()
    for t in threads:
        t.join(15)
    assert outcomes == ["ok"] * 3
    engine.close()


def test_handler_thread_share_bounds_grpc_waiters_per_model():
    """gRPC calls wait in handler threads: with 6 handler threads and 2 instances running,
    each of two equal models may keep 2 threads waiting; REST waiters (tasks) are not
    counted there."""
    a, b = gated_model("a"), gated_model("b")
    engine = Engine({"a": a, "b": b}, Limits(max_queue=100))
    engine.share_handler_threads(6)
    assert a.pool.max_thread_waiters == b.pool.max_thread_waiters == 2
    outcomes: list = []
    threads = [_infer_in_thread(engine, a, outcomes) for _ in range(5)]
    _wait_for(lambda: a.pool.waiting == 2 and len(outcomes) == 2, "a's waiting threads")
    assert all("gRPC calls queued" in e.message for e in outcomes)

    async def rest_side():
        task = asyncio.ensure_future(engine.infer(a, {"x": X}))  # still allowed to wait
        while a.pool.waiting < 3:
            await asyncio.sleep(0.001)
        GatedBackend.gates["a"].set()
        return await asyncio.wait_for(task, 15)

    assert asyncio.run(rest_side())["y"].tolist() == (X * 2).tolist()
    for t in threads:
        t.join(15)
    assert outcomes.count("ok") == 3
    engine.close()


# ---------------------------------------------------------------- the drain deadline


def test_stop_admitting_fails_queued_requests_and_lets_running_ones_finish():
    slow = gated_model("slow")
    engine = Engine({"slow": slow}, Limits(max_queue=10))
    outcomes: list = []
    threads = [_infer_in_thread(engine, slow, outcomes) for _ in range(3)]
    _wait_for(lambda: slow.pool.waiting == 2, "two queued behind the running one")

    async def queued_task():
        task = asyncio.ensure_future(engine.infer(slow, {"x": X}))
        while slow.pool.waiting < 3:
            await asyncio.sleep(0.001)
        assert engine.stop_admitting("shutting down: drain_seconds (1 s) ran out") == 3
        with pytest.raises(ServeError, match="drain_seconds") as info:
            await task
        return info.value

    error = asyncio.run(queued_task())
    assert error.kind == ServeError.UNAVAILABLE
    _wait_for(lambda: len(outcomes) == 2, "the queued threads answered")
    assert all(isinstance(o, ServeError) and "drain_seconds" in o.message for o in outcomes)
    assert engine.counters.cut_off == 3
    with pytest.raises(ServeError, match="drain_seconds"):  # nothing new starts
        engine.infer_sync(slow, {"x": X})
    GatedBackend.gates["slow"].set()  # the running one finishes
    for t in threads:
        t.join(15)
    assert outcomes[-1] == "ok" and engine.admission.in_flight == 0 and slow.pool.idle == 1
    engine.close()
