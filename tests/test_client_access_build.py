"""The builder's side of per-model client access: ``[tls] client_ca`` and ``[[models]] clients``
reach the measured model-server.json (and the CA the image as a trusted file), and every spec
that could not be enforced is a located error, exit 2, nothing written."""

from __future__ import annotations

import datetime
import json
import shutil
import tomllib
from types import SimpleNamespace

import pytest

from enclave_build.contract.names import CLIENT_CA, SERVER_CONFIG

from .conftest import model_files, run_cli, write_spec

PIN = "sha256:" + "0f" * 32
SPEC = """[service]
name = "gated"
framework = "{framework}"

[[models]]
name = "a"
path = "{a}"
encrypt = false
clients = {clients}

[[models]]
name = "b"
path = "{b}"
encrypt = false

[secrets]
server = "127.0.0.1:4433"
ca = "secrets-ca.pem"
keys_dir = "../keys"

[tls]
cert = "tls.crt"
key = "tls.key"
{client_ca}
[signing]
key = "key.pem"
"""


def _ca_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clients CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _project(
    tmp_path,
    signing_key,
    *,
    framework="tflite",
    clients=f'["CN=alice", "{PIN}"]',
    client_ca='client_ca = "clients-ca.pem"\n',
):
    project = tmp_path / "project"
    project.mkdir()
    a, b = model_files(project, framework)
    shutil.copy(signing_key, project / "key.pem")
    (project / "secrets-ca.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    )
    (project / "tls.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n"
    )
    (project / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n")
    (project / "clients-ca.pem").write_bytes(_ca_pem())
    text = SPEC.format(framework=framework, a=a, b=b, clients=clients, client_ca=client_ca)
    return write_spec(project, text)


def test_the_lists_and_the_client_ca_reach_the_measured_configuration(
    tmp_path, standin_root, signing_key
):
    from enclave_build.builder.build import build

    spec = _project(tmp_path, signing_key)
    result = build(spec, base=f"dir:{standin_root}")
    files = {f.dest: f for f in result.artifacts.files}
    config = json.loads(files[SERVER_CONFIG].data)
    assert config["tls"]["client_ca"] == CLIENT_CA
    assert [m.get("clients") for m in config["models"]] == [["CN=alice", PIN], None]
    assert files[CLIENT_CA].source.read_bytes() == (spec.parent / "clients-ca.pem").read_bytes()
    manifest = tomllib.loads(result.artifacts.manifest.decode())
    uris = [t["uri"] for t in manifest["sgx"]["trusted_files"]]
    assert f"file:{CLIENT_CA}" in uris and f"file:{SERVER_CONFIG}" in uris


def _errors(tmp_path, spec) -> list[str]:
    before = sorted(p.name for p in spec.parent.iterdir())
    proc = run_cli(
        "build", "spec.toml", "--base", "dir:/nonexistent", "--output", "../out", cwd=spec.parent
    )
    assert proc.returncode == 2, proc.stderr.decode()
    assert sorted(p.name for p in spec.parent.iterdir()) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "keys").exists()
    return proc.stderr.decode().splitlines()


def test_names_without_client_ca_say_what_to_add(tmp_path, signing_key):
    spec = _project(tmp_path, signing_key, client_ca="")
    assert _errors(tmp_path, spec) == [
        "error: spec.toml:9: models[0].clients: a client list is checked on client "
        'certificates verified by mutual TLS: add client_ca = "FILE" to [tls] (a PEM bundle '
        "of the CA(s) that issued the clients' certificates, or of the clients' self-signed "
        "certificates)"
    ]


def test_pins_need_client_ca_too(tmp_path, signing_key):
    spec = _project(tmp_path, signing_key, clients=f'["{PIN}"]', client_ca="")
    assert _errors(tmp_path, spec)[0].startswith(
        "error: spec.toml:9: models[0].clients: a client list is checked on client "
        'certificates verified by mutual TLS: add client_ca = "FILE" to [tls]'
    )


def test_clients_without_tls_and_bad_entries_are_located(tmp_path, signing_key):
    spec = _project(tmp_path, signing_key, clients='["sha256:abcd", "spki:00", "cn=bob"]')
    text = spec.read_text()
    start = text.index("[tls]")
    spec.write_text(text[:start] + text[text.index("[signing]") :])
    assert _errors(tmp_path, spec) == [
        "error: spec.toml:9: models[0].clients[0]: 'sha256:abcd': sha256: needs 64 hex digits "
        "(the SHA-256 of the client certificate's DER SubjectPublicKeyInfo), got 4 characters",
        "error: spec.toml:9: models[0].clients[1]: 'spki:00': no such client identity kind "
        "'spki:'; allowed: \"sha256:HEX\" (SHA-256 of the client certificate's "
        'SubjectPublicKeyInfo) or "CN=NAME"',
        "error: spec.toml:9: models[0].clients[2]: 'cn=bob': no such client identity kind "
        "'cn='; did you mean 'CN='? allowed: \"sha256:HEX\" (SHA-256 of the client "
        'certificate\'s SubjectPublicKeyInfo) or "CN=NAME"',
        "error: spec.toml:9: models[0].clients: needs TLS with client certificates: add a "
        '[tls] section with cert, key and client_ca = "FILE" (the CA that issued the '
        "clients' certificates)",
    ]


def test_a_client_ca_with_a_private_key_or_no_certificate_is_refused(tmp_path, signing_key):
    spec = _project(tmp_path, signing_key)
    ca = spec.parent / "clients-ca.pem"
    ca.write_bytes(ca.read_bytes() + b"-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n")
    assert _errors(tmp_path, spec) == [
        f"error: spec.toml:24: tls.client_ca: {ca} holds a private key; client_ca ships "
        "unencrypted in the image: give a file with the CA certificate(s) only"
    ]
    ca.write_text("hello\n")
    assert _errors(tmp_path, spec) == [
        f"error: spec.toml:24: tls.client_ca: {ca} is not a PEM certificate bundle; expected "
        "one or more -----BEGIN CERTIFICATE----- blocks (the CA certificate(s) clients chain to)"
    ]


def test_a_framework_running_its_own_server_refuses_lists_and_client_ca(tmp_path, signing_key):
    spec = _project(tmp_path, signing_key, framework="tfserving")
    (lines,) = [_errors(tmp_path, spec)]
    assert lines == [
        "error: spec.toml:9: models[0].clients: clients applies to enclave-build's model "
        'server (tflite, openvino mode "python"), which checks them per request; framework '
        "tfserving runs its own server, which cannot: remove it (or use a framework that runs "
        "enclave-build's model server)"
    ]
    text = spec.read_text()
    spec.write_text(text.replace('clients = ["CN=alice", "' + PIN + '"]\n', ""))
    assert _errors(tmp_path, spec) == [
        "error: spec.toml:23: tls.client_ca: client_ca (mutual TLS) applies to enclave-build's "
        'model server (tflite, openvino mode "python"); framework tfserving runs its own '
        "server: remove it"
    ]


def test_a_plan_that_drops_the_list_does_not_build(tmp_path, signing_key, monkeypatch):
    """A third-party framework that does not hand the list to enclave-build's model server
    (its plan has no server_config, or one without the list) is refused after planning."""
    from enclave_build.builder.build import load
    from enclave_build.builder.planning import require_enforced
    from enclave_build.builder.spec import SpecError

    spec_path = _project(tmp_path, signing_key)
    monkeypatch.chdir(spec_path.parent)
    spec, _ = load("spec.toml")
    with pytest.raises(SpecError) as info:
        require_enforced(spec, SimpleNamespace(server_config=None), "other")
    assert info.value.lines() == [
        "spec.toml:9: models[0].clients: framework other does not hand this list to "
        "enclave-build's model server, so nothing would enforce it: remove it, or use a "
        'framework that runs enclave-build\'s model server (tflite, openvino mode "python")'
    ]
