"""Validation patterns match the whole value: a trailing newline (which `$` lets through) is
refused everywhere a name, digest, quantity or address is checked."""

from __future__ import annotations

import json

import pytest

from enclave_build.attestation.measurements import Measurements, MeasurementsError
from enclave_build.attestation.occlum_ra import RaConfig, RaConfigError
from enclave_build.builder.deploy.quantity import cpu_millis, memory_bytes
from enclave_build.builder.errors import UsageError
from enclave_build.builder.image.reference import parse_registry_ref
from enclave_build.builder.occlum import rules
from enclave_build.contract.schema import parse_size

HEX = "ab" * 32
MEASUREMENTS = {
    "service": "s",
    "framework": "tflite",
    "libos": "gramine",
    "mr_enclave": HEX,
    "mr_signer": HEX,
    "isv_prod_id": 0,
    "isv_svn": 0,
    "debug": False,
    "image": {"ref": None, "digest": None},
}


@pytest.mark.parametrize(
    "parse, good", [(parse_size, "8G"), (cpu_millis, "500m"), (memory_bytes, "2Gi")]
)
def test_sizes_and_quantities(parse, good):
    assert parse(good)
    try:
        value = parse(good + "\n")
    except ValueError:
        value = None
    assert value is None, good


@pytest.mark.parametrize("field, value", [("mr_enclave", HEX + "\n"), ("mr_signer", HEX + "\n")])
def test_measurements_json(field, value):
    Measurements.from_dict(MEASUREMENTS)
    with pytest.raises(MeasurementsError):
        Measurements.from_dict({**MEASUREMENTS, field: value})
    with pytest.raises(MeasurementsError):
        Measurements.from_dict(
            {**MEASUREMENTS, "image": {"ref": None, "digest": "sha256:" + HEX + "\n"}}
        )


def test_registry_digest():
    parse_registry_ref(f"registry.example.com/x@sha256:{HEX}")
    with pytest.raises(UsageError):
        parse_registry_ref(f"registry.example.com/x@sha256:{HEX}\n")


def test_occlum_init_ra_server_address():
    with pytest.raises(rules.OcclumRuleError, match="kms_server"):
        rules.check_init_ra_conf(
            {"kms_server": "keys.example.com:4434\n", "kms_keys": [], "ra_config": {}}
        )


def test_occlum_ra_config_measurement():
    entry = {"mr_enclave": HEX + "\n"}
    doc = {
        "verify_mr_enclave": "on",
        "verify_mr_signer": "off",
        "verify_isv_prod_id": "off",
        "verify_isv_svn": "off",
        "verify_config_svn": "off",
        "verify_enclave_debuggable": "off",
        "sgx_mrs": [entry],
    }
    with pytest.raises(RaConfigError, match="is not 64 hex digits"):
        RaConfig.from_dict(json.loads(json.dumps(doc)))


def test_secrets_config_allow_entry(tmp_path):
    from enclave_build.builder.secrets_config import (
        SecretsConfigError,
        ServerSide,
        compose_config,
    )

    (tmp_path / "measurements.json").write_text(json.dumps(MEASUREMENTS))
    key = tmp_path / "k.key"
    key.write_bytes(b"k" * 16)
    key.chmod(0o600)
    (tmp_path / "secrets-policy.toml").write_text(
        'measurements = ["measurements.json"]\nkeys_dir = "."\n[[secrets]]\nname = "k"\n'
        'file = "k.key"\n'
        f'allow = ["{HEX}\\n"]\n'
    )
    with pytest.raises(SecretsConfigError, match="neither a 64-hex MRENCLAVE"):
        compose_config([tmp_path], ServerSide(cert=tmp_path / "tls.crt", key=tmp_path / "tls.key"))
