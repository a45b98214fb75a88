"""The simulated quoter (64 bytes in, 4-byte length + quote out) and the persistent synthetic
PKI behind it (`SyntheticPKI.save/load`, `enclave-build secrets simulate-pki`)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.simulated_quoter import (
    WARNING,
    QuoterError,
    SimulatedQuoter,
    request_quote,
)
from enclave_build.attestation.synthetic import PKIError, SyntheticPKI
from enclave_build.attestation.verify import QuoteRejected, verify_quote
from enclave_build.contract.identity import EnclaveIdentity

from .conftest import run_cli

pytestmark = pytest.mark.integration

MEASURED = Measurements(
    "face",
    "tflite",
    "gramine",
    EnclaveIdentity(
        hashlib.sha256(b"me").hexdigest(), hashlib.sha256(b"ms").hexdigest(), 3, 7, False
    ),
    ImageRef(None, None),
)


@pytest.fixture(scope="module")
def pki():
    return SyntheticPKI()


@pytest.fixture
def quoter(pki):
    q = SimulatedQuoter(pki, MEASURED, warn=False, timeout=2.0, max_connections=2)
    q.start()
    yield q
    q.stop()


def _closed_without_answer(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _wait_for(predicate, timeout: float = 15.0) -> None:
    """Poll (connection handling is asynchronous); fails after a generous bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_quote_is_for_the_measured_identity_and_the_given_report_data(pki, quoter):
    report_data = os.urandom(64)
    quote = request_quote(quoter.env_value, report_data)
    verified = verify_quote(quote, pki.collateral_json(), root_ca_der=pki.root_der)
    assert (
        verified.mr_enclave,
        verified.mr_signer,
        verified.isv_prod_id,
        verified.isv_svn,
        verified.debug,
    ) == (MEASURED.mr_enclave, MEASURED.mr_signer, 3, 7, False)
    assert verified.report_data == report_data
    _wait_for(lambda: quoter.served == 1)
    with pytest.raises(QuoteRejected):  # nothing that trusts another root accepts it
        verify_quote(quote, pki.collateral_json(), root_ca_der=SyntheticPKI().root_der)


def test_exact_wire_format(quoter):
    with socket.create_connection(quoter.address, timeout=10) as sock:
        sock.sendall(bytes(64))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    size = int.from_bytes(data[:4], "big")
    assert size == len(data) - 4 > 432


def test_short_read_gets_no_answer(quoter):
    with socket.create_connection(quoter.address, timeout=10) as sock:
        sock.sendall(bytes(10))
        sock.shutdown(socket.SHUT_WR)
        assert _closed_without_answer(sock)
    _wait_for(lambda: quoter.rejected == 1)
    assert quoter.served == 0
    request_quote(quoter.env_value, bytes(64))  # still serving


def test_too_many_bytes_get_no_answer(quoter):
    with socket.create_connection(quoter.address, timeout=10) as sock:
        sock.sendall(bytes(65))
        assert _closed_without_answer(sock)
    _wait_for(lambda: quoter.rejected == 1)
    assert quoter.served == 0


def test_silent_client_is_cut_off_at_the_deadline(quoter):
    with socket.create_connection(quoter.address) as sock:
        assert _closed_without_answer(sock)  # the quoter's 2 s deadline, not ours (10 s)
    _wait_for(lambda: quoter.rejected == 1)


def test_connections_are_bounded(pki):
    # a deadline long enough that the two idle connections still hold both slots, however
    # slowly the machine runs, when the third arrives (and only the third is rejected)
    quoter = SimulatedQuoter(pki, MEASURED, warn=False, timeout=30.0, max_connections=2)
    quoter.start()
    try:
        idle = [socket.create_connection(quoter.address) for _ in range(2)]
        try:
            _wait_for(lambda: len(quoter._workers) == 2)
            with socket.create_connection(quoter.address) as third:
                assert _closed_without_answer(third)
            _wait_for(lambda: quoter.rejected == 1)
        finally:
            for sock in idle:
                sock.close()
        _wait_for(lambda: not quoter._workers)
        request_quote(quoter.env_value, bytes(64))
    finally:
        quoter.stop()


def test_stop_is_clean(pki):
    q = SimulatedQuoter(pki, MEASURED, warn=False)
    address = q.start()
    request_quote(q.env_value, bytes(64))
    q.stop()
    assert not q._acceptor.is_alive() and not q._workers
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=5).close()


