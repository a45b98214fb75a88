"""Serving certificates made in the enclave (issuer "self"), issued by the secret server's CA
(issuer "secret-server"), the issuance decision, the spec and model-server.json keys, and the
renewal schedule. Fast: no processes, quotes from the synthetic PKI."""

from __future__ import annotations

import datetime as _dt
import hashlib
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_build.attestation import ratls, serving_cert, wire
from enclave_build.attestation.policy import Policy
from enclave_build.attestation.server.decide import (
    AccessPolicy,
    Refusal,
    Unverified,
    decide_certificate,
)
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.attestation.verify import TcbPolicy
from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.server_config import ConfigError, ServerConfig
from enclave_build.model_server import serving_tls

from .test_decide import FACE, MEASUREMENTS, RULES, SIGNER, STRANGER, face, ocr

NOW = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
IDENTITY = EnclaveIdentity(FACE, SIGNER, 1, 2, False)


@pytest.fixture(scope="module")
def pki() -> SyntheticPKI:
    return SyntheticPKI()


def _quoter(pki: SyntheticPKI):
    return lambda report_data: pki.quote(bytes.fromhex(FACE), bytes.fromhex(SIGNER), report_data)


def test_self_signed_binds_its_key_and_names_the_hosts(pki):
    key = serving_cert.serving_key()
    cert = serving_cert.self_signed(
        key, ["models.example.com", "10.0.0.5"], _quoter(pki), lifetime=_dt.timedelta(hours=1)
    )
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    evidence = ratls.extract_evidence(cert)  # the quote binds this certificate's key
    assert evidence.format == "tcg-dice"
    assert evidence.public_key_der == serving_cert.spki_der(key)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["models.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]


def _ca():
    return serving_cert.issuing_ca(days=30)


def _presented(pki, key):
    return serving_cert.self_signed(key, ["svc"], _quoter(pki), lifetime=_dt.timedelta(hours=1))


def test_issued_certificate_carries_the_evidence_and_identity(pki):
    ca, ca_key = _ca()
    key = serving_cert.serving_key()
    presented = _presented(pki, key)
    csr = serving_cert.csr(key, ["localhost", "127.0.0.1"])
    cert = serving_cert.issue(
        csr, presented, IDENTITY, ca, ca_key, lifetime=_dt.timedelta(hours=2), now=NOW
    )
    assert serving_cert.verify_issued(cert, ca)
    assert cert.issuer == ca.subject and cert.subject != ca.subject
    assert ratls.extract_evidence(cert).public_key_der == serving_cert.spki_der(key)
    assert serving_cert.read_identity(cert) == IDENTITY
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == _dt.timedelta(hours=2, minutes=5)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # An ordinary TLS verifier trusting only the CA accepts it for its names.
    store = ssl.create_default_context(cadata=ca.public_bytes(_pem()).decode())
    assert store.cert_store_stats()["x509_ca"] == 1


def _pem():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def test_a_csr_for_another_key_is_refused(pki):
    ca, ca_key = _ca()
    presented = _presented(pki, serving_cert.serving_key())
    other = serving_cert.csr(serving_cert.serving_key(), ["localhost"])
    with pytest.raises(serving_cert.ServingCertError, match="not the key of the RA-TLS"):
        serving_cert.issue(
            other, presented, IDENTITY, ca, ca_key, lifetime=_dt.timedelta(hours=1), now=NOW
        )


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"\x30\x03\x02\x01\x00", "does not parse"),
        (None, "names 33 hosts"),
    ],
)
def test_bad_csrs_are_refused(pki, csr, message):
    ca, ca_key = _ca()
    key = serving_cert.serving_key()
    if csr is None:
        csr = serving_cert.csr(key, [f"h{i}.example" for i in range(33)])
    with pytest.raises(serving_cert.ServingCertError, match=message):
        serving_cert.issue(
            csr, _presented(pki, key), IDENTITY, ca, ca_key, lifetime=_dt.timedelta(1), now=NOW
        )


