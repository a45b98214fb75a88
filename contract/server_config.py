"""model-server.json: enclave-build's model server configuration.

The framework plugin puts a :class:`ServerConfig` on the plan; the build serializes it once
(:meth:`ServerConfig.to_json`) into the image at ``SERVER_CONFIG`` as a trusted (measured) file,
so what the enclave serves is part of its identity. The model server reads it
(:meth:`ServerConfig.load`, through ``model_server.config``). Paths in it are absolute paths
inside the image::

    {"version": 1, "service": "face-detect",
     "grpc": {"host": "0.0.0.0", "port": 8001, "spec_key"?: "tflite.grpc_port"} | null,
     "rest": {...} | null,
     "tls": {"issuer"?: "file" | "secret-server" | "self", "hosts"?: [...],
             "cert"?, "key"?, "key_name", "client_ca"} | null,
     "limits": {"max_request_bytes": 67108864, ...}, "drain_seconds": 20, "metrics": true,
     "models": [{"name", "version", "backend", "path", "key", "instances", "threads",
                 "options", "max_queue"?, "clients"?}],
     "keys": {"server", "ca" | "server_identity", "names", "timeout_seconds", "evidence"}
           | {"source": "files", "directory", "names"} | null}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .client_access import client_list_problems
from .errors import ContractError
from .files import Locator, NoLocator, parse_json, raise_problems, read_text
from .identity import HEX64, HEX64_DOC, PINS, U16_MAX, EnclaveIdentity
from .schema import Field, Problem, Section, bad, validate_table
from .tcb import TCB_STATUSES

CONFIG_VERSION = 1
#: How the keys reach the server: fetched by the server itself over RA-TLS (Gramine), or left
#: in files by the libOS before the server starts (Occlum's init, which fetched them over its
#: own mutual RA-TLS and decrypted the whole image; no quote device exists for the server).
KEY_SOURCES = ("ra-tls", "files")
#: How ``keys.server_identity`` pins the secret server's enclave (see identity.PINS).
SERVER_PINS = PINS
#: Who issues the serving certificate (model-server.json ``tls.issuer``): the build's files
#: (``cert``/``key``, provisioned encrypted), the secret server (a certificate for a key made in
#: the enclave, after attestation), or the enclave itself (a self-signed RA-TLS certificate).
TLS_ISSUERS = ("file", "secret-server", "self")


class ConfigError(ContractError):
    """The model server's configuration file is missing, malformed or inconsistent."""


# --------------------------------------------------------------------------- schema


def _seconds(name: str, doc: str, default: float | None = None) -> Field:
    return Field(
        name,
        "float",
        doc + " (seconds)",
        default=default,
        above=0,
        expect="a positive number of seconds",
    )


def _count(name: str, doc: str, minimum: int = 1) -> Field:
    return Field(name, "int", doc, minimum=minimum, expect="a positive integer")


