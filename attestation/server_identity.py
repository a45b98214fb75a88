"""The secret server's own TLS identity when it runs as an enclave service.

* ``[server] identity = "ca-cert"`` (default): the secret_prov listener presents the CA-signed
  ``cert``/``key`` files, as Gramine's provisioning clients check them.
* ``[server] identity = "ratls"``: it presents a TCG DICE RA-TLS certificate instead (Gramine
  peers that verify the server's quote), made at start.
* ``[grsecret]`` configured: that listener always presents an Occlum-format RA-TLS certificate
  (RSA-2048, quote in 1.2.840.113741.1): Occlum's client accepts nothing else.

Both are made once per start, with fresh keys, from :func:`attestation.quote_source.discover`
(the Gramine quote device, or the simulated quoter in a simulation); a reload keeps them. The
private keys stay in this process's memory (they are loaded into OpenSSL contexts, never written
to a file).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from .config import SecretsConfig
from .quote_source import QuoteSource, QuoteSourceError, discover
from .ratls import server_certificate
from .errors import AttestationError


class IdentityError(AttestationError, RuntimeError):
    """The server's RA-TLS identity cannot be made."""


@dataclass(frozen=True)
class ServerIdentity:
    dice: tuple[bytes, bytes] | None = None      # (cert_pem, key_pem) for the secret_prov port
    occlum: tuple[bytes, bytes] | None = None    # (cert_pem, key_pem) for the GrSecret port

    @classmethod
    def make(cls, config: SecretsConfig, quote_source: QuoteSource | None = None
             ) -> "ServerIdentity":
        wants_dice = config.server.identity == "ratls"
        wants_occlum = config.grsecret is not None
        if not (wants_dice or wants_occlum):
            return cls()
        try:
            source = quote_source or discover()
            dice = server_certificate("dice", source) if wants_dice else None
            occlum = server_certificate("occlum", source) if wants_occlum else None
        except QuoteSourceError as exc:
            why = ("server.identity = \"ratls\"" if wants_dice else "[grsecret]")
            raise IdentityError(f"{config.path}: {why} needs an RA-TLS certificate: "
                                f"{exc}") from None
        return cls(dice, occlum)

    def matches(self, config: SecretsConfig) -> bool:
        """Whether *config* needs exactly the certificates this identity has (a reload cannot
        add or drop one: the server would have to attest anew)."""
        return ((self.dice is not None) == (config.server.identity == "ratls")
                and (self.occlum is not None) == (config.grsecret is not None))


def use_pem(ctx: SSL.Context, pair: tuple[bytes, bytes]) -> None:
    """Load an in-memory certificate and key into *ctx*."""
    cert_pem, key_pem = pair
    ctx.use_certificate(x509.load_pem_x509_certificate(cert_pem))
    ctx.use_privatekey(serialization.load_pem_private_key(key_pem, None))
    ctx.check_privatekey()


def _accept_any(conn, cert, errno, depth, ok) -> bool:  # noqa: ANN001
    return True


def _select_h2(conn: SSL.Connection, offered: list[bytes]):  # noqa: ANN202
    return b"h2" if b"h2" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def grsecret_context(config: SecretsConfig, identity: ServerIdentity) -> SSL.Context:
    """TLS for the GrSecret listener: the Occlum-format RA-TLS certificate, ALPN h2, any client
    certificate accepted by the handshake (its RA-TLS evidence is verified right after, before
    a request is read); a client without one completes the handshake and is told why it is
    refused (gRPC UNAUTHENTICATED) instead of seeing a bare handshake failure."""
    if identity.occlum is None:
        raise IdentityError("no Occlum RA-TLS certificate was made for [grsecret]")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    use_pem(ctx, identity.occlum)
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    ctx.set_alpn_select_callback(_select_h2)
    return ctx
