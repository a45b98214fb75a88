"""Collateral that does not chain to the trusted root: refused by `secrets config` (exit 2,
naming --root-ca and --collateral and the root to pass), warned about when the secret server
starts, and explained in the refusal a quote gets at run time.

The classic mistake: `secrets simulate-pki`'s collateral with the default root (Intel's); the
server then refused every quote with dcap-qvl's "Failed to parse root CA CRL".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from enclave_build.attestation import collateral_root
from enclave_build.attestation.collateral_root import collateral_root_problem, intel_root_der
from enclave_build.attestation.config import load_config
from enclave_build.attestation.server import startup_warnings
from enclave_build.attestation.synthetic import SyntheticPKI, tls_ca_and_server
from enclave_build.attestation.verify import QuoteRejected, verify_quote_signature
from enclave_build.builder.secrets_config import (
    CollateralRootError,
    ServerSide,
    check_collateral_root,
    compose_config,
)

from .conftest import optional_vectors, run_cli

MEASUREMENTS = (
    '{"service": "alpha", "framework": "tflite", "libos": "gramine", "mr_enclave": '
    f'"{"a" * 64}", "mr_signer": "{"c" * 64}", "isv_prod_id": 1, "isv_svn": 1, '
    '"debug": false, "image": {"ref": "x:1", "digest": null}}'
)


def _intel_collateral() -> str | None:
    vectors = optional_vectors("quote")
    return (vectors / "sgx_quote_collateral.json").read_text() if vectors else None


@pytest.fixture()
def project(tmp_path) -> Path:
    """A build output with one key, a TLS certificate, and a synthetic PKI in pki/."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "measurements.json").write_text(MEASUREMENTS)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k.key").write_bytes(os.urandom(16))
    (keys / "k.key").chmod(0o600)
    (out / "secrets-policy.toml").write_text(
        'measurements = ["measurements.json"]\n'
        'keys_dir = "../keys"\n\n[[secrets]]\nname = "k"\n'
        'file = "../keys/k.key"\nallow = ["alpha"]\n'
    )
    (tmp_path / "tls").mkdir()
    tls_ca_and_server(tmp_path / "tls")
    SyntheticPKI().save(tmp_path / "pki")
    return tmp_path


def _config(project: Path, *extra: str):
    return run_cli(
        "secrets",
        "config",
        str(project / "out"),
        "--cert",
        str(project / "tls/server.crt"),
        "--key",
        str(project / "tls/server.key"),
        "--out",
        str(project / "secrets.toml"),
        *extra,
    )


# --------------------------------------------------------------------------- the CLI


def test_synthetic_collateral_without_root_ca_is_refused(project):
    """Used to exit 0; `run` then failed with "Failed to parse root CA CRL"."""
    proc = _config(project, "--collateral", str(project / "pki/collateral.json"))
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert (
        f"error: --collateral {project}/pki/collateral.json does not chain to --root-ca "
        "intel: its pck_crl_issuer_chain ends in C=US,O=SYNTHETIC TEST" in err
    )
    assert f"pass --root-ca {project}/pki/root.pem from `secrets simulate-pki`" in err
    assert not (project / "secrets.toml").exists()
    ok = _config(
        project,
        "--collateral",
        str(project / "pki/collateral.json"),
        "--root-ca",
        str(project / "pki/root.pem"),
    )
    assert ok.returncode == 0, ok.stderr.decode()
    assert (project / "secrets.toml").is_file()


