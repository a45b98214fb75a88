"""A plain-process simulation serves on 127.0.0.1 unless asked otherwise; inside an enclave
(no ENCLAVE_BUILD_ROOT) the measured configuration's addresses are used as they are."""

from __future__ import annotations

import json
import os

import pytest

from enclave_build.builder.run import runner
from enclave_build.model_server import config as server_config


def _config(tmp_path, **listeners) -> str:
    path = tmp_path / "model-server.json"
    path.write_text(json.dumps({"version": 1, "service": "s", "models": [], **listeners}))
    return str(path)


def test_the_two_sides_name_the_same_variable():
    assert runner.LISTEN_ENV == server_config.LISTEN_ENV
    assert runner.ROOT_ENV == server_config.ROOT_ENV


@pytest.mark.parametrize("simulated", [True, False])
def test_wildcards_become_loopback_only_in_a_plain_process_simulation(
    tmp_path, monkeypatch, simulated
):
    monkeypatch.setenv(server_config.LISTEN_ENV, "127.0.0.1")
    if simulated:
        monkeypatch.setenv(server_config.ROOT_ENV, "/")
    else:
        monkeypatch.delenv(server_config.ROOT_ENV, raising=False)
    path = _config(
        tmp_path, grpc={"host": "0.0.0.0", "port": 9001}, rest={"host": "10.1.2.3", "port": 9002}
    )
    loaded = server_config.load_config(path)  # ROOT_ENV=/ maps image paths to themselves
    assert loaded.grpc.host == ("127.0.0.1" if simulated else "0.0.0.0")
    assert loaded.rest.host == "10.1.2.3"  # an explicit address is left alone
    defaults = server_config.load_config(_config(tmp_path))
    assert defaults.grpc.host == defaults.rest.host == ("127.0.0.1" if simulated else "0.0.0.0")


# --- the secret-server framework's launcher (plain-process `run --simulate` of its image) ---

SECRETS_TOML = """# The secret server's configuration (measured), written by enclave-build.
measurements = []

[server]
listen = "0.0.0.0:4433"
identity = "ratls"

[grsecret]
listen = "0.0.0.0:4434"
"""


def _launcher():
    from enclave_build.plugins.secret_server import launcher

    return launcher


def test_secret_server_launcher_names_the_runners_variables():
    launcher = _launcher()
    assert launcher.LISTEN_ENV == runner.LISTEN_ENV and launcher.ROOT_ENV == runner.ROOT_ENV


@pytest.mark.parametrize("simulated", [True, False])
def test_secret_server_serves_loopback_only_in_a_plain_process_simulation(
    tmp_path, monkeypatch, simulated
):
    import tomllib

    launcher = _launcher()
    monkeypatch.setenv(runner.LISTEN_ENV, "127.0.0.1")
    if simulated:
        monkeypatch.setenv(runner.ROOT_ENV, str(tmp_path))
    else:
        monkeypatch.delenv(runner.ROOT_ENV, raising=False)
    config = tmp_path / "secrets.toml"
    config.write_text(SECRETS_TOML)
    served = launcher.simulation_config(str(config))
    assert config.read_text() == SECRETS_TOML  # the measured file is never changed
    data = tomllib.loads(open(served).read())
    if simulated:
        assert served != str(config) and os.path.dirname(served) == str(tmp_path)
        assert data["server"]["listen"] == "127.0.0.1:4433"
        assert data["grsecret"]["listen"] == "127.0.0.1:4434"
        # everything else is the measured configuration's
        data["server"]["listen"], data["grsecret"]["listen"] = "0.0.0.0:4433", "0.0.0.0:4434"
        assert data == tomllib.loads(SECRETS_TOML)
    else:
        assert served == str(config)


def test_secret_server_explicit_address_kept_and_odd_layout_refused(tmp_path, monkeypatch):
    launcher = _launcher()
    monkeypatch.setenv(runner.LISTEN_ENV, "127.0.0.1")
    monkeypatch.setenv(runner.ROOT_ENV, str(tmp_path))
    config = tmp_path / "secrets.toml"
    config.write_text(
        SECRETS_TOML.replace("0.0.0.0:4433", "10.1.2.3:4433").replace(
            '[grsecret]\nlisten = "0.0.0.0:4434"\n', ""
        )
    )
    assert launcher.simulation_config(str(config)) == str(config)  # nothing to restrict
    # a wildcard the line rewrite cannot reach (inline table): refused, never served on it
    config.write_text('measurements = []\nserver = { listen = "0.0.0.0:4433" }\n')
    with pytest.raises(launcher.SimulationConfigError, match="--listen-all"):
        launcher.simulation_config(str(config))