LISTENER = Section(
    "listener",
    "a TCP listener",
    (
        Field("host", "str", "address to listen on", default="0.0.0.0"),
        Field(
            "port", "int", "TCP port (0: any free port)", required=True, minimum=0, maximum=65535
        ),
        Field(
            "spec_key",
            "str",
            "the spec key that set the port (e.g. tflite.grpc_port), named "
            "when the port cannot be used",
            nullable=True,
        ),
    ),
)
TLS = Section(
    "tls",
    "TLS of both listeners",
    (
        Field(
            "issuer",
            "str",
            "who issues the serving certificate",
            default="file",
            choices=TLS_ISSUERS,
        ),
        Field(
            "hosts",
            "list[str]",
            "DNS names and IP addresses the certificate names (issuers secret-server, self)",
            default=[],
            item_pattern=r".+",
            item_doc="a DNS name or an IP address",
        ),
        Field(
            "cert",
            "str",
            'image path of the PEM certificate (may be encrypted; issuer "file")',
            nullable=True,
        ),
        Field(
            "key",
            "str",
            'image path of the PEM key (may be encrypted; issuer "file")',
            nullable=True,
        ),
        Field(
            "key_name", "str", "wrap key of the encrypted mount holding cert and key", nullable=True
        ),
        Field("client_ca", "str", "image path of a CA bundle: mutual TLS when set", nullable=True),
    ),
)
LIMITS = Section(
    "limits",
    "the server's limits (unset keys keep the defaults)",
    (
        _count("max_request_bytes", "one request's body / message, bytes"),
        _count("max_concurrent_requests", "requests executing or queued for an interpreter"),
        _count("max_queue", "requests waiting beyond that, server-wide", minimum=0),
        _count("max_buffered_bytes", "request bytes held at once (default 4 x max_request_bytes)"),
        _count("max_connections", "open REST connections"),
        _count("max_grpc_connections", "open gRPC connections"),
        _count("max_streams_per_connection", "gRPC calls at once on one connection"),
        _seconds("first_byte_timeout", "a new connection's first byte / gRPC handshake"),
        _seconds("header_timeout", "a REST request's header block"),
        _seconds("idle_timeout", "a keep-alive connection without requests"),
        _seconds("body_timeout", "a whole request body / gRPC request message"),
        _seconds(
            "body_stall_timeout",
            "the window min_body_rate is measured over (a REST body "
            "delivering less in one is refused)",
        ),
        _count(
            "max_response_bytes",
            "one answer's output tensors, bytes (default 4 x max_request_bytes)",
        ),
        _count(
            "max_json_bytes", "the JSON part of a REST request, bytes (at most max_request_bytes)"
        ),
        _count("min_body_rate", "bytes per second a REST body must keep arriving at"),
    ),
)
MODEL = Section(
    "models",
    "a model the server serves",
    (
        Field("name", "str", "the model's name as clients address it", required=True),
        Field("version", "str", "the version served", default="1"),
        Field(
            "backend",
            "str",
            "the backend that runs it (tflite, openvino, a plugin's)",
            required=True,
        ),
        Field("path", "str", "image path of the model file (or directory)", required=True),
        Field("key", "str", "wrap key name when the file is encrypted", nullable=True),
        Field(
            "instances", "int", "interpreter instances in this model's pool", default=1, minimum=1
        ),
        Field("threads", "int", "runtime threads per instance", default=1, minimum=1),
        Field("options", "table[any]", "backend-specific options", default={}),
        Field(
            "max_queue",
            "int",
            "requests waiting for an instance (default: a share of limits.max_queue)",
            nullable=True,
            minimum=0,
            expect="an integer >= 0",
        ),
        Field(
            "clients",
            "list[str]",
            'the only clients that may use the model: "sha256:HEX" (SHA-256 of the client '
            'certificate\'s DER SubjectPublicKeyInfo) or "CN=NAME" (subject common name), '
            "after mutual TLS (absent: every client TLS accepted)",
            min_items=1,
        ),
    ),
)
BUILD = Section(
    "builds",
    "a secret-server build the server may be",
    (
        Field(
            "mr_enclave",
            "str",
            'MRENCLAVE (pin "mr_enclave" only)',
            pattern=HEX64,
            pattern_doc=HEX64_DOC,
        ),
        Field("mr_signer", "str", "MRSIGNER", required=True, pattern=HEX64, pattern_doc=HEX64_DOC),
        Field("isv_prod_id", "int", "ISV_PROD_ID", required=True, minimum=0, maximum=U16_MAX),
        Field(
            "isv_svn",
            "int",
            'ISV_SVN (at least, with pin "mr_signer")',
            required=True,
            minimum=0,
            maximum=U16_MAX,
        ),
        Field("debug", "bool", "must be false", default=False),
    ),
)
SERVER_IDENTITY = Section(
    "server_identity",
    "the secret server is an enclave with a self-signed RA-TLS certificate, verified by its quote",
    (
        Field("pin", "str", "how a build is matched", required=True, choices=SERVER_PINS),
        Field(
            "builds",
            "list[table]",
            "the builds it may be",
            required=True,
            section=BUILD,
            min_items=1,
        ),
        Field(
            "root_ca",
            "str",
            '"intel", or the absolute image path of a PEM root',
            default="intel",
            pattern=r"intel|/.*",
            pattern_doc='"intel" or the absolute image path of a PEM root',
        ),
        Field(
            "collateral",
            "str",
            "absolute image path of the collateral JSON (trusted)",
            nullable=True,
            pattern=r"/.*",
            pattern_doc="the absolute image path of a file",
        ),
        Field(
            "pccs_url",
            "str",
            "PCCS to fetch collateral from",
            nullable=True,
            pattern=r"https?://.*",
            pattern_doc="an http(s) URL",
        ),
        Field(
            "allowed_tcb_statuses",
            "list[str]",
            "TCB statuses of the server's platform to accept",
            default=["UpToDate"],
            min_items=1,
            item_choices=TCB_STATUSES,
        ),
    ),
)
KEYS = Section(
    "keys",
    "the wrap keys the server needs before any model is opened",
    (
        Field("source", "str", "who fetches them", default="ra-tls", choices=KEY_SOURCES),
        Field("server", "str", 'HOST:PORT of the secret server (source "ra-tls")'),
        Field("ca", "str", "image path of the secret server's CA certificate (trusted)"),
        Field(
            "names",
            "list[str]",
            "key names; each is asked for by TLS server name (SNI)",
            required=True,
            item_pattern=r".+",
            item_doc="a key name",
        ),
        _seconds("timeout_seconds", "one key fetch", default=10.0),
        Field("evidence", "str", "RA-TLS certificate format presented", default="tcg-dice"),
        Field(
            "directory",
            "str",
            'absolute image path of the key files (source "files")',
            pattern=r"/.*",
            pattern_doc="the absolute image path of the key files",
        ),
        Field(
            "server_identity",
            "table",
            "instead of ca: the secret server's enclave identity",
            section=SERVER_IDENTITY,
        ),
    ),
)
SCHEMA = Section(
    "",
    "model-server.json: enclave-build's model server configuration",
    (
        Field("version", "int", f"the format version ({CONFIG_VERSION})", required=True),
        Field("service", "str", "the service's name", default="model-server"),
        Field("models", "list[table]", "the models", default=[], section=MODEL),
        Field(
            "grpc",
            "table",
            "the KServe v2 gRPC listener (null: none)",
            section=LISTENER,
            nullable=True,
        ),
        Field(
            "rest",
            "table",
            "the KServe v2 REST listener (null: none)",
            section=LISTENER,
            nullable=True,
        ),
        Field(
            "tls", "table", "TLS of both listeners (null: plain TCP)", section=TLS, nullable=True
        ),
        Field("limits", "table", "the server's limits", section=LIMITS, default={}),
        Field("keys", "table", "the wrap keys (null: none)", section=KEYS, nullable=True),
        Field(
            "drain_seconds",
            "float",
            "on SIGTERM, how long admitted requests may take",
            default=20.0,
            minimum=0,
        ),
        Field("metrics", "bool", "serve /metrics on the REST listener", default=True),
    ),
)


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    #: The spec key that set the port (dotted: ``tflite.grpc_port``); None: not known.
    spec_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.spec_key is not None:
            out["spec_key"] = self.spec_key
        return out


