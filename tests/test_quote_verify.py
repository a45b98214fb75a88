"""Quote verification: the real SGX quote from ../shared/vectors/quote, and synthetic quotes
through the same dcap-qvl path for every refusal reason."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from enclave_build.attestation.quote import Quote
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.attestation.verify import (
    QuoteRejected,
    TcbPolicy,
    VerifierConfigError,
    load_collateral,
    verify_quote,
)

from .conftest import run_cli, vectors_dir

AT = dt.datetime(2025, 6, 25, tzinfo=dt.UTC)
REAL_STATUS = "ConfigurationAndSWHardeningNeeded"
RELAXED = TcbPolicy(frozenset({"UpToDate", REAL_STATUS}))


@pytest.fixture(scope="module")
def real():
    directory = vectors_dir("quote")
    return (
        (directory / "sgx_quote").read_bytes(),
        load_collateral(directory / "sgx_quote_collateral.json"),
        directory,
    )


def test_real_quote_verifies_with_expected_fields(real):
    quote, collateral, _ = real
    result = verify_quote(quote, collateral, now=AT, policy=RELAXED)
    assert result.status == REAL_STATUS
    assert result.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert result.mr_enclave.startswith("33d8736d") and result.mr_signer.startswith("815f42f1")
    assert (result.isv_prod_id, result.isv_svn, result.debug) == (0, 0, False)


def test_strict_default_refuses_the_real_quotes_tcb_status(real):
    quote, collateral, _ = real
    with pytest.raises(
        QuoteRejected,
        match=f"TCB status {REAL_STATUS} is not allowed "
        r"\(allowed: UpToDate\); advisories INTEL-SA-00289",
    ):
        verify_quote(quote, collateral, now=AT)


def test_every_flipped_byte_of_the_real_quote_is_refused(real):
    quote, collateral, _ = real
    for offset in range(len(quote)):
        tampered = bytearray(quote)
        tampered[offset] ^= 0x01
        with pytest.raises(QuoteRejected):
            verify_quote(bytes(tampered), collateral, now=AT, policy=RELAXED)


def test_real_quote_outside_the_collateral_window_is_refused(real):
    quote, collateral, _ = real
    with pytest.raises(QuoteRejected, match="TCBInfo expired"):
        verify_quote(quote, collateral, now=dt.datetime(2025, 8, 1, tzinfo=dt.UTC), policy=RELAXED)


def test_quote_verify_command(real):
    _, _, directory = real
    args = [
        "quote",
        "verify",
        str(directory / "sgx_quote"),
        "--collateral",
        str(directory / "sgx_quote_collateral.json"),
        "--at",
        "2025-06-25T00:00:00Z",
    ]
    refused = run_cli(*args, "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["verified"] is False
    ok = run_cli(*args, "--allow-tcb-status", REAL_STATUS, "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["verified"] and data["mr_enclave"].startswith("33d8736d")
    assert f"warning: accepting TCB status {REAL_STATUS}".encode() in ok.stderr


# ------------------------------------------------------------------ synthetic PKI


ME, MS = hashlib.sha256(b"enclave").digest(), hashlib.sha256(b"signer").digest()


@pytest.fixture(scope="module")
def pki():
    return SyntheticPKI()


def test_synthetic_quote_verifies_only_under_its_own_root(pki):
    quote = pki.quote(ME, MS, b"data", 3, 4)
    result = verify_quote(quote, pki.collateral_json(), root_ca_der=pki.root_der)
    assert (result.mr_enclave, result.isv_prod_id, result.isv_svn) == (ME.hex(), 3, 4)
    assert result.report_data.startswith(b"data")
    with pytest.raises(QuoteRejected, match="quote verification failed"):
        verify_quote(quote, pki.collateral_json())  # Intel's root: refused
    with pytest.raises(QuoteRejected, match="ends in another root"):
        verify_quote(quote, pki.collateral_json(), root_ca_der=SyntheticPKI().root_der)


def test_tampered_synthetic_quote_is_refused(pki):
    quote = bytearray(pki.quote(ME, MS))
    quote[112] ^= 1  # MRENCLAVE
    with pytest.raises(QuoteRejected, match="signature is invalid"):
        verify_quote(bytes(quote), pki.collateral_json(), root_ca_der=pki.root_der)


def test_debug_enclave_is_refused_and_allowance_cannot_be_honoured(pki):
    with pytest.raises(QuoteRejected, match="DEBUG enclave: refused"):
        verify_quote(pki.quote(ME, MS, debug=True), pki.collateral_json(), root_ca_der=pki.root_der)
    with pytest.raises(VerifierConfigError, match="cannot honour that allowance"):
        TcbPolicy(allow_debug=True)


def test_provision_key_enclave_is_refused(pki):
    quote = pki.quote(ME, MS, flags=0x01 | 0x04 | 0x10)
    with pytest.raises(QuoteRejected, match="PROVISION_KEY"):
        verify_quote(quote, pki.collateral_json(), root_ca_der=pki.root_der)


def test_expired_collateral_is_refused(pki):
    # CRLs and TCB info share the validity window; whichever is checked first says "expired".
    with pytest.raises(QuoteRejected, match=r"(?i)expired"):
        verify_quote(
            pki.quote(ME, MS),
            pki.collateral_json(),
            root_ca_der=pki.root_der,
            now=dt.datetime.now(dt.UTC) + dt.timedelta(days=60),
        )


def test_revoked_pck_is_refused():
    pki = SyntheticPKI(revoke_pck=True)
    with pytest.raises(QuoteRejected, match=r"(?i)revoked"):
        verify_quote(pki.quote(ME, MS), pki.collateral_json(), root_ca_der=pki.root_der)


def test_out_of_date_tcb_needs_explicit_allowance():
    pki = SyntheticPKI(tcb_status="OutOfDate", advisories=("INTEL-SA-00615",))
    quote, collateral = pki.quote(ME, MS), pki.collateral_json()
    with pytest.raises(QuoteRejected, match="TCB status OutOfDate is not allowed"):
        verify_quote(quote, collateral, root_ca_der=pki.root_der)
    allowed = TcbPolicy(frozenset({"UpToDate", "OutOfDate"}))
    assert (
        verify_quote(quote, collateral, root_ca_der=pki.root_der, policy=allowed).status
        == "OutOfDate"
    )
    with pytest.raises(QuoteRejected, match="advisory INTEL-SA-00615 is denied"):
        verify_quote(
            quote,
            collateral,
            root_ca_der=pki.root_der,
            policy=TcbPolicy(
                frozenset({"OutOfDate"}), denied_advisories=frozenset({"INTEL-SA-00615"})
            ),
        )
    with pytest.raises(QuoteRejected, match="not in the allowed advisories"):
        verify_quote(
            quote,
            collateral,
            root_ca_der=pki.root_der,
            policy=TcbPolicy(
                frozenset({"OutOfDate"}), allowed_advisories=frozenset({"INTEL-SA-00289"})
            ),
        )
    assert allowed.relaxations() == ["TCB status OutOfDate allowed"]


def test_truncated_or_extended_quotes_are_refused(pki):
    quote = pki.quote(ME, MS)
    for bad in (quote[:-1], quote + b"\0", quote[:400]):
        with pytest.raises(QuoteRejected, match="malformed quote"):
            verify_quote(bad, pki.collateral_json(), root_ca_der=pki.root_der)


def test_quote_structure_round_trips(pki):
    raw = pki.quote(ME, MS, b"x", 7, 9)
    parsed = Quote.parse(raw)
    assert parsed.raw == raw and parsed.report.isv_prod_id == 7 and parsed.cert_type == 5
    assert len(parsed.pem_chain()) == 3
