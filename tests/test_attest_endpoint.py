"""Client-side verification: `enclave-build attest HOST:PORT --measurements ...` against a TLS
endpoint on 127.0.0.1 that presents a (synthetic) RA-TLS certificate, as a Gramine server does."""

from __future__ import annotations

import json
import socket
import ssl
import threading

import pytest
from cryptography.hazmat.primitives import serialization

from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.ratls import create_certificate
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.contract.identity import EnclaveIdentity

from .attest_env import MR_SIGNER, identity
from .conftest import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def endpoint(tmp_path):
    """A TLS server whose certificate carries a quote for service 'face' (mr_enclave, isv 1/2)."""
    pki = SyntheticPKI()
    cert, key = create_certificate(
        "tcg-dice", lambda rd: pki.quote(identity("face"), MR_SIGNER, rd, 1, 2)
    )
    (tmp_path / "ep.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ep.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "ep.crt", tmp_path / "ep.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    (tmp_path / "collateral.json").write_text(pki.collateral_json())
    (tmp_path / "root.pem").write_bytes(pki.root_pem)
    for name, me in (("face", identity("face")), ("other", identity("other"))):
        (tmp_path / f"{name}.json").write_text(
            Measurements(
                name,
                "tflite",
                "gramine",
                EnclaveIdentity(me.hex(), MR_SIGNER.hex(), 1, 2, False),
                ImageRef(f"{name}:1", "sha256:" + "0" * 64),
            ).to_json()
        )
    yield listener.getsockname()[1], tmp_path
    stop.set()
    thread.join(2)
    listener.close()


def test_attest_matches_the_build(endpoint):
    port, d = endpoint
    proc = run_cli(
        "attest",
        f"127.0.0.1:{port}",
        "--measurements",
        str(d / "other.json"),
        "--measurements",
        str(d / "face.json"),
        "--collateral",
        str(d / "collateral.json"),
        "--root-ca",
        str(d / "root.pem"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(proc.stdout)
    assert info["service"] == "face" and info["evidence"] == "tcg-dice"
    assert info["mr_enclave"] == identity("face").hex() and info["status"] == "UpToDate"
    assert b"warning: trusting the root CA" in proc.stderr


def test_attest_refuses_an_unknown_build(endpoint):
    port, d = endpoint
    proc = run_cli(
        "attest",
        f"127.0.0.1:{port}",
        "--measurements",
        str(d / "other.json"),
        "--collateral",
        str(d / "collateral.json"),
        "--root-ca",
        str(d / "root.pem"),
    )
    assert proc.returncode == 1
    assert (
        f"runs enclave {identity('face').hex()}, which is not one of the given builds".encode()
        in proc.stderr
    )


def test_attest_refuses_without_the_synthetic_root(endpoint):
    port, d = endpoint
    proc = run_cli(
        "attest",
        f"127.0.0.1:{port}",
        "--measurements",
        str(d / "face.json"),
        "--collateral",
        str(d / "collateral.json"),
    )
    assert proc.returncode == 1
    assert (
        b"not attested: the quote's PCK chain ends in another root" in proc.stderr
        or b"not attested: quote verification failed" in proc.stderr
    )