@dataclass(frozen=True)
class TLSConfig:
    """``tls``: issuer ``"file"`` serves *cert*/*key* (provisioned, encrypted with *key_name*);
    ``"secret-server"`` and ``"self"`` make the key pair in the enclave at start and name
    *hosts* in the certificate (see :data:`TLS_ISSUERS`)."""

    cert: str | None  # image path of the PEM certificate (may be encrypted; issuer "file")
    key: str | None  # image path of the PEM key (may be encrypted; issuer "file")
    key_name: str | None = None  # wrap key of the encrypted mount holding cert and key
    client_ca: str | None = None  # image path of a CA bundle: mutual TLS when set
    issuer: str = "file"  # one of TLS_ISSUERS
    hosts: tuple[str, ...] = ()  # DNS names / IP addresses of the certificate's SANs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cert": self.cert,
            "key": self.key,
            "key_name": self.key_name,
            "client_ca": self.client_ca,
        }
        # (written only when set: files of earlier builds, hence their MRENCLAVE, stay as they were)
        if self.issuer != "file":
            out["issuer"] = self.issuer
        if self.hosts:
            out["hosts"] = list(self.hosts)
        return out


@dataclass(frozen=True)
class Limits:
    """``limits`` in the configuration file.

    * ``max_request_bytes``: one request's body / message (HTTP 413, gRPC RESOURCE_EXHAUSTED).
    * ``max_concurrent_requests`` / ``max_queue``: requests executing, and waiting beyond that;
      past both a request is refused (UNAVAILABLE / 503). Waiting is per model: a model runs
      ``instances`` requests at once and queues at most its ``max_queue`` (default: its share
      of ``max_queue`` in proportion to its instances); these two bound the whole server.
    * ``max_buffered_bytes``: server-wide budget of what requests make the server allocate,
      reserved before it is allocated: REST bodies as they arrive, room for a gRPC message
      before it is received, what parsing, decoding and answering a request takes. When it is
      used up a request is refused with HTTP 503 / gRPC RESOURCE_EXHAUSTED (413 when it could
      never fit). 0 (the default) means 4 x ``max_request_bytes``; never less than
      ``max_request_bytes``.
    * ``max_connections``: open REST connections. At the cap a new connection closes the one
      idle the longest; when none is idle, a few more are admitted for health checks only and
      anything else is answered 503. Lowered (with a warning) when the process's file
      descriptor limit could not hold that many.
    * ``max_grpc_connections``: open gRPC (HTTP/2) connections; one more is closed at once.
      grpc cannot close an idle connection to make room for a new one (REST can), so this cap
      is larger: new gRPC clients are refused only while more connections than that are open
      at once (each closed after ``first_byte_timeout`` if it never completes its handshake).
    * ``max_streams_per_connection``: gRPC calls open at once on one connection (HTTP/2
      SETTINGS_MAX_CONCURRENT_STREAMS); a client's further calls wait for one of them to end.
    * ``first_byte_timeout``: seconds a new REST connection may take to send its first byte
      (then it is closed); ``header_timeout``: seconds a REST client has to send a whole request
      header block (from its first byte), and for a TLS handshake; ``idle_timeout``: seconds a
      keep-alive connection may sit idle between requests (and a response may wait for a client
      that does not read); ``body_timeout``: seconds to receive a whole request body;
      ``body_stall_timeout``: the window ``min_body_rate`` is measured over (a body delivering
      less in one, or nothing at all, is answered 408 and its bytes released).
    * gRPC: ``first_byte_timeout`` (at most ``header_timeout``) bounds a connection's handshake
      (TLS, HTTP/2 preface and settings),
      ``idle_timeout`` a connection without calls, ``body_timeout`` the wait for a call's
      request message (the call is then cancelled).
    * ``max_response_bytes``: one answer's size (its output tensors); a request whose answer
      would be larger is refused (HTTP 413 / RESOURCE_EXHAUSTED). 0 (the default) means
      4 x ``max_request_bytes``.
    * ``max_json_bytes``: the JSON part of a REST request (the whole body without
      ``Inference-Header-Content-Length``, else that header's length), at most
      ``max_request_bytes``; larger is refused with 413. JSON tensors are the slow path: binary
      tensors have no such limit.
    * ``min_body_rate``: bytes per second a REST body must keep arriving at, measured over each
      ``body_stall_timeout`` window; a slower body is answered 408 and its bytes released.
    """

    max_request_bytes: int = 64 << 20
    max_concurrent_requests: int = 64  # requests executing or queued for an interpreter
    max_queue: int = 256  # waiting beyond that: refused (RESOURCE_EXHAUSTED / 503)
    max_buffered_bytes: int = 0  # 0: 4 x max_request_bytes
    max_connections: int = 256  # open REST connections
    max_grpc_connections: int = 1024  # open gRPC connections
    max_streams_per_connection: int = 32  # gRPC calls at once on one connection
    first_byte_timeout: float = 5.0
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    body_timeout: float = 60.0
    body_stall_timeout: float = 10.0
    max_response_bytes: int = 0  # 0: 4 x max_request_bytes
    max_json_bytes: int = 4 << 20  # the JSON part of a REST request
    min_body_rate: int = 32 << 10  # bytes/s a REST body must keep arriving at
    #: The keys the file sets (the others take these defaults); the writer writes those only
    #: (None: all of them).
    written: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        budget = self.max_buffered_bytes or 4 * self.max_request_bytes
        object.__setattr__(self, "max_buffered_bytes", max(budget, self.max_request_bytes))
        object.__setattr__(
            self, "max_response_bytes", self.max_response_bytes or 4 * self.max_request_bytes
        )
        object.__setattr__(self, "max_json_bytes", min(self.max_json_bytes, self.max_request_bytes))

    @classmethod
    def of(cls, values: dict[str, Any]) -> Limits:
        """The limits a file (or a plan) sets: *values*, the rest defaults."""
        return cls(**values, written=frozenset(values))

    def to_dict(self) -> dict[str, Any]:
        names = [f.name for f in fields(self) if f.name != "written"]
        return {
            name: getattr(self, name)
            for name in names
            if self.written is None or name in self.written
        }