def test_another_pkis_root_is_refused(project):
    SyntheticPKI().save(project / "other")
    proc = _config(
        project,
        "--collateral",
        str(project / "pki/collateral.json"),
        "--root-ca",
        str(project / "other/root.pem"),
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "--root-ca " in err and "use the root and the collateral of the same PKI" in err
    assert "pass --root-ca and --collateral of the same PKI" in err


def test_intel_collateral_with_a_synthetic_root_is_refused(project):
    intel = _intel_collateral()
    if intel is None:
        pytest.skip("no real collateral in ../shared/vectors/quote")
    (project / "intel.json").write_text(intel)
    proc = _config(
        project,
        "--collateral",
        str(project / "intel.json"),
        "--root-ca",
        str(project / "pki/root.pem"),
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "ends in C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA" in err
    assert "leave out --root-ca to trust Intel's root" in err


def test_intel_collateral_with_intels_root_is_accepted(project):
    intel = _intel_collateral()
    if intel is None:
        pytest.skip("no real collateral in ../shared/vectors/quote")
    (project / "intel.json").write_text(intel)
    check_collateral_root(project / "intel.json")  # --root-ca intel: no error


def test_unreadable_collateral_is_refused(project):
    (project / "bad.json").write_text("{not json")
    with pytest.raises(CollateralRootError, match="the collateral cannot be read"):
        compose_config(
            [project / "out"],
            ServerSide(
                project / "tls/server.crt",
                project / "tls/server.key",
                collateral=project / "bad.json",
            ),
        )


# --------------------------------------------------------------------------- run time


def test_a_quote_refused_for_that_reason_says_so():
    """dcap-qvl's own message, plus what to change."""
    pki = SyntheticPKI()
    quote = pki.quote(b"\x11" * 32, b"\x22" * 32)
    verify_quote_signature(quote, pki.collateral_json(), root_ca_der=pki.root_der)
    with pytest.raises(QuoteRejected) as caught:
        verify_quote_signature(quote, pki.collateral_json())  # Intel's root
    message = str(caught.value)
    assert message.startswith("quote verification failed: ")
    assert (
        "(the collateral does not chain to the trusted root: its pck_crl_issuer_chain "
        "ends in C=US,O=SYNTHETIC TEST" in message
    )
    assert "`secrets config --root-ca PKI_DIR/root.pem`, [attestation] root_ca" in message


def test_other_refusals_carry_no_root_hint():
    pki = SyntheticPKI()
    quote = bytearray(pki.quote(b"\x11" * 32, b"\x22" * 32))
    quote[120] ^= 1  # the ISV report no longer matches
    with pytest.raises(QuoteRejected) as caught:
        verify_quote_signature(bytes(quote), pki.collateral_json(), root_ca_der=pki.root_der)
    assert "does not chain" not in str(caught.value)


def test_the_secret_server_warns_at_start(project):
    assert (
        _config(
            project,
            "--collateral",
            str(project / "pki/collateral.json"),
            "--root-ca",
            str(project / "pki/root.pem"),
        ).returncode
        == 0
    )
    config = load_config(project / "secrets.toml")
    assert not [w for w in startup_warnings(config) if "does not chain" in w]
    # The operator later swaps the PKI directory for another one.
    SyntheticPKI().save(project / "pki", overwrite=True)
    root = SyntheticPKI()
    (project / "pki/root.pem").write_bytes(root.root_pem)
    warned = [
        w for w in startup_warnings(load_config(project / "secrets.toml")) if "does not chain" in w
    ]
    assert len(warned) == 1 and "every quote will be refused" in warned[0]


# --------------------------------------------------------------------------- the check itself


def test_intels_root_here_is_the_one_dcap_qvl_trusts():
    import dcap_qvl

    library = next(Path(dcap_qvl.__file__).parent.glob("_dcap_qvl*.so"))
    assert intel_root_der() in library.read_bytes()


def test_real_collateral_chains_to_intels_root():
    intel = _intel_collateral()
    if intel is None:
        pytest.skip("no real collateral in ../shared/vectors/quote")
    assert collateral_root_problem(intel, None) is None
    data = json.loads(intel)
    tampered = json.dumps(
        {**data, "tcb_info": data["tcb_info"].replace('"version":3', '"version":4')}
    )
    assert collateral_root_problem(tampered, None) == (
        "its tcb_info is not signed by the first certificate of tcb_info_issuer_chain"
    )


def test_each_part_of_a_synthetic_collateral_is_checked():
    pki, other = SyntheticPKI(), SyntheticPKI()
    good = json.loads(pki.collateral_json())
    foreign = json.loads(other.collateral_json())
    assert collateral_root_problem(json.dumps(good), pki.root_der) is None
    cases = {
        "root_ca_crl": "its root_ca_crl is not signed by the trusted root",
        "pck_crl": "its pck_crl is not signed by the first certificate",
        "qe_identity_signature": "its qe_identity is not signed",
    }
    for key, words in cases.items():
        mixed = json.dumps({**good, key: foreign[key]})
        assert words in collateral_root_problem(mixed, pki.root_der), key
    # a chain whose first certificate is another PKI's, over this PKI's root
    chain = (
        foreign["tcb_info_issuer_chain"].split("-----END CERTIFICATE-----")[0]
        + "-----END CERTIFICATE-----\n"
        + good["tcb_info_issuer_chain"].split("-----END CERTIFICATE-----\n", 1)[1]
    )
    assert "its tcb_info_issuer_chain does not verify" in collateral_root_problem(
        json.dumps({**good, "tcb_info_issuer_chain": chain}), pki.root_der
    )
    assert collateral_root.synthetic_root_beside(Path("/nonexistent/collateral.json")) is None
