"""service.json: what a deployment needs to know about a built service.

The build writes it next to measurements.json (which says *what* was built: identity and image);
this file says *how it runs*: enclave size and threads, ports, health and metrics endpoints, the
server's drain on SIGTERM, the numeric user, host paths the libOS opens read-write, the keys it
fetches and from which secret server, and the spec's ``[deploy]`` settings. Nothing in it is
secret. ``enclave-build k8s`` reads only the build output directory::

    {"version": 1, "service": "face-detect", "framework": "tflite", "libos": "gramine",
     "enclave": {"size": 2147483648, "max_threads": 32, "edmm": false},
     "ports": [{"name": "grpc", "number": 8001, "protocol": "TCP"}, ...],
     "health": {"kind": "kserve-v2", "port": "http", "scheme": "HTTP",
                "live": "/v2/health/live", "ready": "/v2/health/ready"},
     "metrics": {"port": "http", "path": "/metrics", "scheme": "HTTP"} | null,
     "drain_seconds": 20.0 | null, "run_as": {"user": 10001, "group": 0},
     "writable_paths": ["/models/face_detection"], "keys": ["face-detect-key"],
     "secret_server": "localhost:4433" | null, "tls": false, "deploy": {...}}

``health.kind`` is ``kserve-v2`` for enclave-build's model server (HTTP probes on its REST
port) and ``tcp`` for servers whose health endpoints enclave-build does not know (a TCP check
on the gRPC port).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EnclaveBuildError
from ..plan import MountType, ServicePlan
from .settings import DeploySpec

SERVICE_FILE = "service.json"
FORMAT_VERSION = 1
#: Where enclave-build's model server reads its configuration (see builder.plugin_api).
MODEL_SERVER_CONFIG = "/enclave/model-server.json"


class ServiceInfoError(EnclaveBuildError):
    """A service.json file is missing or malformed."""

    exit_code = 2


@dataclass(frozen=True)
class ServicePort:
    name: str
    number: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Health:
    kind: str                    # "kserve-v2" or "tcp"
    port: str                    # port name
    scheme: str = "HTTP"         # HTTP or HTTPS (kserve-v2)
    live: str | None = None      # paths (kserve-v2)
    ready: str | None = None


@dataclass(frozen=True)
class MetricsEndpoint:
    port: str
    path: str
    scheme: str = "HTTP"


@dataclass(frozen=True)
class EnclaveInfo:
    size: int
    max_threads: int
    edmm: bool = False


@dataclass(frozen=True)
class RunAs:
    user: int
    group: int


@dataclass(frozen=True)
class ServiceInfo:
    service: str
    framework: str
    libos: str
    enclave: EnclaveInfo
    ports: tuple[ServicePort, ...]
    health: Health
    run_as: RunAs
    metrics: MetricsEndpoint | None = None
    drain_seconds: float | None = None
    writable_paths: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    secret_server: str | None = None
    tls: bool = False
    deploy: DeploySpec = field(default_factory=DeploySpec)
    version: int = FORMAT_VERSION

    def port(self, name: str) -> ServicePort:
        for item in self.ports:
            if item.name == name:
                return item
        raise ServiceInfoError(f"service {self.service!r} has no port named {name!r}")

    def to_json(self) -> str:
        data = asdict(self)
        data["deploy"] = self.deploy.to_dict()
        order = ["version"] + [k for k in data if k != "version"]
        return json.dumps({k: data[k] for k in order}, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "ServiceInfo":
        if not isinstance(data, dict):
            raise ServiceInfoError(f"{source}: expected a JSON object")
        if data.get("version") != FORMAT_VERSION:
            raise ServiceInfoError(f"{source}: version: {data.get('version')!r}; this "
                                   f"enclave-build reads version {FORMAT_VERSION} (rebuild)")
        try:
            deploy_values = data.get("deploy") or {}
            unknown = set(deploy_values) - set(DeploySpec().to_dict())
            if unknown:
                raise ServiceInfoError(f"{source}: deploy: unknown keys "
                                       f"{', '.join(sorted(unknown))}")
            metrics = data.get("metrics")
            info = cls(
                service=_typed(data, "service", str, source),
                framework=_typed(data, "framework", str, source),
                libos=_typed(data, "libos", str, source),
                enclave=EnclaveInfo(**_typed(data, "enclave", dict, source)),
                ports=tuple(ServicePort(**p) for p in _typed(data, "ports", list, source)),
                health=Health(**_typed(data, "health", dict, source)),
                run_as=RunAs(**_typed(data, "run_as", dict, source)),
                metrics=MetricsEndpoint(**metrics) if metrics is not None else None,
                drain_seconds=data.get("drain_seconds"),
                writable_paths=tuple(data.get("writable_paths", ())),
                keys=tuple(data.get("keys", ())),
                secret_server=data.get("secret_server"),
                tls=bool(data.get("tls", False)),
                deploy=DeploySpec.from_values(deploy_values))
        except TypeError as exc:
            raise ServiceInfoError(f"{source}: malformed: {exc}") from None
        if info.enclave.size <= 0 or info.enclave.max_threads < 1:
            raise ServiceInfoError(f"{source}: enclave: size and max_threads must be positive")
        if info.health.kind not in ("kserve-v2", "tcp"):
            raise ServiceInfoError(f"{source}: health.kind: {info.health.kind!r}; allowed: "
                                   "kserve-v2, tcp")
        info.port(info.health.port)
        if info.metrics is not None:
            info.port(info.metrics.port)
        return info

    @classmethod
    def load(cls, path: str | Path) -> "ServiceInfo":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ServiceInfoError(f"{path}: not found: the build predates service.json "
                                   "(rebuild with this enclave-build)") from None
        except (OSError, ValueError) as exc:
            raise ServiceInfoError(f"{path}: cannot read: {exc}") from None
        return cls.from_dict(data, str(path))


def _typed(data: dict, key: str, kind: type, source: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise ServiceInfoError(f"{source}: {key}: expected {kind.__name__}")
    return value


def _server_config(plan: ServicePlan) -> dict[str, Any] | None:
    for item in plan.files:
        if item.dest == MODEL_SERVER_CONFIG and item.data is not None:
            try:
                return json.loads(item.data)
            except ValueError:
                return None
    return None


def service_info(plan: ServicePlan, deploy: DeploySpec, run_as: tuple[int, int], *,
                 tls: bool) -> ServiceInfo:
    """Describe *plan* for deployment. For enclave-build's model server the health, metrics,
    ports and drain come from its own (measured) configuration file in the plan."""
    ports = tuple(ServicePort(p.name, p.number, p.protocol) for p in plan.ports)
    config = _server_config(plan)
    metrics = drain = None
    if config is not None and config.get("rest"):
        scheme = "HTTPS" if config.get("tls") else "HTTP"
        rest = next((p.name for p in ports if p.number == config["rest"]["port"]), "http")
        health = Health("kserve-v2", rest, scheme, "/v2/health/live", "/v2/health/ready")
        if config.get("metrics", True):
            metrics = MetricsEndpoint(rest, "/metrics", scheme)
        drain = float(config.get("drain_seconds", 20))
        tls = bool(config.get("tls"))
    else:
        if not ports:
            raise EnclaveBuildError(f"service {plan.service!r} listens on no port: nothing to "
                                    "probe or expose")
        grpc = next((p.name for p in ports if p.name == "grpc"), ports[0].name)
        health = Health("tcp", grpc)
    writable = tuple(sorted({(m.uri or "file:" + m.path).removeprefix("file:")
                             for m in plan.mounts if m.type is MountType.ENCRYPTED}))
    secrets = plan.secrets
    return ServiceInfo(
        service=plan.service, framework=plan.framework, libos=plan.libos,
        enclave=EnclaveInfo(plan.enclave.size, plan.enclave.max_threads, plan.enclave.edmm),
        ports=ports, health=health, run_as=RunAs(*run_as), metrics=metrics,
        drain_seconds=drain, writable_paths=writable,
        keys=tuple(k.name for k in secrets.keys) if secrets else (),
        secret_server=secrets.server if secrets and secrets.keys else None,
        tls=tls, deploy=deploy)