@dataclass(frozen=True)
class ModelConfig:
    name: str
    version: str
    backend: str  # a registered backend name: tflite, openvino, ...
    path: str  # image path of the model file (or directory)
    key: str | None = None  # wrap key name when the file is encrypted
    instances: int = 1  # interpreter instances in this model's pool
    threads: int = 1  # runtime threads per instance
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific
    max_queue: int | None = None  # requests waiting for an instance; None: share of limits
    #: The only clients that may use the model (client_access entries, as written); None:
    #: every client the TLS layer accepted.
    clients: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.clients is not None:
            object.__setattr__(self, "clients", tuple(self.clients))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "backend": self.backend,
            "path": self.path,
            "key": self.key,
            "instances": self.instances,
            "threads": self.threads,
            "options": dict(self.options),
        }
        if self.max_queue is not None:
            out["max_queue"] = self.max_queue
        if self.clients is not None:
            out["clients"] = list(self.clients)
        return out


@dataclass(frozen=True)
class ServerTrustConfig:
    """``keys.server_identity``: the secret server is an enclave with a self-signed RA-TLS
    certificate, verified by its quote (model_server.server_attest) instead of a CA::

        {"pin": "mr_enclave" | "mr_signer",
         "builds": [{"mr_enclave"?, "mr_signer", "isv_prod_id", "isv_svn", "debug": false}],
         "root_ca": "intel" | IMAGE_PATH, "collateral": IMAGE_PATH | null,
         "pccs_url": URL | null, "allowed_tcb_statuses": ["UpToDate", ...]}

    pin "mr_enclave": every field equal to one build; "mr_signer": mr_signer and isv_prod_id
    equal, isv_svn at least the build's (its builds carry no mr_enclave). Exactly one of
    collateral and pccs_url."""

    pin: str
    builds: tuple[EnclaveIdentity, ...]
    root_ca: str | None  # image path of a PEM root; None: Intel's SGX root
    collateral: str | None  # image path of the collateral JSON (trusted)
    pccs_url: str | None
    allowed_tcb_statuses: tuple[str, ...] = ("UpToDate",)

    def to_dict(self) -> dict[str, Any]:
        builds = []
        for build in self.builds:
            entry: dict[str, Any] = {
                "mr_signer": build.mr_signer,
                "isv_prod_id": build.isv_prod_id,
                "isv_svn": build.isv_svn,
                "debug": build.debug,
            }
            if build.mr_enclave is not None:
                entry["mr_enclave"] = build.mr_enclave
            builds.append(entry)
        return {
            "pin": self.pin,
            "builds": builds,
            "root_ca": self.root_ca if self.root_ca is not None else "intel",
            "collateral": self.collateral,
            "pccs_url": self.pccs_url,
            "allowed_tcb_statuses": list(self.allowed_tcb_statuses),
        }


@dataclass(frozen=True)
class KeysConfig:
    """The wrap keys the server needs before any model is opened.

    ``source = "ra-tls"`` (default): fetched inside the enclave, one RA-TLS connection each,
    from *server*, checked against *ca* — or, with *server_identity*, a secret server in an
    enclave, verified by its RA-TLS quote. ``source = "files"``: read from *directory*/NAME,
    where the libOS put them (Occlum); the models are then opened as they are."""

    server: str  # HOST:PORT of the secret server ("" with source "files")
    ca: str  # image path of the secret server's CA certificate (trusted)
    names: tuple[str, ...]  # key names; each is asked for by TLS server name (SNI)
    timeout_seconds: float = 10.0
    evidence: str = "tcg-dice"  # RA-TLS certificate format presented
    source: str = "ra-tls"  # one of KEY_SOURCES
    directory: str | None = None  # image path of the key files (source "files")
    server_identity: ServerTrustConfig | None = None  # instead of ca ("" then)

    @classmethod
    def from_files(cls, directory: str, names: tuple[str, ...]) -> KeysConfig:
        """Keys the libOS left in *directory*/NAME before the server started."""
        return cls("", "", tuple(names), source="files", directory=directory)

    def to_dict(self) -> dict[str, Any]:
        if self.source == "files":
            return {"source": "files", "directory": self.directory, "names": list(self.names)}
        out: dict[str, Any] = {
            "server": self.server,
            "names": list(self.names),
            "timeout_seconds": self.timeout_seconds,
            "evidence": self.evidence,
        }
        if self.server_identity is not None:
            out["server_identity"] = self.server_identity.to_dict()
        else:
            out["ca"] = self.ca
        return out


