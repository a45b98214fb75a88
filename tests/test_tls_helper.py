"""`enclave-build secrets tls DIR --host NAME...`: a small CA and the secret server's TLS
certificate, usable as is by `secrets config --cert/--key` and an enclave's [secrets] ca."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from enclave_build.attestation.synthetic import tls_ca_and_server

from .conftest import run_cli


def _sans(cert: Path) -> tuple[list[str], list[str]]:
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _handshake(ca: Path, cert: Path, key: Path, server_name: str) -> str:
    """A real TLS handshake on 127.0.0.1: the client trusts only *ca* and checks
    *server_name*; returns the negotiated version."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                version = tls.version()
                tls.sendall(b"x")
    finally:
        thread.join(10)
        listener.close()
    assert version is not None  # the handshake completed
    return version


def test_cli_writes_ca_certificate_and_private_key_for_all_hosts(tmp_path):
    out = tmp_path / "tls"
    proc = run_cli(
        "secrets",
        "tls",
        str(out),
        "--host",
        "secrets.example.com",
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
    )
    assert proc.returncode == 0, proc.stderr
    ca, cert, key = out / "ca.pem", out / "server.crt", out / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (out / "ca.key").exists()  # the CA key is not kept
    assert _sans(cert) == (["secrets.example.com", "localhost"], ["127.0.0.1"])
    for name in ("localhost", "127.0.0.1"):
        assert _handshake(ca, cert, key, name).startswith("TLSv1")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca, cert, key, "other.example.com")
    stdout = proc.stdout.decode()
    assert f'[secrets]\nserver = "secrets.example.com:4433"\nca = "{ca.resolve()}"\n' in stdout
    assert f"secrets config BUILD_DIR... --cert {cert.resolve()} --key {key.resolve()}" in stdout
    assert b"organisation's PKI" in proc.stderr


def test_its_output_is_accepted_by_secrets_config(tmp_path):
    from enclave_build.attestation.synthetic import SyntheticPKI

    from .test_secrets_config import _build, _key

    assert run_cli("secrets", "tls", str(tmp_path / "tls"), "--host", "localhost").returncode == 0
    SyntheticPKI().save(tmp_path / "pki")
    _key(tmp_path / "k.key")
    build = _build(tmp_path, "alpha", {"k": str(tmp_path / "k.key")})
    proc = run_cli(
        "secrets",
        "config",
        str(build),
        "--cert",
        str(tmp_path / "tls/server.crt"),
        "--key",
        str(tmp_path / "tls/server.key"),
        "--root-ca",
        str(tmp_path / "pki/root.pem"),
        "--collateral",
        str(tmp_path / "pki/collateral.json"),
        "--out",
        str(tmp_path / "s.toml"),
    )
    assert proc.returncode == 0, proc.stderr
    from enclave_build.attestation.config import load_config
    from enclave_build.attestation.server.identity import ServerIdentity
    from enclave_build.attestation.server.tls import secret_prov_context

    config = load_config(tmp_path / "s.toml")
    secret_prov_context(config, ServerIdentity.make(config))  # the server can use them


def test_existing_files_and_bad_names_are_refused_with_exit_2(tmp_path):
    out = tmp_path / "tls"
    assert run_cli("secrets", "tls", str(out), "--host", "a.example").returncode == 0
    before = (out / "server.crt").read_bytes()
    again = run_cli("secrets", "tls", str(out), "--host", "a.example")
    assert again.returncode == 2
    assert b"exists (use --force to replace" in again.stderr
    assert (out / "server.crt").read_bytes() == before
    forced = run_cli("secrets", "tls", str(out), "--host", "b.example", "--force")
    assert forced.returncode == 0, forced.stderr
    assert _sans(out / "server.crt") == (["b.example"], [])
    bad = run_cli("secrets", "tls", str(tmp_path / "x"), "--host", "not a name")
    assert (
        bad.returncode == 2
        and b"--host 'not a name': not a DNS name or an IP address" in bad.stderr
    )
    missing = run_cli("secrets", "tls", str(tmp_path / "y"))
    assert missing.returncode == 2 and b"--host" in missing.stderr


def test_help_gives_the_openssl_equivalent():
    proc = run_cli("secrets", "tls", "--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert "openssl req -x509 -newkey ec" in text
    assert "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key" in text
    assert "organisation's own PKI" in text


def test_helper_keeps_its_single_name_form_and_certifies_lists_exactly(tmp_path):
    _ca, cert, key = tls_ca_and_server(tmp_path / "one", "secrets.example")
    assert _sans(cert) == (["secrets.example"], ["127.0.0.1"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _, cert, _ = tls_ca_and_server(tmp_path / "many", ["a.example", "::1", "b.example"], days=2)
    assert _sans(cert) == (["a.example", "b.example"], [str(ipaddress.ip_address("::1"))])
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert (parsed.not_valid_after_utc - parsed.not_valid_before_utc).days == 3
    with pytest.raises(FileExistsError):
        tls_ca_and_server(tmp_path / "many", ["a.example"], overwrite=False)
