"""A `[signing] key` that cannot sign SGX enclaves (another key type or size, a certificate, a
public key, not PEM) is a spec error when the spec is loaded, as `[provenance] key` is: exit 2,
`spec.toml:LINE: signing.key: ...`, nothing written. A spec loaded without its private keys
(verify-build) does not look at the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from enclave_build.builder.plugins import PluginRegistry
from enclave_build.builder.spec import load_spec

from .conftest import run_cli, tflite_bytes, write_spec

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[signing]
key = "key.pem"
"""


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(directory: Path) -> bytes:
    out = directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(directory / "cert.key"), "-subj", "/CN=x", "-out", str(out)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return out.read_bytes()


def _project(directory: Path, key: bytes) -> Path:
    (directory / "model.tflite").write_bytes(tflite_bytes(bytes(range(256)) * 10))
    (directory / "key.pem").write_bytes(key)
    (directory / "key.pem").chmod(0o600)
    return write_spec(directory, SPEC)


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (lambda d: _pem(ec.generate_private_key(ec.SECP256R1())), "found ECPrivateKey"),
        (_certificate, "found a certificate"),
        (lambda d: b"not a key\n", "found a file that is not PEM"),
        (
            lambda d: _pem(rsa.generate_private_key(public_exponent=3, key_size=2048)),
            "SGX needs a 3072-bit RSA key, this one has 2048",
        ),
        (
            lambda d: _pem(rsa.generate_private_key(public_exponent=65537, key_size=3072)),
            "SGX needs public exponent 3, this key has 65537",
        ),
    ],
    ids=["ec", "certificate", "not-pem", "rsa-2048", "exponent-65537"],
)
def test_an_unusable_signing_key_is_a_located_spec_error(tmp_path, make, found):
    _project(tmp_path, make(tmp_path))
    proc = run_cli(
        "build", "spec.toml", "--base", "dir:/nonexistent", "--output", "out", cwd=tmp_path
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert f"error: spec.toml:11: signing.key: {tmp_path / 'key.pem'}: " in err
    assert found in err
    if "needs" not in found:
        assert "expected an RSA-3072 private key with public exponent 3" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_without_private_keys_the_signing_key_file_is_not_read(tmp_path):
    spec = _project(tmp_path, _pem(ec.generate_private_key(ec.SECP256R1())))
    loaded = load_spec(spec, PluginRegistry().framework_sections(), private_keys=False)
    assert loaded.signing.key == tmp_path / "key.pem"
    (tmp_path / "key.pem").unlink()
    load_spec(spec, PluginRegistry().framework_sections(), private_keys=False)