@dataclass(frozen=True)
class ServerConfig:
    service: str
    models: tuple[ModelConfig, ...]
    grpc: Listener | None = Listener("0.0.0.0", 8001)
    rest: Listener | None = Listener("0.0.0.0", 8000)
    tls: TLSConfig | None = None
    limits: Limits = Limits()
    keys: KeysConfig | None = None
    drain_seconds: float = 20.0
    metrics: bool = True

    def to_dict(self) -> dict[str, Any]:
        def listener(item: Listener | None) -> dict[str, Any] | None:
            return None if item is None else item.to_dict()

        tls = self.tls
        return {
            "version": CONFIG_VERSION,
            "service": self.service,
            "grpc": listener(self.grpc),
            "rest": listener(self.rest),
            "tls": None if tls is None else tls.to_dict(),
            "limits": self.limits.to_dict(),
            "drain_seconds": self.drain_seconds,
            "metrics": self.metrics,
            "models": [m.to_dict() for m in self.models],
            "keys": None if self.keys is None else self.keys.to_dict(),
        }

    def to_json(self) -> str:
        """The file's text (the one writer): sorted keys, indented, a final newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(
        cls, data: Any, source: str = "model-server.json", locator: Locator = NoLocator()
    ) -> ServerConfig:
        """Every problem of *data*, located, in one ConfigError."""
        problems: list[Problem] = []
        v = validate_table(SCHEMA, data, (), Path("."), problems, json=True)
        if isinstance(data, dict):
            _check(data, v, problems)
        raise_problems(problems, source, locator, ConfigError)
        return cls(
            service=v["service"],
            models=tuple(
                ModelConfig(**{k: val for k, val in m.items() if k != "clients" or val})
                for m in v["models"]
            ),
            grpc=_listener(v["grpc"]) if "grpc" in data else Listener("0.0.0.0", 8001),
            rest=_listener(v["rest"]) if "rest" in data else Listener("0.0.0.0", 8000),
            tls=_tls(v["tls"]) if v["tls"] is not None else None,
            limits=Limits.of({k: val for k, val in v["limits"].items() if k in data["limits"]})
            if isinstance(data.get("limits"), dict)
            else Limits.of({}),
            keys=_keys(v["keys"]) if v["keys"] is not None else None,
            drain_seconds=v["drain_seconds"],
            metrics=v["metrics"],
        )

    @classmethod
    def parse(cls, text: str, source: str = "model-server.json") -> ServerConfig:
        data, locator = parse_json(text, source, ConfigError)
        return cls.from_dict(data, source, locator)

    @classmethod
    def load(cls, path: str | Path, source: str | None = None) -> ServerConfig:
        """The one reader: *path* read and checked (ConfigError naming FILE:LINE:KEY); errors
        name *source* (default: *path*)."""
        source = source or str(path)
        text = read_text(path, ConfigError, "the configuration")
        return cls.parse(text, source)


def _listener(values: dict[str, Any] | None) -> Listener | None:
    return None if values is None else Listener(values["host"], values["port"], values["spec_key"])


def _tls(v: dict[str, Any]) -> TLSConfig:
    return TLSConfig(
        v["cert"], v["key"], v["key_name"], v["client_ca"], v["issuer"], tuple(v["hosts"])
    )


def _keys(v: dict[str, Any]) -> KeysConfig:
    if v["source"] == "files":
        return KeysConfig.from_files(v["directory"], tuple(v["names"]))
    trust = v["server_identity"]
    return KeysConfig(
        v["server"],
        v["ca"] or "",
        tuple(v["names"]),
        v["timeout_seconds"],
        v["evidence"],
        server_identity=None
        if trust is None
        else ServerTrustConfig(
            trust["pin"],
            tuple(
                EnclaveIdentity(
                    b["mr_enclave"], b["mr_signer"], b["isv_prod_id"], b["isv_svn"], b["debug"]
                )
                for b in trust["builds"]
            ),
            None if trust["root_ca"] == "intel" else trust["root_ca"],
            trust["collateral"],
            trust["pccs_url"],
            tuple(trust["allowed_tcb_statuses"]),
        ),
    )


def _check(data: dict[str, Any], v: dict[str, Any], problems: list[Problem]) -> None:
    """What no single key says: the version, unique model names, the keys' variants."""
    if data.get("version") != CONFIG_VERSION and not bad(problems, ("version",)):
        problems.append(
            Problem(("version",), f"version must be {CONFIG_VERSION}, got {data.get('version')!r}")
        )
    seen: dict[str, int] = {}
    for index, model in enumerate(v["models"] or []):
        name = model.get("name")
        if isinstance(name, str) and name in seen:
            problems.append(
                Problem(
                    ("models", index, "name"),
                    f"duplicate model name {name!r} (also models[{seen[name]}]): "
                    "model names must be unique",
                )
            )
        seen.setdefault(name, index)
        _check_clients(model, index, v, problems)
    tls, tls_written = v.get("tls"), data.get("tls")
    if isinstance(tls, dict) and isinstance(tls_written, dict):
        _check_tls(tls, tls_written, isinstance(v.get("keys"), dict), problems)
    keys, written = v.get("keys"), data.get("keys")
    if (
        isinstance(keys, dict)
        and isinstance(written, dict)
        and not bad(problems, ("keys", "source"))
    ):
        _check_keys(keys, written, problems)


