"""What a reload replaces, all at once: the configuration, the policy each listener decides
with, the client verifier (collateral, root, a fresh verification cache) and the TLS contexts.
A connection takes the state current when it starts and keeps it to its end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL

from enclave_build.contract.secrets_config import SecretsConfig

from ..occlum_ra import RaConfig
from ..policy import Policy
from ..verify import TcbPolicy
from .decide import AccessPolicy
from .identity import ServerIdentity
from .issuer import Issuer
from .tls import grsecret_context, secret_prov_context
from .verifier import ClientVerifier, Verifier

VerifierFactory = Callable[[SecretsConfig], Verifier]


@dataclass(frozen=True)
class ServerState:
    config: SecretsConfig
    policy: Policy
    verifier: Verifier
    secret_prov: AccessPolicy  # Gramine's secret_prov listener
    grsecret: AccessPolicy  # Occlum's GrSecret listener (client_ra_config)
    secret_prov_context: SSL.Context
    grsecret_context: SSL.Context | None  # None without [grsecret]
    issuer: Issuer | None = None  # [issuer]: serving certificates for attested enclaves

    @classmethod
    def load(
        cls,
        config: SecretsConfig,
        identity: ServerIdentity,
        verifier_for: VerifierFactory = ClientVerifier.for_config,
    ) -> ServerState:
        """Build everything from *config*; PolicyError, RaConfigError, VerifierConfigError
        IssuerError (``[issuer]``) and SSL.Error (the TLS certificate and key) say what is
        wrong with it."""
        policy = Policy.build(list(config.measurements), list(config.secrets), config.path.parent)
        grpc = config.grsecret
        client_filter = (
            RaConfig.load(grpc.client_ra_config)
            if grpc is not None and grpc.client_ra_config
            else None
        )
        verifier = verifier_for(config)
        tcb = TcbPolicy.of(config.attestation.tcb)  # as this verifier applies it
        return cls(
            config,
            policy,
            verifier,
            AccessPolicy(policy, tcb),
            AccessPolicy(policy, tcb, client_filter),
            secret_prov_context(config, identity),
            grsecret_context(config, identity) if grpc is not None else None,
            Issuer.load(config.issuer) if config.issuer is not None else None,
        )
