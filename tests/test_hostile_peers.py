"""The secret server's new surfaces under hostile peers: malformed RA-TLS certificates (weak keys,
repeated or ambiguous evidence), HTTP/2 floods and stalls against GrSecret, a slow or confused
server answering `secrets upload`, an upload cut mid-request, renegotiation, and secrets.toml
ports that collide. Each test fails without the fix it guards (see the report of the hostile-
input pass); the server-side ones run against a real SecretServer on 127.0.0.1."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import hpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame
from OpenSSL import SSL

from enclave_build.attestation import grsecret, upload, wire
from enclave_build.attestation.config import ConfigError, load_config
from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.quote_source import SIMULATED_QUOTER_ENV
from enclave_build.attestation.ratls import (
    CCZOO_OID,
    DICE_OID,
    LEGACY_OID,
    EvidenceError,
    extract_evidence,
)
from enclave_build.attestation.server import SecretServer, ServerError
from enclave_build.attestation.simulated_quoter import SimulatedQuoter
from enclave_build.contract.identity import EnclaveIdentity

from .attest_env import MR_SIGNER, audit_mark, identity, make_env, settled_audit

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# --------------------------------------------------------------------------- certificates


def _spki(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cert(key, extensions) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(
        key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    )


def _bound_quote(pki, key, service="face") -> bytes:
    return pki.quote(
        identity(service), MR_SIGNER, hashlib.sha256(_spki(key)).digest() + bytes(32), 1, 2
    )


def _duplicated(key, value: bytes) -> x509.Certificate:
    """A certificate carrying the CCZoo extension twice (cryptography's builder refuses to make
    one, so a second, same-length OID is renamed in the DER and the certificate re-signed)."""
    stand_in = x509.ObjectIdentifier("1.2.840.113741.2")
    cert = _cert(key, [(CCZOO_OID, value), (stand_in, value)])
    tbs = cert.tbs_certificate_bytes
    renamed = tbs.replace(bytes.fromhex("06072a864886f84d02"), bytes.fromhex("06072a864886f84d01"))
    assert renamed != tbs
    der = (
        cert.public_bytes(serialization.Encoding.DER)
        .replace(tbs, renamed)
        .replace(cert.signature, key.sign(renamed, padding.PKCS1v15(), hashes.SHA256()))
    )
    return x509.load_der_x509_certificate(der)


def write_owner(directory: Path) -> tuple[Path, Path]:
    """A key owner's self-signed certificate and key, as DIRECTORY/owner.crt and owner.key
    (for test_secret_server_hostile_tls too)."""
    owner_key = ec.generate_private_key(ec.SECP256R1())
    owner = _cert(owner_key, [])
    (directory / "owner.crt").write_bytes(owner.public_bytes(serialization.Encoding.PEM))
    (directory / "owner.key").write_bytes(
        owner_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "owner.crt", directory / "owner.key"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile")
    owner = write_owner(directory)
    built = make_env(
        directory / "env",
        timeout=3.0,
        extra=f'''
[[secrets]]
name = "up-key"
allow = ["face"]

[upload]
owners = ["{directory / "owner.crt"}"]

[grsecret]
listen = "127.0.0.1:0"
idle = 1.0
max_requests = 4
''',
    )
    built.owner = owner
    return built


def test_weak_or_unusual_keys_are_refused(env):
    """An RA-TLS key must be strong enough that nobody can forge the TLS handshake of a
    certificate (and its quote) seen on the wire: RSA >= 2048, EC on P-256/384/521."""
    for key, message in (
        (rsa.generate_private_key(65537, 1024), "RSA key has 1024 bits"),
        (ec.generate_private_key(ec.SECP192R1()), "EC key is on secp192r1"),
        (ed25519.Ed25519PrivateKey.generate(), "key is Ed25519PublicKey"),
    ):
        cert = _cert(key, [(CCZOO_OID, _bound_quote(env.pki, key))])
        with pytest.raises(EvidenceError, match=message):
            extract_evidence(cert)
    for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())):
        assert extract_evidence(_cert(key, [(CCZOO_OID, _bound_quote(env.pki, key))]))


def test_repeated_or_ambiguous_evidence_is_refused(env):
    key = rsa.generate_private_key(65537, 2048)
    quote = _bound_quote(env.pki, key)
    twice = _duplicated(key, quote)
    with pytest.raises(EvidenceError, match=r"extension 1\.2\.840\.113741\.1 twice"):
        extract_evidence(twice)
    assert upload.is_owner_certificate(twice.public_bytes(serialization.Encoding.DER)) is False
    # Two raw quotes for two enclaves, both bound to the key: which one is the peer?
    other = _bound_quote(env.pki, key, "ocr")
    with pytest.raises(EvidenceError, match="two raw SGX quotes"):
        extract_evidence(_cert(key, [(LEGACY_OID, quote), (CCZOO_OID, other)]))
    # TCG DICE next to a raw quote (as Intel's DCAP TLS library writes them): DICE decides.
    dice, dice_key = env.enclave_cert("face", "tcg-dice")
    value = dice.extensions.get_extension_for_oid(DICE_OID).value.value
    both = _cert(dice_key, [(DICE_OID, value), (CCZOO_OID, _bound_quote(env.pki, dice_key, "ocr"))])
    assert extract_evidence(both).format == "tcg-dice"


# --------------------------------------------------------------------------- configuration


def test_grsecret_port_colliding_through_a_wildcard_is_a_config_error(env, tmp_path):
    text = env.config.read_text().replace(
        '[server]\nlisten = "127.0.0.1:0"', '[server]\nlisten = "127.0.0.1:4999"'
    )
    text = text.replace('[grsecret]\nlisten = "127.0.0.1:0"', '[grsecret]\nlisten = "0.0.0.0:4999"')
    path = env.directory / "collide.toml"
    path.write_text(text)
    with pytest.raises(
        ConfigError,
        match=r"collide\.toml:\d+: grsecret\.listen: port 4999 is also "
        r"server\.listen's",
    ):
        load_config(path)


@pytest.mark.integration
def test_a_busy_port_names_the_key(env):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        text = (
            env.config.read_text()
            .split("[grsecret]")[0]
            .replace('[server]\nlisten = "127.0.0.1:0"', f'[server]\nlisten = "127.0.0.1:{port}"')
        )
        path = env.directory / "busy.toml"
        path.write_text(text)
        server = SecretServer(load_config(path))
        with pytest.raises(
            ServerError,
            match=rf"busy\.toml: server\.listen: cannot listen on "
            rf"127\.0\.0\.1:{port}: Address already in use",
        ):
            server.start()
        server.shutdown()
    finally:
        busy.close()


# --------------------------------------------------------------------------- a running server


@contextlib.contextmanager
def running_server(env):
    """A SecretServer on env.config whose own RA-TLS evidence comes from a simulated quoter
    (for test_secret_server_hostile_tls too)."""
    build = Measurements(
        "secret-server",
        "secret-server",
        "gramine",
        EnclaveIdentity(identity("secret-server").hex(), MR_SIGNER.hex(), 7, 3, False),
        ImageRef(None, None),
    )
    with SimulatedQuoter(env.pki, build, warn=False) as quoter:
        patch = pytest.MonkeyPatch()
        patch.setenv(SIMULATED_QUOTER_ENV, quoter.env_value)
        try:
            srv = SecretServer(load_config(env.config))
            srv.start()
            try:
                yield srv
            finally:
                srv.shutdown()
        finally:
            patch.undo()


@pytest.fixture(scope="module")
def server(env):
    with running_server(env) as srv:
        yield srv


def _audit(env, since: int, count: int) -> list[dict]:
    """The lines after the first *since*, once there are *count* of them and the log is quiet
    (the server writes a connection's line as it ends it: a moment after the client saw that)."""
    return settled_audit(
        env.directory / "audit.jsonl", lambda lines: len(lines) >= count, since=since
    )


def _mark(env) -> int:
    settled_audit(env.directory / "audit.jsonl")  # (what earlier tests left is written)
    return audit_mark(env.directory / "audit.jsonl")


def _h2_tls(server, env, tmp_path) -> ssl.SSLSocket:
    cert, key = env.enclave_cert("face", "cczoo")
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    ctx.set_alpn_protocols(["h2"])
    return ctx.wrap_socket(socket.create_connection(server.grsecret_address, timeout=5))


def _headers(
    encoder: hpack.Encoder, stream: int, *, method="POST", end_stream=False, extra=()
) -> bytes:
    frame = HeadersFrame(stream)
    frame.data = encoder.encode(
        [
            (":method", method),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", grsecret.METHOD_PATH),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
    )
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def _call(stream: int, name: str = "face-key") -> bytes:
    data = DataFrame(stream)
    data.data = grsecret.frame(grsecret.SecretRequest(name=name).SerializeToString())
    data.flags.add("END_STREAM")
    return data.serialize()


def _drain(tls: ssl.SSLSocket, seconds: float = 5.0) -> bytes:
    tls.settimeout(seconds)
    received = b""
    try:
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            received += chunk
    except (OSError, ssl.SSLError):
        pass
    return received


def _frame_types_until_headers(tls: ssl.SSLSocket, stream: int, seconds: float = 10.0) -> list[int]:
    """Read HTTP/2 frames until a HEADERS frame on *stream* (or the connection ends, or
    *seconds* pass); returns the types of the frames read, in order."""
    tls.settimeout(seconds)
    buffer, types = b"", []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            size, kind = int.from_bytes(buffer[:3], "big"), buffer[3]
            sid = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            buffer = buffer[9 + size :]
            types.append(kind)
            if kind == 0x1 and sid == stream:
                return types
        try:
            chunk = tls.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        buffer += chunk
    return types


@pytest.mark.integration
def test_rapid_reset_after_a_call_ends_the_connection_and_is_audited(server, env, tmp_path):
    since = _mark(env)
    encoder = hpack.Encoder()
    with _h2_tls(server, env, tmp_path) as tls:
        tls.sendall(PREFACE + SettingsFrame(0).serialize() + _headers(encoder, 1) + _call(1))
        burst = b"".join(
            _headers(encoder, stream) + RstStreamFrame(stream, 8).serialize()
            for stream in range(3, 3 + 2 * 200, 2)
        )
        try:
            tls.sendall(burst)
        except OSError:
            pass  # the server may have closed already
        started = time.monotonic()
        _drain(tls)
        assert time.monotonic() - started < 2.5  # not the 3 s connection deadline
    lines = _audit(env, since, 2)
    assert [r["decision"] for r in lines] == ["allow", "deny"], lines
    assert lines[0]["secret"] == "face-key"
    assert "connection ended after 1 call(s)" in lines[1]["reason"]
    assert "rapid-reset" in lines[1]["reason"]


@pytest.mark.integration
def test_ping_flood_and_oversized_headers_are_cut_off(server, env, tmp_path):
    since = _mark(env)
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    with _h2_tls(server, env, tmp_path) as tls:
        tls.sendall(PREFACE + SettingsFrame(0).serialize())
        try:
            for _ in range(40):
                tls.sendall(ping.serialize() * 100)
        except OSError:
            pass
        _drain(tls)
    # 17 KB of headers (11 KB once compressed): more than the 16 KiB the server announces
    # (h2 alone would accept 64 KiB)
    with _h2_tls(server, env, tmp_path) as tls:
        big = _headers(
            hpack.Encoder(),
            1,
            end_stream=True,
            extra=[(f"x-pad-{i}", "e" * 1000) for i in range(17)],
        )
        assert len(big) < 16384 + 9  # one frame: the size limit here is the header list's
        tls.sendall(PREFACE + SettingsFrame(0).serialize() + big)
        _drain(tls)
    flood, oversized = _audit(env, since, 2)
    assert "frames without a call" in flood["reason"], flood
    assert "larger than 16384" in oversized["reason"], oversized


@pytest.mark.integration
def test_non_grpc_requests_are_audited_and_counted(server, env, tmp_path):
    """405/415 refusals count as calls (max_requests = 4 here) and each gets an audit line."""
    since = _mark(env)
    encoder = hpack.Encoder()
    with _h2_tls(server, env, tmp_path) as tls:
        tls.sendall(PREFACE + SettingsFrame(0).serialize())
        for stream in range(1, 13, 2):  # six requests, one after the other
            method = "GET" if stream % 4 == 1 else "POST"
            extra = () if method == "GET" else (("content-type", "text/plain"),)
            frame = HeadersFrame(stream)
            frame.data = encoder.encode(
                [
                    (":method", method),
                    (":scheme", "https"),
                    (":authority", "localhost"),
                    (":path", grsecret.METHOD_PATH),
                    *extra,
                ]
            )
            frame.flags.add("END_HEADERS")
            frame.flags.add("END_STREAM")
            try:
                tls.sendall(frame.serialize())
            except OSError:
                break
            time.sleep(0.05)
        _drain(tls, 3.0)
    lines = _audit(env, since, 4)
    reasons = [r["reason"] for r in lines]
    assert len(lines) == 4, reasons  # then REFUSED_STREAM and GOAWAY
    assert reasons[0].startswith("HTTP 405: method 'GET'")
    assert reasons[1].startswith("HTTP 415: content-type 'text/plain'")
    assert all(r["decision"] == "deny" and r["protocol"] == "grsecret" for r in lines)


@pytest.mark.integration
def test_a_response_held_back_by_flow_control_is_audited_as_not_delivered(server, env, tmp_path):
    since = _mark(env)
    encoder = hpack.Encoder()
    closed_window = SettingsFrame(0)
    closed_window.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 0}
    with _h2_tls(server, env, tmp_path) as tls:
        tls.sendall(PREFACE + closed_window.serialize() + _headers(encoder, 1) + _call(1))
        # the server's SETTINGS and the response HEADERS, no DATA: read up to the HEADERS (so
        # the call was answered, and nothing is left unread to reset the close)
        types = _frame_types_until_headers(tls, 1)
        assert types[-1:] == [0x1], types
    lines = _audit(env, since, 1)
    assert len(lines) == 1, [r["reason"] for r in lines]
    line = lines[0]
    assert line["decision"] == "allow" and line["secret"] == "face-key"
    assert "response not delivered: the client closed the connection first" in line["reason"]


@pytest.mark.integration
def test_names_reach_the_audit_log_escaped_and_cut(server, env, tmp_path):
    since = _mark(env)
    encoder = hpack.Encoder()
    with _h2_tls(server, env, tmp_path) as tls:
        tls.sendall(
            PREFACE
            + SettingsFrame(0).serialize()
            + _headers(encoder, 1)
            + _call(1, "a" * 4000)
            + _headers(encoder, 3)
            + _call(3, "../k\n\x1b[31m")
        )
        _drain(tls, 3.0)
    overlong, control = _audit(env, since, 2)
    assert overlong["secret"] == "a" * 64 + "... (4000 characters)"
    assert "longer than 256" in overlong["reason"]
    assert control["secret"] == "../k\n\x1b[31m" and control["grpc_status"] == "NOT_FOUND"
    raw = (env.directory / "audit.jsonl").read_text().splitlines()[-1]
    assert "\\n" in raw and "\\u001b" in raw and "\x1b" not in raw  # one line, escaped


@pytest.mark.integration
def test_upload_cut_mid_request_stores_nothing_and_says_why(server, env):
    since = _mark(env)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(*env.owner)
    key = os.urandom(16)
    request = upload.encode_request([("up-key", key)])
    with ctx.wrap_socket(socket.create_connection(server.address, timeout=5)) as tls:
        tls.sendall(request[:-5])
    (line,) = _audit(env, since, 1)
    assert line["event"] == "upload" and line["decision"] == "deny"
    assert line["reason"] == "malformed upload request: request truncated (in the key)"
    assert server.uploads.names() == []
    assert key.hex() not in json.dumps(line)


@pytest.mark.integration
def test_the_server_refuses_renegotiation(server, env, tmp_path):
    cert, key = env.enclave_cert("face")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    sock = socket.create_connection(server.address, timeout=5)
    sock.settimeout(None)  # blocking (pyOpenSSL); the server's 3 s deadline bounds the test
    conn = SSL.Connection(ctx, sock)
    conn.set_connect_state()
    try:
        conn.do_handshake()
        assert conn.renegotiate()
        with pytest.raises(SSL.Error, match="no renegotiation"):
            conn.do_handshake()
    finally:
        sock.close()


# --------------------------------------------------------------------------- the owner's client


class _HostileUploadServer:
    """A TLS server (the env's CA-signed certificate) that answers an upload as told."""

    def __init__(self, env, answer):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(env.directory / "server.crt", env.directory / "server.key")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.answer = answer
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        raw, _ = self.listener.accept()
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                tls.recv(65536)
                self.answer(tls)
        except OSError:
            pass

    def connect(self) -> ssl.SSLSocket:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        return ctx.wrap_socket(socket.create_connection(self.listener.getsockname(), timeout=5))

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.integration
def test_a_dripping_server_cannot_hold_the_upload_past_its_timeout(env):
    def drip(tls):
        for byte in upload.answer(True, "stored 1 key(s): up-key"):  # 59 bytes: ~6 s
            tls.sendall(bytes([byte]))
            time.sleep(0.1)

    hostile = _HostileUploadServer(env, drip)
    try:
        with hostile.connect() as tls:
            started = time.monotonic()
            # (which of the two depends on whether the deadline passed in a recv or between two)
            with pytest.raises(
                upload.UploadRefused,
                match=r"(timed out after|no complete "
                r"answer to the upload within) 0\.5 s",
            ):
                upload.upload_keys(tls, [("up-key", os.urandom(16))], timeout=0.5)
            assert time.monotonic() - started < 3.0  # the 0.5 s, not the whole drip
    finally:
        hostile.close()


@pytest.mark.integration
def test_an_enclave_refusal_is_told_apart_from_an_upload_answer(env):
    hostile = _HostileUploadServer(
        env, lambda tls: tls.sendall(wire.refusal("the certificate's quote is malformed"))
    )
    try:
        with hostile.connect() as tls:
            with pytest.raises(
                upload.UploadRefused,
                match=r"answered as to an enclave .*: the "
                "certificate's quote is malformed",
            ):
                upload.upload_keys(tls, [("up-key", os.urandom(16))], timeout=5)
    finally:
        hostile.close()


def test_an_owner_certificate_with_evidence_is_refused_before_connecting(env, tmp_path):
    from enclave_build.builder.cli.attest import check_owner_certificate
    from enclave_build.builder.errors import UsageError

    cert, _ = env.enclave_cert("face", "cczoo")
    path = tmp_path / "owner-with-quote.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(UsageError, match="carries SGX evidence"):
        check_owner_certificate(path)
    check_owner_certificate(env.owner[0])  # an ordinary certificate passes


def test_the_attest_client_refuses_renegotiation():
    from enclave_build.attestation.attest_client import client_context

    assert client_context(None, None).options & ssl.OP_NO_RENEGOTIATION


class _RecordingListener(socket.socket):
    """A listening socket that keeps a duplicate of every socket it accepts: the duplicate
    shares the accepted socket's options, so they can be read after the server set them."""

    accepted: list[socket.socket]

    def accept(self):
        sock, peer = super().accept()
        self.accepted.append(sock.dup())
        return sock, peer


def _recording_listen(accepted: list[socket.socket]):
    def listen(host: str, port: int) -> socket.socket:
        sock = _RecordingListener(socket.AF_INET, socket.SOCK_STREAM)
        sock.accepted = accepted
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.settimeout(0.2)
        return sock

    return listen


@pytest.mark.integration
def test_accepted_sockets_send_small_records_at_once(env, monkeypatch):
    """TCP_NODELAY on every accepted socket, both listeners: without it Nagle's algorithm held
    GrSecret's small HTTP/2 writes ~40 ms for the client's delayed ACK (benchmarks/grsecret.py)."""
    accepted: list[socket.socket] = []
    build = Measurements(
        "secret-server",
        "secret-server",
        "gramine",
        EnclaveIdentity(identity("secret-server").hex(), MR_SIGNER.hex(), 7, 3, False),
        ImageRef(None, None),
    )
    with SimulatedQuoter(env.pki, build, warn=False) as quoter:
        monkeypatch.setenv(SIMULATED_QUOTER_ENV, quoter.env_value)
        since = _mark(env)
        srv = SecretServer(load_config(env.config), listen=_recording_listen(accepted))
        address = srv.start()  # one process (env's config)
        try:
            for listener in (address, srv.grsecret_address):
                with socket.create_connection(listener, timeout=5):
                    pass
            # each connection's line is written once the server is done with it
            settled_audit(
                env.directory / "audit.jsonl",
                lambda records: len([r for r in records if "peer" in r]) >= 2,
                since=since,
            )
        finally:
            srv.shutdown()
    try:
        assert [sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for sock in accepted] == [
            1,
            1,
        ], accepted
    finally:
        for sock in accepted:
            sock.close()
