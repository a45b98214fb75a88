"""The secret server built as an enclave image (framework "secret-server") on the stand-in Gramine
base, run with `enclave-build run --simulate` (plain process, simulated quoter), its identity
checked by `enclave-build attest` against the build's measurements.json, a key uploaded by its
owner over the attested connection, and a (synthetic) model enclave fetching it over secret_prov.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_build.attestation import wire
from enclave_build.attestation.attest_client import AttestationRefused, Expectation, open_attested
from enclave_build.attestation.collateral import FileCollateral
from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.builder.build import build
from enclave_build.builder.standin import add_standin_runtimes
from enclave_build.contract.identity import EnclaveIdentity

from . import serving_env as se
from .attest_env import MR_SIGNER, identity
from .conftest import image_rootfs, run_cli

pytestmark = pytest.mark.integration

SERVING = re.compile(r"secret server: serving on (\S+):(\d+)")


def owner_pair(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def secret_server_base(standin: Path, directory: Path) -> Path:
    """The stand-in base plus stand-ins of the secret server's runtimes."""
    root = directory / "rootfs"
    shutil.copytree(standin, root, symlinks=True)
    return add_standin_runtimes(root, ["secret-server"])


@pytest.fixture(scope="module")
def served(standin_root, signing_key, tmp_path_factory):
    work = tmp_path_factory.mktemp("secret-server-enclave")
    pki_dir = work / "pki"
    SyntheticPKI().save(pki_dir)
    # The model enclave it serves: its build's measurements.json and policy fragment.
    face = work / "face-build"
    face.mkdir()
    (face / "measurements.json").write_text(
        Measurements(
            "face",
            "tflite",
            "gramine",
            EnclaveIdentity(identity("face").hex(), MR_SIGNER.hex(), 1, 2, False),
            ImageRef("face:1", None),
        ).to_json()
    )
    (face / "secrets-policy.toml").write_text(
        'measurements = ["measurements.json"]\n\n[[secrets]]\nname = "face-key"\n'
        'file = "keys/face-key.key"\nallow = ["face"]\n'
    )
    owner_cert, owner_key = owner_pair(work, "owner")
    port, grsecret_port = se.free_port(), se.free_port()
    project = work / "project"
    project.mkdir()
    shutil.copy(signing_key, project / "key.pem")
    spec = project / "spec.toml"
    spec.write_text(f'''[service]
name = "keys"
framework = "secret-server"

[secret-server]
port = {port}
grsecret_port = {grsecret_port}
policies = ["{face}"]
owners = ["{owner_cert}"]
root_ca = "{pki_dir / "root.pem"}"
collateral = "{pki_dir / "collateral.json"}"

[signing]
key = "key.pem"
''')
    base = secret_server_base(standin_root, work)
    out = work / "out"
    from enclave_build.plugins.secret_server import SyntheticRootWarning

    with pytest.warns(SyntheticRootWarning):  # root_ca is the synthetic test root
        build(spec, output=out, base=f"dir:{base}")
    proc = se._cli("run", str(out), "--simulate", "--pki", str(pki_dir), "--mode", "process")
    output = se.Output(proc)
    process = se.Process(proc, output)
    try:
        serving = output.wait_for(SERVING, 60)
        if serving is None:
            raise AssertionError(f"the secret server did not start:\n{output.text}")
        yield {
            "work": work,
            "out": out,
            "pki": pki_dir,
            "port": port,
            "spec": spec,
            "grsecret_port": grsecret_port,
            "serving": serving,
            "output": output,
            "owner": (owner_cert, owner_key),
            "process": process,
        }
    finally:
        process.stop()


def _attest(served, *extra: str):
    return run_cli(
        "attest",
        f"127.0.0.1:{served['port']}",
        "--collateral",
        str(served["pki"] / "collateral.json"),
        *extra,
    )


