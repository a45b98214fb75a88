"""The verification cache never accepts what dcap-qvl would refuse: on a warm cache (a quote of
the same platform already verified), flips in the ISV report, its signature, the attestation
key, the QE report and everything else are refused; random flips anywhere get the same verdict
as without the cache; entries end at the earliest expiry of what verification relied on."""

from __future__ import annotations

import datetime as dt
import json
import os
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from enclave_build.attestation.quote import HEADER_LEN, SIGNED_LEN, Quote
from enclave_build.attestation.synthetic import SyntheticPKI
from enclave_build.attestation.verify import QuoteRejected, VerificationCache, verify_quote

from .attest_env import MR_SIGNER, Platform, identity

SIG = SIGNED_LEN + 4  # ISV signature (64 bytes)
KEY = SIG + 64  # attestation key (64 bytes)
QE_REPORT = KEY + 64  # QE report (384 bytes)
QE_SIG = QE_REPORT + 384  # QE report signature (64 bytes)
QE_AUTH = QE_SIG + 64 + 2  # QE authentication data


@pytest.fixture(scope="module")
def setup():
    pki = SyntheticPKI()
    return pki, Platform(pki), pki.collateral_json()


def _warm(setup):
    pki, platform, collateral = setup
    cache = VerificationCache()
    first = platform.quote(identity("face"), MR_SIGNER, os.urandom(64), 1, 2)
    verify_quote(first, collateral, root_ca_der=pki.root_der, cache=cache)
    second = platform.quote(identity("ocr"), MR_SIGNER, os.urandom(64), 2, 2)
    assert verify_quote(second, collateral, root_ca_der=pki.root_der, cache=cache).isv_prod_id == 2
    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)  # the second was a hit
    return cache


def _flip(quote: bytes, offset: int, mask: int = 0x01) -> bytes:
    data = bytearray(quote)
    data[offset] ^= mask
    return bytes(data)


def _verdict(raw: bytes, collateral: str, root: bytes, cache=None, now=None) -> str:
    try:
        verified = verify_quote(raw, collateral, root_ca_der=root, cache=cache, now=now)
    except QuoteRejected as exc:
        return f"refused: {exc}"
    return f"accepted {verified.status} {verified.mr_enclave} {verified.report_data.hex()}"


@pytest.mark.parametrize(
    "where, offset",
    [
        ("ISV report: attributes", HEADER_LEN + 48),
        ("ISV report: MRENCLAVE", HEADER_LEN + 64),
        ("ISV report: MRSIGNER", HEADER_LEN + 128),
        ("ISV report: ISV_SVN", HEADER_LEN + 258),
        ("ISV report: report data", HEADER_LEN + 320),
        ("ISV report: reserved bytes", HEADER_LEN + 20),
        ("ISV signature: r", SIG + 3),
        ("ISV signature: s", SIG + 40),
        ("attestation key", KEY + 5),
        ("QE report", QE_REPORT + 100),
        ("QE report data", QE_REPORT + 320),
        ("QE report signature", QE_SIG + 10),
        ("QE auth data", QE_AUTH + 1),
        ("header: QE SVN", 8),
        ("header: user data", 40),
    ],
)
def test_a_tampered_quote_is_refused_on_a_warm_cache(setup, where, offset):
    pki, platform, collateral = setup
    cache = _warm(setup)
    good = platform.quote(identity("face"), MR_SIGNER, os.urandom(64), 1, 2)
    verify_quote(good, collateral, root_ca_der=pki.root_der, cache=cache)
    assert cache.hits == 2
    bad = _flip(good, offset)
    with pytest.raises(QuoteRejected):
        verify_quote(bad, collateral, root_ca_der=pki.root_der, cache=cache)
    with pytest.raises(QuoteRejected):  # ... as dcap-qvl itself refuses it
        verify_quote(bad, collateral, root_ca_der=pki.root_der)
    assert len(cache) == 1  # refusals are never cached


def test_a_tampered_pck_chain_is_refused_on_a_warm_cache(setup):
    pki, platform, collateral = setup
    cache = _warm(setup)
    good = platform.quote(identity("face"), MR_SIGNER, os.urandom(64), 1, 2)
    quote = Quote.parse(good)
    start = len(good) - len(quote.cert_data)
    # a byte inside the base64 of the PCK leaf's signature
    body = quote.cert_data.index(b"\n-----END CERTIFICATE-----") - 10
    bad = bytearray(good)
    bad[start + body] = ord("A") if bad[start + body] != ord("A") else ord("B")
    with pytest.raises(QuoteRejected):
        verify_quote(bytes(bad), collateral, root_ca_der=pki.root_der, cache=cache)


