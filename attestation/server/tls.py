"""The secret server's TLS contexts (pyOpenSSL), one per listener.

Python's ``ssl`` cannot accept an unknown self-signed client certificate, so both contexts
accept any client certificate in the handshake; the RA-TLS evidence in it is verified right
after the handshake, before any request is read (:mod:`attestation.server.verifier`).

Both: TLS 1.2 at least, no session tickets, no session cache, no compression and no
renegotiation (the certificate that was verified stays the connection's certificate).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from enclave_build.contract.secrets_config import SecretsConfig

from ..grsecret import ALPN
from ..ratls import RaTlsKey
from .identity import IdentityError, ServerIdentity


def secret_prov_context(config: SecretsConfig, identity: ServerIdentity) -> SSL.Context:
    """Gramine's secret_prov listener: the CA-signed ``[server] cert``/``key`` (or, with
    ``identity = "ratls"``, the server's TCG DICE RA-TLS certificate); TLS 1.3 unless
    ``max_tls = "1.2"``; a client certificate is required. Raises SSL.Error when the
    certificate and key cannot be used."""
    ctx = _base_context(
        SSL.TLS1_2_VERSION if config.server.max_tls == "1.2" else SSL.TLS1_3_VERSION
    )
    if identity.dice is not None:  # identity = "ratls": our own TCG DICE certificate
        use_pem(ctx, identity.dice)
    else:
        ctx.use_certificate_chain_file(str(config.server.cert))
        ctx.use_privatekey_file(str(config.server.key))
        ctx.check_privatekey()
    # No Python verify logic: OpenSSL's own chain check of a self-signed certificate fails,
    # and that is ignored here.
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any)
    return ctx


def grsecret_context(config: SecretsConfig, identity: ServerIdentity) -> SSL.Context:
    """Occlum's GrSecret listener: the Occlum-format RA-TLS certificate, ALPN h2, any client
    certificate accepted by the handshake; a client without one completes the handshake and
    is told why it is refused (gRPC UNAUTHENTICATED) instead of seeing a bare handshake
    failure."""
    if identity.occlum is None:
        raise IdentityError("no Occlum RA-TLS certificate was made for [grsecret]")
    ctx = _base_context(SSL.TLS1_3_VERSION)
    use_pem(ctx, identity.occlum)
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    ctx.set_alpn_select_callback(_select_h2)
    return ctx


def use_pem(ctx: SSL.Context, pair: tuple[bytes, bytes]) -> None:
    """Load an in-memory certificate and key into *ctx*."""
    cert_pem, key_pem = pair
    ctx.use_certificate(x509.load_pem_x509_certificate(cert_pem))
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, RaTlsKey)  # made by ratls.server_certificate
    ctx.use_privatekey(key)
    ctx.check_privatekey()


def describe(exc: BaseException) -> str:
    """An OpenSSL error's reasons (or any exception's text), for audit lines and messages."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        parts = [item[-1] for item in exc.args[0] if isinstance(item, tuple)]
        return "; ".join(parts) or type(exc).__name__
    return str(exc) or type(exc).__name__


def _base_context(max_version: int) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(max_version)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return ctx


def _accept_any(conn, cert, errno, depth, ok) -> bool:
    return True


def _select_h2(conn: SSL.Connection, offered: list[bytes]):
    return ALPN if ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS
