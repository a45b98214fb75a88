"""Attested serving endpoints end to end in simulation: a build with ``[tls] issuer =
"secret-server"`` (and ``"self"``), the real secret server with an issuing CA, ``run --simulate``
(the stand-in base: the model server as a plain process, quotes from the synthetic PKI), and
clients that trust only what they should: tritonclient over TLS trusting only issuer-ca.pem,
``enclave-build attest`` on the model endpoint, the example client that verifies before it sends.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509

from enclave_build.attestation import ratls, serving_cert
from enclave_build.builder.secrets_config import write_issuing_ca

from . import serving_env as se
from .conftest import run_cli
from .models import face_detection_tflite

pytestmark = pytest.mark.integration

EXAMPLE_CLIENT = se.EXAMPLES / "verified_client.py"


@pytest.fixture()
def keys(tmp_path, signing_key) -> se.Keys:
    made = se.Keys.make(tmp_path / "keys", signing_key)
    write_issuing_ca(made.directory)
    return made


def _build(tmp_path: Path, keys: se.Keys, standin_root: Path, name: str, tls: str, encrypt=True):
    work = tmp_path / name
    work.mkdir()
    model = face_detection_tflite()
    grpc_port, rest_port = se.free_port(), se.free_port()
    spec = se.write_spec(
        work,
        keys,
        service=name,
        framework="tflite",
        models=[("faces", model, None)],
        section=f"[tflite]\ngrpc_port = {grpc_port}\nrest_port = {rest_port}\n",
        extra=tls,
    )
    if not encrypt:
        spec.write_text(spec.read_text().replace("encrypt = true", "encrypt = false"))
    proc = run_cli(
        "build", str(spec), "--base", f"dir:{standin_root}", "--output", str(work / "out")
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return work / "out", proc


def _config(keys: se.Keys, builds: list[Path], name="secrets.toml", **kw) -> Path:
    import dataclasses

    from enclave_build.builder.secrets_config import ServerSide, compose_config, write_config

    config = compose_config(
        builds,
        ServerSide(
            cert=keys.server_cert,
            key=keys.server_key,
            listen=f"127.0.0.1:{keys.secret_port}",
            root_ca=str(keys.pki_dir / "root.pem"),
            collateral=keys.pki_dir / "collateral.json",
            audit_log=str(keys.directory / (name + ".audit.jsonl")),
            issuer_ca=keys.directory,
            **kw,
        ),
    )
    return write_config(keys.directory / name, dataclasses.replace(config), force=True)


def _pem(address: str) -> bytes:
    import ssl

    host, port = address.rsplit(":", 1)
    return ssl.get_server_certificate((host, int(port))).encode()


def _example(address: str, keys: se.Keys, measurements: Path, *extra: str):
    return subprocess.run(
        [
            sys.executable,
            str(EXAMPLE_CLIENT),
            address,
            *se.verifier_args(keys, measurements),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_secret_server_issues_the_serving_certificate(tmp_path, keys, standin_root):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    out, build = _build(
        tmp_path,
        keys,
        standin_root,
        "svc",
        '[tls]\nissuer = "secret-server"\nhosts = ["localhost", "127.0.0.1"]\n',
    )
    assert b'issuer = "file"' not in build.stderr
    other, _ = _build(
        tmp_path, keys, standin_root, "other", '[tls]\nissuer = "self"\nhosts = ["127.0.0.1"]\n'
    )
    config = _config(keys, [out])
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(out, keys)
        assert served is not None, run.output.text
        issuer_ca = keys.directory / "issuer-ca.pem"
        # The certificate: issued by the issuing CA, for the names of [tls] hosts, carrying the
        # quote (TCG DICE evidence binding its key) and the enclave identity.
        cert = x509.load_pem_x509_certificate(_pem(served.http))
        spki = serving_cert.spki_der(cert.public_key())
        ca = x509.load_pem_x509_certificate(issuer_ca.read_bytes())
        assert serving_cert.verify_issued(cert, ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        evidence = ratls.extract_evidence(cert)
        assert evidence.format == "tcg-dice"
        measured = json.loads((out / "measurements.json").read_text())
        identity = serving_cert.read_identity(cert)
        assert identity is not None and identity.mr_enclave == measured["mr_enclave"]

        # tritonclient over TLS trusting only issuer-ca.pem: answers, the same as LiteRT.
        tensor = se.face_input()
        expected = se.litert(face_detection_tflite(), tensor)
        g = grpcclient.InferenceServerClient(
            served.grpc.replace("127.0.0.1", "localhost"),
            ssl=True,
            root_certificates=str(issuer_ca),
        )
        gi = grpcclient.InferInput("input", list(tensor.shape), "FP32")
        gi.set_data_from_numpy(tensor)
        answer = g.infer("faces", [gi])
        assert np.array_equal(answer.as_numpy("regressors"), expected["regressors"])
        h = httpclient.InferenceServerClient(
            served.http,
            ssl=True,
            ssl_options={"ca_certs": str(issuer_ca)},
            insecure=False,
        )
        assert h.is_model_ready("faces")

        # attest on the model endpoint: the right measurements pass, another build's do not.
        ok = se.attest(served.http, keys, out / "measurements.json")
        assert ok.returncode == 0, ok.stderr.decode()
        assert json.loads(ok.stdout)["attested"] is True
        wrong = se.attest(served.grpc, keys, other / "measurements.json")
        assert wrong.returncode == 1, wrong.stderr.decode()
        assert b"mr_enclave" in wrong.stderr

        # The example client sends only after verifying; another build's identity: refused.
        good = _example(served.http, keys, out / "measurements.json", "--model", "faces")
        assert good.returncode == 0, good.stderr
        assert "verified" in good.stdout and "model faces ready: True" in good.stdout
        pinned = _example(served.grpc, keys, out / "measurements.json", "--grpc")
        assert pinned.returncode == 0, pinned.stderr  # gRPC pinned to the issued certificate
        bad = _example(served.http, keys, other / "measurements.json")
        assert bad.returncode == 1, bad.stderr
        assert "not sending" in bad.stderr

        assert run.stop() == 0, run.output.text
    finally:
        server.stop()
    issued = [a for a in se.audit(config) if a.get("event") == "certificate"]
    assert issued and issued[0]["decision"] == "allow", issued
    assert issued[0]["mr_enclave"] == measured["mr_enclave"]
    _assert_no_serving_key_anywhere(tmp_path, run.output.text + server.output.text, spki)


def test_a_build_not_in_the_policy_gets_no_certificate(tmp_path, keys, standin_root):
    tls = '[tls]\nissuer = "secret-server"\nhosts = ["localhost"]\n'
    listed, _ = _build(tmp_path, keys, standin_root, "listed", tls, encrypt=False)
    stranger, _ = _build(tmp_path, keys, standin_root, "stranger", tls, encrypt=False)
    config = _config(keys, [listed])
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(stranger, keys, timeout=90)
        code = run.stop()
    finally:
        server.stop()
    assert served is None, "an enclave without a certificate must not serve"
    assert code == 3, run.output.text
    assert "refused the serving certificate" in run.output.text
    assert "neither a build in the measurements" in run.output.text
    denied = [a for a in se.audit(config) if a.get("event") == "certificate"]
    assert denied and denied[0]["decision"] == "deny"


def test_self_signed_endpoint_attests_and_the_client_refuses_no_quote(tmp_path, keys, standin_root):
    out, _ = _build(
        tmp_path, keys, standin_root, "selfie", '[tls]\nissuer = "self"\nhosts = ["127.0.0.1"]\n'
    )
    config = _config(keys, [out])
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(out, keys)
        assert served is not None, run.output.text
        cert = x509.load_pem_x509_certificate(_pem(served.http))
        spki = serving_cert.spki_der(cert.public_key())
        assert cert.issuer == cert.subject
        ok = se.attest(served.grpc, keys, out / "measurements.json")
        assert ok.returncode == 0, ok.stderr.decode()
        good = _example(served.grpc, keys, out / "measurements.json", "--grpc")
        assert good.returncode == 0, good.stderr
        # An ordinary certificate (the secret server's own: no quote) is refused unsent.
        plain = _example(f"127.0.0.1:{keys.secret_port}", keys, out / "measurements.json")
        assert plain.returncode == 1
        assert "no SGX evidence" in plain.stderr and "not sending" in plain.stderr
        assert run.stop() == 0, run.output.text
    finally:
        server.stop()
    _assert_no_serving_key_anywhere(tmp_path, run.output.text + server.output.text, spki)


_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:EC |ENCRYPTED )?PRIVATE KEY)-----(.+?)-----END \1-----", re.S
)


def _assert_no_serving_key_anywhere(tmp_path: Path, log: str, spki: bytes) -> None:
    """The serving key (the one whose public key is *spki*) is in no file of the test tree
    (build outputs, unpacked images, keys, audit logs) and not in the run's output: every
    private key found anywhere is loaded and compared."""
    from cryptography.hazmat.primitives import serialization

    assert b"PRIVATE KEY-----" not in log.encode()
    found = 0
    for path in tmp_path.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes().replace(b"\\n", b"\n")  # keys inside JSON strings too
        for match in _PEM_KEY.finditer(data):
            found += 1
            assert match[1] != b"ENCRYPTED PRIVATE KEY", path  # the key's temporary form
            key = serialization.load_pem_private_key(match[0], password=None)
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            assert public != spki, f"the serving key is in {path}"
    assert found >= 3  # the scan saw the test's own keys (secret server, issuing CA, signer)


def test_the_issued_certificate_is_renewed_by_the_live_secret_server(tmp_path, keys, standin_root):
    """A policy lifetime of a few seconds: the enclave asks again two thirds of the way to
    expiry; the served certificate changes, is issued again for the same key, and stays valid
    (clients trusting issuer-ca.pem keep being served)."""
    import datetime as _dt
    import time

    import tritonclient.http as httpclient

    out, _ = _build(
        tmp_path,
        keys,
        standin_root,
        "renewing",
        '[tls]\nissuer = "secret-server"\nhosts = ["127.0.0.1"]\n',
        encrypt=False,
    )
    config = _config(keys, [out], issuer_lifetime=20)
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(out, keys)
        assert served is not None, run.output.text
        first = x509.load_pem_x509_certificate(_pem(served.http))
        lifetime = first.not_valid_after_utc - _dt.datetime.now(_dt.UTC)
        assert lifetime <= _dt.timedelta(seconds=20)
        renewed = re.compile(r"model_server: renewed the serving certificate")
        assert run.output.wait_for(renewed, 60) is not None, run.output.text
        second = x509.load_pem_x509_certificate(_pem(served.http))
        # ... and once more: renewal goes on (it is not a one-off at start)
        deadline = time.monotonic() + 60
        while run.output.text.count("renewed the serving certificate") < 2:
            assert time.monotonic() < deadline, run.output.text
            time.sleep(0.5)
        third = x509.load_pem_x509_certificate(_pem(served.http))
        ca = x509.load_pem_x509_certificate((keys.directory / "issuer-ca.pem").read_bytes())
        spki = serving_cert.spki_der(first.public_key())
        for cert in (second, third):
            assert cert.serial_number != first.serial_number
            assert serving_cert.verify_issued(cert, ca)
            assert serving_cert.spki_der(cert.public_key()) == spki  # the same key
            assert cert.not_valid_after_utc > first.not_valid_after_utc
        assert third.serial_number != second.serial_number
        # past the first certificate's expiry, a client trusting only the CA is still served
        wait = (first.not_valid_after_utc - _dt.datetime.now(_dt.UTC)).total_seconds()
        time.sleep(max(0.0, wait) + 1)
        h = httpclient.InferenceServerClient(
            served.http,
            ssl=True,
            ssl_options={"ca_certs": str(keys.directory / "issuer-ca.pem")},
            insecure=False,
        )
        assert h.is_model_ready("faces")
        assert run.stop() == 0, run.output.text
    finally:
        server.stop()
    issued = [a for a in se.audit(config) if a.get("event") == "certificate"]
    assert len(issued) >= 3 and all(a["decision"] == "allow" for a in issued), issued
    assert "cannot renew" not in run.output.text


def test_the_example_client_verifies_then_presents_its_certificate_to_a_mutual_tls_endpoint(
    tmp_path, keys, standin_root
):
    """Verify-then-pin against [tls] client_ca: with --cert/--key the example answers (REST and
    gRPC); without, or with the gRPC port and no --grpc, it exits 1 with one line saying why
    (no traceback)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from .test_client_access_serving import make_cert

    ca_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = make_cert("clients CA", ca_key, ca=True)
    client = make_cert("alice", client_key, issuer=ca, issuer_key=ca_key)
    pem = serialization.Encoding.PEM
    (tmp_path / "clients-ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "alice.crt").write_bytes(client.public_bytes(pem))
    (tmp_path / "alice.key").write_bytes(
        client_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    out, _ = _build(
        tmp_path,
        keys,
        standin_root,
        "mutual",
        '[tls]\nissuer = "self"\nhosts = ["127.0.0.1"]\n'
        f'client_ca = "{tmp_path / "clients-ca.pem"}"\n',
    )
    server = se.start_secret_server(_config(keys, [out]))
    try:
        run, served = se.start_run(out, keys)
        assert served is not None, run.output.text
        measurements = out / "measurements.json"
        mine = ("--cert", str(tmp_path / "alice.crt"), "--key", str(tmp_path / "alice.key"))
        for address, extra in ((served.http, ()), (served.grpc, ("--grpc",))):
            good = _example(address, keys, measurements, *extra, *mine)
            assert good.returncode == 0, good.stderr
            assert "ready: True" in good.stdout
            bare = _example(address, keys, measurements, *extra)
            assert bare.returncode == 1, bare.stdout + bare.stderr
            assert "Traceback" not in bare.stderr and "needs --cert and --key" in bare.stderr
            assert bare.stdout.startswith("verified ")
        wrong = _example(served.grpc, keys, measurements, *mine)
        assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
        assert "is a gRPC endpoint (HTTP/2): add --grpc" in wrong.stderr
        assert run.stop() == 0, run.output.text
    finally:
        server.stop()
