"""Per-model client access over real mutual TLS: the model server as a process on 127.0.0.1,
driven by tritonclient (gRPC and HTTP) and the standard library.

Three clients: alice and bob hold certificates from the client CA, mallory a self-signed one.
Models: ``by_name`` allows ``CN=alice``, ``by_key`` allows bob's key (``sha256:`` of his
SubjectPublicKeyInfo), ``open`` has no list.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import ssl
from pathlib import Path

import numpy as np
import pytest

from .test_model_server_integration import Server, config

pytestmark = pytest.mark.integration

grpc = pytest.importorskip("grpc")
tgrpc = pytest.importorskip("tritonclient.grpc")
thttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

SLEEP = "tests.sleep_backend:SleepBackend"


def make_cert(subject: str, key, issuer=None, issuer_key=None, ca=False, san=False):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(issuer_key or key, hashes.SHA256())


def spki_pin(cert) -> str:
    from cryptography.hazmat.primitives import serialization

    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path | str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("pki")

    def write(name: str, obj) -> Path:
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

    new_key = lambda: ec.generate_private_key(ec.SECP256R1())
    ca_key = new_key()
    ca = make_cert("client and server CA", ca_key, ca=True)
    out: dict[str, Path | str] = {"ca": write("ca.pem", ca)}
    srv_key = new_key()
    out["srv_key"] = write("srv.key", srv_key)
    out["srv"] = write("srv.pem", make_cert("server", srv_key, ca, ca_key, san=True))
    for who in ("alice", "bob"):
        key = new_key()
        cert = make_cert(who, key, ca, ca_key)
        out[f"{who}_key"], out[who] = write(f"{who}.key", key), write(f"{who}.pem", cert)
        out[f"{who}_pin"] = spki_pin(cert)
    key = new_key()
    out["mallory_key"] = write("mallory.key", key)
    out["mallory"] = write("mallory.pem", make_cert("alice", key))  # a self-signed "alice"
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("access")
    weights = tmp / "model.bin"
    weights.write_bytes(b"unused")

    def model(name: str, clients: list[str] | None) -> dict:
        entry: dict[str, object] = {"name": name, "backend": SLEEP, "path": str(weights)}
        if clients is not None:
            entry["clients"] = clients
        return entry

    s = Server(
        tmp,
        config(
            [
                model("by_name", ["CN=alice"]),
                model("by_key", [str(pki["bob_pin"])]),
                model("open", None),
            ],
            tls={"cert": str(pki["srv"]), "key": str(pki["srv_key"]), "client_ca": str(pki["ca"])},
        ),
    ).wait_ready()
    yield s
    assert s.stop() == 0, s.stderr


def _input(client_module):
    x = client_module.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
    return x


def grpc_client(s, pki, who: str):
    return tgrpc.InferenceServerClient(
        s.grpc,
        ssl=True,
        root_certificates=str(pki["ca"]),
        private_key=str(pki[f"{who}_key"]),
        certificate_chain=str(pki[who]),
    )


def http_client(s, pki, who: str):
    return thttp.InferenceServerClient(
        s.rest,
        ssl=True,
        ssl_options={
            "keyfile": str(pki[f"{who}_key"]),
            "certfile": str(pki[who]),
            "ca_certs": str(pki["ca"]),
        },
        insecure=False,
    )


def https(s, pki, who: str | None, method: str, path: str, body: bytes | None = None):
    """(status, body) of one request over TLS as *who* (None: without a certificate)."""
    host, port = s.rest.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if who is not None:
        ctx.load_cert_chain(str(pki[who]), str(pki[f"{who}_key"]))
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def refusals(s, pki) -> dict[tuple[str, str], int]:
    status, text = https(s, pki, "alice", "GET", "/metrics")
    assert status == 200
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("model_server_client_refusals_total{"):
            labels, value = line.rsplit(" ", 1)
            model = labels.split('model="')[1].split('"')[0]
            protocol = labels.split('protocol="')[1].split('"')[0]
            out[(model, protocol)] = int(value)
    return out


INFER = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}
).encode()


def test_grpc_allows_the_named_clients_and_denies_others_on_that_model_only(server, pki):
    before = refusals(server, pki)
    alice, bob = grpc_client(server, pki, "alice"), grpc_client(server, pki, "bob")
    want = np.array([2, 4, 6], np.float32)
    assert np.array_equal(alice.infer("by_name", [_input(tgrpc)]).as_numpy("y"), want)
    assert np.array_equal(bob.infer("by_key", [_input(tgrpc)]).as_numpy("y"), want)
    for client in (alice, bob):
        assert np.array_equal(client.infer("open", [_input(tgrpc)]).as_numpy("y"), want)
    for client, model in ((bob, "by_name"), (alice, "by_key")):
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [_input(tgrpc)])
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "restricted to named clients" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata(model)
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert client.is_model_ready(model)  # readiness stays open
    assert alice.get_model_metadata("by_name").name == "by_name"
    after = refusals(server, pki)
    assert after[("by_name", "grpc")] - before.get(("by_name", "grpc"), 0) == 2
    assert after[("by_key", "grpc")] - before.get(("by_key", "grpc"), 0) == 2
    assert ("open", "grpc") not in after


def test_rest_allows_the_named_clients_and_answers_403_to_others_on_that_model_only(server, pki):
    before = refusals(server, pki)
    alice, bob = http_client(server, pki, "alice"), http_client(server, pki, "bob")
    want = np.array([2, 4, 6], np.float32)
    try:
        assert np.array_equal(alice.infer("by_name", [_input(thttp)]).as_numpy("y"), want)
        assert np.array_equal(bob.infer("by_key", [_input(thttp)]).as_numpy("y"), want)
        for client in (alice, bob):
            assert np.array_equal(client.infer("open", [_input(thttp)]).as_numpy("y"), want)
        with pytest.raises(InferenceServerException) as info:
            bob.infer("by_name", [_input(thttp)])
        assert info.value.status() == "403"
        assert "restricted to named clients" in info.value.message()
    finally:
        alice.close()
        bob.close()
    status, body = https(server, pki, "alice", "POST", "/v2/models/by_key/infer", INFER)
    assert status == 403 and "restricted to named clients" in json.loads(body)["error"]
    status, body = https(server, pki, "bob", "GET", "/v2/models/by_name")
    assert status == 403 and set(json.loads(body)) == {"error"}
    assert https(server, pki, "bob", "GET", "/v2/models/by_name/ready")[0] == 200
    assert https(server, pki, "alice", "GET", "/v2/models/by_name")[0] == 200
    status, body = https(server, pki, "bob", "POST", "/v2/models/by_key/infer", INFER)
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == [2, 4, 6]
    after = refusals(server, pki)
    assert after[("by_name", "rest")] - before.get(("by_name", "rest"), 0) == 2
    assert after[("by_key", "rest")] - before.get(("by_key", "rest"), 0) == 1
    assert ("open", "rest") not in after


def test_a_client_without_a_certificate_or_outside_the_ca_is_refused_during_the_handshake(
    server, pki
):
    """The CN check is on certificates the client CA verified: mallory's self-signed "alice"
    never reaches it."""
    for who in (None, "mallory"):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            https(server, pki, who, "POST", "/v2/models/by_name/infer", INFER)
        key = pki[f"{who}_key"].read_bytes() if who else None
        cert = pki[who].read_bytes() if who else None
        creds = grpc.ssl_channel_credentials(pki["ca"].read_bytes(), key, cert)
        with grpc.secure_channel(server.grpc, creds) as channel:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
