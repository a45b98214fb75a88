"""Keys on Occlum, from the spec to what Occlum's init and the model server get.

- The Occlum backend's configure hook switches enclave-build's model server to reading its keys
  from the files init writes (``keys.source = "files"``) and provisions the image key; the
  Gramine plan of the same spec is unchanged.
- The model server reads such key files (16 bytes, or 16 + the two NULs Occlum's GrSecret client
  appends) and opens its models as they are.
- ``[occlum] build_image`` (validated; ``ENCLAVE_BUILD_OCCLUM_IMAGE`` overrides it).
- The secret server's ``encoding`` / ``requested_as`` rules, with errors naming file and key.
- End to end: an Occlum build's secrets-policy.toml -> ``enclave-build secrets config
  --grsecret-listen`` -> the secret server -> a GrSecret client generated from the .proto asks
  for ``image_key`` and the model key; what it receives, decoded exactly as Occlum's client
  decodes it (ported below from grpc_ratls's base64_decode), is what init parses and writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import grpc
import pytest

from enclave_build.attestation.config import ConfigError, load_config
from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.policy import Policy, PolicyError
from enclave_build.attestation.quote_source import SIMULATED_QUOTER_ENV
from enclave_build.attestation.server import SecretServer, startup_warnings
from enclave_build.attestation.server.decide import AccessPolicy, ByName, ByServerName, decide
from enclave_build.attestation.simulated_quoter import SimulatedQuoter
from enclave_build.attestation.synthetic import SyntheticPKI, tls_ca_and_server
from enclave_build.attestation.verify import TcbPolicy
from enclave_build.builder.build import make_plan, policy_fragment, prepare_wrap_keys
from enclave_build.builder.occlum import backend
from enclave_build.builder.occlum.configure import releases
from enclave_build.builder.occlum.render import KEYS_DIR, OcclumOptions, render
from enclave_build.builder.plan import KeyDelivery
from enclave_build.builder.rootfs import RootFS
from enclave_build.builder.spec import SpecError, load_spec
from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.secrets_config import SecretRule, hex_dashes
from enclave_build.model_server.config import ROOT_ENV, parse_config
from enclave_build.model_server.config import ConfigError as ServerConfigError
from enclave_build.model_server.keys import KeyFetchError, prepare_keys
from enclave_build.plugin import SERVER_CONFIG

from .attest_env import MR_SIGNER, identity, verified_evidence
from .conftest import run_cli
from .test_grsecret import Client, _server_measurements
from .test_occlum_config import example_spec


def _server_config(plan) -> dict | None:
    return json.loads(plan.server_config.to_json()) if plan.server_config else None


def _load(spec_path: Path, plugin_registry):
    spec = load_spec(
        spec_path, plugin_registry.framework_sections(), plugin_registry.libos_sections()
    )
    return spec, make_plan(spec, plugin_registry)


# --------------------------------------------------------------------------- the plan


def test_occlum_plan_reads_keys_from_init_files(tmp_path, plugin_registry, standin_root):
    spec_path = example_spec("tflite", tmp_path)
    _, plan = _load(spec_path, plugin_registry)
    assert plan.secrets.delivery is KeyDelivery.LIBOS_FILES
    keys = _server_config(plan)["keys"]
    assert keys == {"source": "files", "directory": KEYS_DIR, "names": ["face-detect-key"]}
    parsed = parse_config(_server_config(plan))
    assert parsed.keys.source == "files" and parsed.keys.directory == KEYS_DIR
    # The rendered configuration copies exactly this file into the image, and init writes the
    # model key where the server reads it.
    config = render(plan, OcclumOptions(rootfs=RootFS(standin_root)))
    bom = config.bom_yaml.decode()
    item = next(f for f in plan.image_files() if f.dest == SERVER_CONFIG)
    assert hashlib.sha256(item.data).hexdigest().upper() in bom
    conf = json.loads(config.init_ra_conf)
    assert {"key": "face-detect-key", "path": f"{KEYS_DIR}/face-detect-key"} in conf["kms_keys"]
    assert [(r.key, r.request, r.encoding) for r in releases(config.kms_keys)] == [
        ("face-detect-key", "image_key", "hex-dashes"),
        ("face-detect-key", "face-detect-key", "raw"),
    ]


def test_gramine_plan_of_the_same_spec_is_unchanged(tmp_path, plugin_registry):
    spec_path = example_spec("tflite", tmp_path)
    text = spec_path.read_text().replace('libos = "occlum"', 'libos = "gramine"')
    text = text[: text.index("\n[occlum]")] + "\n"
    spec_path.write_text(text)
    _, plan = _load(spec_path, plugin_registry)
    assert plan.secrets.delivery is KeyDelivery.IN_ENCLAVE
    keys = _server_config(plan)["keys"]
    assert keys["names"] == ["face-detect-key"] and keys["evidence"] == "tcg-dice"
    assert "source" not in keys and keys["server"] == "localhost:4433"


def test_encrypt_image_provisions_the_image_key(tmp_path, plugin_registry, standin_root):
    spec_path = example_spec("tflite", tmp_path, "encrypt_image = true\n")
    spec_path.write_text(spec_path.read_text().replace("encrypt = true", "encrypt = false"))
    spec, plan = _load(spec_path, plugin_registry)
    assert [k.name for k in plan.secrets.keys] == ["face-detect-key"]
    assert _server_config(plan)["keys"] is None  # the server needs no key; init does
    config = render(plan, OcclumOptions(rootfs=RootFS(standin_root)))
    assert config.image_key == "face-detect-key"
    wrap = prepare_wrap_keys(spec, plan, tmp_path / "out")
    created = wrap.persist()
    assert set(wrap.keys) == {"face-detect-key"} and created


# --------------------------------------------------------------------------- the model server


@pytest.fixture
def image_root(tmp_path, monkeypatch):
    root = tmp_path / "image"
    (root / KEYS_DIR.lstrip("/")).mkdir(parents=True)
    monkeypatch.setenv(ROOT_ENV, str(root))
    return root


def _files_keys(*names):
    return parse_config(
        {
            "version": 1,
            "models": [],
            "keys": {"source": "files", "directory": KEYS_DIR, "names": list(names)},
        }
    ).keys


def test_model_server_reads_keys_from_files(image_root):
    keys_dir = image_root / KEYS_DIR.lstrip("/")
    (keys_dir / "a").write_bytes(os.urandom(16))
    (keys_dir / "b").write_bytes(os.urandom(16) + b"\0\0")  # as Occlum's init writes it
    model = image_root / "models" / "m.tflite"
    model.parent.mkdir()
    model.write_bytes(b"TFL3")
    ring = prepare_keys(_files_keys("a", "b"))
    assert ring.mode == "libos" and ring.names == ("a", "b")
    assert ring.open("/models/m.tflite", "b").read_bytes() == b"TFL3"  # opened as it is
    with pytest.raises(KeyFetchError, match="'c', which was not fetched"):
        ring.open("/models/m.tflite", "c")


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "cannot read /run/enclave-build/keys/k"),
        (b"x" * 15, "holds 15 bytes"),
        (b"x" * 17, "holds 17 bytes"),
        (b"x" * 16 + b"\0x", "holds 18 bytes"),
        (b"x" * 40, "holds 19+ bytes"),
    ],
)
def test_model_server_refuses_bad_key_files(image_root, content, needle):
    if content is not None:
        (image_root / KEYS_DIR.lstrip("/") / "k").write_bytes(content)
    with pytest.raises(KeyFetchError, match=re.escape(needle)):
        prepare_keys(_files_keys("k"))


@pytest.mark.parametrize(
    "keys, needle",
    [
        ({"source": "sealed", "names": ["k"]}, "keys.source: 'sealed' is not allowed; allowed"),
        (
            {"source": "files", "directory": "keys", "names": ["k"]},
            "keys.directory: 'keys' is not allowed; allowed: the absolute image path",
        ),
        ({"source": "files", "names": ["k"]}, "keys.directory: expected the absolute image path"),
        (
            {"source": "files", "directory": "/k", "names": ["k"], "server": "x:1"},
            'keys.server: not with source "files"',
        ),
        ({"names": ["k"], "ca": "/ca.pem"}, "keys.server: required"),
        ({"source": "files", "directory": "/k", "names": "k"}, "keys.names: expected"),
    ],
)
def test_model_server_key_config_errors(keys, needle):
    with pytest.raises(ServerConfigError, match=re.escape(needle)):
        parse_config({"version": 1, "models": [], "keys": keys})


# --------------------------------------------------------------------------- [occlum] build_image


def test_build_image_from_spec_and_environment(tmp_path, plugin_registry, monkeypatch):
    spec_path = example_spec(
        "tflite", tmp_path, 'build_image = "registry.example.com/occ:0.31.0"\n'
    )
    _, plan = _load(spec_path, plugin_registry)
    monkeypatch.delenv(backend.BUILD_IMAGE_ENV, raising=False)
    assert backend.build_image(plan) == "registry.example.com/occ:0.31.0"
    monkeypatch.setenv(backend.BUILD_IMAGE_ENV, "mine/occlum:1")
    assert backend.build_image(plan) == "mine/occlum:1"  # the operator's override wins
    monkeypatch.delenv(backend.BUILD_IMAGE_ENV)
    plan.libos_options = None
    assert backend.build_image(plan) == backend.DEFAULT_BUILD_IMAGE


@pytest.mark.parametrize(
    "value, needle",
    [
        ('"Occlum Image"', "invalid repository name"),
        ('"docker-daemon:occlum/occlum:0.31.0"', "is not an image reference"),
        ('"occlum/occlum@sha256:12"', "digest must be sha256"),
        ("31", "expected"),
    ],
)
def test_build_image_refusals_name_the_key(value, needle, tmp_path, plugin_registry):
    spec_path = example_spec("tflite", tmp_path, f"build_image = {value}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec_path, plugin_registry.framework_sections(), plugin_registry.libos_sections())
    line = next(
        i
        for i, text in enumerate(spec_path.read_text().splitlines(), 1)
        if text.startswith("build_image")
    )
    message = str(info.value)
    assert f":{line}: occlum.build_image" in message and needle in message, message


# --------------------------------------------------------------------------- the policy


def _measurements(service: str, mr_enclave: bytes) -> Measurements:
    return Measurements(
        service,
        "tflite",
        "occlum",
        EnclaveIdentity(mr_enclave.hex(), MR_SIGNER.hex(), 1, 1, False),
        ImageRef(f"{service}:1", None),
    )


def test_image_key_rules_per_service(tmp_path):
    for service in ("face", "ocr"):
        (tmp_path / f"{service}.json").write_text(
            _measurements(service, identity(service)).to_json()
        )
    rules = [
        SecretRule(
            f"{s}-key@image_key",
            tmp_path / f"{s}.key",
            (s,),
            encoding="hex-dashes",
            requested_as="image_key",
        )
        for s in ("face", "ocr")
    ]
    rules.append(SecretRule("face-key", tmp_path / "face.key", ("face",)))
    policy = Policy.build(["*.json"], rules, tmp_path)
    access = AccessPolicy(policy, TcbPolicy())
    face = verified_evidence(identity("face").hex(), MR_SIGNER.hex(), 1, 1)
    ocr = verified_evidence(identity("ocr").hex(), MR_SIGNER.hex(), 1, 1)
    assert decide(face, ByName("image_key"), access).secret.name == "face-key@image_key"
    assert decide(ocr, ByName("image_key"), access).secret.name == "ocr-key@image_key"
    assert decide(ocr, ByName("face-key"), access).secret is None
    stranger = verified_evidence(identity("x").hex(), MR_SIGNER.hex(), 1, 1)
    assert (
        "no secret asked for as 'image_key'" in decide(stranger, ByName("image_key"), access).reason
    )
    # Gramine's secret_prov exchange sees only the raw secret asked for by its own name.
    assert decide(face, ByServerName(b"localhost"), access).secret.name == "face-key"
    assert decide(ocr, ByServerName(b"localhost"), access).secret is None
    assert policy.knows("image_key") and not policy.knows("other")
    with pytest.raises(PolicyError, match="requested_as 'face-key' is the name of a secret"):
        Policy.build(
            ["*.json"],
            rules + [SecretRule("y", tmp_path / "y", ("face",), requested_as="face-key")],
            tmp_path,
        )
    with pytest.raises(PolicyError, match="encoding must be one of"):
        Policy.build(["*.json"], [SecretRule("y", None, ("face",), encoding="b64")], tmp_path)
    assert SecretRule("k", None, ()).encode(b"\x01" * 16) == b"\x01" * 16
    assert rules[0].encode(bytes(range(16))) == b"00-01-02-03-04-05-06-07-08-09-0a-0b-0c-0d-0e-0f\n"
    with pytest.raises(ValueError, match="16 bytes, not 3"):
        rules[0].encode(b"abc")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (
            'encoding = "base64"',
            "secrets[0].encoding: 'base64' is not allowed; allowed: raw, hex-dashes",
        ),
        ("encoding = 1", "secrets[0].encoding: expected a string"),
        ('requested_as = ""', "secrets[0].requested_as: empty"),
        ('file = "short.key"\nencoding = "hex-dashes"', "needs a 16-byte key"),
    ],
)
def test_secrets_toml_encoding_errors_name_file_and_key(tmp_path, extra, needle):
    pki = SyntheticPKI()
    (tmp_path / "collateral.json").write_text(pki.collateral_json())
    tls_ca_and_server(tmp_path)
    (tmp_path / "m.json").write_text(_measurements("face", identity("face")).to_json())
    (tmp_path / "k.key").write_bytes(os.urandom(16))
    (tmp_path / "short.key").write_bytes(os.urandom(5))
    file_line = "" if "file =" in extra else 'file = "k.key"\n'
    path = tmp_path / "secrets.toml"
    path.write_text(
        f'measurements = ["m.json"]\n[server]\nlisten = "127.0.0.1:0"\n'
        f'cert = "server.crt"\nkey = "server.key"\n[attestation]\n'
        f'collateral = "collateral.json"\n[[secrets]]\nname = "k"\n{file_line}'
        f'allow = ["face"]\n{extra}\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and needle in str(info.value), info.value


# --------------------------------------------------------------------------- end to end


def occlum_client_decode(text: str) -> bytes:
    """What Occlum 0.31's grpc_ratls client (grpc_ratls_get_secret_string) makes of a
    SecretReply.secret: its length guess counts every character and subtracts one per trailing
    '=', its decoder skips characters outside the alphabet and reads '=' as zero bits, and the
    result is the guessed length minus one."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
    guessed = len(text) * 3 // 4 - padding
    out, block = bytearray(), []
    for char in text:
        if char == "=":
            block.append(0)
        elif char in alphabet:
            block.append(alphabet.index(char))
        else:
            continue
        if len(block) == 4:
            out += bytes(
                [
                    (block[0] << 2 | block[1] >> 4) & 0xFF,
                    (block[1] << 4 | block[2] >> 2) & 0xFF,
                    (block[2] << 6 | block[3]) & 0xFF,
                ]
            )
            block = []
    assert len(out) <= guessed, "Occlum's client would write past its buffer"
    return bytes(out[: guessed - 1])


