"""The secret server's own TLS identity when it runs as an enclave service.

* ``[server] identity = "ca-cert"`` (default): the secret_prov listener presents the CA-signed
  ``cert``/``key`` files, as Gramine's provisioning clients check them.
* ``[server] identity = "ratls"``: it presents a TCG DICE RA-TLS certificate instead (Gramine
  peers that verify the server's quote), made at start.
* ``[grsecret]`` configured: that listener always presents an Occlum-format RA-TLS certificate
  (RSA-2048, quote in 1.2.840.113741.1): Occlum's client accepts nothing else.

Both are made once per start, with fresh keys, from :func:`attestation.quote_source.discover`
(the Gramine quote device, or the simulated quoter in a simulation); a reload keeps them. The
private keys stay in this process's memory (they are loaded into OpenSSL contexts by
:mod:`attestation.server.tls`, never written to a file).
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave_build.contract.secrets_config import SecretsConfig

from ..errors import AttestationError
from ..quote_source import QuoteSource, QuoteSourceError, discover
from ..ratls import server_certificate


class IdentityError(AttestationError, RuntimeError):
    """The server's RA-TLS identity cannot be made."""


@dataclass(frozen=True)
class ServerIdentity:
    dice: tuple[bytes, bytes] | None = None  # (cert_pem, key_pem) for the secret_prov port
    occlum: tuple[bytes, bytes] | None = None  # (cert_pem, key_pem) for the GrSecret port

    @classmethod
    def make(cls, config: SecretsConfig, quote_source: QuoteSource | None = None) -> ServerIdentity:
        wants_dice = config.server.identity == "ratls"
        wants_occlum = config.grsecret is not None
        if not (wants_dice or wants_occlum):
            return cls()
        try:
            source = quote_source or discover()
            dice = server_certificate("dice", source) if wants_dice else None
            occlum = server_certificate("occlum", source) if wants_occlum else None
        except QuoteSourceError as exc:
            why = 'server.identity = "ratls"' if wants_dice else "[grsecret]"
            raise IdentityError(
                f"{config.path}: {why} needs an RA-TLS certificate: {exc}"
            ) from None
        return cls(dice, occlum)

    def matches(self, config: SecretsConfig) -> bool:
        """Whether *config* needs exactly the certificates this identity has (a reload cannot
        add or drop one: the server would have to attest anew)."""
        return (self.dice is not None) == (config.server.identity == "ratls") and (
            self.occlum is not None
        ) == (config.grsecret is not None)
