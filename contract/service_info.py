"""service.json: what a deployment needs to know about a built service.

The build writes it next to measurements.json (which says *what* was built: identity and image);
this file says *how it runs*: enclave size and threads, ports, health and metrics endpoints, the
server's drain on SIGTERM, the numeric user, host paths the libOS opens read-write, the keys it
fetches and from which secret server, and the spec's ``[deploy]`` settings. Nothing in it is
secret. ``enclave-build k8s`` reads only the build output directory::

    {"version": 1, "service": "face-detect", "framework": "tflite", "libos": "gramine",
     "enclave": {"size": 2147483648, "max_threads": 32, "edmm": false},
     "ports": [{"name": "grpc", "number": 8001, "protocol": "TCP",
                "spec_key": "tflite.grpc_port"}, ...],
     "health": {"kind": "kserve-v2", "port": "http", "scheme": "HTTP",
                "live": "/v2/health/live", "ready": "/v2/health/ready"},
     "metrics": {"port": "http", "path": "/metrics", "scheme": "HTTP"} | null,
     "drain_seconds": 20.0 | null, "run_as": {"user": 10001, "group": 0},
     "writable_paths": ["/models/face_detection"], "keys": ["face-detect-key"],
     "secret_server": "localhost:4433" | null, "secret_server_enclave": false,
     "ra_tls_identity": false, "tls": false, "deploy": {...}, "trim": ["/usr/lib/x/"]}

``secret_server_enclave``: the enclave accepts its secret server only as an attested enclave
(``[secrets] server_measurements``, or Occlum's init over mutual RA-TLS), not by a CA-signed
certificate. ``ra_tls_identity``: the program presents an RA-TLS identity of its own, quoting
through ``/dev/attestation`` (enclave-build's secret server built as an enclave).

``health.kind`` is ``kserve-v2`` for enclave-build's model server (HTTP probes on its REST
port) and ``tcp`` for servers whose health endpoints enclave-build does not know (a TCP check
on the gRPC port).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from .deploy import DEPLOY, DeploySpec
from .errors import ContractError
from .files import Locator, NoLocator, parse_json, raise_problems, read_text
from .names import SERVICE_FILE
from .schema import Field, Problem, Section, bad, validate_table

FORMAT_VERSION = 1

SERVICE_NAME = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
PORT_NAME = r"(?=.{1,15}\Z)(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?"
WORD = r"[a-z0-9][-a-z0-9_.]{0,63}"
HTTP_PATH = r"/[-A-Za-z0-9._~/%]*"
ABS_PATH = r"/[^\x00-\x1f\x7f]*"
KEY_NAME = r"[A-Za-z0-9_-]{1,64}"
HOST_PORT = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}"  # as the spec's [secrets] server


class ServiceInfoError(ContractError):
    """A service.json file is missing or malformed."""


# --------------------------------------------------------------------------- schema

ENCLAVE = Section(
    "enclave",
    "the enclave's resources",
    (
        Field("size", "int", "enclave size, bytes", required=True, minimum=1, maximum=1 << 46),
        Field("max_threads", "int", "threads", required=True, minimum=1, maximum=1 << 16),
        Field("edmm", "bool", "SGX2 EDMM", default=False, nullable=True),
    ),
)
PORT = Section(
    "ports",
    "a port the service listens on",
    (
        Field(
            "name",
            "str",
            "its Kubernetes port name",
            required=True,
            pattern=PORT_NAME,
            pattern_doc="a Kubernetes port name (at most 15 lower-case letters, digits, '-', "
            "with a letter)",
        ),
        Field("number", "int", "TCP port", required=True, minimum=1, maximum=65535),
        Field(
            "protocol",
            "str",
            "protocol",
            default="TCP",
            nullable=True,
            choices=("TCP", "UDP", "SCTP"),
        ),
        Field("spec_key", "str", "the spec key that set it (e.g. tflite.grpc_port)", nullable=True),
    ),
)
HEALTH = Section(
    "health",
    "how to probe the service",
    (
        Field(
            "kind",
            "str",
            "kserve-v2 (HTTP probes) or tcp",
            required=True,
            choices=("kserve-v2", "tcp"),
        ),
        Field("port", "str", "the name of the port probed", required=True),
        Field(
            "scheme",
            "str",
            "HTTP or HTTPS (kserve-v2)",
            default="HTTP",
            nullable=True,
            choices=("HTTP", "HTTPS"),
        ),
        Field(
            "live",
            "str",
            "liveness path (kserve-v2)",
            nullable=True,
            pattern=HTTP_PATH,
            pattern_doc="an absolute URL path",
        ),
        Field(
            "ready",
            "str",
            "readiness path (kserve-v2)",
            nullable=True,
            pattern=HTTP_PATH,
            pattern_doc="an absolute URL path",
        ),
    ),
)
METRICS = Section(
    "metrics",
    "where Prometheus scrapes the service",
    (
        Field("port", "str", "the name of the port", required=True),
        Field(
            "path",
            "str",
            "the URL path",
            required=True,
            pattern=HTTP_PATH,
            pattern_doc="an absolute URL path",
        ),
        Field(
            "scheme",
            "str",
            "HTTP or HTTPS",
            default="HTTP",
            nullable=True,
            choices=("HTTP", "HTTPS"),
        ),
    ),
)
RUN_AS = Section(
    "run_as",
    "the numeric user and group the image runs as",
    (
        Field("user", "int", "uid", required=True, minimum=0, maximum=(1 << 31) - 1),
        Field("group", "int", "gid", required=True, minimum=0, maximum=(1 << 31) - 1),
    ),
)
#: service.json writes unset [deploy] keys as null.
DEPLOY_JSON = dataclasses.replace(
    DEPLOY, fields=tuple(dataclasses.replace(f, nullable=True) for f in DEPLOY.fields)
)
SCHEMA = Section(
    "",
    "service.json: how a built service runs",
    (
        Field("version", "int", f"the format version ({FORMAT_VERSION})", required=True),
        Field(
            "service",
            "str",
            "the service's name",
            required=True,
            pattern=SERVICE_NAME,
            pattern_doc="a DNS label",
        ),
        Field(
            "framework",
            "str",
            "the framework plugin",
            required=True,
            pattern=WORD,
            pattern_doc="a plugin name",
        ),
        Field(
            "libos",
            "str",
            "the library OS",
            required=True,
            pattern=WORD,
            pattern_doc="a libOS name",
        ),
        Field("enclave", "table", "the enclave's resources", required=True, section=ENCLAVE),
        Field(
            "ports",
            "list[table]",
            "the ports it listens on",
            required=True,
            section=PORT,
            min_items=1,
        ),
        Field("health", "table", "how to probe it", required=True, section=HEALTH),
        Field("run_as", "table", "its numeric user and group", required=True, section=RUN_AS),
        Field(
            "metrics",
            "table",
            "where metrics are scraped (null: none)",
            section=METRICS,
            nullable=True,
        ),
        Field(
            "drain_seconds",
            "float",
            "how long admitted requests may take on SIGTERM",
            nullable=True,
            minimum=0,
            maximum=3600,
            expect="seconds from 0 to 3600 or null",
        ),
        Field(
            "writable_paths",
            "list[str]",
            "host paths the libOS opens read-write",
            default=[],
            nullable=True,
            item_pattern=ABS_PATH,
            item_doc="an absolute path",
        ),
        Field(
            "keys",
            "list[str]",
            "the keys it fetches",
            default=[],
            nullable=True,
            item_pattern=KEY_NAME,
            item_doc="a key name (letters, digits, '_', '-')",
        ),
        Field(
            "secret_server",
            "str",
            "HOST:PORT of the secret server",
            nullable=True,
            pattern=HOST_PORT,
            pattern_doc="HOST:PORT of the secret server",
        ),
        Field(
            "secret_server_enclave",
            "bool",
            "the secret server must be an attested enclave",
            default=False,
            nullable=True,
        ),
        Field(
            "ra_tls_identity",
            "bool",
            "the program quotes through /dev/attestation",
            default=False,
            nullable=True,
        ),
        Field("tls", "bool", "the service speaks TLS", default=False, nullable=True),
        Field(
            "trim",
            "list[str]",
            "the spec's [enclave] trim: image paths left out of the trusted files",
            default=[],
            nullable=True,
            item_pattern=ABS_PATH,
            item_doc="an absolute path or glob",
        ),
        Field(
            "deploy", "table", "the spec's [deploy] settings", section=DEPLOY_JSON, nullable=True
        ),
    ),
)


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ServicePort:
    name: str
    number: int
    protocol: str = "TCP"
    spec_key: str | None = None  # the spec key that set it (dotted), when known


@dataclass(frozen=True)
class Health:
    kind: str  # "kserve-v2" or "tcp"
    port: str  # port name
    scheme: str = "HTTP"  # HTTP or HTTPS (kserve-v2)
    live: str | None = None  # paths (kserve-v2)
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
    """A service.json. A reader that needs more checks than the format's (the builder's
    ``[deploy]`` checks) subclasses it, overrides :meth:`extra_checks` and sets :attr:`error`."""

    #: The error the reader raises.
    error: ClassVar[type[ContractError]] = ServiceInfoError

    @classmethod
    def extra_checks(cls, values: Mapping[str, Any], problems: list[Problem]) -> None:
        """A reader's checks of the validated *values* beyond the format's: appends located
        problems to *problems* (none here)."""

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
    #: [enclave] trim as written: image paths left out of the trusted files
    trim: tuple[str, ...] = ()
    version: int = FORMAT_VERSION

    def port(self, name: str) -> ServicePort:
        for item in self.ports:
            if item.name == name:
                return item
        raise ServiceInfoError(
            SERVICE_FILE,
            [Problem(("ports",), f"service {self.service!r} has no port named {name!r}")],
        )

    def to_json(self) -> str:
        """The file's text (the one writer)."""
        data = asdict(self)
        data["deploy"] = self.deploy.to_dict()
        order = ["version"] + [k for k in data if k != "version"]
        return json.dumps({k: data[k] for k in order}, indent=2) + "\n"

    @classmethod
    def from_dict(
        cls, data: Any, source: str = SERVICE_FILE, locator: Locator = NoLocator()
    ) -> Self:
        """Every key checked for type and range (the file may have been edited), and the
        :meth:`extra_checks`' problems: one :attr:`error` naming *source*, each line and key."""
        problems: list[Problem] = []
        v = validate_table(SCHEMA, data, (), Path("."), problems, json=True)
        if isinstance(data, dict):
            _check(data, v, problems)
            cls.extra_checks(v, problems)
        raise_problems(problems, source, locator, cls.error)
        e, h, r, m = v["enclave"], v["health"], v["run_as"], v["metrics"]
        return cls(
            service=v["service"],
            framework=v["framework"],
            libos=v["libos"],
            enclave=EnclaveInfo(e["size"], e["max_threads"], bool(e["edmm"])),
            ports=tuple(
                ServicePort(p["name"], p["number"], p["protocol"] or "TCP", p["spec_key"])
                for p in v["ports"]
            ),
            health=Health(h["kind"], h["port"], h["scheme"] or "HTTP", h["live"], h["ready"]),
            run_as=RunAs(r["user"], r["group"]),
            metrics=None
            if m is None
            else MetricsEndpoint(m["port"], m["path"], m["scheme"] or "HTTP"),
            drain_seconds=None if v["drain_seconds"] is None else float(v["drain_seconds"]),
            writable_paths=tuple(v["writable_paths"] or ()),
            keys=tuple(v["keys"] or ()),
            secret_server=v["secret_server"],
            secret_server_enclave=bool(v["secret_server_enclave"]),
            ra_tls_identity=bool(v["ra_tls_identity"]),
            tls=bool(v["tls"]),
            deploy=DeploySpec.from_values(v["deploy"] or {}),
            trim=tuple(v["trim"] or ()),
        )

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """The one reader: *path* read and checked (see :meth:`from_dict`)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise cls.error(
                str(path),
                [
                    Problem(
                        (),
                        "not found: the build predates service.json "
                        "(rebuild with this enclave-build)",
                    )
                ],
            ) from None
        except (OSError, UnicodeDecodeError):
            text = read_text(path, cls.error, "service.json")
        data, locator = parse_json(text, str(path), cls.error)
        return cls.from_dict(data, str(path), locator)


def _check(data: dict[str, Any], v: dict[str, Any], problems: list[Problem]) -> None:
    """What no single key says: the version, port references, unique ports, the secret
    server when keys are fetched, paths without dot segments."""
    if data.get("version") != FORMAT_VERSION and not bad(problems, ("version",)):
        problems.append(
            Problem(
                ("version",),
                f"{data.get('version')!r}; this enclave-build "
                f"reads version {FORMAT_VERSION} (rebuild)",
            )
        )
    ports = [p for p in v["ports"] or [] if p]
    for attr in ("name", "number"):
        seen = [p[attr] for p in ports if p.get(attr) is not None]
        if len(set(seen)) != len(seen):
            problems.append(Problem(("ports",), f"two ports with the same {attr}"))
    names = sorted(p["name"] for p in ports if p.get("name"))
    # port references are checked when every port's name is known
    names_known = not any(
        p.path[:1] == ("ports",) and (len(p.path) <= 2 or p.path[2] == "name") for p in problems
    )
    for table in ("health", "metrics"):
        port = (v[table] or {}).get("port")
        if port is not None and names_known and port not in names:
            problems.append(
                Problem((table, "port"), f"{port!r} is not allowed; allowed: {', '.join(names)}")
            )
    health = v["health"] or {}
    if health.get("kind") == "kserve-v2":
        for key in ("live", "ready"):
            if health.get(key) is None and not bad(problems, ("health", key)):
                problems.append(
                    Problem(("health", key), "missing; expected a string (an absolute URL path)")
                )
    for index, path in enumerate(v["writable_paths"] or []):
        if "/../" in f"{path}/" or "/./" in f"{path}/":
            problems.append(
                Problem(("writable_paths", index), f"expected an absolute path, got {path!r}")
            )
    server = v["secret_server"]
    if v["keys"] and server is None and not bad(problems, ("secret_server",)):
        problems.append(
            Problem(
                ("secret_server",),
                "missing; expected a string (HOST:PORT of "
                "the secret server, required when keys "
                "are fetched)",
            )
        )
    if server is not None and not 1 <= int(server.rpartition(":")[2]) <= 65535:
        problems.append(
            Problem(("secret_server",), f"port of {server!r} is out of range 1 to 65535")
        )


__all__ = [
    "ServiceInfo",
    "ServiceInfoError",
    "ServicePort",
    "Health",
    "MetricsEndpoint",
    "EnclaveInfo",
    "RunAs",
    "FORMAT_VERSION",
    "SCHEMA",
]
