"""Occlum's ``ratls.GrSecret/GetSecret`` on the ``[grsecret]`` listener, over mutual RA-TLS.

The server presents an Occlum-format RA-TLS certificate (:mod:`attestation.server.identity`).
Right after the handshake, before any HTTP/2 is read, the client must have negotiated ALPN h2
and its RA-TLS evidence is verified; then :mod:`attestation.grsecret` serves the calls, and
each call's ``SecretRequest.name`` is decided by :func:`~attestation.server.decide.decide`
(Occlum's optional ``client_ra_config`` filter included). Refusals are gRPC statuses with the
reason. One audit line per call; one for a connection with no call, or one that ended badly.
"""

from __future__ import annotations

from OpenSSL import SSL

from .. import grsecret
from ..grsecret import RpcOutcome, Status
from .audit import ConnectionEvent
from .decide import ByName, Refusal, check_client, decide
from .protocol import Session
from .secret_source import Unavailable, read_secret
from .state import ServerState

#: The gRPC status each refusal is answered with.
STATUS = {
    Refusal.EVIDENCE: Status.UNAUTHENTICATED,
    Refusal.QUOTE_POLICY: Status.UNAUTHENTICATED,
    Refusal.NO_COLLATERAL: Status.UNAVAILABLE,
    Refusal.CLIENT_FILTER: Status.PERMISSION_DENIED,
    Refusal.BAD_SERVER_NAME: Status.INVALID_ARGUMENT,
    Refusal.UNKNOWN_SECRET: Status.NOT_FOUND,
    Refusal.NOT_RELEASED: Status.PERMISSION_DENIED,
}


class GrSecretService:
    """The GrSecret listener's protocol."""

    audit_name = "grsecret"

    def context(self, state: ServerState) -> SSL.Context:
        assert state.grsecret_context is not None
        return state.grsecret_context

    def handshake_failed(self, event: ConnectionEvent, reason: str) -> None:
        event.deny(f"TLS handshake failed: {reason}")

    def converse(self, session: Session) -> None:
        conn, state, event = session.conn, session.state, session.event
        if conn.get_alpn_proto_negotiated() != grsecret.ALPN:
            event.deny("the client did not negotiate HTTP/2 (ALPN h2): GrSecret is a gRPC service")
            return
        evidence = state.verifier.verify(conn.get_peer_certificate(), session.seconds_left())
        refused = check_client(evidence, state.grsecret)  # whatever the client asks for
        session.note_client(evidence, refused is None or refused.attested)

        def handle(name: str) -> RpcOutcome:
            decision = decide(evidence, ByName(name), state.grsecret)
            if decision.secret is None:
                assert decision.refusal is not None
                return RpcOutcome(STATUS[decision.refusal], decision.reason)
            rule = decision.secret
            secret = read_secret(rule, session.uploads)
            if isinstance(secret, Unavailable):
                return RpcOutcome(
                    Status.UNAVAILABLE if secret.not_uploaded else Status.INTERNAL, secret.reason
                )
            try:
                secret = rule.encode(secret)  # e.g. Occlum's image-key text (hex-dashes)
            except ValueError as exc:
                return RpcOutcome(Status.INTERNAL, f"secret {rule.name!r}: {exc}")
            return RpcOutcome(Status.OK, decision.reason, secret)

        def audit(name: str, outcome: RpcOutcome) -> None:
            session.audit.write(
                event.for_call(
                    name,
                    outcome.code == Status.OK,
                    outcome.message,
                    Status.NAMES.get(outcome.code, str(outcome.code)),
                )
            )

        settings = state.config.grsecret
        assert settings is not None  # this listener exists only with [grsecret]
        summary = grsecret.serve(
            conn,
            handle,
            deadline=session.deadline,
            idle=settings.idle,
            max_requests=settings.max_requests,
            on_answer=audit,
        )
        if summary.requests and summary.clean:
            session.audited = True  # one line per call, nothing else to say
        elif summary.requests:  # calls audited above; how the connection ended is news too
            event.deny(f"connection ended after {summary.requests} call(s): {summary.end}")
        else:
            event.deny(
                (refused.reason if refused is not None else "no GetSecret call")
                + f" ({summary.end})"
            )
