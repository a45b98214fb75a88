"""`enclave-build secrets config`: builds' policy fragments merged into a valid secrets.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from attestation.config import load_config
from attestation.synthetic import SyntheticPKI, tls_ca_and_server
from builder.errors import UsageError
from builder.secrets_config import (SecretsConfigError, ServerSide, compose_config,
                                    merge_fragments, write_config)

from .conftest import run_cli

MEASUREMENTS = ('{"service": "%s", "framework": "tflite", "libos": "gramine", "mr_enclave": "%s",'
                ' "mr_signer": "%s", "isv_prod_id": 1, "isv_svn": 1, "debug": false,'
                ' "image": {"ref": "x:1", "digest": null}}')


def _build(root: Path, service: str, secrets: dict[str, str]) -> Path:
    out = root / service
    out.mkdir(parents=True)
    (out / "measurements.json").write_text(MEASUREMENTS % (service, service[0] * 64, "c" * 64))
    text = 'measurements = ["measurements.json"]\n'
    for name, file in secrets.items():
        text += f'\n[[secrets]]\nname = "{name}"\nfile = "{file}"\nallow = ["{service}"]\n'
    (out / "secrets-policy.toml").write_text(text)
    return out


@pytest.fixture()
def server_side(tmp_path) -> ServerSide:
    pki = SyntheticPKI()
    pki.save(tmp_path / "pki")
    (tmp_path / "tls").mkdir()
    _, cert, key = tls_ca_and_server(tmp_path / "tls")
    return ServerSide(cert=cert, key=key, listen="127.0.0.1:4433",
                      root_ca=str(tmp_path / "pki" / "root.pem"),
                      collateral=tmp_path / "pki" / "collateral.json")


def test_fragments_merge_with_absolute_paths_and_load(tmp_path, server_side):
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("a-key", "b-key", "shared-key"):
        (keys / f"{name}.key").write_bytes(bytes(16))
    a = _build(tmp_path / "builds", "alpha", {"a-key": str(keys / "a-key.key"),
                                              "shared-key": str(keys / "shared-key.key")})
    b = _build(tmp_path / "builds", "beta", {"b-key": "../../keys/b-key.key",
                                             "shared-key": str(keys / "shared-key.key")})
    config = compose_config([a, b / "secrets-policy.toml"], server_side)
    assert config["measurements"] == [str(a / "measurements.json"), str(b / "measurements.json")]
    rules = {r["name"]: r for r in config["secrets"]}
    assert rules["b-key"]["file"] == str((keys / "b-key.key").resolve())
    assert rules["shared-key"]["allow"] == ["alpha", "beta"]  # one key, two services
    target = write_config(tmp_path / "srv" / "secrets.toml", config)
    loaded = load_config(target)
    assert sorted(s.name for s in loaded.secrets) == ["a-key", "b-key", "shared-key"]
    assert tomllib.loads(target.read_text())["server"]["listen"] == "127.0.0.1:4433"
    with pytest.raises(UsageError, match="exists"):
        write_config(target, config)


def test_conflicting_rules_and_bad_fragments_are_refused(tmp_path, server_side):
    a = _build(tmp_path, "alpha", {"k": "/keys/one.key"})
    b = _build(tmp_path, "beta", {"k": "/keys/two.key"})
    with pytest.raises(SecretsConfigError, match="secret 'k' differs"):
        merge_fragments([a, b])
    with pytest.raises(UsageError, match="no such policy fragment"):
        merge_fragments([tmp_path / "nothing-here"])
    (tmp_path / "bad.toml").write_text("[server]\nlisten = 1\n")
    with pytest.raises(SecretsConfigError, match="not part of a policy fragment"):
        merge_fragments([tmp_path / "bad.toml"])


def test_invalid_result_is_never_written(tmp_path, server_side):
    a = _build(tmp_path, "alpha", {"k": str(tmp_path / "missing.key")})
    config = compose_config([a], server_side)
    with pytest.raises(SecretsConfigError, match="not valid"):
        write_config(tmp_path / "secrets.toml", config)
    assert not (tmp_path / "secrets.toml").exists()
    assert not list(tmp_path.glob(".secrets.toml.*"))


def test_cli(tmp_path, server_side):
    (tmp_path / "k.key").write_bytes(bytes(16))
    a = _build(tmp_path, "alpha", {"k": str(tmp_path / "k.key")})
    proc = run_cli("secrets", "config", str(a), "--cert", str(server_side.cert), "--key",
                   str(server_side.key), "--root-ca", server_side.root_ca, "--collateral",
                   str(server_side.collateral), "--out", str(tmp_path / "s.toml"))
    assert proc.returncode == 0, proc.stderr
    assert b"1 secret(s) for 1 build(s)" in proc.stdout
    assert load_config(tmp_path / "s.toml").secrets[0].name == "k"
    both = run_cli("secrets", "config", str(a), "--cert", str(server_side.cert), "--key",
                   str(server_side.key), "--out", str(tmp_path / "t.toml"))
    assert both.returncode == 2
    assert b"exactly one of --collateral FILE and --pccs-url URL" in both.stderr
