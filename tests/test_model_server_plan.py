"""The builder's side of the model server's limits: the enclave's sys.fds.limit follows the
server's connection caps (Gramine's default, 900, had no relation to them), and [[models]]
max_queue reaches model-server.json, or is a located spec error where the framework runs its
own server binary."""

from __future__ import annotations

import json
import shutil
import tomllib

import pytest

from enclave_build.model_server.config import parse_config
from enclave_build.model_server.resources import OWN_FDS, config_fds

from .conftest import model_files, write_spec

SPEC = """[service]
name = "queues"
framework = "{framework}"

[[models]]
name = "a"
path = "{a}"
encrypt = false
max_queue = {queue}

[[models]]
name = "b"
path = "{b}"
encrypt = false

[signing]
key = "key.pem"
"""


def _project(tmp_path, signing_key, framework: str, queue: str = "3"):
    a, b = model_files(tmp_path, framework)
    shutil.copy(signing_key, tmp_path / "key.pem")  # keeps mode 0600
    return write_spec(tmp_path, SPEC.format(framework=framework, queue=queue, a=a, b=b))


def test_fds_limit_and_model_queue_reach_the_enclave(tmp_path, standin_root, signing_key):
    from enclave_build.builder.build import build

    result = build(_project(tmp_path, signing_key, "tflite"), base=f"dir:{standin_root}")
    manifest = tomllib.loads(result.artifacts.manifest.decode())
    data = json.loads(
        next(f.data for f in result.artifacts.files if f.dest == "/enclave/model-server.json")
    )
    assert [m.get("max_queue") for m in data["models"]] == [3, None]
    config = parse_config(data)
    assert [m.max_queue for m in config.models] == [3, None]
    # 256 REST + 256 gRPC connections, 2 models x 2 instances x 2 files, the server's own
    assert manifest["sys"]["fds"]["limit"] == config_fds(config) == 256 + 1024 + 8 + OWN_FDS


@pytest.mark.parametrize(
    "framework, section", [("tfserving", ""), ("openvino", '\n[openvino]\nmode = "ovms"\n')]
)
def test_max_queue_with_a_binary_server_is_a_located_spec_error(
    tmp_path, monkeypatch, standin_root, signing_key, framework, section
):
    from enclave_build.builder.build import build
    from enclave_build.builder.spec import SpecError

    spec = _project(tmp_path, signing_key, framework)
    spec.write_text(spec.read_text() + section)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        build("spec.toml", base=f"dir:{standin_root}", output=tmp_path / "out")
    assert info.value.exit_code == 2 and not (tmp_path / "out").exists()
    assert info.value.lines() == [
        f"spec.toml:9: models[0].max_queue: max_queue applies to enclave-build's model server "
        f'(tflite, openvino mode "python"); framework {framework}'
        + (' (mode "ovms")' if framework == "openvino" else "")
        + " runs its own server, which queues by its own settings: remove it"
    ]


def test_max_queue_must_be_a_non_negative_integer(tmp_path, monkeypatch, standin_root, signing_key):
    from enclave_build.builder.build import build
    from enclave_build.builder.spec import SpecError

    _project(tmp_path, signing_key, "tflite", queue="-1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        build("spec.toml", base=f"dir:{standin_root}", output=tmp_path / "out")
    assert info.value.lines() == [
        "spec.toml:9: models[0].max_queue: -1 is out of range; allowed: 0 to 65536"
    ]


LIMITS = """
[limits]
max_request_bytes = "10M"
max_grpc_connections = 100
max_connections = 50
body_stall_timeout = 3
drain_seconds = 7
max_response_bytes = "8M"
max_json_bytes = "1M"
min_body_rate = "4K"
"""


def test_limits_section_reaches_model_server_json_and_the_fds_limit(
    tmp_path, standin_root, signing_key
):
    from enclave_build.builder.build import build

    spec = _project(tmp_path, signing_key, "tflite")
    spec.write_text(spec.read_text() + LIMITS)
    result = build(spec, base=f"dir:{standin_root}")
    data = json.loads(
        next(f.data for f in result.artifacts.files if f.dest == "/enclave/model-server.json")
    )
    config = parse_config(data)
    limits = config.limits
    assert (
        limits.max_request_bytes,
        limits.max_grpc_connections,
        limits.max_connections,
        limits.body_stall_timeout,
    ) == (10 << 20, 100, 50, 3)
    assert limits.max_buffered_bytes == 40 << 20  # 4 x max_request_bytes
    assert limits.idle_timeout == 30  # unset: the server's default
    assert (limits.max_response_bytes, limits.max_json_bytes, limits.min_body_rate) == (
        8 << 20,
        1 << 20,
        4 << 10,
    )
    assert config.drain_seconds == 7
    manifest = tomllib.loads(result.artifacts.manifest.decode())
    assert manifest["sys"]["fds"]["limit"] == 50 + 100 + 8 + OWN_FDS


@pytest.mark.parametrize(
    "text, line",
    [
        ('max_request_bytes = "10X"', "'10X' is not a size"),
        ("max_connections = 0", "0 is out of range; allowed: 1 to 65536"),
        ("idle_timeout = 0", "0 is out of range; allowed: 1 to 3600"),
        ("max_conections = 5", "unknown key; did you mean 'max_connections'?"),
        ('max_json_bytes = "4 MB"', "'4 MB' is not a size"),
        ("min_body_rate = 4096", 'expected a size string such as "512M" or "4G"'),
    ],
)
def test_limits_section_errors_are_located(
    tmp_path, monkeypatch, standin_root, signing_key, text, line
):
    from enclave_build.builder.build import build
    from enclave_build.builder.spec import SpecError

    spec = _project(tmp_path, signing_key, "tflite")
    spec.write_text(spec.read_text() + "\n[limits]\n" + text + "\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        build("spec.toml", base=f"dir:{standin_root}", output=tmp_path / "out")
    assert info.value.exit_code == 2 and not (tmp_path / "out").exists()
    assert len(info.value.lines()) == 1 and info.value.lines()[0].startswith(
        "spec.toml:20: limits."
    )
    assert line in info.value.lines()[0]


def test_limits_with_a_binary_server_is_a_located_spec_error(
    tmp_path, monkeypatch, standin_root, signing_key
):
    from enclave_build.builder.build import build
    from enclave_build.builder.spec import SpecError

    spec = _project(tmp_path, signing_key, "tfserving", queue="1")
    text = spec.read_text().replace("max_queue = 1\n", "")
    spec.write_text(text + LIMITS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        build("spec.toml", base=f"dir:{standin_root}", output=tmp_path / "out")
    assert info.value.lines()[0].startswith(
        "spec.toml:18: limits: [limits] sets enclave-build's model server"
    )