def _check_clients(
    model: dict[str, Any], index: int, v: dict[str, Any], problems: list[Problem]
) -> None:
    """A model's clients: each entry well formed, named once, and checked by mutual TLS."""
    clients = model.get("clients")
    if not clients:
        return
    where = ("models", index, "clients")
    problems += client_list_problems(clients, where)
    tls = v.get("tls")
    if not (isinstance(tls, dict) and tls.get("client_ca")) and not bad(problems, ("tls",)):
        problems.append(
            Problem(
                where,
                "needs mutual TLS: set tls.client_ca (the CA bundle client certificates "
                "must chain to); without it no client presents a certificate",
            )
        )


def _check_tls(
    tls: dict[str, Any], written: dict[str, Any], has_keys: bool, problems: list[Problem]
) -> None:
    if bad(problems, ("tls", "issuer")):
        return
    issuer = tls["issuer"]
    for name in ("cert", "key"):
        given = written.get(name) is not None
        if issuer == "file" and not given:
            problems.append(Problem(("tls", name), 'required (a string) with issuer "file"'))
        if issuer != "file" and given:
            problems.append(
                Problem(
                    ("tls", name),
                    f'not with issuer "{issuer}": the key pair is made in the enclave',
                )
            )
    if issuer != "file" and not tls["hosts"] and not bad(problems, ("tls", "hosts")):
        problems.append(Problem(("tls", "hosts"), f'at least one name with issuer "{issuer}"'))
    if issuer == "secret-server" and not has_keys:
        problems.append(
            Problem(
                ("tls", "issuer"),
                'issuer "secret-server" needs "keys" (the secret server to ask and how to '
                "check it)",
            )
        )


