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
     "secret_server": "localhost:4433" | null, "secret_server_enclave": false,
     "ra_tls_identity": false, "tls": false, "deploy": {...}}

``secret_server_enclave``: the enclave accepts its secret server only as an attested enclave
(``[secrets] server_measurements``, or Occlum's init over mutual RA-TLS), not by a CA-signed
certificate. ``ra_tls_identity``: the program presents an RA-TLS identity of its own, quoting
through ``/dev/attestation`` (enclave-build's secret server built as an enclave).

``health.kind`` is ``kserve-v2`` for enclave-build's model server (HTTP probes on its REST
port) and ``tcp`` for servers whose health endpoints enclave-build does not know (a TCP check
on the gRPC port).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EnclaveBuildError, UsageError
from ..plan import KeyDelivery, MountType, ServicePlan
from .settings import LIBOS, DeploySpec, validate_deploy

SERVICE_FILE = "service.json"
FORMAT_VERSION = 1
#: Where enclave-build's model server reads its configuration (see builder.python_server).
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
    secret_server_enclave: bool = False
    ra_tls_identity: bool = False
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
        """Every key checked for type and range (the file may have been edited): a
        ServiceInfoError names *source* and the key."""
        if not isinstance(data, dict):
            raise ServiceInfoError(f"{source}: expected a JSON object")
        if data.get("version") != FORMAT_VERSION:
            raise ServiceInfoError(f"{source}: version: {data.get('version')!r}; this "
                                   f"enclave-build reads version {FORMAT_VERSION} (rebuild)")
        r = _Reader(source)
        r.keys(data, "", _TOP_KEYS)
        enclave = r.table(data, "enclave", {"size", "max_threads", "edmm"})
        ports = []
        port_list = r.get(data, "ports", list, "a non-empty array of port objects")
        if not port_list:
            r.fail("ports", "expected a non-empty array of port objects")
        for index, item in enumerate(port_list):
            where = f"ports[{index}]"
            item = r.table({where: item}, where, {"name", "number", "protocol"})
            ports.append(ServicePort(
                name=r.text(item, "name", _PORT_NAME, "a Kubernetes port name (at most 15 "
                            "lower-case letters, digits, '-', with a letter)", where),
                number=r.integer(item, "number", 1, 65535, where),
                protocol=r.choice(item, "protocol", ("TCP", "UDP", "SCTP"), where, "TCP")))
        for attr in ("name", "number"):
            seen = [getattr(p, attr) for p in ports]
            if len(set(seen)) != len(seen):
                r.fail("ports", f"two ports with the same {attr}")
        names = {p.name for p in ports}
        health = r.table(data, "health", {"kind", "port", "scheme", "live", "ready"})
        kind = r.choice(health, "kind", ("kserve-v2", "tcp"), "health")
        paths = {key: (r.text(health, key, _HTTP_PATH, "an absolute URL path", "health")
                       if kind == "kserve-v2" or health.get(key) is not None else None)
                 for key in ("live", "ready")}
        run_as = r.table(data, "run_as", {"user", "group"})
        metrics = data.get("metrics")
        if metrics is not None:
            metrics = r.table(data, "metrics", {"port", "path", "scheme"})
        drain = data.get("drain_seconds")
        if drain is not None and (isinstance(drain, bool) or not isinstance(drain, (int, float))
                                  or not 0 <= drain <= 3600):
            r.fail("drain_seconds", f"expected seconds from 0 to 3600 or null, got {drain!r}")
        writable = r.get(data, "writable_paths", list, "an array of absolute paths", [])
        for index, path in enumerate(writable):
            if not isinstance(path, str) or not _ABS_PATH.match(path) or \
                    "/../" in f"{path}/" or "/./" in f"{path}/":
                r.fail(f"writable_paths[{index}]", f"expected an absolute path, got {path!r}")
        keys = r.get(data, "keys", list, "an array of key names", [])
        for index, name in enumerate(keys):
            if not isinstance(name, str) or not _KEY_NAME.match(name):
                r.fail(f"keys[{index}]", f"expected a key name (letters, digits, '_', '-'), "
                       f"got {name!r}")
        server = data.get("secret_server")
        if server is not None or keys:
            server = r.text(data, "secret_server", _HOST_PORT, "HOST:PORT of the secret "
                            "server (required when keys are fetched)")
            if not 1 <= int(server.rpartition(":")[2]) <= 65535:
                r.fail("secret_server", f"port of {server!r} is out of range 1 to 65535")
        info = cls(
            service=r.text(data, "service", _SERVICE_NAME, "a DNS label"),
            framework=r.text(data, "framework", _WORD, "a plugin name"),
            libos=r.text(data, "libos", _WORD, "a libOS name"),
            enclave=EnclaveInfo(r.integer(enclave, "size", 1, 1 << 46, "enclave"),
                                r.integer(enclave, "max_threads", 1, 1 << 16, "enclave"),
                                r.boolean(enclave, "edmm", "enclave", False)),
            ports=tuple(ports),
            health=Health(kind, r.choice(health, "port", sorted(names), "health"),
                          r.choice(health, "scheme", ("HTTP", "HTTPS"), "health", "HTTP"),
                          paths["live"], paths["ready"]),
            run_as=RunAs(r.integer(run_as, "user", 0, (1 << 31) - 1, "run_as"),
                         r.integer(run_as, "group", 0, (1 << 31) - 1, "run_as")),
            metrics=None if metrics is None else MetricsEndpoint(
                r.choice(metrics, "port", sorted(names), "metrics"),
                r.text(metrics, "path", _HTTP_PATH, "an absolute URL path", "metrics"),
                r.choice(metrics, "scheme", ("HTTP", "HTTPS"), "metrics", "HTTP")),
            drain_seconds=None if drain is None else float(drain),
            writable_paths=tuple(writable), keys=tuple(keys), secret_server=server,
            secret_server_enclave=r.boolean(data, "secret_server_enclave", "", False),
            ra_tls_identity=r.boolean(data, "ra_tls_identity", "", False),
            tls=r.boolean(data, "tls", "", False),
            deploy=_deploy({} if data.get("deploy") is None else data["deploy"],
                           enclave, source))
        if info.libos not in LIBOS and info.deploy.epc_margin is None:
            r.fail("libos", f"{info.libos!r}: no EPC margin known for it (known: "
                   f"{', '.join(LIBOS)}); set [deploy] epc_margin in the spec and rebuild")
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


_TOP_KEYS = {"version", "service", "framework", "libos", "enclave", "ports", "health", "run_as",
             "metrics", "drain_seconds", "writable_paths", "keys", "secret_server",
             "secret_server_enclave", "ra_tls_identity", "tls", "deploy"}
_SERVICE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_PORT_NAME = re.compile(r"^(?=.{1,15}\Z)(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_WORD = re.compile(r"^[a-z0-9][-a-z0-9_.]{0,63}\Z")
_HTTP_PATH = re.compile(r"^/[-A-Za-z0-9._~/%]*\Z")
_ABS_PATH = re.compile(r"^/[^\x00-\x1f\x7f]*\Z")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}\Z")  # as [secrets] server


def _deploy(values: Any, enclave: dict, source: str) -> DeploySpec:
    try:
        return validate_deploy(values, enclave, source)
    except UsageError as exc:
        raise ServiceInfoError(str(exc)) from None


class _Reader:
    """Typed look-ups in a JSON object; every failure names the file and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise ServiceInfoError(f"{self.source}: {key}: {message}")

    @staticmethod
    def _key(where: str, key: str) -> str:
        return f"{where}.{key}" if where else key

    def keys(self, data: dict, where: str, allowed: set[str]) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            self.fail(where or "(top level)", f"unknown keys {', '.join(unknown)}; allowed: "
                      f"{', '.join(sorted(allowed))}")

    def get(self, data: dict, key: str, kind: type, what: str, default: Any = None,
            where: str = "") -> Any:
        if key not in data or data[key] is None:
            if default is not None:
                return default
            self.fail(self._key(where, key), f"missing; expected {what}")
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(self._key(where, key), f"expected {what}, got {json.dumps(value)}")
        return value

    def table(self, data: dict, key: str, allowed: set[str]) -> dict:
        value = self.get(data, key, dict, "a JSON object")
        self.keys(value, key, allowed)
        return value

    def text(self, data: dict, key: str, pattern: re.Pattern, what: str,
             where: str = "") -> str:
        value = self.get(data, key, str, f"a string ({what})", where=where)
        if not pattern.match(value):
            self.fail(self._key(where, key), f"{value!r} is not allowed; expected {what}")
        return value

    def integer(self, data: dict, key: str, low: int, high: int, where: str = "") -> int:
        value = self.get(data, key, int, "an integer", where=where)
        if not low <= value <= high:
            self.fail(self._key(where, key), f"{value} is out of range {low} to {high}")
        return value

    def boolean(self, data: dict, key: str, where: str, default: bool) -> bool:
        if data.get(key) is None:
            return default
        return self.get(data, key, bool, "true or false", where=where)

    def choice(self, data: dict, key: str, allowed: Any, where: str,
               default: str | None = None) -> str:
        if default is not None and data.get(key) is None:
            return default
        value = self.get(data, key, str, "a string", where=where)
        if value not in allowed:
            self.fail(self._key(where, key), f"{value!r} is not allowed; allowed: "
                      f"{', '.join(allowed)}")
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
        # Occlum's init fetches every key over mutual RA-TLS: the server must quote too.
        secret_server_enclave=bool(secrets and secrets.keys and (
            secrets.server_trust is not None or plan.libos == "occlum"
            or secrets.delivery is KeyDelivery.LIBOS_FILES)),
        ra_tls_identity=plan.needs_quote_device,
        tls=tls, deploy=deploy)
