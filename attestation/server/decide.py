"""Every decision the secret server makes about a client, as one pure function.

:func:`decide` takes what verification established about the client (:class:`Evidence`, or
:class:`Unverified` with the reason it could not be), what the client asked for
(:class:`ByServerName` for Gramine's secret_prov exchange, :class:`ByName` for Occlum's
GrSecret) and the listener's :class:`AccessPolicy`, and returns a :class:`Decision`: the secret
to release, or why nothing is released (:class:`Refusal` says at which step). It opens no
socket, reads no file and no clock, so every rule is testable as a table.

The steps, in order (the first that refuses decides):

1. the evidence: no usable RA-TLS evidence, a quote that does not verify, or no collateral to
   verify it with;
2. the quote policy (:meth:`attestation.verify.TcbPolicy.refusal`): TCB status, advisories,
   attributes, DEBUG;
3. on the GrSecret listener, Occlum's optional ``client_ra_config`` filter;
4. which secret (:mod:`attestation.policy` says which rules admit the identity):

   * secret_prov: the TLS server name (SNI) must be UTF-8; equal to the name of a secret, only
     that secret may be released (refused if this enclave is not allowed it); any other name
     (Gramine's constructor sends the server's host name) releases the one secret this enclave
     is allowed, and several are refused as ambiguous. Only raw secrets asked for by their own
     name take part;
   * GrSecret: the name must be a secret's name or a ``requested_as``; a secret's own name
     releases that secret, a ``requested_as`` the one rule of that name this enclave is allowed.

:func:`decide_certificate` decides whether an enclave gets a serving certificate from the
issuing CA (``[issuer]``): steps 1 and 2, then the enclave must be one the policy serves — a
build in the measurements files (its whole identity equal: MRENCLAVE, MRSIGNER, ISV ids, DEBUG)
or an identity some secret is released to (which covers ``match = "signer"`` rules).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from enclave_build.contract.secrets_config import SecretRule

from ..occlum_ra import PeerIdentity, RaConfig
from ..policy import Identity, Policy, is_mr_enclave
from ..verify import TcbPolicy, VerifiedQuote


@dataclass(frozen=True)
class Evidence:
    """A client's RA-TLS evidence whose quote verified cryptographically."""

    format: str  # "tcg-dice" | "gramine-legacy" | "cczoo" (attestation.ratls)
    quote: VerifiedQuote
    config_svn: int = 0  # CONFIGSVN of the report (Occlum's client_ra_config compares it)

    @property
    def identity(self) -> Identity:
        q = self.quote
        return Identity(q.mr_enclave, q.mr_signer, q.isv_prod_id, q.isv_svn, q.debug)

    @property
    def peer(self) -> PeerIdentity:
        q = self.quote
        return PeerIdentity(
            q.mr_enclave, q.mr_signer, q.isv_prod_id, q.isv_svn, self.config_svn, q.debug
        )


@dataclass(frozen=True)
class Unverified:
    """A client whose evidence could not be verified, and why."""

    reason: str
    format: str | None = None  # the evidence format, when the evidence could be read
    no_collateral: bool = False  # the quote could not be checked: no collateral for it


ClientEvidence = Evidence | Unverified


@dataclass(frozen=True)
class ByServerName:
    """Gramine's secret_prov exchange: the TLS server name (SNI) as the client sent it."""

    server_name: bytes | None


@dataclass(frozen=True)
class ByName:
    """Occlum's GrSecret: the ``SecretRequest.name`` of one call."""

    name: str


RequestedSecret = ByServerName | ByName


@dataclass(frozen=True)
class AccessPolicy:
    """What one listener releases to whom."""

    secrets: Policy  # measurements and [[secrets]] rules
    tcb: TcbPolicy  # [attestation]: TCB status, advisories, DEBUG
    client_filter: RaConfig | None = None  # [grsecret] client_ra_config (GrSecret only)

    def __post_init__(self) -> None:
        # secrets.toml's [attestation] holds the contract's TcbPolicy: the verifier's judges
        object.__setattr__(self, "tcb", TcbPolicy.of(self.tcb))


class Refusal(enum.Enum):
    """The step at which a client was refused."""

    EVIDENCE = "evidence"  # no usable evidence, or the quote does not verify
    NO_COLLATERAL = "no-collateral"  # no collateral to verify the quote with
    QUOTE_POLICY = "quote-policy"  # TCB status, advisories, attributes, DEBUG
    CLIENT_FILTER = "client-filter"  # Occlum's client_ra_config
    BAD_SERVER_NAME = "bad-server-name"  # the TLS server name is not UTF-8
    UNKNOWN_SECRET = "unknown-secret"  # a GrSecret name that is no secret's
    NOT_RELEASED = "not-released"  # attested; the policy releases no (single) secret


#: Refusals made before the quote was accepted: the client's identity is not established.
UNATTESTED = frozenset({Refusal.EVIDENCE, Refusal.NO_COLLATERAL, Refusal.QUOTE_POLICY})


@dataclass(frozen=True)
class Decision:
    secret: SecretRule | None  # what to release; None: nothing
    reason: str  # for the audit line and the client
    refusal: Refusal | None = None  # None exactly when a secret is released
    service: str | None = None  # the service the secret was released through

    @property
    def allowed(self) -> bool:
        return self.secret is not None

    @property
    def attested(self) -> bool:
        """Whether the client's quote was accepted (its identity is established)."""
        return self.refusal not in UNATTESTED


