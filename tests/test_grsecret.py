"""Occlum's ratls.GrSecret/GetSecret served by the secret server over mutual RA-TLS, with
synthetic attestation on both sides.

The client is grpcio with ratls_stubs generated at test time (grpcio-tools) from tests/protos/ratls.proto,
so nothing on the client side is the server's code: it presents an Occlum-format RA-TLS
certificate (RSA-2048, quote in 1.2.840.113741.1) and pins the server's certificate after
checking the server's quote with our verifier and an init_ra_conf ra_config, as Occlum's init
does in its handshake. The server's own quote comes from a simulated quoter (as inside
gramine-direct), found through ENCLAVE_BUILD_SIMULATED_QUOTER like the in-enclave key fetcher.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from enclave_build.attestation import grsecret
from enclave_build.attestation.config import ConfigError, load_config
from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.occlum_ra import RaConfig, RaConfigError
from enclave_build.attestation.quote_source import (
    SIMULATED_QUOTER_ENV,
    QuoteSourceError,
    device_source,
    discover,
)
from enclave_build.attestation.ratls import (
    CCZOO_OID,
    OCCLUM_SUBJECT,
    create_certificate,
    extract_evidence,
    server_certificate,
)
from enclave_build.attestation.server import SecretServer, ServerError, startup_warnings
from enclave_build.attestation.simulated_quoter import SimulatedQuoter
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.attestation.verify import QuoteRejected
from enclave_build.contract.identity import EnclaveIdentity

from .attest_env import MR_SIGNER, audit_mark, identity, make_env, settled_audit
from .secret_client import (
    PeerRejected,
    attest_endpoint,
    decode_secret,
    fetch_secret,
    verify_peer_certificate,
)

pytestmark = pytest.mark.integration

PROTOS = Path(__file__).parent / "protos"
SERVER_MR_ENCLAVE = identity("secret-server")
SERVER_PROD_ID, SERVER_SVN = 7, 3


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("grsecret")
    built = make_env(
        directory,
        extra='\n[[secrets]]\nname = "face-big"\nfile = "big.bin"\n'
        'allow = ["'
        + identity("big").hex()
        + '"]\n\n[grsecret]\nlisten = "127.0.0.1:0"\nidle = 1.0\n',
    )
    built.secrets["big"] = os.urandom(60000)  # base64 > one HTTP/2 flow-control window
    (directory / "big.bin").write_bytes(built.secrets["big"])
    return built


def _server_measurements(**changes) -> Measurements:
    identity: dict[str, Any] = dict(
        mr_enclave=SERVER_MR_ENCLAVE.hex(),
        mr_signer=MR_SIGNER.hex(),
        isv_prod_id=SERVER_PROD_ID,
        isv_svn=SERVER_SVN,
        debug=False,
    )
    identity.update(changes)
    return Measurements(
        service="secret-server",
        framework="secret-server",
        libos="gramine",
        identity=EnclaveIdentity(**identity),
        image=ImageRef("secret-server:1", None),
    )


@pytest.fixture(scope="module")
def quoter(env):
    """The secret server's own (simulated) quoting device, named by the environment."""
    with SimulatedQuoter(env.pki, _server_measurements(), warn=False) as running:
        patch = pytest.MonkeyPatch()
        patch.setenv(SIMULATED_QUOTER_ENV, running.env_value)
        yield running
        patch.undo()


@pytest.fixture(scope="module")
def server(env, quoter):
    srv = SecretServer(load_config(env.config))
    srv.start()
    yield srv
    srv.shutdown()


def _audit(env, since: int = 0, until=None) -> list[dict]:
    return settled_audit(env.directory / "audit.jsonl", until, since=since)


def _mark(env) -> int:
    return audit_mark(env.directory / "audit.jsonl")


def _reason_since(env, since: int, text: str) -> list[dict]:
    """The lines after the first *since* whose reason contains *text*, once there is one (the
    server may write a line a moment after the client has seen the end of its call)."""
    matching = lambda r: text in r.get("reason", "")
    return [r for r in _audit(env, since, lambda rs: any(map(matching, rs))) if matching(r)]