def test_warns_that_it_is_not_an_enclave(pki, capsys, tmp_path):
    path = tmp_path / "measurements.json"
    path.write_text(MEASURED.to_json())
    with SimulatedQuoter(pki, path) as q:  # a measurements.json path works too
        assert q.address[0] == "127.0.0.1"
    err = capsys.readouterr().err
    assert WARNING in err and "NOT an enclave" in err and MEASURED.mr_enclave in err


def test_request_quote_errors(quoter):
    with pytest.raises(QuoterError, match="not HOST:PORT"):
        request_quote("nowhere", bytes(64))
    with pytest.raises(QuoterError, match="must be 64 bytes"):
        request_quote(quoter.env_value, bytes(63))
    with pytest.raises(QuoterError, match="must be 64 bytes"):
        quoter.quote(bytes(65))


# --------------------------------------------------------------------------- persistent PKI


def test_pki_save_and_load_round_trip(tmp_path):
    pki = SyntheticPKI(days=90)
    written = pki.save(tmp_path / "pki")
    assert sorted(p.name for p in written) == ["collateral.json", "pki-private.json", "root.pem"]
    assert stat.S_IMODE((tmp_path / "pki/pki-private.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    loaded = SyntheticPKI.load(tmp_path / "pki")
    assert loaded.root_pem == pki.root_pem and loaded.not_after == pki.not_after
    # A quote of the loaded PKI verifies with the files as a secret server reads them.
    root_der = x509.load_pem_x509_certificate(
        (tmp_path / "pki/root.pem").read_bytes()
    ).public_bytes(serialization.Encoding.DER)
    with SimulatedQuoter(loaded, MEASURED, warn=False) as q:
        quote = request_quote(q.env_value, bytes(range(64)))
    verified = verify_quote(
        quote, (tmp_path / "pki/collateral.json").read_text(), root_ca_der=root_der
    )
    assert verified.mr_enclave == MEASURED.mr_enclave


def test_pki_save_refuses_to_replace_and_bad_targets(tmp_path):
    SyntheticPKI().save(tmp_path / "pki")
    with pytest.raises(PKIError, match="already holds a synthetic PKI"):
        SyntheticPKI().save(tmp_path / "pki")
    SyntheticPKI().save(tmp_path / "pki", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PKIError, match="is not a directory"):
        SyntheticPKI().save(tmp_path / "file")


def test_pki_load_errors(tmp_path):
    with pytest.raises(PKIError, match="no such directory"):
        SyntheticPKI.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PKIError, match=r"pki-private.json is missing"):
        SyntheticPKI.load(tmp_path / "empty")
    SyntheticPKI().save(tmp_path / "a")
    SyntheticPKI().save(tmp_path / "b")
    (tmp_path / "a/root.pem").write_bytes((tmp_path / "b/root.pem").read_bytes())
    with pytest.raises(PKIError, match="is not the root of"):
        SyntheticPKI.load(tmp_path / "a")
    record = json.loads((tmp_path / "b/pki-private.json").read_text())
    del record["keys"]["pck_key"]
    (tmp_path / "b/pki-private.json").write_text(json.dumps(record))
    with pytest.raises(PKIError, match="malformed synthetic PKI"):
        SyntheticPKI.load(tmp_path / "b")
    (tmp_path / "b/pki-private.json").write_text("{}")
    with pytest.raises(PKIError, match="not a 'enclave-build synthetic SGX PKI v1' file"):
        SyntheticPKI.load(tmp_path / "b")


def test_simulate_pki_command(tmp_path):
    result = run_cli("secrets", "simulate-pki", str(tmp_path / "pki"))
    assert result.returncode == 0, result.stderr
    out, err = result.stdout.decode(), result.stderr.decode()
    root = (tmp_path / "pki").resolve()
    assert f'root_ca = "{root}/root.pem"' in out and f'collateral = "{root}/collateral.json"' in out
    assert "SYNTHETIC TEST root" in err
    assert SyntheticPKI.load(tmp_path / "pki").root_pem == (tmp_path / "pki/root.pem").read_bytes()
    again = run_cli("secrets", "simulate-pki", str(tmp_path / "pki"))
    assert again.returncode == 1 and "already holds a synthetic PKI" in again.stderr.decode()