def init_image_key(received: bytes) -> bytes:
    """Occlum's init: trailing CR/LF trimmed, then 16 '-'-separated hex bytes (parse_str_to_bytes)."""
    parts = received.decode("utf-8").rstrip("\r\n").split("-")
    assert len(parts) == 16, f"init refuses the image key {received!r}"
    return bytes(int(p, 16) for p in parts)


@pytest.mark.integration
def test_occlum_build_policy_to_grsecret_client(
    tmp_path, plugin_registry, standin_root, ratls_stubs, monkeypatch
):
    # 1. An Occlum build's outputs: measurements.json and secrets-policy.toml (as _finish writes
    #    them, from the backend's releases), wrap keys created 0600 in keys_dir.
    spec_path = example_spec("tflite", tmp_path)
    spec, plan = _load(spec_path, plugin_registry)
    config = render(plan, OcclumOptions(rootfs=RootFS(standin_root)))
    out = tmp_path / "out"
    out.mkdir()
    wrap = prepare_wrap_keys(spec, plan, out)
    wrap.persist()
    wrap_keys, key_files = wrap.keys, wrap.files
    mine = identity("face-detect-occlum")
    measurements = _measurements("face-detect", mine)
    (out / "measurements.json").write_text(measurements.to_json())
    fragment = policy_fragment(plan, measurements, key_files, out, releases(config.kms_keys))
    (out / "secrets-policy.toml").write_text(fragment)
    assert 'requested_as = "image_key"' in fragment and 'encoding = "hex-dashes"' in fragment

    # 2. enclave-build secrets config, with the GrSecret listener.
    pki = SyntheticPKI()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    (server_dir / "collateral.json").write_text(pki.collateral_json())
    (server_dir / "root.pem").write_bytes(pki.root_pem)
    _, cert, key = tls_ca_and_server(server_dir)
    proc = run_cli(
        "secrets",
        "config",
        str(out),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--listen",
        "127.0.0.1:0",
        "--root-ca",
        str(server_dir / "root.pem"),
        "--collateral",
        str(server_dir / "collateral.json"),
        "--grsecret-listen",
        "127.0.0.1:0",
        "--out",
        str(server_dir / "secrets.toml"),
    )
    assert proc.returncode == 0, proc.stderr.decode()
    loaded = load_config(server_dir / "secrets.toml")
    assert loaded.grsecret is not None and loaded.grsecret.port == 0
    by_name = {r.name: r for r in loaded.secrets}
    assert by_name["face-detect-key@image_key"].requested_as == "image_key"
    assert by_name["face-detect-key@image_key"].encoding == "hex-dashes"
    assert by_name["face-detect-key"].encoding == "raw"
    # 48 bytes of text: no "NUL bytes appended" note for the image key; the raw key gets one.
    notes = " ".join(startup_warnings(loaded))
    assert "'face-detect-key' is 16 bytes" in notes and "@image_key' is" not in notes

    # 3. The secret server, its own quote from a simulated quoter; 4. a GrSecret client with
    #    the Occlum enclave's identity, asking as Occlum's init does.
    with SimulatedQuoter(pki, _server_measurements(), warn=False) as quoter:
        monkeypatch.setenv(SIMULATED_QUOTER_ENV, quoter.env_value)
        server = SecretServer(loaded)
        server.start()
        env = type("Env", (), {"pki": pki})()
        try:
            client = Client(server, env, ratls_stubs, _cert(pki, mine))
            try:
                image_key = _ask(client, "image_key")
                model_key = _ask(client, "face-detect-key")
            finally:
                client.close()
            other = Client(server, env, ratls_stubs, _cert(pki, identity("someone-else")))
            try:
                with pytest.raises(grpc.RpcError) as info:
                    other.stub.GetSecret(other.pb2.SecretRequest(name="image_key"), timeout=10)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            finally:
                other.close()
        finally:
            server.shutdown()
    wrap = wrap_keys["face-detect-key"]
    assert image_key == hex_dashes(wrap) and init_image_key(image_key) == wrap
    assert model_key == wrap + b"\0\0"  # what init writes to KEYS_DIR/face-detect-key

    # 5. The model server, configured as the Occlum plan says, accepts what init wrote.
    root = tmp_path / "image"
    (root / KEYS_DIR.lstrip("/")).mkdir(parents=True)
    (root / KEYS_DIR.lstrip("/") / "face-detect-key").write_bytes(model_key)
    monkeypatch.setenv(ROOT_ENV, str(root))
    ring = prepare_keys(parse_config(_server_config(plan)).keys)
    assert ring.mode == "libos" and ring.names == ("face-detect-key",)


