"""A plain-process simulation serves on 127.0.0.1 unless asked otherwise; inside an enclave
(no ENCLAVE_BUILD_ROOT) the measured configuration's addresses are used as they are."""

from __future__ import annotations

import json

import pytest

from builder.run import runner
from model_server import config as server_config


def _config(tmp_path, **listeners) -> str:
    path = tmp_path / "model-server.json"
    path.write_text(json.dumps({"version": 1, "service": "s", "models": [], **listeners}))
    return str(path)


def test_the_two_sides_name_the_same_variable():
    assert runner.LISTEN_ENV == server_config.LISTEN_ENV
    assert runner.ROOT_ENV == server_config.ROOT_ENV


@pytest.mark.parametrize("simulated", [True, False])
def test_wildcards_become_loopback_only_in_a_plain_process_simulation(tmp_path, monkeypatch,
                                                                      simulated):
    monkeypatch.setenv(server_config.LISTEN_ENV, "127.0.0.1")
    if simulated:
        monkeypatch.setenv(server_config.ROOT_ENV, "/")
    else:
        monkeypatch.delenv(server_config.ROOT_ENV, raising=False)
    path = _config(tmp_path, grpc={"host": "0.0.0.0", "port": 9001},
                   rest={"host": "10.1.2.3", "port": 9002})
    loaded = server_config.load_config(path)   # ROOT_ENV=/ maps image paths to themselves
    assert loaded.grpc.host == ("127.0.0.1" if simulated else "0.0.0.0")
    assert loaded.rest.host == "10.1.2.3"          # an explicit address is left alone
    defaults = server_config.load_config(_config(tmp_path))
    assert defaults.grpc.host == defaults.rest.host == ("127.0.0.1" if simulated else "0.0.0.0")