def test_the_image_carries_policy_and_owners_but_no_key(served):
    from .conftest import image_rootfs

    root = image_rootfs(served["out"])
    config = (root / "enclave/secret-server/secrets.toml").read_text()
    assert 'identity = "ratls"' in config and "file" not in config.split("[[secrets]]")[1]
    assert (root / "opt/enclave-build/python/enclave_build/attestation/upload.py").is_file()
    measurements = json.loads((served["out"] / "measurements.json").read_text())
    assert measurements["framework"] == "secret-server"
    manifest = next(root.glob("enclave/*.manifest.sgx")).read_text()
    assert "/enclave/secret-server/owners/00.pem" in manifest  # measured


def test_simulation_listens_on_loopback_only(served):
    """`run --simulate` (plain process, no --listen-all): both of the server's ports are bound
    to 127.0.0.1, not the measured configuration's 0.0.0.0, as for the model server."""
    assert served["serving"].group(1) == "127.0.0.1", served["output"].text
    start = next(
        json.loads(line)
        for line in served["output"].lines
        if line.startswith("{") and '"event": "start"' in line
    )
    assert start["listen"] == f"127.0.0.1:{served['port']}"
    assert start["grsecret"] == f"127.0.0.1:{served['grsecret_port']}"


def test_a_synthetic_root_ca_is_warned_about_at_build_time(served, tmp_path):
    import warnings

    from enclave_build.builder.build import make_plan
    from enclave_build.builder.plugins import PluginRegistry
    from enclave_build.builder.spec import load_spec
    from enclave_build.plugins.secret_server import SyntheticRootWarning

    registry = PluginRegistry()

    def plan(spec_path: Path) -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_plan(load_spec(spec_path, registry.framework_sections(), ("gramine",)), registry)
        return [w for w in caught if issubclass(w.category, SyntheticRootWarning)]

    caught = plan(served["spec"])
    assert len(caught) == 1 and "root.pem" in str(caught[0].message)
    assert 'production builds use root_ca = "intel"' in str(caught[0].message)
    intel = served["spec"].parent / "intel.toml"
    intel.write_text(re.sub(r"(?m)^root_ca = .*$", 'root_ca = "intel"', served["spec"].read_text()))
    try:
        assert plan(intel) == []
    finally:
        intel.unlink()


def test_grsecret_port_presents_the_builds_identity_to_occlum_peers(served):
    """Occlum's init checks the server the way attestation.occlum_ra does: an RSA RA-TLS
    certificate whose quote binds its key and carries this build's measurements."""
    import ssl

    from enclave_build.attestation.occlum_ra import RaConfig

    from .secret_client import PeerRejected, verify_peer_certificate

    config = (image_rootfs(served["out"]) / "enclave/secret-server/secrets.toml").read_text()
    assert f'listen = "0.0.0.0:{served["grsecret_port"]}"' in config.split("[grsecret]")[1]
    pem = ssl.get_server_certificate(("127.0.0.1", served["grsecret_port"]))
    cert = x509.load_pem_x509_certificate(pem.encode())
    built = json.loads((served["out"] / "measurements.json").read_text())
    entry = {
        "mr_enclave": built["mr_enclave"],
        "mr_signer": built["mr_signer"],
        "isv_prod_id": built["isv_prod_id"],
        "isv_svn": built["isv_svn"],
        "debuggable": False,
    }
    flags = {
        "verify_mr_enclave": "on",
        "verify_mr_signer": "on",
        "verify_isv_prod_id": "on",
        "verify_isv_svn": "on",
        "verify_config_svn": "off",
        "verify_enclave_debuggable": "on",
    }
    collateral = (served["pki"] / "collateral.json").read_text()
    root = SyntheticPKI.load(served["pki"]).root_der
    peer = verify_peer_certificate(
        cert, RaConfig.from_dict({**flags, "sgx_mrs": [entry]}), collateral, root_ca_der=root
    )
    assert peer.evidence_format == "cczoo" and peer.identity.mr_enclave == built["mr_enclave"]
    other = RaConfig.from_dict({**flags, "sgx_mrs": [{**entry, "mr_enclave": "ab" * 32}]})
    with pytest.raises(PeerRejected, match="mr_enclave differ"):
        verify_peer_certificate(cert, other, collateral, root_ca_der=root)