def test_issued_validity_never_outlives_the_ca(pki):
    ca, ca_key = _ca()
    key = serving_cert.serving_key()
    cert = serving_cert.issue(
        serving_cert.csr(key, ["a"]),
        _presented(pki, key),
        IDENTITY,
        ca,
        ca_key,
        lifetime=_dt.timedelta(days=365),
        now=_dt.datetime.now(_dt.UTC),
    )
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc


def test_an_expired_issuing_ca_issues_nothing(pki):
    ca, ca_key = _ca()
    key = serving_cert.serving_key()
    with pytest.raises(serving_cert.ServingCertError, match="issuing CA is not valid now"):
        serving_cert.issue(
            serving_cert.csr(key, ["a"]),
            _presented(pki, key),
            IDENTITY,
            ca,
            ca_key,
            lifetime=_dt.timedelta(hours=1),
            now=NOW + _dt.timedelta(days=31),
        )


def test_cert_request_wire_format():
    body = wire.cert_request(b"x" * 10)
    assert body[:35] == wire.CERT_REQUEST and len(wire.CERT_REQUEST) == len(wire.REQUEST)
    assert int.from_bytes(body[35:39], "big") == 10 and body[39:] == b"x" * 10
    with pytest.raises(ValueError):
        wire.cert_request(b"x" * (wire.MAX_CSR + 1))


# --------------------------------------------------------------------------- the decision

ACCESS = AccessPolicy(Policy(MEASUREMENTS, RULES), TcbPolicy())


def test_certificate_for_a_measured_build():
    decision = decide_certificate(face(), ACCESS)
    assert decision.allowed and decision.service == "face"


def test_certificate_for_a_signer_rule():
    decision = decide_certificate(ocr(isv_svn=5), ACCESS)  # a later build, same signer
    assert decision.allowed and "ocr-key" in decision.reason


def test_no_certificate_for_a_stranger_or_unverified():
    stranger = decide_certificate(face(mr_enclave=STRANGER), ACCESS)
    assert not stranger.allowed and stranger.refusal is Refusal.NOT_RELEASED
    assert stranger.attested
    unverified = decide_certificate(Unverified("bad quote"), ACCESS)
    assert not unverified.allowed and unverified.refusal is Refusal.EVIDENCE
    old = decide_certificate(face(status="OutOfDate"), ACCESS)
    assert not old.allowed and old.refusal is Refusal.QUOTE_POLICY


# --------------------------------------------------------------------------- model-server.json


def _server_config(tls: dict, keys: bool = True) -> dict:
    data = {
        "version": 1,
        "models": [{"name": "m", "version": "1", "backend": "tflite", "path": "/m"}],
        "tls": tls,
    }
    if keys:
        data["keys"] = {"server": "s:1", "ca": "/ca.pem", "names": []}
    return data


def test_model_server_tls_issuers():
    config = ServerConfig.from_dict(
        _server_config({"issuer": "secret-server", "hosts": ["a.example"]})
    )
    assert config.tls.issuer == "secret-server" and config.tls.hosts == ("a.example",)
    assert ServerConfig.parse(config.to_json()) == config
    old = ServerConfig.from_dict(_server_config({"cert": "/c", "key": "/k"}))
    assert old.tls.issuer == "file" and "issuer" not in old.to_dict()["tls"]


@pytest.mark.parametrize(
    ("tls", "keys", "message"),
    [
        ({"issuer": "self", "hosts": ["a"], "cert": "/c"}, True, "tls.cert: not with issuer"),
        ({"issuer": "self"}, True, "tls.hosts: at least one name"),
        ({"issuer": "file"}, True, r'tls.cert: required \(a string\) with issuer "file"'),
        ({"issuer": "secret-server", "hosts": ["a"]}, False, 'needs "keys"'),
        ({"issuer": "ca", "hosts": ["a"]}, True, "tls.issuer"),
    ],
)
def test_model_server_tls_errors(tls, keys, message):
    with pytest.raises(ConfigError, match=message):
        ServerConfig.from_dict(_server_config(tls, keys))


# --------------------------------------------------------------------------- renewal


