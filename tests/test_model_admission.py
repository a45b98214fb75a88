"""Admission in the model server's core: per-model queues (one model's traffic cannot hold
another model's requests back), the server-wide backstop, and the drain deadline that fails
every queued request while admitted ones finish. Unit tests on the engine, without sockets;
the same behaviour over real gRPC and REST connections is in test_grpc_hostile."""

from __future__ import annotations

import pytest

from model_server.config import ConfigError, parse_config

BASE = {"version": 1, "service": "s",
        "models": [{"name": "m", "backend": "tflite", "path": "/m.tflite"}]}


# ---------------------------------------------------------------- configuration


def test_config_grpc_connection_limits_and_model_queue():
    c = parse_config(BASE)
    assert c.limits.max_grpc_connections == 256 and c.limits.max_streams_per_connection == 32
    assert c.models[0].max_queue is None                   # derived from the server's limits
    c = parse_config(dict(BASE, limits={"max_grpc_connections": 8,
                                        "max_streams_per_connection": 2},
                          models=[dict(BASE["models"][0], max_queue=0)]))
    assert c.limits.max_grpc_connections == 8 and c.limits.max_streams_per_connection == 2
    assert c.models[0].max_queue == 0


@pytest.mark.parametrize("change, message", [
    ({"limits": {"max_grpc_connections": 0}}, "limits.max_grpc_connections"),
    ({"limits": {"max_streams_per_connection": True}}, "limits.max_streams_per_connection"),
    ({"models": [dict(BASE["models"][0], max_queue=-1)]}, r"models\[0\].max_queue"),
    ({"models": [dict(BASE["models"][0], max_queue="4")]}, r"models\[0\].max_queue"),
])
def test_config_errors_name_the_limit(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(dict(BASE, **change))