def _ra_config(**changes) -> dict:
    """An init_ra_conf.json ra_config that requires exactly the server's identity."""
    config: dict[str, Any] = {
        flag: "on"
        for flag in (
            "verify_mr_enclave",
            "verify_mr_signer",
            "verify_isv_prod_id",
            "verify_isv_svn",
            "verify_config_svn",
            "verify_enclave_debuggable",
        )
    }
    entry = {
        "mr_enclave": SERVER_MR_ENCLAVE.hex(),
        "mr_signer": MR_SIGNER.hex(),
        "isv_prod_id": SERVER_PROD_ID,
        "isv_svn": SERVER_SVN,
        "config_svn": 0,
        "debuggable": False,
    }
    entry.update(changes.pop("entry", {}))
    config.update(changes)
    config["sgx_mrs"] = [entry]
    return config


def _pem_pair(cert, key) -> tuple[bytes, bytes]:
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class Client:
    """What Occlum's init does, with stock grpcio: check the server's quote against the
    ra_config first (our verifier), then call GetSecret over mutual TLS pinned to that
    certificate, presenting the enclave's own RA-TLS certificate."""

    def __init__(self, server, env, ratls_stubs, cert_key=None, ra_config=None):
        self.pb2, pb2_grpc = ratls_stubs
        host, port = server.grsecret_address
        pem = ssl.get_server_certificate((host, port)).encode()
        verify_peer_certificate(
            x509.load_pem_x509_certificate(pem),
            RaConfig.from_dict(ra_config if ra_config is not None else _ra_config()),
            env.pki.collateral_json(),
            root_ca_der=env.pki.root_der,
        )
        if cert_key is not None:
            chain, key = _pem_pair(*cert_key)
            creds = grpc.ssl_channel_credentials(
                root_certificates=pem, private_key=key, certificate_chain=chain
            )
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=pem)
        self.channel = grpc.secure_channel(
            f"{host}:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        self.stub = pb2_grpc.GrSecretStub(self.channel)

    def get(self, name: str) -> bytes:
        reply = self.stub.GetSecret(self.pb2.SecretRequest(name=name), timeout=10)
        return decode_secret(reply.secret)

    def refused(self, name: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self.get(name)
        return info.value

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _occlum_cert(env, service="face", **kw):
    return env.enclave_cert(service, "cczoo", **kw)


# --------------------------------------------------------------------------- end to end


def test_right_enclave_gets_its_key(server, env, ratls_stubs):
    since = _mark(env)
    with Client(server, env, ratls_stubs, _occlum_cert(env, "face")) as client:
        reply = client.stub.GetSecret(client.pb2.SecretRequest(name="face-key"), timeout=10)
        # As Occlum's server sends it: base64 text in double quotes.
        assert reply.secret == '"' + base64.b64encode(env.secrets["face"]).decode() + '"'
        assert client.get("face-key") == env.secrets["face"]  # same connection, again
    of_calls = lambda records: [
        r for r in records if r.get("protocol") == "grsecret" and r.get("secret")
    ]
    calls = of_calls(_audit(env, since, lambda records: len(of_calls(records)) >= 2))
    assert len(calls) == 2, calls  # one line per call
    assert calls[-1]["decision"] == "allow" and calls[-1]["grpc_status"] == "OK"
    assert calls[-1]["mr_enclave"] == identity("face").hex()
    assert calls[-1]["evidence"] == "cczoo"
    assert "allowed via face" in calls[-1]["reason"]


def test_large_secret_and_reconnect_after_idle(server, env, ratls_stubs):
    with Client(
        server, env, ratls_stubs, _occlum_cert(env, "big", mr_enclave=identity("big"))
    ) as client:
        states: list = []  # the channel's connectivity, as grpcio reports it (a thread)
        watch = states.append
        client.channel.subscribe(watch)
        assert client.get("face-big") == env.secrets["big"]
        # idle = 1.0: the server says GOAWAY and closes; the channel goes from READY to IDLE,
        # then connects again for the next call. Wait for that rather than sleep past it: a
        # call sent while the server is closing the connection would race the close.
        ready, idle = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE

        def went_idle() -> bool:
            seen = list(states)
            return ready in seen and idle in seen[seen.index(ready) :]

        deadline = time.monotonic() + 15
        while not went_idle() and time.monotonic() < deadline:
            time.sleep(0.02)
        client.channel.unsubscribe(watch)
        assert went_idle(), states
        assert client.get("face-big") == env.secrets["big"]
        assert client.refused("face-key").code() == grpc.StatusCode.PERMISSION_DENIED


def test_signer_policy_and_no_key_leaks_across_enclaves(server, env, ratls_stubs):
    ocr = Client(
        server, env, ratls_stubs, _occlum_cert(env, "ocr", mr_enclave=os.urandom(32), isv_svn=5)
    )
    face = Client(server, env, ratls_stubs, _occlum_cert(env, "face"))
    try:
        assert ocr.get("ocr-key") == env.secrets["ocr"]  # match = "signer", newer SVN
        denied = ocr.refused("face-key")
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'face-key'" in denied.details() and "not released" in denied.details()
        denied = face.refused("ocr-key")
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert face.get("face-key") == env.secrets["face"]  # the connection still serves
    finally:
        ocr.close()
        face.close()


def test_wrong_mr_enclave_permission_denied(server, env, ratls_stubs):
    with Client(
        server, env, ratls_stubs, _occlum_cert(env, "face", mr_enclave=os.urandom(32))
    ) as client:
        denied = client.refused("face-key")
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not released to this enclave identity" in denied.details()


def test_unknown_key_name_not_found(server, env, ratls_stubs):
    with Client(server, env, ratls_stubs, _occlum_cert(env, "face")) as client:
        missing = client.refused("image_key")
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "no secret named 'image_key'" in missing.details()


def test_client_without_certificate_unauthenticated(server, env, ratls_stubs):
    with Client(server, env, ratls_stubs, cert_key=None) as client:
        refused = client.refused("face-key")
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.details() == "no client certificate"


def test_tampered_quote_unauthenticated(server, env, ratls_stubs):
    def tampered(report_data: bytes) -> bytes:
        quote = bytearray(env.pki.quote(identity("face"), MR_SIGNER, report_data, 1, 2))
        quote[48 + 16] ^= 1  # MISCSELECT: signed, not part of the key binding
        return bytes(quote)

    with Client(server, env, ratls_stubs, create_certificate("cczoo", tampered)) as client:
        refused = client.refused("face-key")
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature is invalid" in refused.details()


def test_untrusted_root_and_unbound_key_unauthenticated(server, env, ratls_stubs):
    other = Client(server, env, ratls_stubs, _occlum_cert(env, "face", pki=SyntheticPKI()))
    foreign = env.pki.quote(identity("face"), MR_SIGNER, os.urandom(64), 1, 2)
    unbound = Client(server, env, ratls_stubs, create_certificate("cczoo", lambda rd: foreign))
    try:
        assert "another root" in other.refused("face-key").details()
        refused = unbound.refused("face-key")
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "does not bind the certificate's public key" in refused.details()
    finally:
        other.close()
        unbound.close()


def test_other_method_unimplemented(server, env, ratls_stubs):
    with Client(server, env, ratls_stubs, _occlum_cert(env, "face")) as client:
        call = client.channel.unary_unary("/ratls.GrSecret/ListSecrets")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _raw_h2(server, env, send, cert_key=None):
    """A hand-driven HTTP/2 client (h2 as client) with an RA-TLS client certificate: what a
    hostile or broken peer can send. Returns the response headers and trailers of stream 1
    (or None) and whether the server closed the connection."""
    import h2.config
    import h2.connection
    import h2.events

    cert, key = cert_key or _occlum_cert(env, "face")
    chain, key_pem = _pem_pair(cert, key)
    (env.directory / "raw.crt").write_bytes(chain)
    (env.directory / "raw.key").write_bytes(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(env.directory / "raw.crt", env.directory / "raw.key")
    ctx.set_alpn_protocols(["h2"])
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    headers, closed = None, False
    with socket.create_connection(server.grsecret_address, timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            send(conn, tls)
            deadline = time.monotonic() + 5
            ended = False
            while not ended and time.monotonic() < deadline:
                try:
                    data = tls.recv(65536)
                except (ssl.SSLError, ConnectionError):
                    data = b""
                if not data:
                    closed = True
                    break
                for event in conn.receive_data(data):
                    if (
                        isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived))
                        and event.stream_id == 1
                    ):
                        headers = {**(headers or {}), **dict(event.headers)}
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                        ended = True
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        closed = ended = True
                tls.sendall(conn.data_to_send())
    return headers, closed


def _grpc_headers(content_type="application/grpc"):
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", grsecret.METHOD_PATH),
        ("content-type", content_type),
        ("te", "trailers"),
    ]


def test_hostile_http2_requests(server, env):
    import struct

    request = grsecret.SecretRequest(name="face-key").SerializeToString()

    def body(payload, flag=0):
        def send(conn, tls):
            conn.send_headers(1, _grpc_headers())
            conn.send_data(1, struct.pack(">BI", flag, len(payload)) + payload, end_stream=True)
            tls.sendall(conn.data_to_send())

        return send

    headers, _ = _raw_h2(server, env, body(request))
    assert headers["grpc-status"] == "0"  # the hand-made call itself is fine
    headers, _ = _raw_h2(server, env, body(request, flag=1))
    assert headers["grpc-status"] == str(grsecret.Status.UNIMPLEMENTED)
    headers, _ = _raw_h2(server, env, body(b"\x0a" + b"\x7f" * 5000))
    assert headers["grpc-status"] == str(grsecret.Status.RESOURCE_EXHAUSTED)
    headers, _ = _raw_h2(server, env, body(b"\xff\xff\xff"))
    assert headers["grpc-status"] == str(grsecret.Status.INVALID_ARGUMENT)

    def wrong_type(conn, tls):
        conn.send_headers(1, _grpc_headers("text/plain"), end_stream=True)
        tls.sendall(conn.data_to_send())

    headers, _ = _raw_h2(server, env, wrong_type)
    assert headers[":status"] == "415"

    def garbage(conn, tls):
        tls.sendall(b"\x00" * 64)  # not an HTTP/2 frame sequence

    since = _mark(env)
    headers, closed = _raw_h2(server, env, garbage)
    assert headers is None and closed
    assert _reason_since(env, since, "HTTP/2 protocol error")

    # an unattested peer never gets past the refusal, whatever it asks
    headers, _ = _raw_h2(server, env, body(request), _occlum_cert(env, "face", pki=SyntheticPKI()))
    assert headers["grpc-status"] == str(grsecret.Status.UNAUTHENTICATED)


def test_not_http2_is_refused_and_audited(server, env):
    since = _mark(env)
    with socket.create_connection(server.grsecret_address, timeout=10) as raw:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
            try:
                assert tls.recv(100) == b""
            except (ssl.SSLError, ConnectionError):
                pass
    (line,) = _reason_since(env, since, "did not negotiate HTTP/2")
    assert line["decision"] == "deny"


def test_secret_prov_port_keeps_serving(server, env):
    host, port = server.address
    assert (
        fetch_secret(host, port, env.ca, *env.enclave_cert("face"), server_name="localhost")
        == env.secrets["face"]
    )


# --------------------------------------------------------------------------- the client's checks


def test_client_checks_the_server_with_init_ra_conf(server, env, ratls_stubs):
    """Occlum's init's ra_config, the other direction: the client refuses a server whose
    identity is wrong, before any call; flags that are off let the field through."""
    cert = _occlum_cert(env, "face")
    wrong_enclave = _ra_config(entry={"mr_enclave": os.urandom(32).hex()})
    with pytest.raises(PeerRejected, match="mr_enclave differ"):
        Client(server, env, ratls_stubs, cert, wrong_enclave)
    with Client(
        server, env, ratls_stubs, cert, dict(wrong_enclave, verify_mr_enclave="off")
    ) as off:
        assert off.get("face-key") == env.secrets["face"]
    wrong_signer = _ra_config(entry={"mr_signer": os.urandom(32).hex()})
    with pytest.raises(PeerRejected, match="mr_signer differ"):
        Client(server, env, ratls_stubs, cert, wrong_signer)
    Client(server, env, ratls_stubs, cert, dict(wrong_signer, verify_mr_signer="off")).close()
    # ISV_SVN is an equality for Occlum, not "at least"
    with pytest.raises(PeerRejected, match="isv_svn differ"):
        Client(server, env, ratls_stubs, cert, _ra_config(entry={"isv_svn": SERVER_SVN - 1}))
    with pytest.raises(PeerRejected, match="config_svn differ"):
        Client(server, env, ratls_stubs, cert, _ra_config(entry={"config_svn": 4}))
    with pytest.raises(PeerRejected, match="debuggable differ"):
        Client(server, env, ratls_stubs, cert, _ra_config(entry={"debuggable": True}))
    Client(
        server,
        env,
        ratls_stubs,
        cert,
        _ra_config(verify_enclave_debuggable="off", entry={"debuggable": True}),
    ).close()


def test_client_refuses_a_server_quote_from_an_untrusted_root(server, env):
    pem = ssl.get_server_certificate(server.grsecret_address).encode()
    with pytest.raises(QuoteRejected, match="another root"):
        verify_peer_certificate(
            x509.load_pem_x509_certificate(pem),
            None,
            env.pki.collateral_json(),
            root_ca_der=SyntheticPKI().root_der,
        )


# --------------------------------------------------------------------------- server-side flags


def _flag_server(env, tmp_path, dynamic_config: dict):
    (tmp_path / "dynamic_config.json").write_text(json.dumps(dynamic_config))
    text = env.config.read_text().replace(
        '[grsecret]\nlisten = "127.0.0.1:0"\n',
        f'[grsecret]\nlisten = "127.0.0.1:0"\nclient_ra_config = '
        f'"{tmp_path / "dynamic_config.json"}"\n',
    )
    text = text.replace('audit_log = "audit.jsonl"', f'audit_log = "{tmp_path / "audit.jsonl"}"')
    config = env.directory / f"flags-{tmp_path.name}.toml"
    config.write_text(text)
    return config


def test_server_side_verify_flags(env, quoter, ratls_stubs, tmp_path):
    """Occlum's dynamic_config.json on the server: an extra filter before the policy. With
    verify_mr_signer on and another signer listed, the right enclave is refused; with it off
    (reloaded), the same enclave receives its key."""
    dynamic = _ra_config(
        verify_isv_prod_id="off",
        verify_isv_svn="off",
        entry={
            "mr_enclave": identity("face").hex(),
            "mr_signer": os.urandom(32).hex(),
            "debuggable": False,
        },
    )
    config = _flag_server(env, tmp_path, dynamic)
    srv = SecretServer(load_config(config))
    srv.start()
    try:
        with Client(srv, env, ratls_stubs, _occlum_cert(env, "face")) as client:
            denied = client.refused("face-key")
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
            assert denied.details().startswith("client_ra_config: ")
            assert "mr_signer differ" in denied.details()
        (tmp_path / "dynamic_config.json").write_text(
            json.dumps(dict(dynamic, verify_mr_signer="off"))
        )
        srv.reload()
        with Client(srv, env, ratls_stubs, _occlum_cert(env, "face")) as client:
            assert client.get("face-key") == env.secrets["face"]
            # the filter never widens the policy: ocr-key is still not face's
            assert client.refused("ocr-key").code() == grpc.StatusCode.PERMISSION_DENIED
        # an enclave the filter lists nowhere is refused by it
        with Client(srv, env, ratls_stubs, _occlum_cert(env, "ocr")) as other:
            assert "mr_enclave differ" in other.refused("ocr-key").details()
        # the RA-TLS identity and the GrSecret port are fixed for the life of the process
        without = env.directory / "without-grsecret.toml"
        without.write_text(config.read_text().split("[grsecret]")[0])
        with pytest.raises(ServerError, match="cannot change on reload"):
            srv.reload(without)
        with Client(srv, env, ratls_stubs, _occlum_cert(env, "face")) as client:
            assert client.get("face-key") == env.secrets["face"]  # still the old state
    finally:
        srv.shutdown()


def test_worker_processes_serve_grsecret(env, quoter, ratls_stubs, tmp_path):
    text = (
        env.config.read_text()
        .replace("processes = 1", "processes = 2")
        .replace('audit_log = "audit.jsonl"', f'audit_log = "{tmp_path / "audit.jsonl"}"')
    )
    config = env.directory / "two-processes.toml"
    config.write_text(text)
    srv = SecretServer(load_config(config))
    srv.start()
    try:
        for _ in range(3):
            with Client(srv, env, ratls_stubs, _occlum_cert(env, "face")) as client:
                assert client.get("face-key") == env.secrets["face"]
    finally:
        srv.shutdown()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sum(1 for r in lines if r.get("decision") == "allow") == 3


# --------------------------------------------------------------------------- server identity


def test_server_certificate_formats(env):
    make = lambda rd: env.pki.quote(SERVER_MR_ENCLAVE, MR_SIGNER, rd, 7, 3)
    cert_pem, key_pem = server_certificate("occlum", make)
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert cert.subject == OCCLUM_SUBJECT
    raw = cert.extensions.get_extension_for_oid(CCZOO_OID).value.value
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert raw[368:400] == hashlib.sha256(spki).digest()  # report_data[0:32]
    assert extract_evidence(cert).format == "cczoo"
    again, _ = server_certificate("occlum", make)
    assert x509.load_pem_x509_certificate(again).public_key() != cert.public_key()  # fresh key

    dice_pem, dice_key = server_certificate("dice", make)
    assert isinstance(serialization.load_pem_private_key(dice_key, None).curve, ec.SECP384R1)
    assert extract_evidence(x509.load_pem_x509_certificate(dice_pem)).format == "tcg-dice"
    with pytest.raises(ValueError, match="unknown server RA-TLS format 'tdx'"):
        server_certificate("tdx", make)


def test_identity_ratls_on_the_secret_prov_port(env, quoter, tmp_path):
    """identity = "ratls": the secret_prov port presents a TCG DICE certificate with the
    server's own quote, which an owner can attest."""
    text = env.config.read_text().replace(
        'cert = "server.crt"\nkey = "server.key"\n', 'identity = "ratls"\n'
    )
    config = env.directory / "ratls-identity.toml"
    config.write_text(text)
    srv = SecretServer(load_config(config))
    host, port = srv.start()
    try:
        attested = attest_endpoint(
            host,
            port,
            [_server_measurements()],
            env.pki.collateral_json(),
            root_ca_der=env.pki.root_der,
        )
    finally:
        srv.shutdown()
    assert attested.evidence_format == "tcg-dice"
    assert attested.quote.mr_enclave == SERVER_MR_ENCLAVE.hex()


def test_no_quote_source_is_a_clear_error(env, tmp_path, monkeypatch):
    monkeypatch.delenv(SIMULATED_QUOTER_ENV, raising=False)
    with pytest.raises(QuoteSourceError, match=r"does not exist .*ENCLAVE_BUILD_SIMULATED_QUOTER"):
        discover(root=tmp_path / "no-attestation")
    if not Path("/dev/attestation").exists():
        with pytest.raises(ServerError, match=r"\[grsecret\] needs an RA-TLS certificate"):
            SecretServer(load_config(env.config))


def test_device_source_writes_report_data_and_reads_the_quote(tmp_path):
    (tmp_path / "attestation_type").write_text("dcap\n")
    (tmp_path / "quote").write_bytes(b"Q" * 100)
    (tmp_path / "user_report_data").write_bytes(b"")
    source = device_source(tmp_path)
    assert source(b"\x01" * 64) == b"Q" * 100
    assert (tmp_path / "user_report_data").read_bytes() == b"\x01" * 64
    (tmp_path / "attestation_type").write_text("none\n")
    assert device_source(tmp_path) is None


# --------------------------------------------------------------------------- configuration


def test_ra_config_rules(tmp_path):
    good = _ra_config()
    wrapped = tmp_path / "init_ra_conf.json"
    wrapped.write_text(
        json.dumps({"kms_server": "localhost:50051", "kms_keys": [], "ra_config": good})
    )
    assert RaConfig.load(wrapped).verify_mr_signer is True
    cases = [
        (dict(good, verify_mr_signer="yes"), "verify_mr_signer: 'yes'; allowed"),
        ({k: v for k, v in good.items() if k != "verify_isv_svn"}, "verify_isv_svn: required"),
        (dict(good, sgx_mrs=[good["sgx_mrs"][0]] * 17), "at most 16"),
        (_ra_config(entry={"mr_enclave": ""}), "sgx_mrs[0].mr_enclave: empty, but"),
        (_ra_config(entry={"mr_signer": "abc"}), "sgx_mrs[0].mr_signer: 'abc' is not 64 hex"),
        (_ra_config(entry={"isv_svn": 70000}), "sgx_mrs[0].isv_svn: 70000 is not an integer"),
        (_ra_config(entry={"debuggable": "no"}), "sgx_mrs[0].debuggable: expected true"),
        (_ra_config(entry={"mrenclave": "00"}), "sgx_mrs[0].mrenclave: unknown key"),
    ]
    for index, (data, message) in enumerate(cases):
        path = tmp_path / f"case{index}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(RaConfigError) as info:
            RaConfig.load(path)
        assert str(path) in str(info.value) and message in str(info.value), info.value
    empty = _ra_config()
    empty["sgx_mrs"] = []
    assert "sgx_mrs is empty" in RaConfig.from_dict(empty).mismatch(None)


def test_config_errors_name_the_key(env, tmp_path):
    base = env.config.read_text()
    cases = [
        (
            base.replace('listen = "127.0.0.1:0"\nidle', 'listen = "nowhere"\nidle'),
            "grsecret.listen: 'nowhere' is not HOST:PORT",
        ),
        (base.replace("idle = 1.0", "idle = 1.0\nverbose = true"), "grsecret.verbose: unknown key"),
        (
            base.replace("idle = 1.0", 'idle = 1.0\nclient_ra_config = "missing.json"'),
            "grsecret.client_ra_config: ",
        ),
        (
            base.replace("max_tls =", 'identity = "enclave"\nmax_tls ='),
            "server.identity: 'enclave' is not allowed; allowed: ca-cert, ratls",
        ),
        (
            base.replace("max_tls =", 'identity = "ratls"\nmax_tls ='),
            'server.cert: not used with identity = "ratls"',
        ),
    ]
    for index, (text, message) in enumerate(cases):
        path = env.directory / f"bad{index}.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert message in str(info.value), info.value
        assert str(path) in str(info.value)


def test_startup_notes_for_occlum_clients(env):
    notes = startup_warnings(load_config(env.config))
    # 16-byte keys: Occlum's client decoder appends two NUL bytes
    assert any("'face-key' is 16 bytes" in n and "2 NUL" in n for n in notes)


def test_secret_encoding_matches_occlum_clients():
    for size in range(0, 8):
        secret = os.urandom(size)
        text = grsecret.encode_secret(secret)
        assert text.startswith('"') and text.endswith('"')
        assert decode_secret(text) == secret
        assert decode_secret(text[1:-1]) == secret
    with pytest.raises(ValueError, match="not base64"):
        decode_secret('"not*base64"')