class _Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def test_self_issued_certificate_renews_with_the_same_key(pki):
    clock = _Clock(NOW)
    serving = serving_tls.ServingCertificate("self", ("127.0.0.1",), _quoter(pki), now=clock)
    first = serving.certificate
    renewed = []
    serving.on_renewal(lambda: renewed.append(serving.version))
    # two thirds of the way from when it was obtained (not from the backdated not-before)
    assert first.not_valid_before_utc < NOW
    assert serving.renew_at() == NOW + (first.not_valid_after_utc - NOW) * 2 / 3
    clock.now = NOW + _dt.timedelta(hours=17)
    serving.renew()
    second = serving.certificate
    assert renewed == [2]
    assert second.serial_number != first.serial_number
    assert second.not_valid_after_utc > first.not_valid_after_utc
    assert serving_cert.spki_der(second.public_key()) == serving.spki_der  # same key
    assert hashlib.sha256(serving.spki_der).digest() != b""


def test_the_key_reaches_ssl_only_encrypted(pki, tmp_path, monkeypatch):
    """Python's ssl loads keys from files: the file written holds the key encrypted, and is
    gone afterwards."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    seen = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, keyfile=None, password=None):
        seen.append(open(keyfile, "rb").read())
        return original(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    serving = serving_tls.ServingCertificate("self", ("127.0.0.1",), _quoter(pki))
    serving.load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert seen and seen[0].startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the CLI


def test_secrets_tls_writes_the_issuing_ca(tmp_path):
    import json
    import stat

    from .conftest import run_cli

    proc = run_cli("secrets", "tls", str(tmp_path / "tls"), "--host", "secrets.example", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    ca = x509.load_pem_x509_certificate(open(out["issuer_ca"], "rb").read())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE((tmp_path / "tls" / "issuer-ca.key").stat().st_mode) == 0o600
    again = run_cli("secrets", "tls", str(tmp_path / "tls"), "--host", "secrets.example")
    assert again.returncode == 2 and b"issuer-ca" in again.stderr


def test_secrets_tls_adds_only_the_issuing_ca_to_an_init_tls_directory(tmp_path):
    """An `init` project made before issuing CAs has tls/ca.pem, server.crt, server.key and
    no issuer-ca.*: `secrets tls` writes only those two and keeps the measured CA."""
    import json

    from enclave_build.attestation.synthetic import tls_ca_and_server

    from .conftest import run_cli

    tls = tmp_path / "tls"
    tls.mkdir()
    tls_ca_and_server(tls, ["localhost"], days=30, ca_name="test CA", overwrite=True)
    before = {n: (tls / n).read_bytes() for n in ("ca.pem", "server.crt", "server.key")}
    proc = run_cli("secrets", "tls", str(tls), "--host", "localhost", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["kept"] == ["ca.pem", "server.crt", "server.key"]
    assert {n: (tls / n).read_bytes() for n in before} == before
    ca = x509.load_pem_x509_certificate((tls / "issuer-ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert out["issuer_ca"] == str((tls / "issuer-ca.pem").resolve())
    text = run_cli("secrets", "tls", str(tls), "--host", "localhost")  # all there now
    assert text.returncode == 2 and b"--force" in text.stderr


def test_issuer_settings_round_trip(tmp_path):
    from enclave_build.attestation.server.issuer import Issuer, IssuerError
    from enclave_build.builder.secrets_config import write_issuing_ca
    from enclave_build.contract.secrets_config import IssuerSettings, SecretsConfig

    cert, key = write_issuing_ca(tmp_path)
    text = (
        f'[server]\nlisten = "127.0.0.1:0"\ncert = "{cert}"\nkey = "{key}"\n'
        f'[attestation]\ncollateral = "{cert}"\n[issuer]\ncert = "{cert}"\nkey = "{key}"\n'
        "lifetime = 3600\n"
    )
    config = SecretsConfig.parse(text, tmp_path / "secrets.toml")
    assert config.issuer == IssuerSettings(cert, key, 3600)
    assert Issuer.load(config.issuer).lifetime == _dt.timedelta(hours=1)
    other, _ = write_issuing_ca(tmp_path / "other")
    with pytest.raises(IssuerError, match="is not the key of the CA certificate"):
        Issuer.load(IssuerSettings(other, key))
