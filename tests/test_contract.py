"""The contract types: one writer and one reader per format, reading back what was written, every
problem of a file reported at once with its line and key; the JSON Schemas generated from
them; the Size grammars; MRSIGNER."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from enclave_build.contract import schemas
from enclave_build.contract.identity import EnclaveIdentity, mr_signer_of
from enclave_build.contract.locate import JsonLocator, KeyLocator
from enclave_build.contract.measurements import ImageRef, Measurements, MeasurementsError
from enclave_build.contract.policy_fragment import PolicyFragment, PolicyFragmentError
from enclave_build.contract.secrets_config import (
    AttestationSettings,
    SecretRule,
    SecretsConfig,
    SecretsConfigError,
    ServerSettings,
    UploadSettings,
)
from enclave_build.contract.server_config import (
    ConfigError,
    KeysConfig,
    Limits,
    Listener,
    ModelConfig,
    ServerConfig,
    ServerTrustConfig,
    TLSConfig,
)
from enclave_build.contract.service_info import (
    EnclaveInfo,
    Health,
    RunAs,
    ServiceInfo,
    ServiceInfoError,
    ServicePort,
)
from enclave_build.contract.size import (
    CLI_SIZE,
    GRAMINE_SIZE,
    HUMAN_SIZE,
    K8S_BYTES,
    K8S_MEMORY,
    OCCLUM_JSON_SIZE,
    OCCLUM_SIZE,
    SPEC_SIZE,
    Size,
    SizeError,
)

from .conftest import REPO

HEX = "ab" * 32
SCHEMA_DIR = REPO / "docs" / "reference" / "schemas"


# --------------------------------------------------------------------------- JSON Schemas


def test_committed_json_schemas_are_the_generated_ones():
    """docs/reference/schemas/ is what `python -m enclave_build.contract.schemas DIR` writes;
    regenerate it when a contract type changes."""
    expected = {
        f"{name}.schema.json": schemas.schema_text(schema)
        for name, schema in schemas.json_schemas().items()
    }
    committed = {p.name: p.read_text(encoding="utf-8") for p in SCHEMA_DIR.glob("*.json")}
    assert sorted(committed) == sorted(expected)
    stale = [name for name in expected if committed[name] != expected[name]]
    assert not stale, (
        f"stale: {stale}; run `python -m enclave_build.contract.schemas docs/reference/schemas`"
    )


def test_the_generator_entry_point_writes_every_schema(tmp_path):
    assert schemas.main([str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{name}.schema.json" for name in schemas.FORMATS
    )
    assert schemas.main([]) == 2


def _config() -> ServerConfig:
    trust = ServerTrustConfig(
        "mr_signer",
        (EnclaveIdentity(None, HEX, 5, 2),),
        None,
        None,
        "https://pccs.example/",
        ("UpToDate",),
    )
    return ServerConfig(
        "face",
        (
            ModelConfig(
                "m",
                "1",
                "tflite",
                "/models/m/1/m.tflite",
                "face-key",
                2,
                1,
                {"device": "CPU"},
                max_queue=3,
            ),
        ),
        Listener("0.0.0.0", 8001),
        None,
        TLSConfig("/enclave/secrets/tls.crt", "/enclave/secrets/tls.key", "face-key"),
        Limits.of({"max_request_bytes": 1 << 20, "idle_timeout": 2.5}),
        KeysConfig("keys:4433", "", ("face-key",), 10, server_identity=trust),
        drain_seconds=7,
    )


def _service() -> ServiceInfo:
    return ServiceInfo(
        "face",
        "tflite",
        "gramine",
        EnclaveInfo(1 << 30, 32),
        (ServicePort("grpc", 8001), ServicePort("http", 8000)),
        Health("kserve-v2", "http", "HTTP", "/v2/health/live", "/v2/health/ready"),
        RunAs(10001, 0),
        drain_seconds=20.0,
        keys=("face-key",),
        secret_server="keys:4433",
    )


def _measurements() -> Measurements:
    return Measurements(
        "face",
        "tflite",
        "gramine",
        EnclaveIdentity(HEX, "cd" * 32, 1, 2),
        ImageRef("face:1", "sha256:" + "0" * 64),
    )


def test_written_files_match_their_json_schemas(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    import tomllib

    secrets = _secrets(tmp_path)
    written = {
        "model-server.json": json.loads(_config().to_json()),
        "measurements.json": json.loads(_measurements().to_json()),
        "service.json": json.loads(_service().to_json()),
        "secrets-policy.toml": tomllib.loads(_fragment().to_toml()),
        "secrets.toml": tomllib.loads(secrets.to_toml()),
    }
    for name, schema in schemas.json_schemas().items():
        validator = jsonschema.Draft202012Validator(schema)
        assert not list(validator.iter_errors(written[name])), name
        assert list(validator.iter_errors({**written[name], "surprise": 1})), name


# --------------------------------------------------------------------------- round trips


def test_model_server_json_reads_back_what_was_written(tmp_path):
    config = _config()
    path = tmp_path / "model-server.json"
    path.write_text(config.to_json())
    assert ServerConfig.load(path) == config
    assert ServerConfig.load(path).to_json() == config.to_json()
    # only the limits the plan set are written; the server's defaults fill the rest
    assert json.loads(config.to_json())["limits"] == {
        "max_request_bytes": 1 << 20,
        "idle_timeout": 2.5,
    }
    files = dataclasses.replace(config, keys=KeysConfig.from_files("/run/keys", ("face-key",)))
    assert json.loads(files.to_json())["keys"] == {
        "source": "files",
        "directory": "/run/keys",
        "names": ["face-key"],
    }
    assert ServerConfig.parse(files.to_json()) == files


def test_the_serving_limits_read_back_typed_with_their_defaults(tmp_path):
    """max_response_bytes, max_json_bytes and min_body_rate are limits of model-server.json:
    written when set, read back as integers, defaults derived from max_request_bytes."""
    path = tmp_path / "model-server.json"
    config = dataclasses.replace(
        _config(),
        limits=Limits.of(
            {
                "max_request_bytes": 8 << 20,
                "max_response_bytes": 2 << 20,
                "max_json_bytes": 1 << 20,
                "min_body_rate": 100,
            }
        ),
    )
    path.write_text(config.to_json())
    limits = ServerConfig.load(path).limits
    assert (limits.max_response_bytes, limits.max_json_bytes, limits.min_body_rate) == (
        2 << 20,
        1 << 20,
        100,
    )
    assert json.loads(path.read_text())["limits"]["min_body_rate"] == 100
    defaults = Limits.of({"max_request_bytes": 1 << 20})
    # answers up to 4 x a request; the JSON part of a request never more than a request
    assert (defaults.max_response_bytes, defaults.max_json_bytes, defaults.min_body_rate) == (
        4 << 20,
        1 << 20,
        32 << 10,
    )
    assert Limits().max_json_bytes == 4 << 20


def test_serving_limit_errors_name_the_file_line_and_key(tmp_path):
    path = tmp_path / "model-server.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "limits": {"max_response_bytes": 0, "max_json_bytes": "4M", "min_body_rate": 1.5},
            },
            indent=2,
        )
    )
    with pytest.raises(ConfigError) as info:
        ServerConfig.load(path)
    assert info.value.lines() == [
        f"{path}:4: limits.max_response_bytes: 0 is out of range; allowed: at least 1",
        f"{path}:5: limits.max_json_bytes: expected a positive integer, got string '4M'",
        f"{path}:6: limits.min_body_rate: expected a positive integer, got float 1.5",
    ]


def test_measurements_service_and_fragment_read_back(tmp_path):
    (tmp_path / "measurements.json").write_text(_measurements().to_json())
    assert Measurements.load(tmp_path / "measurements.json") == _measurements()
    (tmp_path / "service.json").write_text(_service().to_json())
    assert ServiceInfo.load(tmp_path / "service.json") == _service()
    (tmp_path / "secrets-policy.toml").write_text(_fragment().to_toml())
    read = PolicyFragment.load(tmp_path)  # a build directory names its fragment
    assert read.measurements == (str(tmp_path / "measurements.json"),)
    assert read.keys_dir == tmp_path / "../keys"
    assert read.secrets == (
        SecretRule("face-key", (tmp_path / "../keys/face-key.key").resolve(), ("face",)),
    )


def _fragment() -> PolicyFragment:
    return PolicyFragment(
        None,
        ("measurements.json",),
        (SecretRule("face-key", Path("../keys/face-key.key"), ("face",)),),
        Path("../keys"),
        ("a fragment",),
        ("face-key: decrypts /models",),
    )


def _secrets(tmp_path: Path) -> SecretsConfig:
    for name in ("server.crt", "server.key", "k.key", "owner.pem"):
        (tmp_path / name).write_bytes(b"x" * 16)
    return SecretsConfig(
        tmp_path / "secrets.toml",
        ServerSettings(
            "0.0.0.0", 4433, Path("server.crt"), Path("server.key"), audit_log="-", processes=1
        ),
        AttestationSettings(None, None, "https://pccs.example/"),
        ("m.json",),
        (
            SecretRule("k", Path("k.key"), ("face",)),
            SecretRule("up", None, ("face",), encoding="hex-dashes", requested_as="image_key"),
        ),
        UploadSettings((Path("owner.pem"),)),
    )


def test_secrets_toml_writes_what_differs_from_the_defaults_and_reads_back(tmp_path):
    config = _secrets(tmp_path)
    text = config.to_toml("header")
    assert text.startswith("# header\nmeasurements = [\n")
    assert "max_tls" not in text and "processes = 1" in text and 'root_ca = "intel"' in text
    (tmp_path / "secrets.toml").write_text(text)
    read = SecretsConfig.load(tmp_path / "secrets.toml")
    assert read.server == dataclasses.replace(
        config.server, cert=tmp_path / "server.crt", key=tmp_path / "server.key"
    )
    assert read.secrets[0].file == tmp_path / "k.key" and read.secrets[1].file is None
    assert read.upload == UploadSettings((tmp_path / "owner.pem",))
    assert read.attestation == config.attestation


# --------------------------------------------------------------------------- located errors


def test_every_problem_of_a_model_server_json_at_once_with_its_line(tmp_path):
    path = tmp_path / "model-server.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "service": "s",
                "grcp": {},
                "models": [
                    {"name": "m", "path": "/m"},
                    {"name": "m", "backend": "x", "path": "/m", "instances": 0},
                ],
                "limits": {"max_queue": -1, "header_timeout": "10"},
                "keys": {"names": ["k"], "ca": "/ca.pem", "server_identity": {}},
            },
            indent=2,
        )
    )
    with pytest.raises(ConfigError) as info:
        ServerConfig.load(path)
    assert info.value.lines() == [
        f"{path}:4: grcp: unknown key; did you mean 'grpc'? allowed: version, service, models, "
        "grpc, rest, tls, limits, keys, drain_seconds, metrics",
        f"{path}:6: models[0].backend: required key is missing (the backend that runs it "
        "(tflite, openvino, a plugin's))",
        f"{path}:14: models[1].instances: 0 is out of range; allowed: at least 1",
        f"{path}:18: limits.max_queue: -1 is out of range; allowed: at least 0",
        f"{path}:19: limits.header_timeout: expected a positive number of seconds, got string '10'",
        f"{path}:26: keys.server_identity.pin: required key is missing (how a build is matched)",
        f"{path}:26: keys.server_identity.builds: required key is missing (the builds it may be)",
        f"{path}:11: models[1].name: duplicate model name 'm' (also models[0]): model names "
        "must be unique",
        f'{path}:21: keys.server: required (a string) with source "ra-tls"',
        f"{path}:21: keys: give ca or server_identity, not both",
        f"{path}:26: keys.server_identity: give exactly one of collateral and pccs_url",
    ]
    path.write_text('{\n  "version": 1,\n}\n')
    with pytest.raises(ConfigError, match=r"model-server\.json:3: not JSON \(Expecting "):
        ServerConfig.load(path)


def test_every_problem_of_a_measurements_json_at_once(tmp_path):
    path = tmp_path / "measurements.json"
    data = json.loads(_measurements().to_json())
    data.update(mr_enclave="AB" * 32, isv_svn=70000, debug="no")
    del data["libos"]
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(MeasurementsError) as info:
        Measurements.load(path)
    assert info.value.lines() == [
        f"{path}: libos: required key is missing (the library OS that runs it)",
        f"{path}:4: mr_enclave: '{'AB' * 32}' is not allowed; allowed: 64 lower-case hex digits",
        f"{path}:7: isv_svn: 70000 is out of range; allowed: 0 to 65535",
        f"{path}:8: debug: expected a boolean (true or false), got string 'no'",
    ]


def test_service_json_problems_name_their_lines(tmp_path):
    path = tmp_path / "service.json"
    data = json.loads(_service().to_json())
    data["health"]["port"] = "nope"
    data["ports"][1]["number"] = 0
    path.write_text(json.dumps(data, indent=2))
    with pytest.raises(ServiceInfoError) as info:
        ServiceInfo.load(path)
    assert info.value.lines() == [
        f"{path}:20: ports[1].number: 0 is out of range; allowed: 1 to 65535",
        f"{path}:27: health.port: 'nope' is not allowed; allowed: grpc, http",
    ]


def test_secrets_toml_problems_at_once_with_lines(tmp_path):
    path = tmp_path / "secrets.toml"
    path.write_text(
        'measurements = ["m.json"]\n[server]\nlisten = "4433"\ncert = "nope.crt"\n'
        'key = "nope.key"\nmax_tls = "1.1"\n[attestation]\nmeasurements = []\n'
        '[[secrets]]\nname = "k"\nallow = ["face"]\n'
    )
    with pytest.raises(SecretsConfigError) as info:
        SecretsConfig.load(path)
    assert info.value.lines() == [
        f"{path}:6: server.max_tls: '1.1' is not allowed; did you mean '1.3'? allowed: 1.2, 1.3",
        f"{path}:8: attestation.measurements: unknown key; allowed: root_ca, collateral, "
        "pccs_url, pccs_timeout, allowed_tcb_statuses, allowed_advisories, denied_advisories, "
        "allow_debug, verification_cache (measurements is a top-level key: put it before the "
        "first [table])",
        f"{path}:3: server.listen: '4433' is not HOST:PORT",
        f"{path}:4: server.cert: file not found: {tmp_path / 'nope.crt'}",
        f"{path}:5: server.key: file not found: {tmp_path / 'nope.key'}",
        f"{path}:7: attestation: give exactly one of collateral (a file) and pccs_url",
        f"{path}:9: secrets[0].file: required key is missing (or list the owners who upload it "
        "in [upload])",
    ]


def test_a_policy_fragment_that_is_not_toml_names_the_line(tmp_path):
    (tmp_path / "secrets-policy.toml").write_text('measurements = ["m.json"]\n[[[ x\n')
    with pytest.raises(PolicyFragmentError, match=r"secrets-policy\.toml:2: not TOML"):
        PolicyFragment.load(tmp_path)


def test_json_locator_finds_members_and_elements():
    text = '{\n  "a": 1,\n  "b": [\n    {"c": 2},\n    {\n      "d": "x"\n    }\n  ]\n}\n'
    locator = JsonLocator(text)
    assert [
        locator.line(p)
        for p in [("a",), ("b",), ("b", 0), ("b", 0, "c"), ("b", 1, "d"), ("b", 1, "e"), ("z",)]
    ] == [2, 3, 4, 4, 6, 5, None]
    assert JsonLocator('{"a": [1, ').line(("a",)) == 1  # what parses before the error
    assert KeyLocator("x = 1\n[t]\ny = 2\n[[a]]\nz = 3\n").line(("a", 0, "z")) == 5


# --------------------------------------------------------------------------- Size


@pytest.mark.parametrize(
    "grammar, text, value",
    [
        (SPEC_SIZE, "512M", 512 << 20),
        (SPEC_SIZE, "4G", 4 << 30),
        (HUMAN_SIZE, "1.5GiB", int(1.5 * (1 << 30))),
        (HUMAN_SIZE, " 10 g ", 10 << 30),
        (HUMAN_SIZE, "0", 0),
        (OCCLUM_SIZE, "64MB", 64 << 20),
        (OCCLUM_SIZE, "4096B", 4096),
        (OCCLUM_JSON_SIZE, "+32 MB", 32 << 20),
        (GRAMINE_SIZE, "0x1000", 4096),
        (GRAMINE_SIZE, "256M", 256 << 20),
        (K8S_MEMORY, "2Gi", 2 << 30),
        (K8S_BYTES, "64G", 64 * 10**9),
        (K8S_BYTES, "64Gi", 64 << 30),
        (CLI_SIZE, "4Gi", 4 << 30),
    ],
)
def test_size_grammars(grammar, text, value):
    assert Size.parse(text, grammar) == value


@pytest.mark.parametrize(
    "grammar, text",
    [
        (SPEC_SIZE, "4g"),
        (SPEC_SIZE, "0G"),
        (SPEC_SIZE, "4G\n"),
        (SPEC_SIZE, "1.5G"),
        (HUMAN_SIZE, "-1G"),
        (OCCLUM_SIZE, "64"),
        (OCCLUM_JSON_SIZE, "32M"),
        (GRAMINE_SIZE, "010"),
        (K8S_MEMORY, "2G"),
        (K8S_BYTES, "0"),
        (CLI_SIZE, "0"),
    ],
)
def test_size_grammars_refuse(grammar, text):
    with pytest.raises(SizeError, match="allowed: "):
        Size.parse(text, grammar)


def test_size_prints_and_checks_powers_of_two():
    assert str(Size(4 << 30)) == "4G" and str(Size(3 << 20)) == "3M" and str(Size(1000)) == "1000"
    assert Size(1536).text(fallback="hex") == "0x600"
    assert Size(32 << 20).occlum_text() == "32MB" and Size(1536).occlum_text() == "1536B"
    assert Size(1536 << 20).gigabytes_text() == "1536M" and Size(1).mebibytes_text() == "1Mi"
    assert Size(8 << 30).is_power_of_two and not Size(3 << 30).is_power_of_two
    with pytest.raises(SizeError):
        Size(1000).text(fallback="error")
    with pytest.raises(SizeError):
        Size(-1)


# --------------------------------------------------------------------------- identity


def test_mr_signer_is_sha256_of_the_little_endian_modulus():
    from cryptography.hazmat.primitives.asymmetric import rsa

    from enclave_build.builder.gramine.sigstruct import Sigstruct

    modulus = rsa.generate_private_key(3, 3072).public_key().public_numbers().n
    expected = hashlib.sha256(modulus.to_bytes(384, "little")).hexdigest()
    assert mr_signer_of(modulus) == expected
    assert Sigstruct(None, modulus=modulus).mr_signer.hex() == expected
    assert EnclaveIdentity(HEX, expected, 1, 2).signer_pin() == EnclaveIdentity(
        None, expected, 1, 2
    )


def test_a_measurements_json_is_one_enclave_identity():
    m = _measurements()
    assert (m.mr_enclave, m.mr_signer, m.isv_prod_id, m.isv_svn, m.debug) == (
        HEX,
        "cd" * 32,
        1,
        2,
        False,
    )
    assert m.identity == EnclaveIdentity(HEX, "cd" * 32, 1, 2, False)


def test_the_standin_marker_reads_back_and_names_its_problems(tmp_path):
    from enclave_build.builder.base_kind import MAX_MARKER, standin_base
    from enclave_build.builder.rootfs import RootFS
    from enclave_build.contract.names import STANDIN_MARKER
    from enclave_build.contract.standin_base import StandInBase, StandInBaseError

    mark = StandInBase("1.9", ("onnxruntime", "secret-server"))
    assert StandInBase.parse(mark.to_json()) == mark
    bad = '{\n  "kind": "gramine",\n  "gramine": 19\n}\n'
    with pytest.raises(StandInBaseError) as info:
        StandInBase.parse(bad, "base/marker.json")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("base/marker.json:2: kind: ")
    assert lines[1].startswith("base/marker.json:3: gramine: ")
    # read from a root filesystem: absent (a real base), present, or not a marker at all
    root = tmp_path / "rootfs"
    root.mkdir()
    assert standin_base(RootFS(root)) is None
    marker = root / STANDIN_MARKER.lstrip("/")
    marker.parent.mkdir(parents=True)
    marker.write_text(mark.to_json())
    assert standin_base(RootFS(root)) == mark
    marker.write_bytes(b" " * (MAX_MARKER + 1))
    with pytest.raises(StandInBaseError, match=f"{STANDIN_MARKER}: 4097 bytes, not a stand-in"):
        standin_base(RootFS(root))
