"""A secret-server spec with keys of enclave-build's model server: [tls], [[models]] clients
and [[models]] themselves would be ignored by the secret server, so each is a located spec
error (exit 2) from `enclave-build build`, before anything is read or written."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.measurements import ImageRef, Measurements

from .conftest import run_cli, tflite_bytes, write_spec

SPEC = """[service]
name = "keys"
framework = "secret-server"
{models}
[secret-server]
policies = ["face-build"]
owners = ["owner.crt"]
pccs_url = "https://pccs.example.com"

[signing]
key = "key.pem"
{tls}"""
MODEL = """
[[models]]
name = "m"
path = "m.tflite"
encrypt = false
{clients}"""


def _certificate(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "owner")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def project(tmp_path, signing_key) -> Path:
    face = tmp_path / "face-build"
    face.mkdir()
    (face / "measurements.json").write_text(
        Measurements(
            "face",
            "tflite",
            "gramine",
            EnclaveIdentity("00" * 32, "11" * 32, 1, 2, False),
            ImageRef("face:1", None),
        ).to_json()
    )
    (face / "secrets-policy.toml").write_text(
        'measurements = ["measurements.json"]\n\n[[secrets]]\nname = "face-key"\n'
        'file = "keys/face-key.key"\nallow = ["face"]\n'
    )
    _certificate(tmp_path / "owner.crt")
    shutil.copy(signing_key, tmp_path / "key.pem")
    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    return tmp_path


def _build(project: Path, models: str = "", tls: str = "") -> tuple[int, str]:
    write_spec(project, SPEC.format(models=models, tls=tls))
    proc = run_cli(
        "build", "spec.toml", "--base", "dir:/nonexistent", "--output", "out", cwd=project
    )
    assert not (project / "out").exists()
    return proc.returncode, proc.stderr.decode()


TLS_REFUSAL = (
    "spec.toml:13: tls: the secret server's own TLS identity is set by [secret-server]: at "
    "start it makes a key pair in the enclave and an RA-TLS certificate whose quote binds it "
    "(clients check it with `enclave-build attest`); [tls] configures enclave-build's model "
    "server only, and would be ignored here: remove the section"
)


@pytest.mark.parametrize(
    "tls",
    [
        '[tls]\nhosts = ["keys.example.com"]\n',  # issuer "secret-server" by default
        '[tls]\nissuer = "self"\nhosts = ["keys.example.com"]\n',
        '[tls]\nissuer = "file"\ncert = "owner.crt"\nkey = "absent.key"\n',
    ],
)
def test_tls_is_a_located_spec_error(project, tls):
    code, err = _build(project, tls="\n" + tls)
    assert code == 2, err
    assert TLS_REFUSAL in err, err
    assert "[secrets]" not in err and "absent.key" not in err  # no misleading advice


def test_model_clients_are_a_located_spec_error(project):
    models = MODEL.format(clients=f'clients = ["sha256:{"ab" * 32}"]\n')
    code, err = _build(project, models=models)
    assert code == 2, err
    assert (
        "spec.toml:9: models[0].clients: clients are enforced by enclave-build's model server "
        "after mutual TLS ([tls] client_ca); framework secret-server runs a server of its own"
    ) in err, err
    assert "add a [tls] section" not in err


def test_models_are_a_located_spec_error(project):
    code, err = _build(project, models=MODEL.format(clients=""))
    assert code == 2, err
    assert "spec.toml:5: models: the secret server serves no models" in err, err


def test_without_them_the_spec_passes_these_checks(project):
    """The same project without those keys gets past the spec (to the missing base)."""
    code, err = _build(project)
    assert code != 0 and "spec.toml:" not in err, err
    assert "/nonexistent" in err, err
