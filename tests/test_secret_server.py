"""The secret server against clients on 127.0.0.1: exact wire bytes, TLS 1.2 and 1.3, and a
denial matrix where every refusal is its own test and the server keeps serving throughout."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization

from enclave_build.attestation.config import ConfigError, load_config
from enclave_build.attestation.ratls import create_certificate
from enclave_build.attestation.server import SecretServer, startup_warnings
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.attestation.wire import REQUEST, RESPONSE

from .attest_env import MR_SIGNER, audit_mark, identity, make_env, settled_audit
from .secret_client import ProvisioningError, fetch_secret

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("secret-server"))


@pytest.fixture(scope="module")
def server(env):
    srv = SecretServer(load_config(env.config))
    srv.start()
    yield srv
    srv.shutdown()


def _audit(env, since: int = 0, until=None) -> list[dict]:
    return settled_audit(env.directory / "audit.jsonl", until, since=since)


def _mark(env) -> int:
    return audit_mark(env.directory / "audit.jsonl")


def _denial_since(env, since: int) -> dict:
    """The one 'deny' line after the first *since* lines, once the server has written it (a
    refused client has the refusal a moment before the server writes the line)."""
    has_deny = lambda records: any(r.get("decision") == "deny" for r in records)
    denied = [r for r in _audit(env, since, has_deny) if r.get("decision") == "deny"]
    assert len(denied) == 1, denied
    return denied[0]


def _reason_since(env, since: int, text: str) -> list[dict]:
    """The lines after the first *since* whose reason contains *text*, once there is one."""
    matching = lambda r: text in r.get("reason", "")
    return [r for r in _audit(env, since, lambda rs: any(map(matching, rs))) if matching(r)]


def _wait_until(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout:g} s: {what}"
        time.sleep(0.01)


def _fetch(server, env, cert_key, **kw) -> bytes:
    host, port = server.address
    return fetch_secret(host, port, env.ca, *cert_key, server_name="localhost", **kw)


def _refused(server, env, cert_key, reason: str, **kw) -> None:
    since = _mark(env)
    with pytest.raises(ProvisioningError):
        _fetch(server, env, cert_key, **kw)
    last = _denial_since(env, since)
    assert reason in last["reason"], last
    # ... and the server keeps serving good enclaves.
    assert _fetch(server, env, env.enclave_cert("face")) == env.secrets["face"]


def _raw_tls(server, env, cert_key, version=None):
    cert, key = cert_key
    directory = env.directory
    (directory / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(cafile=str(env.ca))
    ctx.load_cert_chain(directory / "c.pem", directory / "k.pem")
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    raw = socket.create_connection(server.address, timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


def _read_all(tls) -> bytes:
    data = b""
    while chunk := tls.recv(4096):
        data += chunk
    return data


def _read_until_closed(tls) -> bytes:
    """What a refused client receives before the connection ends (close_notify, or a reset
    when the server refused input it did not read)."""
    data = b""
    try:
        while chunk := tls.recv(4096):
            data += chunk
    except (ssl.SSLEOFError, ConnectionResetError):
        pass
    return data


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("fmt", ["tcg-dice", "gramine-legacy", "cczoo"])
def test_exact_wire_bytes(server, env, version, fmt):
    assert len(REQUEST) == 35 and REQUEST == b"SECRET_PROVISION_RA_TLS_REQUEST_V1\x00"
    assert len(RESPONSE) == 37 and RESPONSE == b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\x00"
    with _raw_tls(server, env, env.enclave_cert("face", fmt), version) as tls:
        assert (
            tls.version()
            == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        )
        tls.sendall(REQUEST)
        data = _read_all(tls)  # ends with close_notify (a bare TCP close would raise here)
    assert data == RESPONSE + (16).to_bytes(4, "big") + env.secrets["face"]


def test_signer_matching_accepts_a_newer_svn_of_the_same_product(server, env):
    newer = env.enclave_cert("ocr", mr_enclave=os.urandom(32), isv_svn=7)
    assert _fetch(server, env, newer) == env.secrets["ocr"]


def test_denied_wrong_mr_enclave(server, env):
    _refused(
        server,
        env,
        env.enclave_cert("face", mr_enclave=os.urandom(32)),
        "no secret is released to this enclave identity",
    )


def test_denied_wrong_mr_signer(server, env):
    _refused(
        server, env, env.enclave_cert("ocr", mr_signer=os.urandom(32)), "no secret is released"
    )


def test_denied_wrong_prod_id(server, env):
    _refused(server, env, env.enclave_cert("ocr", isv_prod_id=5), "no secret is released")


def test_denied_svn_below_minimum(server, env):
    _refused(server, env, env.enclave_cert("ocr", isv_svn=1), "no secret is released")


def test_denied_debug_enclave(server, env):
    _refused(server, env, env.enclave_cert("face", debug=True), "DEBUG enclave: refused")


def test_denied_tampered_quote(server, env):
    def tampered(report_data: bytes) -> bytes:
        quote = bytearray(env.pki.quote(identity("face"), MR_SIGNER, report_data, 1, 2))
        quote[48 + 16] ^= 1  # MISCSELECT: signed, not part of the key binding
        return bytes(quote)

    _refused(server, env, create_certificate("tcg-dice", tampered), "signature is invalid")


def test_denied_pubkey_not_bound(server, env):
    foreign = env.pki.quote(identity("face"), MR_SIGNER, os.urandom(64), 1, 2)
    _refused(
        server,
        env,
        create_certificate("gramine-legacy", lambda rd: foreign),
        "does not bind the certificate's public key",
    )


def test_denied_wrong_root(server, env):
    _refused(server, env, env.enclave_cert("face", pki=SyntheticPKI()), "another root")


def test_denied_malformed_request(server, env):
    since = _mark(env)
    with _raw_tls(server, env, env.enclave_cert("face")) as tls:
        wrong = b"SECRET_PROVISION_RA_TLS_REQUEST_V2\0"  # right size, wrong protocol version
        assert len(wrong) == len(REQUEST)
        tls.sendall(wrong)
        assert _read_until_closed(tls) == b""
    (line,) = _reason_since(env, since, "malformed request")
    assert line["decision"] == "deny" and line["reason"].startswith("malformed request")
    assert _fetch(server, env, env.enclave_cert("face")) == env.secrets["face"]


def test_denied_oversize_request(server, env):
    since = _mark(env)
    with _raw_tls(server, env, env.enclave_cert("face")) as tls:
        tls.sendall(REQUEST + b"A" * 10000)
        assert _read_until_closed(tls) == b""
    (line,) = _reason_since(env, since, "request longer")
    assert line["decision"] == "deny" and line["reason"] == "request longer than 35 bytes"
    assert _fetch(server, env, env.enclave_cert("face")) == env.secrets["face"]


def test_denied_slow_client(server, env):
    """A client that connects and then says nothing is cut off at the deadline (3 s here),
    while others are served meanwhile."""
    since = _mark(env)
    started = time.monotonic()
    idle = socket.create_connection(server.address)
    assert _fetch(server, env, env.enclave_cert("face")) == env.secrets["face"]
    idle.settimeout(10)
    assert idle.recv(1) == b""
    assert 2.5 < time.monotonic() - started < 8
    idle.close()
    assert _reason_since(env, since, "TLS handshake failed")


def test_denied_no_client_certificate(server, env):
    ctx = ssl.create_default_context(cafile=str(env.ca))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with ctx.wrap_socket(
            socket.create_connection(server.address, timeout=10), server_hostname="localhost"
        ) as tls:
            tls.sendall(REQUEST)
            tls.recv(100)


def test_a_client_without_a_certificate_is_recorded_as_reading_the_identity(server, env):
    """A client that presents no certificate (a reachability check) asked nothing: its audit
    line says so, it is not a refused request."""
    since = _mark(env)
    ctx = ssl.create_default_context(cafile=str(env.ca))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with ctx.wrap_socket(
            socket.create_connection(server.address, timeout=10), server_hostname="localhost"
        ) as tls:
            tls.sendall(REQUEST)
            tls.recv(100)
    (line,) = _reason_since(env, since, "without presenting one")
    assert line["decision"] == "identity-only" and "nothing was requested" in line["reason"]
    assert not [r for r in _audit(env, since) if r.get("decision") == "deny"]


def _separate(tmp_path, env_kwargs, cert_for, reason, now=None):
    env = make_env(tmp_path, **env_kwargs)
    srv = SecretServer(load_config(env.config), now=now)
    srv.start()
    try:
        since = _mark(env)
        with pytest.raises(ProvisioningError):
            _fetch(srv, env, cert_for(env))
        last = _denial_since(env, since)
        assert reason in last["reason"], last
    finally:
        srv.shutdown()


def test_denied_expired_collateral(tmp_path):
    later = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=90)
    _separate(tmp_path, {}, lambda e: e.enclave_cert("face"), "xpired", now=later)


def test_denied_revoked_pck(tmp_path):
    _separate(
        tmp_path, {"pki": SyntheticPKI(revoke_pck=True)}, lambda e: e.enclave_cert("face"), "evoked"
    )


def test_denied_out_of_date_tcb(tmp_path):
    _separate(
        tmp_path,
        {"pki": SyntheticPKI(tcb_status="OutOfDate")},
        lambda e: e.enclave_cert("face"),
        "TCB status OutOfDate is not allowed",
    )


def test_out_of_date_tcb_allowed_by_name_with_a_warning(tmp_path):
    env = make_env(
        tmp_path, statuses=("UpToDate", "OutOfDate"), pki=SyntheticPKI(tcb_status="OutOfDate")
    )
    config = load_config(env.config)
    assert any("TCB status OutOfDate allowed" in w for w in startup_warnings(config))
    srv = SecretServer(config)
    srv.start()
    try:
        assert _fetch(srv, env, env.enclave_cert("face")) == env.secrets["face"]
    finally:
        srv.shutdown()


def test_tls12_only_mode_issues_no_session_tickets(tmp_path):
    env = make_env(tmp_path, max_tls="1.2")
    srv = SecretServer(load_config(env.config))
    srv.start()
    try:
        with _raw_tls(srv, env, env.enclave_cert("face")) as tls:
            tls.sendall(REQUEST)
            _read_all(tls)
            assert tls.version() == "TLSv1.2"
            assert not tls.session.has_ticket
        with pytest.raises(ProvisioningError):
            _fetch(srv, env, env.enclave_cert("face"), tls_version=ssl.TLSVersion.TLSv1_3)
    finally:
        srv.shutdown()


def test_connection_cap(tmp_path):
    env = make_env(tmp_path, max_connections=2, timeout=2.0)
    srv = SecretServer(load_config(env.config))
    srv.start()
    try:
        # (one acceptor thread takes connections in order: the third is admitted after these)
        idle = [socket.create_connection(srv.address) for _ in range(2)]
        third = socket.create_connection(srv.address)
        third.settimeout(5)
        assert third.recv(1) == b""  # closed at once, not after the deadline
        (line,) = _reason_since(env, 0, "too many concurrent connections")
        assert line["reason"] == "too many concurrent connections"
        for sock in idle + [third]:
            sock.close()
        # the server frees a slot once it has seen a connection end: wait for that, not a guess
        _wait_until(lambda: srv.admission.free_slots == 2, "both connection slots free again")
        assert _fetch(srv, env, env.enclave_cert("face")) == env.secrets["face"]
    finally:
        srv.shutdown()


def test_sni_selects_among_several_matching_secrets(tmp_path):
    extra = '\n[[secrets]]\nname = "face-extra"\nfile = "ocr.key"\nallow = ["face"]\n'
    env = make_env(tmp_path, extra=extra)
    srv = SecretServer(load_config(env.config))
    srv.start()
    try:
        with pytest.raises(ProvisioningError):
            _fetch(srv, env, env.enclave_cert("face"))  # SNI "localhost" selects none
        assert "several secrets (face-extra, face-key) match" in _denial_since(env, 0)["reason"]
    finally:
        srv.shutdown()


def test_reload_changes_the_policy_without_restart(tmp_path):
    env = make_env(tmp_path)
    srv = SecretServer(load_config(env.config))
    srv.start()
    try:
        assert _fetch(srv, env, env.enclave_cert("face")) == env.secrets["face"]
        original = env.config.read_text()
        env.config.write_text(original.replace('allow = ["face"]', 'allow = ["ocr"]'))
        srv.reload()
        with pytest.raises(ProvisioningError):
            _fetch(srv, env, env.enclave_cert("face"))
        env.config.write_text(original.replace("[server]", "[server]\nbogus = 1"))
        with pytest.raises(ConfigError, match=r"server.bogus: unknown key"):
            srv.reload()  # a broken file keeps the previous (working) policy
        with pytest.raises(ProvisioningError):
            _fetch(srv, env, env.enclave_cert("face"))
    finally:
        srv.shutdown()


def test_audit_log_never_contains_secret_bytes(server, env):
    _fetch(server, env, env.enclave_cert("face"))
    text = (env.directory / "audit.jsonl").read_bytes()
    for secret in env.secrets.values():
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in text
    records = _audit(env)
    allowed = [r for r in records if r.get("decision") == "allow"]
    assert allowed and {"peer", "evidence", "mr_enclave", "tcb_status", "secret", "reason"} <= set(
        allowed[-1]
    )


def test_config_errors_name_file_and_key(tmp_path):
    env = make_env(tmp_path)
    text = env.config.read_text()
    env.config.write_text(
        text.replace('measurements = ["builds/*/measurements.json"]\n', "").replace(
            "allowed_tcb_statuses", 'measurements = ["x"]\nallowed_tcb_statuses'
        )
    )
    with pytest.raises(ConfigError, match=r"attestation.measurements: unknown key.*top-level key"):
        load_config(env.config)
    env.config.write_text(text.replace('"UpToDate"', '"Fine"'))
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{env.config}:") + r"\d+: attestation\."
        r"allowed_tcb_statuses\[0\]: 'Fine' is not allowed",
    ):
        load_config(env.config)


def test_serve_command_runs_reloads_on_sighup_and_stops_on_sigterm(tmp_path):
    env = make_env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave_build", "secrets", "serve", "--config", str(env.config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while True:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if line.startswith("serving on "):
                break
        assert any("SYNTHETIC TEST root CA" in text for text in lines)  # warned on start
        host, port = line.split()[-1].rsplit(":", 1)
        cert_key = env.enclave_cert("face")
        assert (
            fetch_secret(host, int(port), env.ca, *cert_key, server_name="localhost")
            == env.secrets["face"]
        )
        env.config.write_text(env.config.read_text().replace('allow = ["face"]', 'allow = ["ocr"]'))
        proc.send_signal(signal.SIGHUP)
        assert proc.stderr.readline().strip() == "configuration reloaded"
        with pytest.raises(ProvisioningError):
            fetch_secret(host, int(port), env.ca, *cert_key, server_name="localhost")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------- worker processes


def test_worker_processes_serve_reload_and_stop(tmp_path):
    """processes = 2: both workers serve (each its own verification cache), one audit line per
    connection from whichever worker served it, a reload reaches every worker, and shutdown
    stops them all."""
    env = make_env(tmp_path, processes=2)
    srv = SecretServer(load_config(env.config))
    srv.start()
    pids = sorted(srv.worker_pids)
    try:
        assert len(pids) == 2
        for _ in range(12):
            assert _fetch(srv, env, env.enclave_cert("face")) == env.secrets["face"]
        allowed = lambda records: [r for r in records if r.get("decision") == "allow"]
        served = allowed(_audit(env, until=lambda records: len(allowed(records)) >= 12))
        assert len(served) == 12
        original = env.config.read_text()
        env.config.write_text(original.replace('allow = ["face"]', 'allow = ["ocr"]'))
        srv.reload()
        reloads = [r for r in _audit(env) if r.get("event") == "reload"]
        assert sorted(r["pid"] for r in reloads) == pids
        for _ in range(6):  # whichever worker takes it, the new policy applies
            with pytest.raises(ProvisioningError):
                _fetch(srv, env, env.enclave_cert("face"))
        env.config.write_text(original.replace("[server]", "[server]\nbogus = 1"))
        with pytest.raises(ConfigError):
            srv.reload()  # refused before any worker is told
        assert len([r for r in _audit(env) if r.get("event") == "reload"]) == 2
    finally:
        srv.shutdown()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped
    lines = (env.directory / "audit.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # whole lines only
    assert json.loads(lines[-1])["event"] == "stop"


def test_a_worker_that_dies_is_replaced(tmp_path):
    env = make_env(tmp_path, processes=2)
    srv = SecretServer(load_config(env.config))
    srv.start()
    try:
        victim = srv.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        # dead (a zombie, not yet reaped: supervise() reaps it), however long the kernel took
        _wait_until(
            lambda: os.waitid(os.P_PID, victim, os.WEXITED | os.WNOHANG | os.WNOWAIT),
            f"worker {victim} killed",
        )
        replaced = srv.supervise()
        assert len(replaced) == 1 and victim not in srv.worker_pids and len(srv.worker_pids) == 2
        for _ in range(6):
            assert _fetch(srv, env, env.enclave_cert("face")) == env.secrets["face"]
        assert any(r.get("event") == "worker exited" and r["pid"] == victim for r in _audit(env))
    finally:
        srv.shutdown()


def test_serve_command_with_worker_processes_reloads_and_stops_all(tmp_path):
    env = make_env(tmp_path, processes=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave_build", "secrets", "serve", "--config", str(env.config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while True:
            line = proc.stderr.readline()
            assert line
            if line.startswith("serving on "):
                break
        host, port = line.split()[-1].rsplit(":", 1)
        start = [r for r in _audit(env) if r.get("event") == "start"][-1]
        assert start["processes"] == 2 and len(start["pids"]) == 2
        cert_key = env.enclave_cert("face")
        assert (
            fetch_secret(host, int(port), env.ca, *cert_key, server_name="localhost")
            == env.secrets["face"]
        )
        env.config.write_text(env.config.read_text().replace('allow = ["face"]', 'allow = ["ocr"]'))
        proc.send_signal(signal.SIGHUP)
        assert proc.stderr.readline().strip() == "configuration reloaded"
        assert sorted(r["pid"] for r in _audit(env) if r.get("event") == "reload") == sorted(
            start["pids"]
        )
        for _ in range(4):
            with pytest.raises(ProvisioningError):
                fetch_secret(host, int(port), env.ca, *cert_key, server_name="localhost")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        for pid in start["pids"]:  # the workers are gone too
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