def test_a_debug_enclave_is_refused_on_a_warm_cache(setup):
    pki, platform, collateral = setup
    cache = _warm(setup)
    debug = platform.quote(identity("face"), MR_SIGNER, bytes(64), 1, 2, debug=True)
    with pytest.raises(QuoteRejected, match="DEBUG"):
        verify_quote(debug, collateral, root_ca_der=pki.root_der, cache=cache)


def test_random_flips_get_the_same_verdict_with_and_without_the_cache(setup):
    pki, platform, collateral = setup
    cache = _warm(setup)
    rng = random.Random(9)
    good = platform.quote(identity("face"), MR_SIGNER, os.urandom(64), 1, 2)
    for _ in range(150):
        offset = rng.randrange(len(good))
        bad = _flip(good, offset, 1 << rng.randrange(8))
        cached = _verdict(bad, collateral, pki.root_der, cache)
        plain = _verdict(bad, collateral, pki.root_der)
        assert cached.split(":")[0] == plain.split(":")[0], (offset, cached, plain)
        if cached.startswith("accepted"):  # a flip dcap-qvl ignores (unsigned padding)
            assert cached == plain


def test_another_collateral_or_root_is_verified_afresh(setup):
    pki, platform, collateral = setup
    cache = _warm(setup)
    quote = platform.quote(identity("face"), MR_SIGNER, bytes(64), 1, 2)
    with pytest.raises(QuoteRejected, match="another root"):
        verify_quote(quote, collateral, root_ca_der=SyntheticPKI().root_der, cache=cache)
    # the PCK revoked in a newer CRL of the same CA: refused despite the warm cache
    pki.revoke_pck = True
    try:
        revoked = pki.collateral_json()
    finally:
        pki.revoke_pck = False
    with pytest.raises(QuoteRejected, match="evoked"):
        verify_quote(quote, revoked, root_ca_der=pki.root_der, cache=cache)
    assert cache.misses == 3 and len(cache) == 1  # the warm-up, then one each


def test_entries_end_at_the_collateral_expiry(setup):
    pki, platform, collateral = setup
    cache = _warm(setup)
    quote = platform.quote(identity("face"), MR_SIGNER, bytes(64), 1, 2)
    ((_, outcome),) = cache.entries()
    assert outcome.valid_until == int(pki.not_after.timestamp())
    after = pki.not_after + dt.timedelta(seconds=1)
    with pytest.raises(QuoteRejected, match="xpired"):
        verify_quote(quote, collateral, root_ca_der=pki.root_der, cache=cache, now=after)
    # exactly at the expiry second: not from the cache either (dcap-qvl decides)
    hits = cache.hits
    try:
        verify_quote(quote, collateral, root_ca_der=pki.root_der, cache=cache, now=pki.not_after)
    except QuoteRejected:
        pass
    assert cache.hits == hits
    # before the moment it was verified at: not from the cache
    before = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    verify_quote(quote, collateral, root_ca_der=pki.root_der, cache=cache, now=before)
    assert cache.hits == hits


def test_an_earlier_crl_next_update_bounds_the_entry(setup):
    """A CRL that must be refreshed sooner than the TCB info ends the entry then, even though
    dcap-qvl still accepts the collateral."""
    pki, platform, _ = setup
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.pck_ca.subject)
        .last_update(pki.not_before)
        .next_update(soon)
        .add_extension(x509.CRLNumber(2), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.pck_ca.public_key()), False
        )
        .sign(pki.pck_ca_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    data = json.loads(pki.collateral_json())
    data["pck_crl"] = crl.hex()
    collateral = json.dumps(data)
    cache = VerificationCache()
    quote = platform.quote(identity("face"), MR_SIGNER, bytes(64), 1, 2)
    verify_quote(quote, collateral, root_ca_der=pki.root_der, cache=cache)
    ((key, outcome),) = cache.entries()
    assert outcome.valid_until == int(soon.timestamp())
    assert cache.lookup(key, int(soon.timestamp())) is None
    assert cache.lookup(key, int(soon.timestamp()) - 1) is outcome


def test_unreadable_collateral_dates_mean_no_caching(setup):
    pki, platform, collateral = setup
    cache = VerificationCache(facts=lambda text: None)  # as if its dates could not be read
    quote = platform.quote(identity("face"), MR_SIGNER, bytes(64), 1, 2)
    for _ in range(2):
        verify_quote(quote, collateral, root_ca_der=pki.root_der, cache=cache)
    assert len(cache) == 0 and cache.hits == 0


def test_the_cache_is_bounded(setup):
    pki, _, collateral = setup
    cache = VerificationCache(max_entries=4)
    for _ in range(10):  # every SyntheticPKI quote has its own QE report signature
        verify_quote(
            pki.quote(identity("face"), MR_SIGNER, bytes(64), 1, 2),
            collateral,
            root_ca_der=pki.root_der,
            cache=cache,
        )
    assert len(cache) <= 4
