from __future__ import annotations

import stat

from cryptography.hazmat.primitives import serialization

from enclave_build.builder.gramine.signer import PemSigner

from .conftest import run_cli


def test_keygen_writes_sgx_key_with_mode_0600(tmp_path):
    out = tmp_path / "k.pem"
    proc = run_cli("keygen", "--out", str(out), "--public-out", str(tmp_path / "pub.pem"))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(out.read_bytes(), None)
    assert key.key_size == 3072
    assert key.public_key().public_numbers().e == 3
    assert (
        serialization.load_pem_public_key((tmp_path / "pub.pem").read_bytes()).public_numbers().n
        == key.public_key().public_numbers().n
    )
    PemSigner.from_file(out)  # usable for signing


def test_keygen_refuses_to_overwrite(tmp_path):
    out = tmp_path / "k.pem"
    out.write_text("precious")
    proc = run_cli("keygen", "--out", str(out))
    assert proc.returncode == 1
    assert b"already exists; not overwriting a key" in proc.stderr
    assert out.read_text() == "precious"


def test_keygen_with_passphrase(tmp_path):
    out = tmp_path / "k.pem"
    proc = run_cli(
        "keygen", "--out", str(out), "--passphrase-env", "KEYPASS", env={"KEYPASS": "s3cret"}
    )
    assert proc.returncode == 0
    assert b"ENCRYPTED" in out.read_bytes()
    PemSigner.from_file(out, b"s3cret")


def test_wrong_key_shape_is_refused(tmp_path, sign_vectors):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa2048.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    proc = run_cli(
        "gramine",
        "sign",
        "--manifest",
        str(sign_vectors / "s1.manifest.sgx"),
        "--libpal",
        str(sign_vectors / "fakepal_a.so"),
        "--offsets",
        str(sign_vectors / "_graminelibos_offsets.py"),
        "--key",
        str(path),
        "--sigfile",
        str(tmp_path / "x.sig"),
    )
    assert proc.returncode == 1
    assert f"error: {path}: SGX needs a 3072-bit RSA key, this one has 2048".encode() in proc.stderr


def test_keygen_empty_or_unset_passphrase_env_writes_no_key(tmp_path):
    """--passphrase-env naming an empty variable used to write the key UNENCRYPTED."""
    out = tmp_path / "k.pem"
    empty = run_cli("keygen", "--out", str(out), "--passphrase-env", "KEYPASS", env={"KEYPASS": ""})
    assert empty.returncode == 2, empty.stderr
    assert b"error: environment variable KEYPASS (--passphrase-env) is empty" in empty.stderr
    assert not out.exists()
    unset = run_cli("keygen", "--out", str(out), "--passphrase-env", "UNSET_KEYPASS_VAR")
    assert unset.returncode == 2, unset.stderr
    assert b"UNSET_KEYPASS_VAR (--passphrase-env) is not set" in unset.stderr
    assert not out.exists()