def _cert(pki, mr_enclave):
    from enclave_build.attestation.ratls import create_certificate

    return create_certificate("cczoo", lambda rd: pki.quote(mr_enclave, MR_SIGNER, rd, 1, 1, False))


def _ask(client, name: str) -> bytes:
    reply = client.stub.GetSecret(client.pb2.SecretRequest(name=name), timeout=10)
    return occlum_client_decode(reply.secret)


def test_two_occlum_services_share_one_secret_server(tmp_path):
    """Each service's image key is its own KEY@image_key rule; one key file may back a raw
    and a hex-dashes rule, never two raw names; without --grsecret-listen a warning."""
    import warnings as _warnings

    from enclave_build.builder.secrets_config import SecretsConfigError, ServerSide, compose_config
    from enclave_build.plugin import SecretRelease

    fragments = []
    for service in ("face", "ocr"):
        out = tmp_path / service
        out.mkdir()
        key = tmp_path / f"{service}-key.key"
        key.write_bytes(os.urandom(16))
        key.chmod(0o600)
        m = _measurements(service, identity(service))
        (out / "measurements.json").write_text(m.to_json())
        plan = type("Plan", (), {"service": service, "mounts": []})()
        text = policy_fragment(
            plan,
            m,
            {f"{service}-key": key},
            out,
            (
                SecretRelease(f"{service}-key", "image_key", "hex-dashes"),
                SecretRelease(f"{service}-key", f"{service}-key", "raw"),
            ),
        )
        (out / "secrets-policy.toml").write_text(text)
        fragments.append(out)
    tls_ca_and_server(tmp_path)
    SyntheticPKI().save(tmp_path / "pki")  # collateral that chains to the root trusted
    side = dict(
        cert=tmp_path / "server.crt",
        key=tmp_path / "server.key",
        collateral=tmp_path / "pki" / "collateral.json",
        root_ca=str(tmp_path / "pki" / "root.pem"),
    )
    config = compose_config(fragments, ServerSide(**side, grsecret_listen="0.0.0.0:50051")).config
    assert config.to_dict()["grsecret"] == {"listen": "0.0.0.0:50051"}
    names = sorted(r.name for r in config.secrets)
    assert names == ["face-key", "face-key@image_key", "ocr-key", "ocr-key@image_key"]
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        compose_config(fragments, ServerSide(**side))
    assert any("--grsecret-listen" in str(w.message) for w in caught)
    # The same key file under a second raw name is still refused.
    text = (fragments[1] / "secrets-policy.toml").read_text()
    (fragments[1] / "secrets-policy.toml").write_text(text.replace("ocr-key.key", "face-key.key"))
    with pytest.raises(SecretsConfigError, match="one key file per secret name and encoding"):
        compose_config(fragments, ServerSide(**side))
