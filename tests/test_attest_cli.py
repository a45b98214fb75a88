"""`enclave-build attest` / `secrets upload`: argument checks, refusals before anything is sent,
and the upload protocol's server side (attestation.upload) on its own."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from enclave_build.attestation import upload
from enclave_build.attestation.config import load_config
from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.server import SecretServer
from enclave_build.contract.identity import EnclaveIdentity

from .attest_env import MR_SIGNER, identity, make_env
from .conftest import run_cli
from .test_secret_server_enclave import owner_pair


def _measurements(path: Path, framework: str = "secret-server") -> Path:
    path.write_text(
        Measurements(
            "keys",
            framework,
            "gramine",
            EnclaveIdentity(identity("keys").hex(), MR_SIGNER.hex(), 0, 0, False),
            ImageRef(None, None),
        ).to_json()
    )
    return path


def _key(path: Path, mode: int = 0o600) -> Path:
    path.write_bytes(os.urandom(16))
    os.chmod(path, mode)
    return path


def test_help_texts_have_examples():
    for args in (("attest", "--help"), ("secrets", "upload", "--help")):
        proc = run_cli(*args)
        assert proc.returncode == 0 and b"Example:" in proc.stdout, proc.stdout


def test_upload_argument_errors(tmp_path):
    m = _measurements(tmp_path / "m.json")
    cert, key = owner_pair(tmp_path, "owner")
    base = (
        "secrets",
        "upload",
        "127.0.0.1:1",
        "--measurements",
        str(m),
        "--collateral",
        str(m),
        "--owner-cert",
        str(cert),
        "--owner-key",
        str(key),
    )
    unpaired = run_cli(*base, "--name", "a", "--name", "b", "--file", str(_key(tmp_path / "a")))
    assert unpaired.returncode == 2 and b"2 --name but 1 --file" in unpaired.stderr
    open_key = run_cli(*base, "--name", "a", "--file", str(_key(tmp_path / "o", 0o644)))
    assert open_key.returncode == 2 and b"chmod 600" in open_key.stderr
    (tmp_path / "long").write_bytes(b"x" * 32)
    os.chmod(tmp_path / "long", 0o600)
    long_key = run_cli(*base, "--name", "a", "--file", str(tmp_path / "long"))
    assert long_key.returncode == 2 and b"32 bytes; a key is exactly 16" in long_key.stderr
    model = run_cli(
        "secrets",
        "upload",
        "127.0.0.1:1",
        "--measurements",
        str(_measurements(tmp_path / "t.json", "tflite")),
        "--collateral",
        str(m),
        "--owner-cert",
        str(cert),
        "--owner-key",
        str(key),
        "--name",
        "a",
        "--file",
        str(_key(tmp_path / "k")),
    )
    assert model.returncode == 2 and b"not a secret-server build" in model.stderr
    nothing = run_cli("attest", "127.0.0.1:1", "--measurements", str(m))
    assert nothing.returncode == 2 and b"exactly one of --collateral" in nothing.stderr


def test_a_measurements_file_that_is_not_one_is_a_usage_error(tmp_path):
    """A spec (or anything not a measurements.json) given as --measurements is exit 2 naming
    the file, not exit 1 like a server that is not attested."""
    spec = tmp_path / "spec.toml"
    spec.write_text('[service]\nname = "face"\n')
    m = _measurements(tmp_path / "m.json")
    proc = run_cli("attest", "127.0.0.1:1", "--measurements", str(spec), "--collateral", str(m))
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert f"--measurements: {spec}:1: not JSON" in err


def test_upload_to_a_server_without_ratls_identity_is_refused(tmp_path):
    """An ordinary secret server (CA-signed certificate, not in an enclave): the client refuses
    before sending a byte; the server's audit shows no upload."""
    env = make_env(tmp_path / "env")
    server = SecretServer(load_config(env.config))
    host, port = server.start()
    try:
        cert, key = owner_pair(tmp_path, "owner")
        proc = run_cli(
            "secrets",
            "upload",
            f"{host}:{port}",
            "--measurements",
            str(_measurements(tmp_path / "m.json")),
            "--collateral",
            str(env.directory / "collateral.json"),
            "--allow-synthetic-root",
            str(env.directory / "root.pem"),
            "--owner-cert",
            str(cert),
            "--owner-key",
            str(key),
            "--name",
            "face-key",
            "--file",
            str(_key(tmp_path / "k")),
            "--json",
        )
    finally:
        server.shutdown()
    assert proc.returncode == 1
    assert b"does not run with an RA-TLS identity" in proc.stderr, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["attested"] is False and verdict["schema"] == 1
    audit = (env.directory / "audit.jsonl").read_text()
    assert '"event": "upload"' not in audit


