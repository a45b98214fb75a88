"""The floors the benchmarks compare our servers with do the same work as ours: the same
request gets the same answer from the floor and from our server (benchmarks/serving_floor.py:
REST and both gRPC floors against the model server with the no-op backend;
benchmarks/secrets_floor.py: the TLS floor releases the secret as secret_prov does)."""

from __future__ import annotations

import asyncio
import http.client
import json
import multiprocessing
import ssl
from pathlib import Path

import grpc
import numpy as np
import pytest

from benchmarks.noop_backend import INPUT, OUTPUTS
from benchmarks.serving import ServerProc
from benchmarks.serving_floor import (
    NOOP,
    FloorProc,
    serve_grpc_floor,
    serve_grpc_stream_floor,
    serve_rest_floor,
)
from enclave_build.model_server import protocol as pb

pytestmark = pytest.mark.integration

X = np.random.default_rng(1).random(INPUT[1], dtype=np.float32)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    server = ServerProc(
        Path("/none"), 1, tmp_path_factory.mktemp("noop"), None, label="noop", backend=NOOP
    )
    yield server
    server.stop()


def _rest(address: str) -> tuple[list[dict], bytes]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT[0],
                    "datatype": "FP32",
                    "shape": list(INPUT[1]),
                    "parameters": {"binary_data_size": X.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},  # as the benchmark's clients ask
        }
    ).encode()
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "POST",
        "/v2/models/fd/infer",
        head + X.tobytes(),
        {"Inference-Header-Content-Length": str(len(head))},
    )
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body[:200]
    n = int(response.getheader("Inference-Header-Content-Length") or -1)
    conn.close()
    return json.loads(body[:n])["outputs"], body[n:]


def test_the_rest_floor_answers_as_ours(ours):
    floor = FloorProc(serve_rest_floor)
    try:
        expected = _rest(ours.rest)
        assert _rest(floor.address) == expected
    finally:
        floor.stop()
    outputs, data = expected
    assert [(o["name"], tuple(o["shape"])) for o in outputs] == list(OUTPUTS)
    assert data == bytes(len(data)) and len(data) == 4 * sum(np.prod(s) for _, s in OUTPUTS)


def _grpc(address: str) -> list[tuple[str, str, list[int], bytes]]:
    request = pb.ModelInferRequest(model_name="fd")
    request.inputs.add(name=INPUT[0], datatype="FP32", shape=list(INPUT[1]))
    request.raw_input_contents.append(X.tobytes())
    with grpc.insecure_channel(address) as channel:
        infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{pb.SERVICE_FULL_NAME}/ModelInfer"
        )
        response = pb.ModelInferResponse.FromString(infer(request.SerializeToString(), timeout=30))
    return [
        (o.name, o.datatype, list(o.shape), raw)
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    ]


@pytest.mark.parametrize("serve", [serve_grpc_floor, serve_grpc_stream_floor])
def test_the_grpc_floors_answer_as_ours(ours, serve):
    floor = FloorProc(serve)
    try:
        assert _grpc(floor.address) == _grpc(ours.grpc)
    finally:
        floor.stop()


def test_the_tls_floor_releases_the_secret(tmp_path):
    from benchmarks.secrets import contexts_for, one, setup
    from benchmarks.secrets_floor import serve_floor

    ca, _, clients = setup(tmp_path, identities=1)
    mp = multiprocessing.get_context("fork")
    queue = mp.Queue()
    proc = mp.Process(target=serve_floor, args=(tmp_path, queue), daemon=True)
    proc.start()
    try:
        address = tuple(queue.get(timeout=60))
        (ctx,) = contexts_for(ca, clients)
        assert asyncio.run(one(address, ctx)) > 0  # one() checks the answer's length
        bare = ssl.create_default_context(cafile=str(ca))  # no client certificate: refused
        with pytest.raises((ssl.SSLError, ConnectionError, RuntimeError)):
            asyncio.run(one(address, bare))
    finally:
        proc.terminate()
        proc.join(10)
