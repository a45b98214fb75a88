"""The secret server's verdicts per client certificate: a certificate verified once is not
verified again while what its verification rested on still holds (the same collateral from the
source, before the verification cache's entry ends), and nothing else is kept."""

from __future__ import annotations

import datetime as dt

import pytest
from OpenSSL import crypto

from enclave_build.attestation.server.decide import Evidence, Unverified
from enclave_build.attestation.server.verifier import ClientVerifier
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.attestation.verify import VerificationCache

from .attest_env import Platform


class Collateral:
    """A collateral source whose collateral the test replaces."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    def for_quote(self, quote: bytes, timeout: float | None = None) -> str:
        self.calls += 1
        return self.text


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def pki():
    pki = SyntheticPKI()
    return pki, Platform(pki)


def _peer(platform: Platform, service: str = "face", **kw) -> crypto.X509:
    cert, _ = platform.enclave_cert(service, **kw)
    return crypto.X509.from_cryptography(cert)


def _verifier(pki, cache=True):
    clock = Clock()
    source = Collateral(pki.collateral_json())
    verifier = ClientVerifier(source, pki.root_der, VerificationCache() if cache else None, clock)
    return verifier, source, clock


def test_a_certificate_seen_before_is_not_verified_again(pki):
    pki, platform = pki
    verifier, _, _ = _verifier(pki)
    peer = _peer(platform)
    first = verifier.verify(peer, 5.0)
    assert isinstance(first, Evidence)
    assert verifier.cache is not None and verifier.verdicts is not None
    checks = verifier.cache.hits + verifier.cache.misses
    again = verifier.verify(_peer_copy(peer), 5.0)  # the same certificate, a new object
    assert again == first
    assert (verifier.verdicts.hits, verifier.verdicts.misses) == (1, 1)
    assert verifier.cache.hits + verifier.cache.misses == checks  # no quote verified
    # another certificate of the same platform: verified (the platform part from the cache)
    other = verifier.verify(_peer(platform, "ocr"), 5.0)
    assert isinstance(other, Evidence) and other.quote.mr_enclave != first.quote.mr_enclave
    assert verifier.verdicts.misses == 2 and len(verifier.verdicts) == 2


def _peer_copy(peer: crypto.X509) -> crypto.X509:
    return crypto.load_certificate(
        crypto.FILETYPE_ASN1, crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)
    )


def test_new_collateral_means_verifying_again(pki):
    pki, platform = pki
    verifier, source, _ = _verifier(pki)
    peer = _peer(platform)
    assert isinstance(verifier.verify(peer, 5.0), Evidence)
    # the source now hands out collateral in which the platform's PCK is revoked
    pki.revoke_pck = True
    try:
        source.text = pki.collateral_json()
    finally:
        pki.revoke_pck = False
    refused = verifier.verify(peer, 5.0)
    assert isinstance(refused, Unverified) and "evoked" in refused.reason
    assert verifier.verdicts is not None and verifier.verdicts.hits == 0


def test_a_verdict_ends_with_what_it_rested_on(pki):
    pki, platform = pki
    verifier, _, clock = _verifier(pki)
    peer = _peer(platform)
    assert isinstance(verifier.verify(peer, 5.0), Evidence)
    assert verifier.verdicts is not None
    clock.now = pki.not_after + dt.timedelta(seconds=1)  # the collateral has expired
    assert isinstance(verifier.verify(peer, 5.0), Unverified)
    clock.now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)  # before it was verified
    assert isinstance(verifier.verify(peer, 5.0), Evidence)
    assert verifier.verdicts.hits == 0 and verifier.verdicts.misses == 3


def test_refusals_are_not_kept_and_no_cache_means_no_verdicts(pki):
    pki, platform = pki
    verifier, _, _ = _verifier(pki)
    debug = _peer(platform, debug=True)
    for _ in range(2):
        assert isinstance(verifier.verify(debug, 5.0), Unverified)
    assert verifier.verdicts is not None and len(verifier.verdicts) == 0
    assert verifier.verdicts.misses == 2

    plain, _, _ = _verifier(pki, cache=False)
    assert plain.verdicts is None
    assert isinstance(plain.verify(_peer(platform), 5.0), Evidence)
