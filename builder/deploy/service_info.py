"""service.json on the builder's side: what the build writes about a service, and the checks
of `enclave-build k8s` that need the builder (image references, EPC margins).

The format is the contract type :class:`enclave_build.contract.service_info.ServiceInfo` (one
definition, one writer, one reader); :class:`ServiceInfo` here is that type reading with the
``[deploy]`` checks the spec has too, and failing with :class:`ServiceInfoError` (exit code 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from enclave_build.contract import service_info as contract
from enclave_build.contract.deploy import DeploySpec
from enclave_build.contract.schema import Problem
from enclave_build.contract.service_info import (
    EnclaveInfo,
    Health,
    MetricsEndpoint,
    RunAs,
    ServicePort,
)

from ..errors import EnclaveBuildError
from ..plan import KeyDelivery, MountType, ServicePlan
from .settings import LIBOS, check_deploy


class ServiceInfoError(contract.ServiceInfoError, EnclaveBuildError):
    """A service.json file is missing or malformed."""

    exit_code = 2


def _builder_checks(values: Mapping[str, Any], problems: list[Problem]) -> None:
    """The spec's [deploy] cross-key checks (image references pinned by digest, CPU against
    threads, ...), and an EPC margin for the libOS."""
    deploy = values.get("deploy")
    if isinstance(deploy, dict):
        given = {k: v for k, v in deploy.items() if v is not None}
        check_deploy(DeploySpec.from_values(given).to_dict(), values.get("enclave") or {}, problems)
    libos = values.get("libos")
    margin = (deploy or {}).get("epc_margin") if isinstance(deploy, dict) else None
    if isinstance(libos, str) and libos not in LIBOS and margin is None:
        problems.append(
            Problem(
                ("libos",),
                f"{libos!r}: no EPC margin known for it (known: "
                f"{', '.join(LIBOS)}); set [deploy] epc_margin in "
                "the spec and rebuild",
            )
        )


class ServiceInfo(contract.ServiceInfo):
    """service.json, read with the builder's checks (see the module's doc)."""

    error = ServiceInfoError

    @classmethod
    def extra_checks(cls, values: Mapping[str, Any], problems: list[Problem]) -> None:
        _builder_checks(values, problems)


def service_info(
    plan: ServicePlan, deploy: DeploySpec, run_as: tuple[int, int], *, tls: bool
) -> ServiceInfo:
    """Describe *plan* for deployment. For enclave-build's model server the health, metrics,
    ports and drain come from its own (measured) configuration file in the plan."""
    ports = tuple(ServicePort(p.name, p.number, p.protocol, p.spec_key) for p in plan.ports)
    config = plan.server_config
    metrics = drain = None
    if config is not None and config.rest is not None:
        scheme = "HTTPS" if config.tls is not None else "HTTP"
        rest = next((p.name for p in ports if p.number == config.rest.port), "http")
        health = Health("kserve-v2", rest, scheme, "/v2/health/live", "/v2/health/ready")
        if config.metrics:
            metrics = MetricsEndpoint(rest, "/metrics", scheme)
        drain = float(config.drain_seconds)
        tls = config.tls is not None
    else:
        if not ports:
            raise EnclaveBuildError(
                f"service {plan.service!r} listens on no port: nothing to probe or expose"
            )
        grpc = next((p.name for p in ports if p.name == "grpc"), ports[0].name)
        health = Health("tcp", grpc)
    writable = tuple(
        sorted(
            {
                (m.uri or "file:" + m.path).removeprefix("file:")
                for m in plan.mounts
                if m.type is MountType.ENCRYPTED
            }
        )
    )
    secrets = plan.secrets
    return ServiceInfo(
        service=plan.service,
        framework=plan.framework,
        libos=plan.libos,
        enclave=EnclaveInfo(plan.enclave.size, plan.enclave.max_threads, plan.enclave.edmm),
        ports=ports,
        health=health,
        run_as=RunAs(*run_as),
        metrics=metrics,
        drain_seconds=drain,
        writable_paths=writable,
        keys=tuple(k.name for k in secrets.keys) if secrets else (),
        secret_server=secrets.server if secrets and secrets.keys else None,
        # Occlum's init fetches every key over mutual RA-TLS: the server must quote too.
        secret_server_enclave=bool(
            secrets
            and secrets.keys
            and (
                secrets.server_trust is not None
                or plan.libos == "occlum"
                or secrets.delivery is KeyDelivery.LIBOS_FILES
            )
        ),
        ra_tls_identity=plan.needs_quote_device,
        tls=tls,
        deploy=deploy,
        trim=plan.enclave.trim,
    )
