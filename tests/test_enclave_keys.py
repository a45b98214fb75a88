"""model_server.keys against the REAL secret server on 127.0.0.1: one RA-TLS connection per key,
the key named by SNI, quotes from a simulated quoter or a fake Gramine quote device, keys
installed in a fake /dev/attestation/keys or kept in memory to decrypt protected files."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave_build.attestation.config import load_config
from enclave_build.attestation.measurements import Measurements
from enclave_build.attestation.server import SecretServer
from enclave_build.attestation.simulated_quoter import SimulatedQuoter
from enclave_build.attestation.synthetic import tls_ca_and_server
from enclave_build.builder.errors import EnclaveBuildError
from enclave_build.builder.gramine import protected_files as builder_pf
from enclave_build.contract.names import SIMULATED_QUOTER_ENV
from enclave_build.model_server import keys
from enclave_build.model_server.config import KeysConfig

from .attest_env import audit_mark, make_env, settled_audit, verified_evidence

pytestmark = pytest.mark.integration

ENV = SIMULATED_QUOTER_ENV
EXTRA = '\n[[secrets]]\nname = "face-model-2"\nfile = "face2.key"\nallow = ["face"]\n'


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    (directory / "face2.key").write_bytes(os.urandom(16))
    env = make_env(directory, extra=EXTRA)
    env.secrets["face2"] = (directory / "face2.key").read_bytes()
    return env


@pytest.fixture(scope="module")
def server(env):
    srv = SecretServer(load_config(env.config))
    srv.start()
    yield srv
    srv.shutdown()


def _measurements(env, service="face", **changes) -> Measurements:
    m = Measurements.load(env.directory / "builds" / service / "measurements.json")
    return dataclasses.replace(m, identity=dataclasses.replace(m.identity, **changes))


@pytest.fixture
def quoter(env):
    q = SimulatedQuoter(env.pki, _measurements(env), warn=False)
    q.start()
    yield q
    q.stop()


@dataclass
class PlainProcess:
    """Where the key fetcher runs as a plain process: no attestation tree, a simulated quoter."""

    root: Path  # (does not exist)
    quoter: SimulatedQuoter

    def prepare_keys(self, config: KeysConfig | None) -> keys.KeyRing:
        return keys.prepare_keys(config, attestation_root=self.root)


@pytest.fixture
def plain(monkeypatch, tmp_path, quoter):
    """A plain process: no /dev/attestation, the simulated quoter named by the variable."""
    monkeypatch.setenv(ENV, quoter.env_value)
    monkeypatch.delenv("ENCLAVE_BUILD_ROOT", raising=False)
    return PlainProcess(tmp_path / "no-dev-attestation", quoter)


def _config(server, env, *names, host="127.0.0.1", ca=None, timeout=5.0) -> KeysConfig:
    return KeysConfig(f"{host}:{server.address[1]}", str(ca or env.ca), tuple(names), timeout)


def _allowed_since(env, before: int, want: int) -> list[dict]:
    """The 'allow' audit lines after the first *before* lines, once there are *want* of them
    (or the wait timed out): the client has its key as soon as it read the reply, and the
    server writes its line when it ends the connection, a moment later."""
    allowed = lambda records: [r for r in records if r.get("decision") == "allow"]
    return allowed(
        settled_audit(
            env.directory / "audit.jsonl",
            lambda records: len(allowed(records)) >= want,
            since=before,
        )
    )


def _mark(env) -> int:
    return audit_mark(env.directory / "audit.jsonl")


def _denial_since(env, since: int) -> dict:
    """The one 'deny' line after the first *since* lines, once the server has written it: a
    refused client has the refusal a moment before the server writes the line."""
    has_deny = lambda records: any(r.get("decision") == "deny" for r in records)
    records = settled_audit(env.directory / "audit.jsonl", has_deny, since=since)
    denied = [r for r in records if r.get("decision") == "deny"]
    assert len(denied) == 1, records
    return denied[0]


# --------------------------------------------------------------------------- plain process


def test_two_keys_of_one_enclave_fetched_separately_by_sni(server, env, plain):
    before = _mark(env)
    ring = plain.prepare_keys(_config(server, env, "face-key", "face-model-2"))
    try:
        assert ring.mode == "memory" and ring.names == ("face-key", "face-model-2")
        assert ring.fingerprint("face-key") == hashlib.sha256(env.secrets["face"]).hexdigest()
        assert ring.fingerprint("face-model-2") == hashlib.sha256(env.secrets["face2"]).hexdigest()
    finally:
        ring.close()
    allowed = _allowed_since(env, before, 2)
    assert [r["secret"] for r in allowed] == ["face-key", "face-model-2"]  # two connections
    assert all(r["evidence"] == "tcg-dice" and "TLS server name" in r["reason"] for r in allowed)
    assert plain.quoter.served == 2  # a fresh quote (and key pair) per connection


def test_host_name_check_by_dns_name(server, env, plain):
    ring = plain.prepare_keys(_config(server, env, "face-key", host="localhost"))
    assert ring.fingerprint("face-key") == hashlib.sha256(env.secrets["face"]).hexdigest()


def test_wrong_mr_enclave_refused_with_the_servers_reason(server, env, plain, monkeypatch):
    wrong = SimulatedQuoter(env.pki, _measurements(env, mr_enclave="ab" * 32), warn=False)
    monkeypatch.setenv(ENV, "{}:{}".format(*wrong.start()))
    since = _mark(env)
    try:
        with pytest.raises(keys.KeyFetchError) as info:
            plain.prepare_keys(_config(server, env, "face-key"))
    finally:
        wrong.stop()
    reason = _denial_since(env, since)["reason"]
    assert "not released to this enclave identity" in reason
    assert str(info.value) == (
        f"secret server 127.0.0.1:{server.address[1]} refused key face-key: {reason}"
    )


def test_key_not_given_to_this_enclave_refused_although_another_matches(server, env, plain):
    since = _mark(env)
    with pytest.raises(
        keys.KeyFetchError,
        match=r"refused key ocr-key: secret 'ocr-key' \(the "
        r"TLS server name\) is not released to this enclave identity",
    ):
        plain.prepare_keys(_config(server, env, "face-key", "ocr-key"))
    record = _denial_since(env, since)
    assert record["decision"] == "deny" and record["mr_enclave"] == _measurements(env).mr_enclave


def test_other_sni_keeps_choosing_by_identity(server, env, plain):
    """A name that is no secret's (Gramine's constructor sends the host): the one secret of the
    enclave, or a refusal when several match (face has two here)."""
    with pytest.raises(keys.KeyFetchError, match=r"several secrets .* match"):
        plain.prepare_keys(_config(server, env, "localhost"))


def test_server_certificate_must_name_the_host(tmp_path, env, plain):
    env = make_env(tmp_path / "srv", pki=env.pki)
    tls_ca_and_server(env.directory, hostname="secrets.example")  # SAN: secrets.example, 127.0.0.1
    srv = SecretServer(load_config(env.config))
    srv.start()
    try:
        with pytest.raises(keys.KeyFetchError, match="not issued for 'localhost'"):
            plain.prepare_keys(_config(srv, env, "face-key", host="localhost"))
        ring = plain.prepare_keys(_config(srv, env, "face-key"))  # 127.0.0.1 is in the SAN
        assert ring.fingerprint("face-key") == hashlib.sha256(env.secrets["face"]).hexdigest()
    finally:
        srv.shutdown()


def test_server_certificate_must_chain_to_the_configured_ca(server, env, plain, tmp_path):
    other_ca, _, _ = tls_ca_and_server(tmp_path)
    with pytest.raises(keys.KeyFetchError, match="does not verify against"):
        plain.prepare_keys(_config(server, env, "face-key", ca=other_ca))


def test_unreachable_server(env, plain):
    with pytest.raises(
        keys.KeyFetchError,
        match=r"cannot reach the secret server 127.0.0.1:1 "
        "for key face-key",
    ):
        plain.prepare_keys(KeysConfig("127.0.0.1:1", str(env.ca), ("face-key",), 2.0))


def test_plain_mode_decrypts_protected_files_made_by_the_builder(
    server, env, plain, tmp_path, monkeypatch
):
    root = tmp_path / "image"
    model_dir = root / "models/face/1"
    model_dir.mkdir(parents=True)
    plaintext = {"model.xml": os.urandom(5000), "model.bin": os.urandom(70000)}
    for name, data in plaintext.items():
        (tmp_path / name).write_bytes(data)
        builder_pf.encrypt_file(
            env.secrets["face"], tmp_path / name, model_dir / name, f"/models/face/1/{name}"
        )
    (root / "enclave").mkdir()
    shutil.copy(env.ca, root / "enclave/secret-server-ca.pem")
    (root / "plain.txt").write_text("not encrypted")
    monkeypatch.setenv("ENCLAVE_BUILD_ROOT", str(root))

    ring = plain.prepare_keys(_config(server, env, "face-key", ca="/enclave/secret-server-ca.pem"))
    source = ring.open("/models/face/1/model.xml", "face-key")
    assert source.read_bytes() == plaintext["model.xml"]
    assert (source.path.parent / "model.bin").read_bytes() == plaintext["model.bin"]  # sibling
    assert not str(source.path).startswith(str(root))
    private = ring._private
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert ring.open("/models/face/1", "face-key").path == source.path.parent  # the directory
    assert ring.open("/plain.txt", None).read_bytes() == b"not encrypted"
    with pytest.raises(keys.KeyFetchError, match="'ocr-key', which was not fetched"):
        ring.open("/models/face/1/model.xml", "ocr-key")
    ring.close()
    assert not private.exists()
    assert ring.fingerprint("face-key") == hashlib.sha256(bytes(16)).hexdigest()  # forgotten


def test_plain_mode_refuses_a_file_embedded_under_another_path(
    server, env, plain, tmp_path, monkeypatch
):
    root = tmp_path / "image"
    (root / "models/m").mkdir(parents=True)
    (tmp_path / "p").write_bytes(b"weights")
    builder_pf.encrypt_file(
        env.secrets["face"], tmp_path / "p", root / "models/m/a.tflite", "/models/other/a.tflite"
    )
    monkeypatch.setenv("ENCLAVE_BUILD_ROOT", str(root))
    (root / "ca.pem").write_bytes(env.ca.read_bytes())
    ring = plain.prepare_keys(_config(server, env, "face-key", ca="/ca.pem"))
    with pytest.raises(
        keys.KeyFetchError,
        match=r"/models/m/a.tflite: cannot decrypt with key "
        "'face-key'.*embedded path",
    ):
        ring.open("/models/m/a.tflite", "face-key")
    ring.close()


# --------------------------------------------------------------------------- Gramine device


class FakeQuoteDevice:
    """A /dev/attestation tree: attestation_type "dcap"; user_report_data and quote are FIFOs
    served by a thread: what is written to the first is answered, on the second, with a quote
    (through the synthetic PKI) over it — as Gramine's pseudo-files behave."""

    def __init__(self, root: Path, pki, m: Measurements, with_quote: bool = True):
        self.root, self.pki, self.m = root, pki, m
        (root / "keys").mkdir(parents=True)
        self.report_data: list[bytes] = []
        self._stop = threading.Event()
        self._thread = None
        if with_quote:
            (root / "attestation_type").write_text("dcap")
            os.mkfifo(root / "user_report_data")
            os.mkfifo(root / "quote")
            self._thread = threading.Thread(target=self._serve, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            with open(self.root / "user_report_data", "rb") as src:  # waits for a writer
                if self._stop.is_set():
                    return
                report_data = src.read()
            self.report_data.append(report_data)
            quote = self.pki.quote(
                bytes.fromhex(self.m.mr_enclave),
                bytes.fromhex(self.m.mr_signer),
                report_data,
                self.m.isv_prod_id,
                self.m.isv_svn,
                self.m.debug,
            )
            with open(self.root / "quote", "wb") as out:  # waits for a reader
                out.write(quote)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            fd = os.open(self.root / "user_report_data", os.O_RDWR)  # never blocks (Linux)
            self._thread.join(5)
            os.close(fd)


@pytest.fixture
def device(env, tmp_path, monkeypatch):
    dev = FakeQuoteDevice(tmp_path / "dev-attestation", env.pki, _measurements(env))
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("ENCLAVE_BUILD_ROOT", raising=False)
    yield dev
    dev.stop()


def test_gramine_device_quotes_and_installed_keys(server, env, device, tmp_path):
    ring = keys.prepare_keys(
        _config(server, env, "face-key", "face-model-2"), attestation_root=device.root
    )
    assert ring.mode == "gramine"
    assert (device.root / "keys/face-key").read_bytes() == env.secrets["face"]
    assert (device.root / "keys/face-model-2").read_bytes() == env.secrets["face2"]
    # One quote per key, each over its own fresh key pair (TCG DICE: SHA-256 of the claims).
    assert len(device.report_data) == 2 and device.report_data[0] != device.report_data[1]
    assert all(len(rd) == 64 and rd[32:] == bytes(32) for rd in device.report_data)
    # Inside Gramine the LibOS decrypts: files are opened where they are.
    encrypted = tmp_path / "m.tflite"
    encrypted.write_bytes(b"ciphertext")
    assert ring.open(str(encrypted), "face-key").path == encrypted
    ring.close()


def test_a_real_quote_device_wins_over_the_simulated_quoter(
    server, env, device, quoter, monkeypatch, capsys
):
    monkeypatch.setenv(ENV, quoter.env_value)
    keys.prepare_keys(_config(server, env, "face-key"), attestation_root=device.root)
    assert quoter.served == 0 and len(device.report_data) == 1
    assert f"{ENV} is set but this process has a real quote device" in capsys.readouterr().err


def test_gramine_direct_uses_the_simulated_quoter_and_installs_keys(
    server, env, quoter, tmp_path, monkeypatch, capsys
):
    dev = FakeQuoteDevice(tmp_path / "direct", env.pki, _measurements(env), with_quote=False)
    monkeypatch.setenv(ENV, quoter.env_value)
    ring = keys.prepare_keys(_config(server, env, "face-key"), attestation_root=dev.root)
    assert ring.mode == "gramine" and quoter.served == 1
    assert (dev.root / "keys/face-key").read_bytes() == env.secrets["face"]
    err = capsys.readouterr().err
    assert "SIMULATED ATTESTATION" in err and "NOT running in an enclave" in err


def test_no_attestation_source_is_a_clear_error(server, env, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(
        keys.KeyFetchError,
        match=r"cannot attest to fetch keys: .* does not "
        rf"exist \(not running under Gramine\), and {ENV} is not set",
    ):
        keys.prepare_keys(_config(server, env, "face-key"), attestation_root=tmp_path / "none")
    (tmp_path / "direct/keys").mkdir(parents=True)
    with pytest.raises(keys.KeyFetchError, match=r"no DCAP quote device .*gramine-direct"):
        keys.prepare_keys(_config(server, env, "face-key"), attestation_root=tmp_path / "direct")


def test_no_keys_configured_needs_no_attestation(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    none = tmp_path / "none"
    ring = keys.prepare_keys(None, attestation_root=none)
    assert ring.names == ()
    assert keys.prepare_keys(KeysConfig("h:1", "/ca", ()), attestation_root=none).names == ()
    with pytest.raises(keys.KeyFetchError, match="which was not fetched"):
        ring.open("/models/m", "k")


def test_bad_quoter_address(server, env, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "nowhere")
    with pytest.raises(keys.KeyFetchError, match=f"{ENV} 'nowhere' is not HOST:PORT"):
        keys.prepare_keys(_config(server, env, "face-key"), attestation_root=tmp_path / "none")


# --------------------------------------------------------------------------- module boundaries


def test_builder_pf_errors_stay_enclave_build_errors(tmp_path):
    from enclave_build.attestation import protected_files as pf

    (tmp_path / "bad").write_bytes(bytes(17))
    with pytest.raises(EnclaveBuildError, match="exactly 16 raw bytes") as info:
        builder_pf.read_wrap_key(tmp_path / "bad")
    assert isinstance(info.value, pf.PFError) and isinstance(info.value, builder_pf.PFError)
    with pytest.raises(pf.PFError) as plain_info:
        pf.read_wrap_key(tmp_path / "bad")
    assert not isinstance(plain_info.value, EnclaveBuildError)


def test_in_image_modules_import_no_builder_no_pyopenssl_no_dcap_qvl():
    code = (
        "import sys, enclave_build.model_server.keys, enclave_build.attestation.protected_files, "
        "enclave_build.attestation.wire, enclave_build.attestation.ratls, "
        "enclave_build.attestation.quote; print(sorted({m for m in sys.modules "
        "if m.startswith('enclave_build.builder') or m.split('.')[0] in ('OpenSSL', "
        "'dcap_qvl')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- server side


def test_refusal_wire_bytes(server, env):
    """A refused enclave is told why: REFUSAL (37 bytes), 4-byte length, the audit reason."""
    import socket
    import ssl

    from cryptography.hazmat.primitives import serialization

    from enclave_build.attestation import wire

    cert, key = env.enclave_cert("face", mr_enclave=os.urandom(32))
    (env.directory / "r.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (env.directory / "rk.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(cafile=str(env.ca))
    ctx.check_hostname = False  # the server name is the key's, not the host's
    ctx.load_cert_chain(env.directory / "r.pem", env.directory / "rk.pem")
    since = _mark(env)
    with ctx.wrap_socket(
        socket.create_connection(server.address, timeout=10), server_hostname="face-key"
    ) as tls:
        tls.sendall(wire.REQUEST)
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
    reason = _denial_since(env, since)["reason"].encode()
    assert len(wire.REFUSAL) == 37
    assert data == wire.REFUSAL + len(reason).to_bytes(4, "big") + reason


def test_policy_sni_naming_a_secret_selects_only_that_secret(env):
    from enclave_build.attestation.policy import Policy
    from enclave_build.attestation.server.decide import AccessPolicy, ByServerName, decide

    config = load_config(env.config)
    policy = AccessPolicy(
        Policy.build(list(config.measurements), list(config.secrets), config.path.parent),
        config.attestation.tcb,
    )
    m = _measurements(env)
    face = verified_evidence(m.mr_enclave, m.mr_signer, m.isv_prod_id, m.isv_svn, debug=m.debug)

    def named(server_name: str | None) -> ByServerName:
        return ByServerName(server_name.encode() if server_name is not None else None)

    assert decide(face, named("face-model-2"), policy).secret.name == "face-model-2"
    assert decide(face, named("face-key"), policy).secret.name == "face-key"
    denied = decide(face, named("ocr-key"), policy)
    assert denied.secret is None and "'ocr-key'" in denied.reason
    # two match, and the host name selects none
    assert decide(face, named("localhost"), policy).secret is None
    o = _measurements(env, "ocr")
    ocr = verified_evidence(o.mr_enclave, o.mr_signer, o.isv_prod_id, o.isv_svn, debug=o.debug)
    assert decide(ocr, named("localhost"), policy).secret.name == "ocr-key"  # unchanged behaviour
    assert decide(ocr, named(None), policy).secret.name == "ocr-key"
    assert decide(ocr, named("face-key"), policy).secret is None


def test_plain_mode_leaves_out_a_sibling_that_does_not_decrypt(
    server, env, plain, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "image"
    (root / "models/m").mkdir(parents=True)
    (tmp_path / "p").write_bytes(b"weights")
    builder_pf.encrypt_file(
        env.secrets["face"], tmp_path / "p", root / "models/m/a.tflite", "/models/m/a.tflite"
    )
    (root / "models/m/README").write_text("plaintext next to the model")
    (root / "ca.pem").write_bytes(env.ca.read_bytes())
    monkeypatch.setenv("ENCLAVE_BUILD_ROOT", str(root))
    ring = plain.prepare_keys(_config(server, env, "face-key", ca="/ca.pem"))
    source = ring.open("/models/m/a.tflite", "face-key")
    assert source.read_bytes() == b"weights"
    assert not (source.path.parent / "README").exists()
    assert "/models/m/README: cannot decrypt with key 'face-key'" in capsys.readouterr().err
    with pytest.raises(keys.KeyFetchError, match="/models/m/README: cannot decrypt"):
        ring.open("/models/m", "face-key")
    ring.close()
