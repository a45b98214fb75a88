"""Encrypted models in builds: protected files under encrypted mounts, the provisioning hooks in
the manifest, wrap-key handling, the secret-server policy fragment and secret hygiene."""

from __future__ import annotations

import base64
import os
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w

from enclave_build.builder.gramine import protected_files as pf
from enclave_build.contract.sbom import SBOM_PATH

from .conftest import image_rootfs, run_cli, write_spec
from .test_manifest import GOLDEN

SPEC = """[service]
name = "tfs-secure"
framework = "tfserving"

[[models]]
name = "half_plus_two"
path = "saved_model"

[enclave]
size = "8G"
max_threads = 64

[secrets]
server = "secrets.example.com:4433"
ca = "ca.pem"
keys_dir = "../keys"

[tls]
cert = "tls.crt"
key = "tls.key"

[signing]
key = "key.pem"
"""

TLS_KEY = (
    b"-----BEGIN PRIVATE KEY-----\nTLSPRIVATEKEYMATERIAL0123456789\n-----END PRIVATE KEY-----\n"
)


def _project(root: Path, signing_key: Path, spec: str = SPEC) -> Path:
    project = root / "project"
    (project / "saved_model" / "variables").mkdir(parents=True)
    (project / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01MODELWEIGHTS" * 500)
    (project / "saved_model" / "variables" / "variables.data").write_bytes(b"SECRETWEIGHTS" * 900)
    (project / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    (project / "tls.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n"
    )
    (project / "tls.key").write_bytes(TLS_KEY)
    shutil.copy(signing_key, project / "key.pem")
    return write_spec(project, spec)


def _build(tmp_path, standin_root, *extra, spec_dir="project", env=None):
    return run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "../out",
        *extra,
        cwd=tmp_path / spec_dir,
        env=env,
    )


def test_encrypted_build_end_to_end(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key)
    proc = _build(tmp_path, standin_root)
    assert proc.returncode == 0, proc.stderr.decode()
    key_file = tmp_path / "keys" / "tfs-secure-key.key"
    assert f"generated wrap key {key_file} (mode 0600)".encode() in proc.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    # [tls] with cert and key is issuer "file": the build says what that means, once.
    warning = (
        f'{tmp_path / "project/spec.toml"}: [tls] issuer = "file": the serving certificate\'s '
        f"private key ({tmp_path / 'project/tls.key'}) existed outside the enclave, so a client "
        "cannot tell this enclave from whoever else holds that key; prefer issuer = "
        '"secret-server"'
    )
    assert proc.stderr.decode().count(warning) == 1, proc.stderr.decode()
    key = key_file.read_bytes()
    rootfs = image_rootfs(tmp_path / "out")

    manifest = tomllib.loads((rootfs / "enclave/tfs-secure.manifest.sgx").read_text())
    env = manifest["loader"]["env"]
    assert env["LD_PRELOAD"] == "libsecret_prov_attest.so"
    assert env["SECRET_PROVISION_CONSTRUCTOR"] == "1"
    assert env["SECRET_PROVISION_SET_KEY"] == "tfs-secure-key"
    assert env["SECRET_PROVISION_SERVERS"] == "secrets.example.com:4433"
    assert env["SECRET_PROVISION_CA_CHAIN_PATH"] == "/enclave/secret-server-ca.pem"
    assert manifest["sgx"]["remote_attestation"] == "dcap"
    assert manifest["sys"]["enable_extra_runtime_domain_names_conf"] is True
    mounts = {m["path"]: m for m in manifest["fs"]["mounts"]}
    assert mounts["/models/half_plus_two/1"] == {
        "path": "/models/half_plus_two/1",
        "type": "encrypted",
        "uri": "file:/models/half_plus_two/1",
        "key_name": "tfs-secure-key",
    }
    assert mounts["/enclave/secrets"]["type"] == "encrypted"
    uris = [tf["uri"] for tf in manifest["sgx"]["trusted_files"]]
    assert "file:/enclave/secret-server-ca.pem" in uris
    assert not [u for u in uris if u.startswith("file:/models/") or "secrets/" in u]
    assert "--ssl_config_file=/enclave/secrets/ssl.cfg" in manifest["loader"]["argv"]

    # The encrypted files decrypt with the service key under the path the enclave opens.
    model = rootfs / "models/half_plus_two/1/saved_model.pb"
    out = tmp_path / "check"
    pf.decrypt_file(key, model, out, "/models/half_plus_two/1/saved_model.pb")
    assert out.read_bytes() == b"\x08\x01MODELWEIGHTS" * 500
    pf.decrypt_file(
        key,
        rootfs / "models/half_plus_two/1/variables/variables.data",
        out,
        "/models/half_plus_two/1/variables/variables.data",
    )
    pf.decrypt_file(key, rootfs / "enclave/secrets/ssl.cfg", out, "/enclave/secrets/ssl.cfg")
    assert b'server_key: "-----BEGIN PRIVATE KEY-----\\nTLSPRIVATEKEYMATERIAL' in out.read_bytes()

    # Paths relative to the fragment's directory (no host path in the outputs).
    policy = tomllib.loads((tmp_path / "out/secrets-policy.toml").read_text())
    assert policy == {
        "measurements": ["measurements.json"],
        "keys_dir": "../keys",
        "secrets": [
            {
                "name": "tfs-secure-key",
                "file": "../keys/tfs-secure-key.key",
                "allow": ["tfs-secure"],
            }
        ],
    }
    assert (tmp_path / "out" / policy["secrets"][0]["file"]).resolve() == key_file

    # A rebuild reuses the key (and says nothing about generating one).
    again = _build(tmp_path, standin_root)
    assert again.returncode == 0 and b"generated wrap key" not in again.stderr
    assert key_file.read_bytes() == key


def test_secret_hygiene_no_key_material_in_outputs_or_logs(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key)
    private_tmp = tmp_path / "tmp"  # the build's own temp directory: all of it is checked below
    private_tmp.mkdir()
    proc = _build(tmp_path, standin_root, "--json", env={"TMPDIR": str(private_tmp)})
    assert proc.returncode == 0, proc.stderr.decode()
    wrap_key = (tmp_path / "keys/tfs-secure-key.key").read_bytes()
    signing_pem = signing_key.read_bytes()
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(signing_pem, None)
    d = private.private_numbers().d.to_bytes(384, "big")
    needles = [
        wrap_key,
        wrap_key.hex().encode(),
        base64.b64encode(wrap_key),
        b"TLSPRIVATEKEYMATERIAL",
        b"SECRETWEIGHTS",
        b"MODELWEIGHTS",
        signing_pem[40:80],
        d[:32],
        d[-32:],
    ]
    haystacks = {"stdout": proc.stdout, "stderr": proc.stderr}
    import gzip

    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            haystacks[str(path)] = content
            if content[:2] == b"\x1f\x8b":  # image layers: search the tar inside
                haystacks[f"{path} (uncompressed)"] = gzip.decompress(content)
    layers = [name for name in haystacks if name.endswith("(uncompressed)")]
    assert len(layers) >= 3  # base + service files + enclave files
    assert any(b"models/half_plus_two/1/saved_model.pb" in haystacks[n] for n in layers)
    for name, content in haystacks.items():
        for needle in needles:
            assert needle not in content, f"secret material found in {name}"
    # Nothing of the build is left in its temp directory (the staging directory
    # .enclave-build.tmp-PID-*, unpacked archives enclave-build-*, ...) nor next to the output
    # (.out.tmp-PID-*, .out.old-PID).
    assert sorted(p.name for p in private_tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_reproducible_builds_give_identical_encrypted_files(tmp_path, standin_root, signing_key):
    spec = SPEC.replace("[signing]", "[build]\nreproducible = true\n\n[signing]")
    outputs = []
    for run in ("a", "b"):
        root = tmp_path / run
        _project(root, signing_key, spec)
        if run == "b":  # same wrap key: the reproducibility contract is per key
            (root / "keys").mkdir()
            shutil.copy(tmp_path / "a/keys/tfs-secure-key.key", root / "keys/tfs-secure-key.key")
        assert _build(root, standin_root).returncode == 0
        files = image_rootfs(root / "out")
        outputs.append(
            (
                {p.relative_to(files): p.read_bytes() for p in files.rglob("*") if p.is_file()},
                (root / "out/measurements.json").read_text(),
            )
        )
    assert outputs[0] == outputs[1]  # same files, and so the same image digest


def test_random_mode_encrypts_differently_each_build(tmp_path, standin_root, signing_key):
    _project(tmp_path, signing_key)
    model = "models/half_plus_two/1/saved_model.pb"
    assert _build(tmp_path, standin_root).returncode == 0
    first = (image_rootfs(tmp_path / "out") / model).read_bytes()
    assert _build(tmp_path, standin_root).returncode == 0
    assert (image_rootfs(tmp_path / "out") / model).read_bytes() != first


def test_keys_dir_inside_output_is_refused(tmp_path, standin_root, signing_key):
    _project(
        tmp_path, signing_key, SPEC.replace('keys_dir = "../keys"', 'keys_dir = "../out/keys"')
    )
    proc = _build(tmp_path, standin_root)
    assert proc.returncode == 2
    assert b"keys_dir" in proc.stderr and b"output" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_golden_manifest_with_encrypted_mounts_and_provisioning(
    tmp_path, standin_root, signing_key
):
    _project(tmp_path, signing_key)
    assert _build(tmp_path, standin_root).returncode == 0
    manifest = (image_rootfs(tmp_path / "out") / "enclave/tfs-secure.manifest.sgx").read_bytes()
    # The SBOM's entry names enclave-build's version: tests/test_sbom.py checks it.
    data = tomllib.loads(manifest.decode())
    trusted = data["sgx"]["trusted_files"]
    assert [t["uri"] for t in trusted].count(f"file:{SBOM_PATH}") == 1
    data["sgx"]["trusted_files"] = [t for t in trusted if t["uri"] != f"file:{SBOM_PATH}"]
    manifest = tomli_w.dumps(data).encode()
    golden = GOLDEN / "tfserving-encrypted.manifest.sgx"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_bytes(manifest)
    assert manifest.decode() == golden.read_text()


@pytest.mark.parametrize("issuer", ["secret-server", "self"])
def test_tf_serving_refuses_an_issuer_that_makes_the_key_in_the_enclave(
    tmp_path, standin_root, signing_key, issuer
):
    spec = SPEC.replace(
        '[tls]\ncert = "tls.crt"\nkey = "tls.key"\n',
        f'[tls]\nissuer = "{issuer}"\nhosts = ["localhost"]\n',
    )
    _project(tmp_path, signing_key, spec)
    proc = _build(tmp_path, standin_root)
    line = spec.splitlines().index(f'issuer = "{issuer}"') + 1
    assert proc.returncode == 2, proc.stderr.decode()
    assert (
        f'error: spec.toml:{line}: tls.issuer: issuer = "{issuer}" needs enclave-build\'s own '
        "model server, which makes its key inside the enclave; TF Serving reads its certificate "
        'and key from files: give cert and key with issuer = "file"'
    ) in proc.stderr.decode()
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_openvino_with_tls_is_refused_clearly(tmp_path, standin_root, signing_key):
    spec = (
        SPEC.replace('framework = "tfserving"', 'framework = "openvino"')
        + '\n[openvino]\nmode = "ovms"\n'
    )
    _project(tmp_path, signing_key, spec)
    proc = _build(tmp_path, standin_root)
    assert proc.returncode == 1
    assert b"OpenVINO Model Server has no built-in TLS" in proc.stderr


def test_a_model_key_shared_by_two_services(tmp_path, standin_root, signing_key):
    """Per-model keys: a model names its key; every service serving it uses that key file."""
    policies = []
    for service in ("face-a", "face-b"):
        spec = (
            SPEC.replace('name = "tfs-secure"', f'name = "{service}"')
            .replace('path = "saved_model"', 'path = "saved_model"\nkey = "face-model"')
            .replace('[tls]\ncert = "tls.crt"\nkey = "tls.key"\n', "")
        )
        root = tmp_path / service
        _project(root, signing_key, spec)
        spec_path = root / "project/spec.toml"
        spec_path.write_text(
            spec.replace('keys_dir = "../keys"', f'keys_dir = "{tmp_path}/shared-keys"')
        )
        proc = _build(root, standin_root)
        assert proc.returncode == 0, proc.stderr.decode()
        manifest = tomllib.loads(
            (image_rootfs(root / "out") / f"enclave/{service}.manifest.sgx").read_text()
        )
        assert manifest["loader"]["env"]["SECRET_PROVISION_SET_KEY"] == "face-model"
        policies.append(tomllib.loads((root / "out/secrets-policy.toml").read_text()))
    key_file = tmp_path / "shared-keys/face-model.key"
    assert [p["secrets"] for p in policies] == [
        [{"name": "face-model", "file": "../../shared-keys/face-model.key", "allow": ["face-a"]}],
        [{"name": "face-model", "file": "../../shared-keys/face-model.key", "allow": ["face-b"]}],
    ]
    key = key_file.read_bytes()
    for service in ("face-a", "face-b"):
        pf.decrypt_file(
            key,
            image_rootfs(tmp_path / service / "out") / "models/half_plus_two/1/saved_model.pb",
            tmp_path / "x",
            "/models/half_plus_two/1/saved_model.pb",
        )