def _check_keys(keys: dict[str, Any], written: dict[str, Any], problems: list[Problem]) -> None:
    where = ("keys",)
    if keys["source"] == "files":
        for name in sorted(set(written) - {"source", "directory", "names"}):
            problems.append(
                Problem(
                    where + (name,), 'not with source "files"; allowed: source, directory, names'
                )
            )
        if "directory" not in written:
            problems.append(
                Problem(
                    where + ("directory",),
                    'expected the absolute image path of the key files (source "files")',
                )
            )
        return
    if "directory" in written:
        problems.append(Problem(where + ("directory",), 'only with source "files"'))
    if "server" not in written:
        problems.append(Problem(where + ("server",), 'required (a string) with source "ra-tls"'))
    if "server_identity" in written:
        if "ca" in written:
            problems.append(Problem(where, "give ca or server_identity, not both"))
        trust = keys["server_identity"]
        if isinstance(trust, dict):
            _check_trust(trust, problems)
    elif "ca" not in written:
        problems.append(
            Problem(
                where + ("ca",),
                'required (a string) with source "ra-tls" unless server_identity is given',
            )
        )


def _check_trust(trust: dict[str, Any], problems: list[Problem]) -> None:
    where = ("keys", "server_identity")
    pin = trust["pin"]
    for index, build in enumerate(trust["builds"] or []):
        at = where + ("builds", index)
        if not build or bad(problems, at + ("mr_enclave",)):
            continue
        if pin == "mr_enclave" and build["mr_enclave"] is None:
            problems.append(
                Problem(
                    at + ("mr_enclave",), 'expected 64 lower-case hex digits (pin "mr_enclave")'
                )
            )
        if pin == "mr_signer" and build["mr_enclave"] is not None:
            problems.append(Problem(at + ("mr_enclave",), 'not with pin "mr_signer"'))
        if build["debug"]:
            problems.append(
                Problem(
                    at + ("debug",),
                    "must be false (a DEBUG secret server "
                    "cannot be trusted: its host reads its "
                    "memory)",
                )
            )
    if (trust["collateral"] is None) == (trust["pccs_url"] is None) and not bad(
        problems, where + ("collateral",), where + ("pccs_url",)
    ):
        problems.append(Problem(where, "give exactly one of collateral and pccs_url"))


__all__ = [
    "ServerConfig",
    "Listener",
    "TLSConfig",
    "Limits",
    "ModelConfig",
    "KeysConfig",
    "ServerTrustConfig",
    "ConfigError",
    "KEY_SOURCES",
    "SERVER_PINS",
    "TLS_ISSUERS",
    "CONFIG_VERSION",
    "SCHEMA",
]
