"""Per-model client lists: parsing the entries, matching a client, the model-server.json
contract, the refusal counter. (Over real TLS sockets: test_client_access_serving.py.)"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from enclave_build.contract.client_access import (
    ClientEntryError,
    ClientIdentity,
    ClientRule,
    allows,
    parse_client,
)
from enclave_build.contract.server_config import ConfigError, ServerConfig
from enclave_build.model_server.client_access import (
    ClientAccess,
    Forbidden,
    identity_of_der,
    identity_of_pem,
)
from enclave_build.model_server.config import ModelConfig
from enclave_build.model_server.metrics import Metrics

PIN = "ab" * 32


@pytest.mark.parametrize(
    "entry, rule",
    [
        ("sha256:" + PIN, ClientRule("sha256", PIN)),
        ("sha256:" + PIN.upper(), ClientRule("sha256", PIN)),
        ("CN=alice", ClientRule("cn", "alice")),
        ("CN=billing service", ClientRule("cn", "billing service")),
    ],
)
def test_entries_parse(entry, rule):
    assert parse_client(entry) == rule
    assert str(parse_client(entry)) == entry.replace(PIN.upper(), PIN)


@pytest.mark.parametrize(
    "entry, says",
    [
        ("sha256:abc", "needs 64 hex digits"),
        ("sha256:" + "z" * 64, "not hex digits"),
        ("sha256:" + PIN + "00", "got 66 characters"),
        ("sha1:" + "ab" * 20, "no such client identity kind 'sha1:'; did you mean 'sha256:'?"),
        ("cn=alice", "did you mean 'CN='?"),
        ("spki:" + PIN, "no such client identity kind 'spki:'; allowed:"),
        ("alice", "no identity kind"),
        ("CN=", "needs the client certificate's common name"),
        ("CN= alice", "without leading or trailing spaces"),
    ],
)
def test_bad_entries_say_what_is_wrong(entry, says):
    with pytest.raises(ClientEntryError) as info:
        parse_client(entry)
    assert says in str(info.value)


def test_matching():
    alice = ClientIdentity(PIN, ("alice",))
    rules = (ClientRule("cn", "alice"), ClientRule("sha256", "cd" * 32))
    assert allows(rules, alice)
    assert allows(rules, ClientIdentity("cd" * 32, ("mallory",)))
    assert not allows(rules, ClientIdentity("ef" * 32, ("Alice",)))  # names are exact
    assert not allows(rules, None)
    # a subject with two common names matches no CN= entry (which one would be meant?)
    assert not allows(rules, ClientIdentity("ef" * 32, ("alice", "bob")))
    assert allows((ClientRule("sha256", PIN),), ClientIdentity(PIN, ("alice", "bob")))


def _cert(cn: str | list[str]):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names = [cn] if isinstance(cn, str) else cn
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in names])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert, hashlib.sha256(spki).hexdigest()


def test_identity_of_a_certificate_is_its_spki_digest_and_common_names():
    from cryptography.hazmat.primitives import serialization

    cert, digest = _cert("alice")
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert identity_of_der(der) == ClientIdentity(digest, ("alice",))
    assert identity_of_pem(pem) == ClientIdentity(digest, ("alice",))
    assert identity_of_der(b"\x30\x03garbage") is None
    two, _ = _cert(["alice", "bob"])
    assert identity_of_der(two.public_bytes(serialization.Encoding.DER)).common_names == (
        "alice",
        "bob",
    )


def _model(name: str, clients=None) -> ModelConfig:
    return ModelConfig(name, "1", "tflite", "/m", clients=clients)


def test_access_checks_restricted_models_only_and_asks_for_the_identity_only_then():
    access = ClientAccess.of([_model("open"), _model("closed", ["CN=alice"])])
    assert access.restricted == ["closed"]
    asked = []

    def who():
        asked.append(1)
        return ClientIdentity(PIN, ("bob",))

    access.check("open", who)
    assert asked == []
    with pytest.raises(Forbidden) as info:
        access.check("closed", who)
    assert "'closed' is restricted to named clients" in str(info.value)
    assert "alice" not in str(info.value)  # who may is not told
    access.check("closed", lambda: ClientIdentity(PIN, ("alice",)))
    with pytest.raises(Forbidden):
        access.check("closed", lambda: None)


def _config(models, tls=True):
    return {
        "version": 1,
        "models": models,
        "tls": {"cert": "/c", "key": "/k", "client_ca": "/ca"} if tls else None,
    }


def test_model_server_json_carries_the_list_as_written():
    data = _config(
        [
            {"name": "a", "backend": "tflite", "path": "/a", "clients": ["CN=x", "sha256:" + PIN]},
            {"name": "b", "backend": "tflite", "path": "/b"},
        ]
    )
    config = ServerConfig.from_dict(data)
    assert config.models[0].clients == ("CN=x", "sha256:" + PIN)
    assert config.models[1].clients is None
    text = config.to_json()
    assert '"clients"' in text and text.count('"clients"') == 1
    assert ServerConfig.parse(text) == config


@pytest.mark.parametrize(
    "models, tls, says",
    [
        (["CN=x"], False, "models[0].clients: needs mutual TLS: set tls.client_ca"),
        (["sha256:" + PIN], False, "models[0].clients: needs mutual TLS"),
        ([], True, "models[0].clients: expected a non-empty array"),
        (["CN=x", "CN=x"], True, "models[0].clients[1]: 'CN=x' is listed twice"),
        (["md5:00"], True, "models[0].clients[0]: 'md5:00': no such client identity kind"),
    ],
)
def test_model_server_json_refuses_lists_it_cannot_enforce(models, tls, says):
    data = _config([{"name": "a", "backend": "tflite", "path": "/a", "clients": models}], tls)
    with pytest.raises(ConfigError) as info:
        ServerConfig.from_dict(data)
    assert says in str(info.value)


def test_a_tls_section_without_client_ca_is_not_mutual_tls():
    data = _config([{"name": "a", "backend": "tflite", "path": "/a", "clients": ["CN=x"]}])
    data["tls"]["client_ca"] = None
    with pytest.raises(ConfigError, match="needs mutual TLS"):
        ServerConfig.from_dict(data)


def test_refusals_are_counted_per_model_and_start_at_zero():
    m = Metrics()
    m.track_refusals(["closed"])
    text = m.render(0, 0, ["closed", "open"])
    assert 'model_server_client_refusals_total{model="closed",protocol="grpc"} 0' in text
    assert 'model_server_client_refusals_total{model="closed",protocol="rest"} 0' in text
    m.refuse("closed", "rest")
    m.refuse("closed", "rest")
    text = m.render(0, 0, ["closed", "open"])
    assert 'model_server_client_refusals_total{model="closed",protocol="rest"} 2' in text
    assert "# TYPE model_server_client_refusals_total counter" in text
    assert 'model="open"' not in text.split("model_server_model_ready")[0]
    assert "model_server_client_refusals_total" not in Metrics().render(0, 0, ["open"])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_documented_openssl_recipe_gives_the_pin(tmp_path):
    """docs/how-to/serving.md computes a sha256: pin with openssl; it must be ours."""
    from cryptography.hazmat.primitives import serialization

    cert, digest = _cert("alice")
    (tmp_path / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    recipe = (
        "openssl x509 -in client.pem -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum"
    )
    docs = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "serving.md"
    assert recipe in docs.read_text()
    out = subprocess.run(
        recipe, shell=True, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[0] == digest
    assert identity_of_pem(cert.public_bytes(serialization.Encoding.PEM)).spki_sha256 == digest
