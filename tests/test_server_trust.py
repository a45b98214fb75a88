"""[secrets] server_measurements: spec checks, the plan and model-server configuration it
produces, the configuration's parser, and the in-enclave verifier (model_server.server_attest)
against certificates made with a synthetic PKI. Fast: no builds; two tests (a PCCS stand-in on
127.0.0.1, an import check in a subprocess) are marked integration."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.ratls import server_certificate
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.builder.build import load, make_plan
from enclave_build.builder.server_trust import (
    TRUST_COLLATERAL,
    TRUST_ROOT,
    RelaxedServerTcbWarning,
    SyntheticServerRootWarning,
)
from enclave_build.builder.spec import SpecError
from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.model_server.config import ConfigError, ServerTrustConfig, parse_config
from enclave_build.model_server.server_attest import ServerRefused, ServerVerifier
from enclave_build.plugin import SERVER_CONFIG

from .conftest import tflite_bytes

SIGNER = "5a" * 32
SERVER_ENCLAVE = "c3" * 32


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[SyntheticPKI, Path]:
    directory = tmp_path_factory.mktemp("pki")
    made = SyntheticPKI()
    made.save(directory)
    return made, directory


def _measurements(
    path: Path, *, framework="secret-server", debug=False, mr_enclave=SERVER_ENCLAVE, svn=2
) -> Path:
    path.write_text(
        Measurements(
            "keys",
            framework,
            "gramine",
            EnclaveIdentity(mr_enclave, SIGNER, 5, svn, debug),
            ImageRef("keys:1", None),
        ).to_json()
    )
    return path


@pytest.fixture(autouse=True)
def _signing_key(tmp_path, signing_key):
    (tmp_path / "key.pem").write_bytes(signing_key.read_bytes())


def _spec(tmp_path: Path, secrets: str, *, framework="tflite", section="") -> Path:
    (tmp_path / "model.tflite").write_bytes(tflite_bytes(bytes(60)))
    spec = tmp_path / "spec.toml"
    spec.write_text(f'''[service]
name = "svc"
framework = "{framework}"

[[models]]
name = "m"
path = "model.tflite"
encrypt = true

[enclave]
size = "2G"
max_threads = 16

[secrets]
server = "keys.example.com:4433"
keys_dir = "wrap-keys"
{secrets}
[signing]
key = "key.pem"
{section}''')
    return spec


def _trust(tmp_path: Path, pki_dir: Path, **extra: str) -> str:
    _measurements(tmp_path / "server.json")
    lines = {
        "server_measurements": '["server.json"]',
        "server_root_ca": f'"{pki_dir / "root.pem"}"',
        "server_collateral": f'"{pki_dir / "collateral.json"}"',
    }
    lines.update(extra)
    return "".join(f"{k} = {v}\n" for k, v in lines.items() if v is not None)


def _errors(spec: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(spec)
    return info.value.lines()


# --------------------------------------------------------------------------- spec


def test_ca_and_server_measurements_are_exclusive(tmp_path, pki):
    (tmp_path / "ca.pem").write_bytes(pki[0].root_pem)
    spec = _spec(tmp_path, 'ca = "ca.pem"\n' + _trust(tmp_path, pki[1]))
    assert _errors(spec) == [
        f"{spec}:18: secrets.server_measurements: give either ca (the "
        "secret server has a CA-signed certificate) or server_measurements "
        "(it is an attested enclave with an RA-TLS certificate), not both"
    ]


def test_neither_ca_nor_server_measurements(tmp_path):
    spec = _spec(tmp_path, "")
    assert any("secrets.ca: required with secrets.server" in e for e in _errors(spec))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"framework": "tflite"},
            "is not a secret server; name the measurements.json of a "
            'framework = "secret-server" build',
        ),
        ({"debug": True}, "is a DEBUG enclave"),
    ],
)
def test_server_measurements_must_be_a_non_debug_secret_server(tmp_path, pki, kwargs, message):
    spec = _spec(tmp_path, _trust(tmp_path, pki[1]))
    _measurements(tmp_path / "server.json", **kwargs)
    errors = _errors(spec)
    assert len(errors) == 1 and errors[0].startswith(
        f"{spec}:17: secrets.server_measurements[0]: {tmp_path / 'server.json'}: "
    ), errors
    assert message in errors[0]


def test_missing_measurements_file(tmp_path, pki):
    spec = _spec(tmp_path, _trust(tmp_path, pki[1], server_measurements='["nope.json"]'))
    (error,) = _errors(spec)
    assert error.startswith(
        f"{spec}:17: secrets.server_measurements[0]: "
        f"{tmp_path / 'nope.json'}: not a usable measurements.json"
    )


@pytest.mark.parametrize(
    "extra, key, message",
    [
        (
            {"server_collateral": None},
            "secrets.server_collateral",
            "give exactly one of server_collateral (a file, measured) and server_pccs_url",
        ),
        (
            {"server_pccs_url": '"https://pccs.example:8081/sgx/certification/v4/"'},
            "secrets.server_collateral",
            "give exactly one of server_collateral",
        ),
        (
            {"server_pccs_url": '"pccs.example"', "server_collateral": None},
            "secrets.server_pccs_url",
            "'pccs.example' is not allowed; allowed: an http(s) URL",
        ),
        (
            {"server_pin": '"mr_sign"'},
            "secrets.server_pin",
            "'mr_sign' is not allowed; did you mean 'mr_signer'? allowed: mr_enclave, mr_signer",
        ),
        ({"server_root_ca": '"missing.pem"'}, "secrets.server_root_ca", "cannot read"),
        ({"server_root_ca": '"server.json"'}, "secrets.server_root_ca", "not a PEM certificate"),
        (
            {"server_allowed_tcb_statuses": '["UpToDate", "Fine"]'},
            "secrets.server_allowed_tcb_statuses[1]",
            "'Fine'; allowed: UpToDate, SWHardeningNeeded",
        ),
    ],
)
def test_server_trust_key_errors(tmp_path, pki, extra, key, message):
    spec = _spec(tmp_path, _trust(tmp_path, pki[1], **extra))
    errors = _errors(spec)
    assert len(errors) == 1 and f" {key}: " in errors[0] and message in errors[0], errors
    assert re.match(rf"{re.escape(str(spec))}:(1[4-9]|2[0-2]): ", errors[0]), errors  # [secrets]


def test_server_keys_only_with_server_measurements(tmp_path, pki):
    (tmp_path / "ca.pem").write_bytes(pki[0].root_pem)
    spec = _spec(tmp_path, 'ca = "ca.pem"\nserver_pin = "mr_signer"\n')
    assert _errors(spec) == [
        f"{spec}:18: secrets.server_pin: only with "
        "secrets.server_measurements (an attested secret server)"
    ]


def test_occlum_uses_its_own_server_measurements(tmp_path, pki):
    spec = _spec(tmp_path, _trust(tmp_path, pki[1]))
    spec.write_text(
        spec.read_text().replace('framework = "tflite"', 'framework = "tflite"\nlibos = "occlum"')
    )
    assert any(
        "secrets.server_measurements: on Occlum the libOS's init fetches the keys and "
        "verifies the server itself: use [occlum] server_measurements" in e
        for e in _errors(spec)
    )


def test_constructor_frameworks_are_refused(tmp_path, pki):
    spec = _spec(tmp_path, _trust(tmp_path, pki[1]), framework="tfserving")
    (tmp_path / "model.tflite").unlink()
    (tmp_path / "model.tflite").mkdir()
    (tmp_path / "model.tflite" / "saved_model.pb").write_bytes(b"\x08\x01")
    loaded, registry = load(spec)
    with pytest.raises(
        SpecError,
        match=r"secrets.server_measurements: framework 'tfserving' "
        r"gets its keys from Gramine's provisioning constructor",
    ):
        make_plan(loaded, registry)


# --------------------------------------------------------------------------- plan / config


def _plan_config(spec: Path):
    loaded, registry = load(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = make_plan(loaded, registry)
    config = next(json.loads(f.data or b"") for f in plan.image_files() if f.dest == SERVER_CONFIG)
    return plan, config, caught


def test_plan_ships_the_expected_identity_and_trusted_inputs(tmp_path, pki):
    spec = _spec(tmp_path, _trust(tmp_path, pki[1], server_pin='"mr_signer"'))
    _measurements(tmp_path / "later.json", mr_enclave="d4" * 32)  # same signer, later build
    spec.write_text(spec.read_text().replace('["server.json"]', '["server.json", "later.json"]'))
    plan, config, caught = _plan_config(spec)
    keys = config["keys"]
    assert "ca" not in keys
    assert keys["server_identity"] == {
        "pin": "mr_signer",
        "builds": [{"mr_signer": SIGNER, "isv_prod_id": 5, "isv_svn": 2, "debug": False}],
        "root_ca": TRUST_ROOT,
        "collateral": TRUST_COLLATERAL,
        "pccs_url": None,
        "allowed_tcb_statuses": ["UpToDate"],
    }
    trusted = {f.dest: f.source for f in plan.files if f.kind.name == "TRUSTED"}
    assert trusted[TRUST_ROOT] == pki[1] / "root.pem"
    assert trusted[TRUST_COLLATERAL] == pki[1] / "collateral.json"
    assert "dcap-qvl" in plan.python.distributions
    assert any(d.endswith("/attestation/verify.py") for d in trusted)
    assert [w for w in caught if issubclass(w.category, SyntheticServerRootWarning)]
    # Parsed by the model server as it will be inside the enclave.
    parsed = parse_config(config).keys.server_identity
    assert parsed == ServerTrustConfig(
        "mr_signer",
        (EnclaveIdentity(None, SIGNER, 5, 2),),
        TRUST_ROOT,
        TRUST_COLLATERAL,
        None,
        ("UpToDate",),
    )


def test_mr_enclave_pin_with_intel_root_and_pccs(tmp_path, pki):
    url = "https://pccs.example:8081/sgx/certification/v4/"
    spec = _spec(
        tmp_path,
        _trust(
            tmp_path,
            pki[1],
            server_root_ca=None,
            server_collateral=None,
            server_pccs_url=f'"{url}"',
            server_allowed_tcb_statuses='["UpToDate", "SWHardeningNeeded"]',
        ),
    )
    plan, config, caught = _plan_config(spec)
    identity = config["keys"]["server_identity"]
    assert identity["pin"] == "mr_enclave" and identity["root_ca"] == "intel"
    assert identity["builds"][0]["mr_enclave"] == SERVER_ENCLAVE
    assert identity["pccs_url"] == "https://pccs.example:8081/sgx/certification/v4/"
    assert identity["collateral"] is None
    assert identity["allowed_tcb_statuses"] == ["UpToDate", "SWHardeningNeeded"]
    assert not any(f.dest.startswith("/enclave/secret-server-trust/") for f in plan.files)
    assert not [w for w in caught if issubclass(w.category, SyntheticServerRootWarning)]
    assert [w for w in caught if issubclass(w.category, RelaxedServerTcbWarning)]


def test_ca_mode_is_unchanged(tmp_path, pki):
    (tmp_path / "ca.pem").write_bytes(pki[0].root_pem)
    plan, config, _ = _plan_config(_spec(tmp_path, 'ca = "ca.pem"\n'))
    assert set(config["keys"]) == {"server", "ca", "names", "timeout_seconds", "evidence"}
    assert "dcap-qvl" not in plan.python.distributions
    assert plan.secrets.server_trust is None and plan.secrets.ca_cert == tmp_path / "ca.pem"


# --------------------------------------------------------------------------- config parser


def _keys_config(identity: dict) -> dict:
    return {
        "version": 1,
        "models": [],
        "keys": {"server": "h:1", "names": ["k"], "server_identity": identity},
    }


GOOD_IDENTITY = {
    "pin": "mr_signer",
    "builds": [{"mr_signer": SIGNER, "isv_prod_id": 1, "isv_svn": 0, "debug": False}],
    "root_ca": "intel",
    "collateral": None,
    "pccs_url": "https://pccs:8081/",
    "allowed_tcb_statuses": ["UpToDate"],
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pin": "any"}, "server_identity.pin: 'any'"),
        ({"builds": []}, "server_identity.builds: expected a non-empty array"),
        (
            {
                "builds": [
                    {
                        "mr_signer": SIGNER,
                        "isv_prod_id": 1,
                        "isv_svn": 0,
                        "mr_enclave": SERVER_ENCLAVE,
                    }
                ]
            },
            'mr_enclave: not with pin "mr_signer"',
        ),
        ({"pin": "mr_enclave"}, "mr_enclave: expected 64 lower-case hex digits"),
        (
            {"builds": [{"mr_signer": SIGNER, "isv_prod_id": 1, "isv_svn": 0, "debug": True}]},
            "debug: must be false",
        ),
        (
            {"builds": [{"mr_signer": "x", "isv_prod_id": 1, "isv_svn": 0}]},
            "builds[0].mr_signer: 'x' is not allowed; allowed: 64 lower-case hex digits",
        ),
        (
            {"builds": [{"mr_signer": SIGNER, "isv_prod_id": 70000, "isv_svn": 0}]},
            "isv_prod_id: 70000 is out of range; allowed: 0 to 65535",
        ),
        ({"collateral": "/c.json"}, "give exactly one of collateral and pccs_url"),
        (
            {"root_ca": "root.pem"},
            "root_ca: 'root.pem' is not allowed; allowed: \"intel\" or the absolute image path",
        ),
        (
            {"allowed_tcb_statuses": ["Good"]},
            "allowed_tcb_statuses[0]: 'Good' is not allowed; allowed: UpToDate, ",
        ),
        ({"allowed_tcb_statuses": []}, "allowed_tcb_statuses: expected a non-empty array"),
        ({"extra": 1}, "server_identity.extra: unknown key"),
    ],
)
def test_config_refuses_bad_server_identity(change, message):
    with pytest.raises(ConfigError, match=None) as info:
        parse_config(_keys_config({**GOOD_IDENTITY, **change}))
    assert message in str(info.value)


def test_config_refuses_ca_next_to_server_identity():
    data = _keys_config(GOOD_IDENTITY)
    data["keys"]["ca"] = "/ca.pem"
    with pytest.raises(ConfigError, match="give ca or server_identity, not both"):
        parse_config(data)


# --------------------------------------------------------------------------- verifier


def _server_cert(
    pki: SyntheticPKI, *, mr_enclave=SERVER_ENCLAVE, signer=SIGNER, prod=5, svn=2
) -> bytes:
    pem, _ = server_certificate(
        "dice",
        lambda rd: pki.quote(bytes.fromhex(mr_enclave), bytes.fromhex(signer), rd, prod, svn),
    )
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _verifier(
    pki_dir: Path,
    pin: str,
    builds: tuple[EnclaveIdentity, ...],
    root=True,
    root_pem: Path | None = None,
) -> ServerVerifier:
    return ServerVerifier(
        ServerTrustConfig(
            pin,
            builds,
            str(root_pem or pki_dir / "root.pem") if root else None,
            str(pki_dir / "collateral.json"),
            None,
            ("UpToDate",),
        )
    )


def test_verifier_signer_pin_accepts_later_builds_and_refuses_rollback(pki):
    made, directory = pki
    verifier = _verifier(directory, "mr_signer", (EnclaveIdentity(None, SIGNER, 5, 2),))
    ok = verifier.check(_server_cert(made, mr_enclave="e5" * 32, svn=3), "s:1")
    assert ok.mr_enclave == "e5" * 32 and ok.evidence_format == "tcg-dice"
    with pytest.raises(ServerRefused, match="isv_svn expected at least 2, server has 1"):
        verifier.check(_server_cert(made, svn=1), "s:1")
    with pytest.raises(ServerRefused, match="isv_prod_id expected 5, server has 6"):
        verifier.check(_server_cert(made, prod=6), "s:1")
    with pytest.raises(ServerRefused, match=f"mr_signer expected {SIGNER}, server has {'6b' * 32}"):
        verifier.check(_server_cert(made, signer="6b" * 32), "s:1")


def test_verifier_enclave_pin_names_every_differing_field(pki):
    made, directory = pki
    verifier = _verifier(
        directory, "mr_enclave", (EnclaveIdentity(SERVER_ENCLAVE, SIGNER, 5, 2, False),)
    )
    assert verifier.check(_server_cert(made), "s:1").mr_enclave == SERVER_ENCLAVE
    with pytest.raises(ServerRefused) as info:
        verifier.check(_server_cert(made, mr_enclave="e5" * 32, svn=3), "s:1")
    text = str(info.value)
    assert f"mr_enclave expected {SERVER_ENCLAVE}, server has {'e5' * 32}" in text
    assert "isv_svn expected 2, server has 3" in text and "pin mr_enclave" in text


def test_verifier_refuses_a_quote_from_another_root(pki, tmp_path):
    other = SyntheticPKI()
    other.save(tmp_path / "other")
    verifier = _verifier(pki[1], "mr_signer", (EnclaveIdentity(None, SIGNER, 5, 2),))
    with pytest.raises(ServerRefused, match="its quote does not verify"):
        verifier.check(_server_cert(other), "s:1")


def test_verifier_with_intel_root_refuses_synthetic_quotes(pki):
    verifier = _verifier(pki[1], "mr_signer", (EnclaveIdentity(None, SIGNER, 5, 2),), root=False)
    with pytest.raises(ServerRefused, match="its quote does not verify"):
        verifier.check(_server_cert(pki[0]), "s:1")


def test_verifier_refuses_an_ordinary_certificate(pki):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keys.example.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    verifier = _verifier(pki[1], "mr_signer", (EnclaveIdentity(None, SIGNER, 5, 2),))
    with pytest.raises(ServerRefused, match="not a secret server running in an enclave"):
        verifier.check(cert.public_bytes(serialization.Encoding.DER), "s:1")


@pytest.mark.integration  # a local HTTP server / a subprocess
def test_verifier_fetches_collateral_from_a_pccs_once(pccs, tmp_path):
    """The in-enclave PCCS path (attestation.collateral's client, a private cache)."""
    url, made, hits = pccs
    (tmp_path / "root.pem").write_bytes(made.root_pem)  # the stand-in PCCS's synthetic PKI
    verifier = ServerVerifier(
        ServerTrustConfig(
            "mr_signer",
            (EnclaveIdentity(None, SIGNER, 5, 2),),
            str(tmp_path / "root.pem"),
            None,
            url,
            ("UpToDate",),
        )
    )
    assert verifier.check(_server_cert(made), "s:1").mr_signer == SIGNER
    fetched = len(hits)
    assert fetched >= 4
    verifier.check(_server_cert(made, mr_enclave="e5" * 32), "s:1")
    assert len(hits) == fetched  # one fetch per process


@pytest.mark.integration  # a local HTTP server / a subprocess
def test_verifier_modules_import_no_builder_and_no_pyopenssl():
    """What the model server imports to verify a server runs in the image: no builder, no
    pyOpenSSL (dcap-qvl and cryptography come from the base)."""
    code = (
        "import sys, enclave_build.model_server.keys, enclave_build.model_server.server_attest, "
        "enclave_build.attestation.collateral, enclave_build.attestation.verify, "
        "enclave_build.attestation.ratls; print(sorted({m for m in sys.modules "
        "if m.startswith('enclave_build.builder') or m.split('.')[0] == 'OpenSSL'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.filterwarnings("ignore::enclave_build.builder.server_trust.SyntheticServerRootWarning")
def test_signer_pin_refuses_a_server_with_the_models_own_signer_and_product_id(tmp_path, pki):
    """Else any build of the model itself (same key, same product id) would pass as the
    secret server."""
    import hashlib

    key = serialization.load_pem_private_key((tmp_path / "key.pem").read_bytes(), None)
    own = hashlib.sha256(key.public_key().public_numbers().n.to_bytes(384, "little")).hexdigest()
    spec = _spec(tmp_path, _trust(tmp_path, pki[1], server_pin='"mr_signer"'))
    (tmp_path / "server.json").write_text(
        Measurements(
            "keys",
            "secret-server",
            "gramine",
            EnclaveIdentity(SERVER_ENCLAVE, own, 5, 0, False),
            ImageRef(None, None),
        ).to_json()
    )
    loaded, registry = load(spec)
    plan_ok = make_plan(loaded, registry)  # product ids differ (model 0, server 5)
    assert plan_ok.secrets.server_trust.identities[0].mr_signer == own
    spec.write_text(
        spec.read_text().replace("max_threads = 16", "max_threads = 16\nisv_prod_id = 5")
    )
    loaded, registry = load(spec)
    with pytest.raises(
        SpecError,
        match=r"secrets.server_measurements\[0\]: that secret server "
        r"has this enclave's own MRSIGNER and isv_prod_id \(5\)",
    ):
        make_plan(loaded, registry)


def test_a_string_instead_of_an_array_is_one_error(tmp_path, pki):
    spec = _spec(tmp_path, _trust(tmp_path, pki[1], server_measurements='"server.json"'))
    assert _errors(spec) == [
        f"{spec}:17: secrets.server_measurements: expected an array of "
        "strings, got string 'server.json'"
    ]
