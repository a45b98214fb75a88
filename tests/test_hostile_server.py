"""The secret server against hostile clients on 127.0.0.1: every connection, however malformed,
ends in exactly one audit line with a decision and a reason; queued connections keep their
deadline; one peer cannot take every slot; SIGHUP/reload swaps the TLS certificate."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL

from enclave_build.attestation.config import load_config
from enclave_build.attestation.server import SecretServer, ServerError
from enclave_build.attestation.synthetic import tls_ca_and_server
from enclave_build.attestation.wire import REQUEST

from .attest_env import audit_records, make_env
from .secret_client import ProvisioningError, fetch_secret

pytestmark = pytest.mark.integration


def _audit(env) -> list[dict]:
    return audit_records(env.directory / "audit.jsonl")


def _connections(env) -> list[dict]:
    return [r for r in _audit(env) if "peer" in r]


def _wait_for_lines(env, count: int, timeout: float = 10.0) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = _connections(env)
        if len(lines) >= count:
            return lines
        time.sleep(0.02)
    return _connections(env)


def _serve(env, **edits) -> SecretServer:
    text = env.config.read_text()
    for key, value in edits.items():
        text = text.replace("[server]\n", f"[server]\n{key} = {value}\n", 1)
    env.config.write_text(text)
    server = SecretServer(load_config(env.config))
    server.start()
    return server


def _pem_files(env, cert, key, name: str):
    cert_path, key_path = env.directory / f"{name}.crt", env.directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _pyopenssl_client(server, env, cert_key, server_name: bytes):
    """A TLS client that can send any SNI bytes (Python's ssl module insists on IDNA text)."""
    cert, key = cert_key
    cert_path, key_path = _pem_files(env, cert, key, "sni-client")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.use_certificate_file(str(cert_path))
    ctx.use_privatekey_file(str(key_path))
    ctx.load_verify_locations(str(env.ca))
    sock = socket.create_connection(server.address)  # blocking: pyOpenSSL uses the fd as is
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(server_name)
    conn.set_connect_state()
    conn.do_handshake()
    return conn, sock


def _unparseable_extension_cert():
    """A self-signed client certificate whose CertificatePolicies extension is not valid:
    OpenSSL completes the handshake with it, `cryptography` raises ValueError when asked."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.CERTIFICATE_POLICIES, b"\x30\x05\x01\x01"),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ValueError):
        cert.extensions  # noqa: B018 - what the server used to trip over
    return cert, key


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path / "env", timeout=3.0)


def test_unparseable_client_extension_is_audited_with_a_reason(env):
    server = _serve(env)
    try:
        with pytest.raises(ProvisioningError):
            fetch_secret(
                *server.address, env.ca, *_unparseable_extension_cert(), server_name="localhost"
            )
        last = _wait_for_lines(env, 1)[-1]
        assert last["decision"] == "deny", last
        assert "extension that cannot be parsed" in last["reason"], last
        # ... and the server keeps serving.
        assert (
            fetch_secret(
                *server.address, env.ca, *env.enclave_cert("face"), server_name="localhost"
            )
            == env.secrets["face"]
        )
    finally:
        server.shutdown()


def test_non_utf8_server_name_is_audited_with_a_reason(env):
    server = _serve(env)
    try:
        conn, sock = _pyopenssl_client(server, env, env.enclave_cert("face"), b"\xff\xfe.example")
        try:
            conn.sendall(REQUEST)
            try:
                while conn.recv(4096):
                    pass
            except (SSL.ZeroReturnError, SSL.SysCallError):
                pass
        finally:
            sock.close()
        last = _wait_for_lines(env, 1)[-1]
        assert last["decision"] == "deny", last
        assert "server name (SNI) is not valid UTF-8" in last["reason"], last
    finally:
        server.shutdown()


def test_pccs_failure_is_audited_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = make_env(tmp_path / "env")
    env.config.write_text(
        env.config.read_text().replace(
            'collateral = "collateral.json"',
            'pccs_url = "http://127.0.0.1:9/sgx/certification/v4/"\npccs_timeout = 2.0',
        )
    )
    server = _serve(env)
    try:
        with pytest.raises(ProvisioningError, match="collateral"):
            fetch_secret(
                *server.address, env.ca, *env.enclave_cert("face"), server_name="localhost"
            )
        last = _wait_for_lines(env, 1)[-1]
        assert last["decision"] == "deny", last
        assert "no collateral to verify the quote" in last["reason"], last
    finally:
        server.shutdown()


def test_every_connection_ends_in_exactly_one_audit_line(env):
    server = _serve(env)
    ports = []
    try:
        # never starts TLS
        idle = socket.create_connection(server.address)
        ports.append(idle.getsockname()[1])
        idle.close()
        # garbage instead of a ClientHello
        junk = socket.create_connection(server.address)
        ports.append(junk.getsockname()[1])
        junk.sendall(b"\x16\x03\x01\xff\xff" + b"\x00" * 300)
        junk.close()
        # a certificate the parser rejects, a good client, a client without a certificate
        for cert_key in (_unparseable_extension_cert(), env.enclave_cert("face")):
            ctx = ssl.create_default_context(cafile=str(env.ca))
            ctx.load_cert_chain(*_pem_files(env, *cert_key, "c"))
            raw = socket.create_connection(server.address, timeout=10)
            ports.append(raw.getsockname()[1])
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(REQUEST)
                try:
                    while tls.recv(4096):
                        pass
                except (ssl.SSLError, ConnectionError):
                    pass
        lines = _wait_for_lines(env, len(ports))
        time.sleep(0.2)
        lines = _connections(env)
        by_port = {}
        for line in lines:
            by_port.setdefault(int(line["peer"].rsplit(":", 1)[1]), []).append(line)
        for port in ports:
            assert len(by_port.get(port, [])) == 1, (port, lines)
            line = by_port[port][0]
            assert line["decision"] in ("allow", "deny") and line["reason"], line
        assert [by_port[p][0]["decision"] for p in ports] == ["deny", "deny", "deny", "allow"]
    finally:
        server.shutdown()


def test_per_peer_connection_cap(env):
    server = _serve(env, max_connections_per_peer=2)
    try:
        # (one acceptor thread takes connections in order: the third is admitted after these)
        idle = [socket.create_connection(server.address) for _ in range(2)]
        third = socket.create_connection(server.address)
        third.settimeout(5)
        started = time.monotonic()
        assert third.recv(1) == b""  # refused at once, not at the deadline (3 s)
        assert time.monotonic() - started < 2.5
        # (its line is written before the close the client just saw)
        assert _connections(env)[-1]["reason"].startswith(
            "too many concurrent connections from this peer"
        ), _connections(env)[-1]
        # another peer address (127.0.0.2 is loopback too) is still served meanwhile
        host, port = server.address
        other = socket.create_connection((host, port), source_address=("127.0.0.2", 0))
        ctx = ssl.create_default_context(cafile=str(env.ca))
        ctx.load_cert_chain(*_pem_files(env, *env.enclave_cert("face"), "p"))
        with ctx.wrap_socket(other, server_hostname="localhost") as tls:
            tls.sendall(REQUEST)
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
        assert data.endswith(env.secrets["face"])
        for sock in idle + [third]:
            sock.close()
        # the server releases a peer's slot once it has seen that connection end: wait for it
        end = time.monotonic() + 15
        while server.admission.connections_from("127.0.0.1") and time.monotonic() < end:
            time.sleep(0.01)
        assert not server.admission.connections_from("127.0.0.1")
        assert (
            fetch_secret(host, port, env.ca, *env.enclave_cert("face"), server_name="localhost")
            == env.secrets["face"]
        )
    finally:
        server.shutdown()


def test_queued_connections_keep_their_deadline(env):
    """One worker, timeout 2 s: a connection that waited in the queue behind an idle one is
    cut 2 s after it connected, not 2 s after a worker took it (when the first was cut)."""
    text = env.config.read_text().replace("timeout = 3.0", "timeout = 2.0")
    env.config.write_text(text)
    server = _serve(env, workers=1)
    try:
        first = socket.create_connection(server.address)
        time.sleep(0.5)  # (not a synchronisation: only so that the two deadlines differ)
        connected = time.monotonic()
        second = socket.create_connection(server.address)
        first.settimeout(10)
        second.settimeout(10)
        assert first.recv(1) == b""
        first_cut = time.monotonic()
        assert second.recv(1) == b""
        second_cut = time.monotonic()
        first.close()
        second.close()
        # its own deadline, 2 s after it connected (not before) ...
        assert second_cut - connected > 1.9, second_cut - connected
        # ... and not the 2 s again from when the worker took it, at the first's cut: that
        # would be >= 2 s after the first's cut; its own deadline is ~0.5 s after it
        assert second_cut - first_cut < 1.5, (second_cut - first_cut, first_cut - connected)
        lines = _wait_for_lines(env, 2)
        assert all(line["decision"] == "deny" and line["reason"] for line in lines)
    finally:
        server.shutdown()


def test_reload_replaces_the_tls_certificate_and_key(env, tmp_path):
    server = _serve(env)
    try:
        assert (
            fetch_secret(
                *server.address, env.ca, *env.enclave_cert("face"), server_name="localhost"
            )
            == env.secrets["face"]
        )
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        new_ca, new_cert, new_key = tls_ca_and_server(fresh)
        shutil.copyfile(new_cert, env.directory / "server.crt")
        shutil.copyfile(new_key, env.directory / "server.key")
        server.reload()
        presented = ssl.get_server_certificate(server.address)
        assert x509.load_pem_x509_certificate(presented.encode()) == x509.load_pem_x509_certificate(
            new_cert.read_bytes()
        )
        assert (
            fetch_secret(
                *server.address, new_ca, *env.enclave_cert("face"), server_name="localhost"
            )
            == env.secrets["face"]
        )
        with pytest.raises((ProvisioningError, ssl.SSLError)):
            fetch_secret(
                *server.address, env.ca, *env.enclave_cert("face"), server_name="localhost"
            )
        # a broken key file keeps the working certificate
        (env.directory / "server.key").write_text("not a key")
        with pytest.raises(ServerError, match="cannot use the TLS certificate and key"):
            server.reload()
        assert (
            fetch_secret(
                *server.address, new_ca, *env.enclave_cert("face"), server_name="localhost"
            )
            == env.secrets["face"]
        )
    finally:
        server.shutdown()