# --------------------------------------------------------------------------- protocol


class _Pipe:
    def __init__(self, data: bytes):
        self.data, self.sent = data, b""

    def recv(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def send(self, data: bytes) -> None:
        self.sent += data


@pytest.fixture
def settings(tmp_path):
    cert, _ = owner_pair(tmp_path, "owner")
    return upload.load_settings({"owners": [cert.name]}, tmp_path, "secrets.toml"), cert


def _serve(settings, request: bytes, der: bytes, now=None):
    pipe, store = _Pipe(request), upload.UploadStore()
    outcome = upload.serve_upload(pipe.recv, pipe.send, der, settings, store, ["a", "b"], now=now)
    return pipe.sent, store, outcome


def _der(cert: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)


def test_upload_protocol_all_or_nothing(settings, tmp_path):
    settings, cert = settings
    key_a, key_b = os.urandom(16), os.urandom(16)
    sent, store, outcome = _serve(
        settings, upload.encode_request([("a", key_a), ("b", key_b)]), _der(cert)
    )
    assert sent.startswith(upload.ACCEPTED) and store.get("a") == key_a
    assert outcome.allowed and outcome.secrets == ("a", "b")
    assert key_a.hex() not in repr(outcome)
    sent, store, outcome = _serve(
        settings, upload.encode_request([("a", key_a), ("zzz", key_b)]), _der(cert)
    )
    assert sent.startswith(upload.REFUSED) and store.names() == []
    assert "'zzz' is not an uploaded secret" in outcome.reason


def test_upload_protocol_refusals(settings, tmp_path):
    settings, cert = settings
    request = upload.encode_request([("a", os.urandom(16))])
    stranger, _ = owner_pair(tmp_path, "stranger")
    _, store, outcome = _serve(settings, request, _der(stranger))
    assert not outcome.allowed and "not one of the owners" in outcome.reason
    assert store.names() == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    _, _, outcome = _serve(settings, request, _der(cert), now=later)
    assert "is not valid now" in outcome.reason
    _, _, outcome = _serve(settings, request[:-3], _der(cert))
    assert "request truncated (in the key)" in outcome.reason
    bad_length = request[: len(upload.REQUEST) + 2 + 2 + 1] + (17).to_bytes(4, "big")
    _, _, outcome = _serve(settings, bad_length, _der(cert))
    assert "announced 17 bytes" in outcome.reason
    with pytest.raises(ValueError, match="exactly 16"):
        upload.encode_request([("a", b"short")])


def test_upload_settings_errors(tmp_path):
    with pytest.raises(upload.UploadConfigError, match=r"upload\.owners: expected a non-empty"):
        upload.load_settings({"owners": []}, tmp_path, "s.toml")
    with pytest.raises(upload.UploadConfigError, match=r"upload\.owners\[0\]: cannot read"):
        upload.load_settings({"owners": ["nope.pem"]}, tmp_path, "s.toml")
    with pytest.raises(upload.UploadConfigError, match=r"upload\.extra: unknown key"):
        upload.load_settings({"owners": ["x"], "extra": 1}, tmp_path, "s.toml")
