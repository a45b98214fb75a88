"""Every decision of the secret server, without a socket: attestation.server.decide.decide as a
table. Each refusal reason and each way a secret is released is one row."""

from __future__ import annotations

import hashlib

import pytest

from enclave_build.attestation.measurements import ImageRef, Measurements
from enclave_build.attestation.occlum_ra import RaConfig, SgxMeasurement
from enclave_build.attestation.policy import Policy
from enclave_build.attestation.quote import (
    FLAG_DEBUG,
    FLAG_INIT,
    FLAG_MODE64BIT,
    FLAG_PROVISION_KEY,
)
from enclave_build.attestation.server.decide import (
    AccessPolicy,
    ByName,
    ByServerName,
    Decision,
    Refusal,
    Unverified,
    check_client,
    decide,
)
from enclave_build.attestation.verify import TcbPolicy
from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.secrets_config import SecretRule

from .attest_env import verified_evidence


def _hex(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


SIGNER = _hex("signer")
FACE, OCR, STRANGER = _hex("face"), _hex("ocr"), _hex("stranger")
PINNED = _hex("pinned")  # allowed by its MRENCLAVE, not through a service

MEASUREMENTS = [
    Measurements(
        "face",
        "tflite",
        "gramine",
        EnclaveIdentity(FACE, SIGNER, 1, 2, False),
        ImageRef(None, None),
    ),
    Measurements(
        "ocr", "tflite", "gramine", EnclaveIdentity(OCR, SIGNER, 2, 2, False), ImageRef(None, None)
    ),
]
RULES = [
    SecretRule("face-key", None, ("face",)),
    SecretRule("ocr-key", None, ("ocr",), match="signer"),
    SecretRule("pinned-key", None, (PINNED,)),
    SecretRule(
        "face-key@image_key", None, ("face",), encoding="hex-dashes", requested_as="image_key"
    ),
    SecretRule(
        "ocr-key@image_key", None, ("ocr",), encoding="hex-dashes", requested_as="image_key"
    ),
    SecretRule(
        "shared@image_key", None, ("ocr",), encoding="hex-dashes", requested_as="shared_key"
    ),
    SecretRule(
        "shared2@image_key", None, ("ocr",), encoding="hex-dashes", requested_as="shared_key"
    ),
]
POLICY = Policy(MEASUREMENTS, RULES)
#: face has a second raw secret here: its host name no longer selects one.
TWO_FOR_FACE = Policy(MEASUREMENTS, RULES + [SecretRule("face-extra", None, ("face",))])

STRICT = AccessPolicy(POLICY, TcbPolicy())
RA_CONFIG = RaConfig(
    True,
    True,
    True,
    True,
    True,
    False,
    (SgxMeasurement(FACE, SIGNER, 1, 2, config_svn=3),),
    "dynamic_config.json",
)
FILTERED = AccessPolicy(POLICY, TcbPolicy(), RA_CONFIG)


def face(**changes):
    return verified_evidence(
        **{"mr_enclave": FACE, "mr_signer": SIGNER, "isv_prod_id": 1, "isv_svn": 2, **changes}
    )


def ocr(**changes):
    return verified_evidence(
        **{"mr_enclave": OCR, "mr_signer": SIGNER, "isv_prod_id": 2, "isv_svn": 2, **changes}
    )


def sni(name: str | None) -> ByServerName:
    return ByServerName(name.encode() if name is not None else None)


REFUSALS = [
    # (evidence, request, policy, refusal, reason)
    pytest.param(
        Unverified("no client certificate"),
        sni("localhost"),
        STRICT,
        Refusal.EVIDENCE,
        "no client certificate",
        id="no-evidence",
    ),
    pytest.param(
        Unverified("quote verification failed: bad signature", "tcg-dice"),
        ByName("face-key"),
        STRICT,
        Refusal.EVIDENCE,
        "quote verification failed: bad signature",
        id="quote-does-not-verify",
    ),
    pytest.param(
        Unverified("no collateral to verify the quote: PCCS down", "tcg-dice", no_collateral=True),
        sni("localhost"),
        STRICT,
        Refusal.NO_COLLATERAL,
        "no collateral to verify the quote: PCCS down",
        id="no-collateral",
    ),
    pytest.param(
        face(status="OutOfDate", advisories=("INTEL-SA-00615",)),
        sni("localhost"),
        STRICT,
        Refusal.QUOTE_POLICY,
        "TCB status OutOfDate is not allowed (allowed: UpToDate); advisories INTEL-SA-00615",
        id="tcb-status",
    ),
    pytest.param(
        face(status="SWHardeningNeeded", advisories=("INTEL-SA-1",)),
        sni("localhost"),
        AccessPolicy(
            POLICY,
            TcbPolicy(
                frozenset({"UpToDate", "SWHardeningNeeded"}),
                denied_advisories=frozenset({"INTEL-SA-1"}),
            ),
        ),
        Refusal.QUOTE_POLICY,
        "advisory INTEL-SA-1 is denied by policy",
        id="denied-advisory",
    ),
    pytest.param(
        face(status="SWHardeningNeeded", advisories=("INTEL-SA-2",)),
        sni("localhost"),
        AccessPolicy(
            POLICY,
            TcbPolicy(
                frozenset({"UpToDate", "SWHardeningNeeded"}),
                allowed_advisories=frozenset({"INTEL-SA-1"}),
            ),
        ),
        Refusal.QUOTE_POLICY,
        "advisory INTEL-SA-2 is not in the allowed advisories",
        id="unlisted-advisory",
    ),
    pytest.param(
        face(flags=FLAG_MODE64BIT),
        sni("localhost"),
        STRICT,
        Refusal.QUOTE_POLICY,
        "enclave attributes lack INIT or MODE64BIT",
        id="no-init",
    ),
    pytest.param(
        face(flags=FLAG_INIT | FLAG_MODE64BIT | FLAG_PROVISION_KEY),
        sni("localhost"),
        STRICT,
        Refusal.QUOTE_POLICY,
        "enclave has PROVISION_KEY or EINITTOKEN_KEY: not an application enclave",
        id="provision-key",
    ),
    pytest.param(
        face(flags=FLAG_INIT | FLAG_MODE64BIT | FLAG_DEBUG),
        sni("localhost"),
        STRICT,
        Refusal.QUOTE_POLICY,
        "DEBUG enclave: refused",
        id="debug",
    ),
    pytest.param(
        face(config_svn=4),
        ByName("face-key"),
        FILTERED,
        Refusal.CLIENT_FILTER,
        f"client_ra_config: enclave {FACE} (mr_signer {SIGNER}, isv_prod_id 1, isv_svn 2, "
        "config_svn 4, debuggable false) matches no entry of dynamic_config.json: "
        "sgx_mrs[0]: config_svn differ",
        id="client-ra-config",
    ),
    pytest.param(
        face(),
        ByServerName(b"\xff"),
        STRICT,
        Refusal.BAD_SERVER_NAME,
        "the TLS server name (SNI) is not valid UTF-8",
        id="sni-not-utf8",
    ),
    pytest.param(
        face(),
        ByName("nope"),
        STRICT,
        Refusal.UNKNOWN_SECRET,
        "no secret named 'nope'",
        id="grsecret-unknown-name",
    ),
    pytest.param(
        verified_evidence(STRANGER, SIGNER, 1, 2),
        sni("localhost"),
        STRICT,
        Refusal.NOT_RELEASED,
        "no secret is released to this enclave identity",
        id="unknown-identity",
    ),
    pytest.param(
        face(),
        sni("ocr-key"),
        STRICT,
        Refusal.NOT_RELEASED,
        "secret 'ocr-key' (the TLS server name) is not released to this enclave identity",
        id="sni-names-a-secret-of-another-enclave",
    ),
    pytest.param(
        face(),
        sni("localhost"),
        AccessPolicy(TWO_FOR_FACE, TcbPolicy()),
        Refusal.NOT_RELEASED,
        "several secrets (face-extra, face-key) match and the "
        "TLS server name 'localhost' selects none",
        id="sni-selects-none-of-several",
    ),
    pytest.param(
        ocr(isv_svn=1),
        sni("localhost"),
        STRICT,
        Refusal.NOT_RELEASED,
        "no secret is released to this enclave identity",
        id="signer-svn-rollback",
    ),
    pytest.param(
        ocr(mr_signer=_hex("other signer")),
        sni("localhost"),
        STRICT,
        Refusal.NOT_RELEASED,
        "no secret is released to this enclave identity",
        id="signer-other-key",
    ),
    pytest.param(
        ocr(isv_prod_id=5),
        sni("localhost"),
        STRICT,
        Refusal.NOT_RELEASED,
        "no secret is released to this enclave identity",
        id="signer-other-product",
    ),
    pytest.param(
        face(),
        ByName("ocr-key"),
        STRICT,
        Refusal.NOT_RELEASED,
        "secret 'ocr-key' is not released to this enclave identity",
        id="grsecret-name-of-another-enclave",
    ),
    pytest.param(
        verified_evidence(STRANGER, SIGNER, 1, 2),
        ByName("image_key"),
        STRICT,
        Refusal.NOT_RELEASED,
        "no secret asked for as 'image_key' is released to this enclave identity",
        id="grsecret-requested-as-none",
    ),
    pytest.param(
        ocr(),
        ByName("shared_key"),
        STRICT,
        Refusal.NOT_RELEASED,
        "several secrets (shared2@image_key, shared@image_key) are asked for as "
        "'shared_key' and released to this enclave identity",
        id="grsecret-requested-as-ambiguous",
    ),
]


@pytest.mark.parametrize("evidence, requested, policy, refusal, reason", REFUSALS)
def test_each_refusal(evidence, requested, policy, refusal, reason):
    decision = decide(evidence, requested, policy)
    assert decision == Decision(None, reason, refusal)
    assert not decision.allowed
    assert decision.attested == (
        refusal not in (Refusal.EVIDENCE, Refusal.NO_COLLATERAL, Refusal.QUOTE_POLICY)
    )


ALLOWANCES = [
    # (evidence, request, policy, secret, reason, service)
    pytest.param(
        face(),
        sni("localhost"),
        STRICT,
        "face-key",
        "allowed via face",
        "face",
        id="identity-selects-its-one-secret",
    ),
    pytest.param(face(), sni(None), STRICT, "face-key", "allowed via face", "face", id="no-sni"),
    pytest.param(
        face(),
        sni("face-key"),
        AccessPolicy(TWO_FOR_FACE, TcbPolicy()),
        "face-key",
        "allowed via face (named by the TLS server name)",
        "face",
        id="sni-names-one-of-several",
    ),
    pytest.param(
        face(),
        sni("face-key@image_key"),
        STRICT,
        "face-key",
        "allowed via face",
        "face",
        id="sni-never-names-a-grsecret-only-secret",
    ),
    pytest.param(
        ocr(mr_enclave=_hex("ocr v7"), isv_svn=7),
        sni("localhost"),
        STRICT,
        "ocr-key",
        "allowed via ocr",
        "ocr",
        id="signer-newer-svn",
    ),
    pytest.param(
        verified_evidence(PINNED, SIGNER, 9, 0),
        sni("localhost"),
        STRICT,
        "pinned-key",
        f"allowed via {PINNED}",
        None,
        id="mrenclave-entry",
    ),
    pytest.param(
        face(status="OutOfDate"),
        sni("localhost"),
        AccessPolicy(POLICY, TcbPolicy(frozenset({"UpToDate", "OutOfDate"}))),
        "face-key",
        "allowed via face",
        "face",
        id="tcb-status-allowed-by-name",
    ),
    pytest.param(
        face(),
        ByName("face-key"),
        STRICT,
        "face-key",
        "allowed via face",
        "face",
        id="grsecret-by-name",
    ),
    pytest.param(
        face(),
        ByName("image_key"),
        STRICT,
        "face-key@image_key",
        "allowed via face (secret 'face-key@image_key')",
        "face",
        id="grsecret-requested-as",
    ),
    pytest.param(
        ocr(),
        ByName("image_key"),
        STRICT,
        "ocr-key@image_key",
        "allowed via ocr (secret 'ocr-key@image_key')",
        "ocr",
        id="grsecret-requested-as-per-service",
    ),
    pytest.param(
        face(config_svn=3),
        ByName("face-key"),
        FILTERED,
        "face-key",
        "allowed via face",
        "face",
        id="client-ra-config-matches",
    ),
    pytest.param(
        face(config_svn=4),
        sni("localhost"),
        STRICT,
        "face-key",
        "allowed via face",
        "face",
        id="client-ra-config-is-grsecret-only",
    ),
]


@pytest.mark.parametrize("evidence, requested, policy, secret, reason, service", ALLOWANCES)
def test_each_allowance(evidence, requested, policy, secret, reason, service):
    decision = decide(evidence, requested, policy)
    assert decision.allowed and decision.attested and decision.refusal is None
    assert (decision.secret.name, decision.reason, decision.service) == (secret, reason, service)


def test_check_client_is_the_first_three_steps():
    """What the GrSecret listener decides once per connection, before any call."""
    assert check_client(face(), STRICT) is None
    assert check_client(face(config_svn=3), FILTERED) is None
    assert check_client(face(config_svn=4), FILTERED).refusal is Refusal.CLIENT_FILTER
    assert check_client(face(flags=FLAG_MODE64BIT), FILTERED).refusal is Refusal.QUOTE_POLICY
    assert check_client(Unverified("x"), FILTERED).refusal is Refusal.EVIDENCE


def test_the_first_refusing_step_decides():
    """An unverified client is refused as such whatever it asks for; a quote refused by the
    TCB policy is refused before the client filter or the name are looked at."""
    assert decide(Unverified("bad"), ByName("nope"), FILTERED).refusal is Refusal.EVIDENCE
    assert (
        decide(face(status="OutOfDate", config_svn=4), ByName("nope"), FILTERED).refusal
        is Refusal.QUOTE_POLICY
    )
    assert decide(face(config_svn=4), ByName("nope"), FILTERED).refusal is Refusal.CLIENT_FILTER
    assert (
        decide(face(config_svn=3), ByServerName(b"\xff"), FILTERED).refusal
        is Refusal.BAD_SERVER_NAME
    )
