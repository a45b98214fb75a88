"""Per-model client access control, enforced per request after mutual TLS.

The TLS layer (``tls.client_ca``) has already verified the client's certificate chain; here a
model with ``clients`` in its configuration is used only by a client whose certificate matches
one of them (:mod:`enclave_build.contract.client_access`). REST answers 403 with a KServe-style
JSON error, gRPC PERMISSION_DENIED; each refusal is counted in
``model_server_client_refusals_total{model,protocol}``.

What is restricted on such a model: inference and its metadata (inputs, outputs, platform).
Its readiness (``/v2/models/M/ready``, ModelReady) stays open, as the server's health does:
load balancers and probes check it without a client certificate of their own.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from enclave_build.contract.client_access import ClientIdentity, ClientRule, allows, parse_clients

from .config import ModelConfig
from .errors import ModelServerError

#: Client certificates whose identity is remembered (each connection's is looked up per request).
CACHED_IDENTITIES = 256


class Forbidden(ModelServerError):
    """The client may not use the model; the message says so without naming who may."""


def identity_of(certificate: x509.Certificate) -> ClientIdentity:
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    names = tuple(
        str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
    return ClientIdentity(hashlib.sha256(spki).hexdigest(), names)


@functools.lru_cache(maxsize=CACHED_IDENTITIES)
def identity_of_der(der: bytes) -> ClientIdentity | None:
    """The identity of a DER certificate (REST: ``SSLObject.getpeercert(binary_form=True)``);
    None when it cannot be read."""
    try:
        return identity_of(x509.load_der_x509_certificate(der))
    except ValueError:
        return None


@functools.lru_cache(maxsize=CACHED_IDENTITIES)
def identity_of_pem(pem: bytes) -> ClientIdentity | None:
    """The identity of a PEM certificate (gRPC: the auth context's ``x509_pem_cert``)."""
    try:
        return identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


class ClientAccess:
    """Which models are restricted, and to whom."""

    def __init__(self, rules: dict[str, tuple[ClientRule, ...]] | None = None) -> None:
        self.rules = dict(rules or {})

    @classmethod
    def of(cls, models: Iterable[ModelConfig]) -> ClientAccess:
        return cls({m.name: parse_clients(m.clients) for m in models if m.clients is not None})

    @property
    def restricted(self) -> list[str]:
        return sorted(self.rules)

    def check(self, model: str, client) -> None:
        """Raise Forbidden unless *client* may use *model*. *client* is a zero-argument
        callable giving the client's identity (None: no certificate), called only for a
        restricted model."""
        rules = self.rules.get(model)
        if rules is None:
            return
        if not allows(rules, client()):
            raise Forbidden(
                f"model {model!r} is restricted to named clients, and this client's "
                "certificate is not one of them"
            )


def grpc_identity(context) -> ClientIdentity | None:
    """The client identity of a gRPC call (from its auth context; None: no certificate)."""
    certs = context.auth_context().get("x509_pem_cert") or ()
    return identity_of_pem(certs[0]) if certs else None


__all__ = [
    "ClientAccess",
    "Forbidden",
    "identity_of",
    "identity_of_der",
    "identity_of_pem",
    "grpc_identity",
]
