"""What the connection machinery (:mod:`attestation.server.admission`) asks of a protocol, and
what it hands over: a :class:`Session` per connection whose TLS handshake succeeded.

A protocol names the TLS context its listener uses, says how a failed handshake is audited,
and converses on the handshaken connection: it verifies the client
(:class:`~attestation.server.verifier.Verifier`), asks :func:`~attestation.server.decide.decide`,
answers, and fills in the connection's :class:`~attestation.server.audit.ConnectionEvent`
(the machinery writes it when the connection ends, unless the protocol wrote its own lines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from OpenSSL import SSL

from ..upload import UploadStore
from .audit import AttestedIdentity, AuditLog, ConnectionEvent
from .decide import ClientEvidence, Evidence
from .state import ServerState


@dataclass
class Session:
    """One connection after its TLS handshake."""

    conn: SSL.Connection
    state: ServerState  # as it was when the connection started
    event: ConnectionEvent  # its audit line
    deadline: float  # time.monotonic() by which the connection is cut
    audit: AuditLog
    uploads: UploadStore  # keys owners uploaded ([upload]); this process's memory
    audited: bool = False  # the protocol wrote the connection's lines itself

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def note_client(self, evidence: ClientEvidence, attested: bool) -> None:
        """Record what the client's evidence showed: its format, and its identity when the
        quote was accepted (*attested*)."""
        if evidence.format is not None:
            self.event.evidence = evidence.format
        if attested and isinstance(evidence, Evidence):
            self.event.identity = AttestedIdentity.of(evidence.quote)


class SecretProtocol(Protocol):
    @property
    def audit_name(self) -> str | None:
        """The audit lines' ``protocol`` field (None: left out)."""

    def context(self, state: ServerState) -> SSL.Context:
        """The TLS context of this protocol's listener."""

    def handshake_failed(self, event: ConnectionEvent, reason: str) -> None:
        """Record in *event* how a connection whose TLS handshake failed ends."""

    def converse(self, session: Session) -> None:
        """Serve one connection (the handshake is done); fill in ``session.event``."""