def _refused(refusal: Refusal, reason: str) -> Decision:
    return Decision(None, reason, refusal)


def _released(rule: SecretRule, via: str, reason: str) -> Decision:
    return Decision(rule, reason, None, None if is_mr_enclave(via) else via)


def check_client(evidence: ClientEvidence, policy: AccessPolicy) -> Decision | None:
    """Steps 1-3: the refusal of this client whatever it asks for, or None."""
    if isinstance(evidence, Unverified):
        return _refused(
            Refusal.NO_COLLATERAL if evidence.no_collateral else Refusal.EVIDENCE, evidence.reason
        )
    reason = policy.tcb.refusal(evidence.quote)
    if reason is not None:
        return _refused(Refusal.QUOTE_POLICY, reason)
    if policy.client_filter is not None:
        mismatch = policy.client_filter.mismatch(evidence.peer)
        if mismatch is not None:
            return _refused(Refusal.CLIENT_FILTER, f"client_ra_config: {mismatch}")
    return None


@dataclass(frozen=True)
class CertificateDecision:
    """Whether an enclave receives a serving certificate, and why (or why not)."""

    allowed: bool
    reason: str
    refusal: Refusal | None = None
    service: str | None = None  # the measured service (or the secret's allow entry) admitting it

    @property
    def attested(self) -> bool:
        return self.refusal not in UNATTESTED


def decide_certificate(evidence: ClientEvidence, policy: AccessPolicy) -> CertificateDecision:
    """Whether the client with *evidence* may have its serving key certified under *policy*."""
    refused = check_client(evidence, policy)
    if refused is not None:
        assert refused.refusal is not None
        return CertificateDecision(False, refused.reason, refused.refusal)
    assert isinstance(evidence, Evidence)
    who = evidence.identity
    for m in policy.secrets.measurements:
        if m.identity == who:
            return CertificateDecision(
                True, f"certified: build of {m.service!r} in the measurements", None, m.service
            )
    for rule in policy.secrets.secrets:
        via = policy.secrets.admits(rule, who)
        if via is not None:
            return CertificateDecision(
                True, f"certified: secret {rule.name!r} is released to it via {via}", None, via
            )
    return CertificateDecision(
        False,
        "no serving certificate: this enclave identity is neither a build in the "
        "measurements nor released any secret",
        Refusal.NOT_RELEASED,
    )


def decide(evidence: ClientEvidence, requested: RequestedSecret, policy: AccessPolicy) -> Decision:
    """The secret *requested* by the client with *evidence* receives under *policy*, or why
    none (see the module docstring)."""
    refused = check_client(evidence, policy)
    if refused is not None:
        return refused
    assert isinstance(evidence, Evidence)
    if isinstance(requested, ByName):
        return _by_name(policy.secrets, evidence.identity, requested.name)
    try:
        server_name = requested.server_name.decode() if requested.server_name else None
    except UnicodeDecodeError:
        return _refused(Refusal.BAD_SERVER_NAME, "the TLS server name (SNI) is not valid UTF-8")
    return _by_server_name(policy.secrets, evidence.identity, server_name)


def _by_server_name(policy: Policy, who: Identity, server_name: str | None) -> Decision:
    rules = [r for r in policy.secrets if r.encoding == "raw" and r.requested_as is None]
    named = [rule for rule in rules if rule.name == server_name]
    if named:
        via = policy.admits(named[0], who)
        if via is None:
            return _refused(
                Refusal.NOT_RELEASED,
                f"secret {named[0].name!r} (the TLS server "
                "name) is not released to this enclave "
                "identity",
            )
        return _released(named[0], via, f"allowed via {via} (named by the TLS server name)")
    candidates = [(rule, via) for rule in rules if (via := policy.admits(rule, who)) is not None]
    if not candidates:
        return _refused(Refusal.NOT_RELEASED, "no secret is released to this enclave identity")
    if len(candidates) > 1:
        names = ", ".join(sorted(rule.name for rule, _ in candidates))
        return _refused(
            Refusal.NOT_RELEASED,
            f"several secrets ({names}) match and the TLS server name {server_name!r} selects none",
        )
    rule, via = candidates[0]
    return _released(rule, via, f"allowed via {via}")


def _by_name(policy: Policy, who: Identity, name: str) -> Decision:
    if not policy.knows(name):
        return _refused(Refusal.UNKNOWN_SECRET, f"no secret named {name!r}")
    named = [rule for rule in policy.secrets if rule.name == name]
    if named:
        via = policy.admits(named[0], who)
        if via is None:
            return _refused(
                Refusal.NOT_RELEASED, f"secret {name!r} is not released to this enclave identity"
            )
        return _released(named[0], via, f"allowed via {via}")
    candidates = [
        (rule, via)
        for rule in policy.secrets
        if rule.requested_as == name
        if (via := policy.admits(rule, who)) is not None
    ]
    if not candidates:
        return _refused(
            Refusal.NOT_RELEASED,
            f"no secret asked for as {name!r} is released to this enclave identity",
        )
    if len(candidates) > 1:
        names = ", ".join(sorted(rule.name for rule, _ in candidates))
        return _refused(
            Refusal.NOT_RELEASED,
            f"several secrets ({names}) are asked for as "
            f"{name!r} and released to this enclave identity",
        )
    rule, via = candidates[0]
    return _released(rule, via, f"allowed via {via} (secret {rule.name!r})")
