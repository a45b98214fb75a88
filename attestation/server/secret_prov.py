"""Gramine's secret_prov exchange (``libsecret_prov_attest.so``), and on the same listener the
owners' key upload (:mod:`attestation.upload`).

After the TLS handshake:

1. a client certificate without SGX evidence, on a server with ``[upload]``, is an owner's:
   :func:`attestation.upload.serve_upload` takes the connection;
2. otherwise the client's RA-TLS evidence is verified and :func:`~attestation.server.decide.decide`
   decides from it and the TLS server name (SNI) which secret, if any, the client receives;
3. only then is the request read — exactly ``SECRET_PROVISION_RA_TLS_REQUEST_V1`` + NUL (35
   bytes) — and answered with ``SECRET_PROVISION_RA_TLS_RESPONSE_V1:`` + NUL (37 bytes), a
   4-byte big-endian length and the secret; then close_notify. A refusal reads the request and
   answers with :data:`attestation.wire.REFUSAL` and the reason (the audit line's text), so the
   enclave can say why it was refused.

An enclave asking for its serving certificate names :data:`~attestation.server.issuer.
CERT_SERVER_NAME` as the TLS server name: after step 2's verification the connection is
:func:`~attestation.server.issuer.serve_certificate`'s.

On a server with an RA-TLS identity, a client that only read the server's certificate
(``enclave-build attest``: no client certificate, nothing asked for) is audited as
``identity-only``, not as a refused enclave.
"""

from __future__ import annotations

import errno
import hashlib

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from .. import upload
from ..wire import REQUEST, RESPONSE, refusal
from .audit import IDENTITY_ONLY, ConnectionEvent
from .decide import ByServerName, decide
from .issuer import CERT_SERVER_NAME, serve_certificate
from .protocol import Session
from .secret_source import Unavailable, read_secret
from .state import ServerState
from .verifier import utc_now


class SecretProv:
    """The secret_prov listener's protocol."""

    audit_name = None  # (its lines predate the field)

    def __init__(self, ratls_identity: bool):
        self._ratls_identity = ratls_identity  # the server presents its own RA-TLS certificate

    def context(self, state: ServerState) -> SSL.Context:
        return state.secret_prov_context

    def handshake_failed(self, event: ConnectionEvent, reason: str) -> None:
        if "did not return a certificate" in reason:
            # Nothing can be asked without a client certificate: a client that only reads
            # this server's certificate (`enclave-build attest`, `dev`'s check of who
            # answers) is recorded as such, not as a refused request.
            event.decision = IDENTITY_ONLY
            event.reason = (
                "the client read this server's RA-TLS certificate without "
                "presenting one (enclave-build attest); nothing was requested"
                if self._ratls_identity
                else "the client read this server's certificate without presenting one "
                "(a reachability check); nothing was requested"
            )
            return
        event.deny(f"TLS handshake failed: {reason}")

    def converse(self, session: Session) -> None:
        conn, state, event = session.conn, session.state, session.event
        if state.config.upload is not None:
            owner = conn.get_peer_certificate(as_cryptography=True)
            der = owner.public_bytes(Encoding.DER) if owner is not None else None
            if der is not None and upload.is_owner_certificate(der):
                _serve_upload(session, der)
                return
        evidence = state.verifier.verify(conn.get_peer_certificate(), session.seconds_left())
        if conn.get_servername() == CERT_SERVER_NAME.encode():
            serve_certificate(session, evidence, lambda n: read_exact(conn, n), utc_now)
            return
        decision = decide(evidence, ByServerName(conn.get_servername()), state.secret_prov)
        session.note_client(evidence, decision.attested)
        if decision.secret is None:
            event.deny(decision.reason)
            _refuse(conn, decision.reason)
            return
        rule = decision.secret
        event.secret = rule.name
        request = read_exact(conn, len(REQUEST))
        if conn.pending():
            event.deny(f"request longer than {len(REQUEST)} bytes")
            return
        if request != REQUEST:
            event.deny(f"malformed request ({len(request)} bytes, not {REQUEST[:-1].decode()!r})")
            return
        secret = read_secret(rule, session.uploads)
        if isinstance(secret, Unavailable):
            event.deny(secret.reason)
            if secret.not_uploaded:
                conn.sendall(refusal(secret.reason))  # the request was read already
            return
        conn.sendall(RESPONSE + len(secret).to_bytes(4, "big") + secret)
        event.allow(decision.reason)


def _serve_upload(session: Session, der: bytes) -> None:
    """An owner (a certificate without SGX evidence) uploading keys."""
    conn, state, event = session.conn, session.state, session.event
    event.event, event.owner = "upload", hashlib.sha256(der).hexdigest()
    settings = state.config.upload
    # load_config reads the owners' certificates into the server's own UploadSettings
    assert isinstance(settings, upload.UploadSettings)
    outcome = upload.serve_upload(
        lambda n: read_exact(conn, n),
        conn.sendall,
        der,
        settings,
        session.uploads,
        [r.name for r in state.config.secrets if r.file is None],
    )
    event.secrets = outcome.secrets
    if outcome.allowed:
        event.allow(outcome.reason)
    else:
        event.deny(outcome.reason)


def _refuse(conn: SSL.Connection, reason: str) -> None:
    """Tell an attested-and-refused client why: read its request (so closing does not reset
    the connection under the answer), then send the refusal. Best effort."""
    try:
        read_exact(conn, len(REQUEST))
        conn.sendall(refusal(reason))
    except (SSL.Error, OSError):
        pass


def read_exact(conn: SSL.Connection, size: int) -> bytes:
    """Up to *size* bytes; fewer when the client closed (with or without close_notify)."""
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except SSL.ZeroReturnError:
            break
        except SSL.SysCallError as exc:  # closed without close_notify, or reset: short read
            if exc.args and exc.args[0] in (-1, errno.ECONNRESET):
                break
            raise
        if not chunk:
            break
        data += chunk
    return data
