"""The secret server's audit lines, byte for byte: field order and format are what log
pipelines parse (the same as before audit events were typed)."""

from __future__ import annotations

import datetime as dt

from enclave_build.attestation.server.audit import (
    AttestedIdentity,
    AuditLog,
    ConnectionEvent,
    Reloaded,
    Started,
    Stopped,
    WorkerExited,
)

MOMENT = dt.datetime(2026, 12, 7, 10, 30, 5, 123456, tzinfo=dt.UTC)
TIME = '{"time": "2026-12-07T10:30:05.123+00:00", '
IDENTITY = AttestedIdentity("aa" * 32, "bb" * 32, 1, 2, "UpToDate", ("INTEL-SA-1",))
IDENTITY_JSON = (
    f'"mr_enclave": "{"aa" * 32}", "mr_signer": "{"bb" * 32}", "isv_prod_id": 1, '
    '"isv_svn": 2, "tcb_status": "UpToDate", "advisories": ["INTEL-SA-1"]'
)


def _lines(tmp_path, *events) -> list[str]:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), now=lambda: MOMENT)
    for event in events:
        log.write(event)
    log.close()
    text = path.read_text()
    assert text.endswith("\n")
    return text.splitlines()


def test_connection_lines(tmp_path):
    released = ConnectionEvent(
        "127.0.0.1:5000", tls="TLSv1.3", evidence="tcg-dice", identity=IDENTITY, secret="face-key"
    )
    released.allow("allowed via face")
    refused = ConnectionEvent("[::1]:5001")
    refused.deny("too many concurrent connections")
    upload = ConnectionEvent(
        "127.0.0.1:5002", tls="TLSv1.3", event="upload", owner="cc" * 32, secrets=("a", "b")
    )
    upload.allow("stored 2 key(s): a, b; by owner CN=owner")
    grpc = ConnectionEvent(
        "127.0.0.1:5003", protocol="grsecret", tls="TLSv1.3", evidence="cczoo", identity=IDENTITY
    )
    call = grpc.for_call("image_key", False, "no secret named 'image_key'", "NOT_FOUND")
    assert _lines(tmp_path, released, refused, upload, call) == [
        TIME
        + '"peer": "127.0.0.1:5000", "tls": "TLSv1.3", "evidence": "tcg-dice", '
        + IDENTITY_JSON
        + ', "secret": "face-key", "decision": "allow", '
        '"reason": "allowed via face"}',
        TIME + '"peer": "[::1]:5001", "decision": "deny", '
        '"reason": "too many concurrent connections"}',
        TIME + '"peer": "127.0.0.1:5002", "tls": "TLSv1.3", "event": "upload", '
        f'"owner": "{"cc" * 32}", "secrets": ["a", "b"], "decision": "allow", '
        '"reason": "stored 2 key(s): a, b; by owner CN=owner"}',
        TIME + '"peer": "127.0.0.1:5003", "protocol": "grsecret", "tls": "TLSv1.3", '
        '"evidence": "cczoo", ' + IDENTITY_JSON + ', "secret": "image_key", '
        '"decision": "deny", "reason": "no secret named \'image_key\'", '
        '"grpc_status": "NOT_FOUND"}',
    ]


def test_server_lines(tmp_path):
    assert _lines(
        tmp_path,
        Started("127.0.0.1:4433", None, 1, pid=7),
        Started("0.0.0.0:4433", "0.0.0.0:50051", 2, pids=(9, 8)),
        Reloaded(2, 3, "server.crt", 7),
        WorkerExited(8, -9),
        Stopped(7),
    ) == [
        TIME + '"event": "start", "listen": "127.0.0.1:4433", "processes": 1, "pid": 7}',
        TIME + '"event": "start", "listen": "0.0.0.0:4433", "grsecret": "0.0.0.0:50051", '
        '"processes": 2, "pids": [8, 9]}',
        TIME + '"event": "reload", "measurements": 2, "secrets": 3, "cert": "server.crt", '
        '"pid": 7}',
        TIME + '"event": "worker exited", "pid": 8, "status": -9}',
        TIME + '"event": "stop", "pid": 7}',
    ]