def test_attest_matches_the_build(served):
    proc = _attest(
        served,
        "--measurements",
        str(served["out"] / "measurements.json"),
        "--allow-synthetic-root",
        str(served["pki"] / "root.pem"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(proc.stdout)
    built = json.loads((served["out"] / "measurements.json").read_text())
    assert info["schema"] == 1 and info["attested"] is True
    assert info["framework"] == "secret-server" and info["evidence"] == "tcg-dice"
    assert info["mr_enclave"] == built["mr_enclave"] and info["synthetic_root"] is True
    assert b"SYNTHETIC TEST root" in proc.stderr
    # The server's audit log (stdout here) records the owner's check as what it was, not as
    # a refused enclave.
    output = served["process"].output
    line = output.wait_for(re.compile(r'\{[^\n]*"decision": "identity-only"[^\n]*\}'), 10)
    assert line is not None, output.text
    assert "did not return a certificate" not in output.text


def test_attest_refuses_another_build_naming_mr_enclave(served, tmp_path):
    built = json.loads((served["out"] / "measurements.json").read_text())
    other = {**built, "mr_enclave": "ab" * 32}
    (tmp_path / "other.json").write_text(json.dumps(other))
    proc = _attest(
        served,
        "--measurements",
        str(tmp_path / "other.json"),
        "--allow-synthetic-root",
        str(served["pki"] / "root.pem"),
    )
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert (
        f"mr_enclave: {tmp_path / 'other.json'} has '{'ab' * 32}', the server has "
        f"'{built['mr_enclave']}'" in err
    ), err


def test_attest_refuses_without_the_synthetic_root(served):
    proc = _attest(served, "--measurements", str(served["out"] / "measurements.json"))
    assert proc.returncode == 1
    assert b"not attested" in proc.stderr and b"root" in proc.stderr
    # ... and says what a user running the simulation forgot.
    assert b"hint: the quote was verified up to Intel's SGX root CA" in proc.stderr
    assert b"--allow-synthetic-root PKI/root.pem" in proc.stderr
    allowed = _attest(
        served,
        "--measurements",
        str(served["out"] / "measurements.json"),
        "--allow-synthetic-root",
        str(served["pki"] / "root.pem"),
    )
    assert allowed.returncode == 0 and b"hint:" not in allowed.stderr


def _model_enclave_fetch(served) -> bytes:
    """A synthetic model enclave ('face'): attests the secret server (mutual RA-TLS), then
    Gramine's secret_prov exchange on that connection."""
    pki = SyntheticPKI.load(served["pki"])
    from enclave_build.attestation.ratls import create_certificate

    cert, key = create_certificate(
        "tcg-dice", lambda rd: pki.quote(identity("face"), MR_SIGNER, rd, 1, 2)
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        expectation = Expectation(
            (("server", Measurements.load(served["out"] / "measurements.json")),),
            FileCollateral(served["pki"] / "collateral.json"),
            pki.root_der,
        )
        with open_attested(
            "127.0.0.1", served["port"], expectation, client_cert=cert_path, client_key=key_path
        ) as channel:
            channel.tls.sendall(wire.REQUEST)
            released, size = wire.parse_header(wire.recv_exact(channel.tls, wire.HEADER_LEN))
            body = wire.recv_exact(channel.tls, size)
    if not released:
        raise AttestationRefused(body.decode())
    return body


def _grsecret_fetch(served, ratls_stubs, name: str) -> bytes:
    """What Occlum's init does against the enclave image's GrSecret port, with a gRPC client
    generated from tests/protos/ratls.proto: check the server's quote and identity (its
    measurements.json as init_ra_conf's ra_config), then GetSecret over mutual RA-TLS pinned
    to that certificate, presenting a (synthetic) Occlum-format certificate of 'face'."""
    import ssl

    import grpc

    from enclave_build.attestation.occlum_ra import RaConfig
    from enclave_build.attestation.ratls import create_certificate

    from .secret_client import decode_secret, verify_peer_certificate

    pb2, pb2_grpc = ratls_stubs
    address = ("127.0.0.1", served["grsecret_port"])
    pem = ssl.get_server_certificate(address).encode()
    built = json.loads((served["out"] / "measurements.json").read_text())
    ra_config: dict[str, Any] = {
        flag: "on"
        for flag in (
            "verify_mr_enclave",
            "verify_mr_signer",
            "verify_isv_prod_id",
            "verify_isv_svn",
            "verify_enclave_debuggable",
        )
    }
    ra_config["verify_config_svn"] = "off"
    ra_config["sgx_mrs"] = [
        {
            "mr_enclave": built["mr_enclave"],
            "mr_signer": built["mr_signer"],
            "isv_prod_id": built["isv_prod_id"],
            "isv_svn": built["isv_svn"],
            "config_svn": 0,
            "debuggable": False,
        }
    ]
    pki = SyntheticPKI.load(served["pki"])
    verify_peer_certificate(
        x509.load_pem_x509_certificate(pem),
        RaConfig.from_dict(ra_config),
        (served["pki"] / "collateral.json").read_text(),
        root_ca_der=pki.root_der,
    )
    cert, key = create_certificate(
        "cczoo", lambda rd: pki.quote(identity("face"), MR_SIGNER, rd, 1, 2)
    )
    creds = grpc.ssl_channel_credentials(
        root_certificates=pem,
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    with grpc.secure_channel(
        "{}:{}".format(*address), creds, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        reply = pb2_grpc.GrSecretStub(channel).GetSecret(pb2.SecretRequest(name=name), timeout=10)
    return decode_secret(reply.secret)


def test_upload_then_a_model_enclave_gets_the_key(served, tmp_path, ratls_stubs):
    with pytest.raises(AttestationRefused, match="has not been uploaded by its owner yet"):
        _model_enclave_fetch(served)
    key = os.urandom(16)
    (tmp_path / "face.key").write_bytes(key)
    os.chmod(tmp_path / "face.key", 0o600)
    common = (
        "--measurements",
        str(served["out"] / "measurements.json"),
        "--collateral",
        str(served["pki"] / "collateral.json"),
        "--allow-synthetic-root",
        str(served["pki"] / "root.pem"),
        "--name",
        "face-key",
        "--file",
        str(tmp_path / "face.key"),
    )
    # Someone who is not a listed owner: attested fine, upload refused, nothing stored.
    stranger = owner_pair(tmp_path, "stranger")
    proc = run_cli(
        "secrets",
        "upload",
        f"127.0.0.1:{served['port']}",
        *common,
        "--owner-cert",
        str(stranger[0]),
        "--owner-key",
        str(stranger[1]),
    )
    assert proc.returncode == 1
    assert b"not one of the owners" in proc.stderr, proc.stderr.decode()
    with pytest.raises(AttestationRefused, match="not been uploaded"):
        _model_enclave_fetch(served)
    # The owner.
    cert, owner_key = served["owner"]
    proc = run_cli(
        "secrets",
        "upload",
        f"127.0.0.1:{served['port']}",
        *common,
        "--owner-cert",
        str(cert),
        "--owner-key",
        str(owner_key),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(proc.stdout)
    assert info["uploaded"] == ["face-key"] and info["attested"] is True
    assert key.hex().encode() not in proc.stdout + proc.stderr
    assert _model_enclave_fetch(served) == key
    # ... and an Occlum enclave's init gets it from the same server over GrSecret
    assert _grsecret_fetch(served, ratls_stubs, "face-key") == key
    log = served["process"].output.text
    assert key.hex() not in log
    assert (
        '"event": "upload"' in log
        and hashlib.sha256(
            x509.load_pem_x509_certificate(stranger[0].read_bytes()).public_bytes(
                serialization.Encoding.DER
            )
        ).hexdigest()
        in log
    )
