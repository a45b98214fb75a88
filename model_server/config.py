"""The model server's configuration: one JSON file, written by the framework plugin at build time
and shipped into the image as a trusted (measured) file, so what the enclave serves is part of
its identity.

Paths in the file are absolute paths inside the image. A plain-process simulation runs the image
unpacked under some host directory; it sets ``ENCLAVE_BUILD_ROOT`` to that directory and
:func:`host_path` maps image paths under it. Inside an enclave the variable is never set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from .errors import ModelServerError

ROOT_ENV = "ENCLAVE_BUILD_ROOT"
#: Plain-process simulation only (with ROOT_ENV): the address that replaces the wildcard
#: listen addresses of the image's configuration, so a simulation on a developer's machine is
#: not served to the network (`enclave-build run --simulate` sets 127.0.0.1 unless told
#: --listen-all). Never set inside an enclave: the manifest does not pass it through.
LISTEN_ENV = "ENCLAVE_BUILD_SIMULATION_LISTEN"
CONFIG_VERSION = 1


class ConfigError(ModelServerError, ValueError):
    """The configuration file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Listener:
    host: str
    port: int


@dataclass(frozen=True)
class TLSConfig:
    cert: str                     # image path of the PEM certificate (may be encrypted)
    key: str                      # image path of the PEM key (may be encrypted)
    key_name: str | None = None   # wrap key of the encrypted mount holding cert and key
    client_ca: str | None = None  # image path of a CA bundle: mutual TLS when set


@dataclass(frozen=True)
class Limits:
    """``limits`` in the configuration file.

    * ``max_request_bytes``: one request's body / message (HTTP 413, gRPC RESOURCE_EXHAUSTED).
    * ``max_concurrent_requests`` / ``max_queue``: requests executing, and waiting beyond that;
      past both a request is refused (UNAVAILABLE / 503). Waiting is per model: a model runs
      ``instances`` requests at once and queues at most its ``max_queue`` (default: its share
      of ``max_queue`` in proportion to its instances); these two bound the whole server.
    * ``max_buffered_bytes``: server-wide budget of request bytes being received or held (REST
      bodies, gRPC messages, decompressed bodies); when it is used up a request is refused with
      HTTP 503 / gRPC RESOURCE_EXHAUSTED. 0 (the default)
      means 4 x ``max_request_bytes``; never less than ``max_request_bytes``. A REST body's
      bytes are reserved as they arrive, so a slow client holds only what it has sent.
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
      ``body_stall_timeout``: the longest pause while a body arrives (a body that stops
      making progress is answered 408 and its bytes released).
    * gRPC: ``first_byte_timeout`` (at most ``header_timeout``) bounds a connection's handshake
      (TLS, HTTP/2 preface and settings),
      ``idle_timeout`` a connection without calls, ``body_timeout`` the wait for a call's
      request message (the call is then cancelled).
    """

    max_request_bytes: int = 64 << 20
    max_concurrent_requests: int = 64   # requests executing or queued for an interpreter
    max_queue: int = 256                # waiting beyond that: refused (RESOURCE_EXHAUSTED / 503)
    max_buffered_bytes: int = 0         # 0: 4 x max_request_bytes
    max_connections: int = 256          # open REST connections
    max_grpc_connections: int = 1024    # open gRPC connections
    max_streams_per_connection: int = 32  # gRPC calls at once on one connection
    first_byte_timeout: float = 5.0
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    body_timeout: float = 60.0
    body_stall_timeout: float = 10.0

    def __post_init__(self) -> None:
        budget = self.max_buffered_bytes or 4 * self.max_request_bytes
        object.__setattr__(self, "max_buffered_bytes", max(budget, self.max_request_bytes))


@dataclass(frozen=True)
class ModelConfig:
    name: str
    version: str
    backend: str                  # a registered backend name: tflite, openvino, ...
    path: str                     # image path of the model file (or directory)
    key: str | None = None        # wrap key name when the file is encrypted
    instances: int = 1            # interpreter instances in this model's pool
    threads: int = 1              # runtime threads per instance
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific
    max_queue: int | None = None  # requests waiting for an instance; None: share of limits


#: How the keys reach the server: fetched by the server itself over RA-TLS (Gramine), or left
#: in files by the libOS before the server starts (Occlum's init, which fetched them over its
#: own mutual RA-TLS and decrypted the whole image; no quote device exists for the server).
KEY_SOURCES = ("ra-tls", "files")


#: How ``keys.server_identity`` pins the secret server's enclave.
SERVER_PINS = ("mr_enclave", "mr_signer")
TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded")


@dataclass(frozen=True)
class ExpectedServer:
    """One secret-server build the server may be. *mr_enclave* is None with pin "mr_signer"."""

    mr_signer: str
    isv_prod_id: int
    isv_svn: int
    debug: bool = False
    mr_enclave: str | None = None


@dataclass(frozen=True)
class ServerTrustConfig:
    """``keys.server_identity``: the secret server is an enclave with a self-signed RA-TLS
    certificate, verified by its quote (model_server.server_attest) instead of a CA::

        {"pin": "mr_enclave" | "mr_signer",
         "builds": [{"mr_enclave"?, "mr_signer", "isv_prod_id", "isv_svn", "debug": false}],
         "root_ca": "intel" | IMAGE_PATH, "collateral": IMAGE_PATH | null,
         "pccs_url": URL | null, "allowed_tcb_statuses": ["UpToDate", ...]}

    pin "mr_enclave": every field equal to one build; "mr_signer": mr_signer and isv_prod_id
    equal, isv_svn at least the build's. Exactly one of collateral and pccs_url."""

    pin: str
    builds: tuple[ExpectedServer, ...]
    root_ca: str | None           # image path of a PEM root; None: Intel's SGX root
    collateral: str | None        # image path of the collateral JSON (trusted)
    pccs_url: str | None
    allowed_tcb_statuses: tuple[str, ...] = ("UpToDate",)


@dataclass(frozen=True)
class KeysConfig:
    """The wrap keys the server needs before any model is opened.

    ``source = "ra-tls"`` (default): fetched inside the enclave, one RA-TLS connection each,
    from *server*, checked against *ca* — or, with *server_identity*, a secret server in an
    enclave, verified by its RA-TLS quote. ``source = "files"``: read from *directory*/NAME,
    where the libOS put them (Occlum); the models are then opened as they are."""

    server: str                   # HOST:PORT of the secret server ("" with source "files")
    ca: str                       # image path of the secret server's CA certificate (trusted)
    names: tuple[str, ...]        # key names; each is asked for by TLS server name (SNI)
    timeout_seconds: float = 10.0
    evidence: str = "tcg-dice"    # RA-TLS certificate format presented
    source: str = "ra-tls"        # one of KEY_SOURCES
    directory: str | None = None  # image path of the key files (source "files")
    server_identity: ServerTrustConfig | None = None   # instead of ca ("" then)


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


def host_path(image_path: str) -> Path:
    """Where an image path is on this machine (identity unless a simulation root is set)."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        return Path(image_path)
    return Path(root) / image_path.lstrip("/")


def _listener(value: Any, where: str) -> Listener | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("port"), int):
        raise ConfigError(f"{where}: expected {{host, port}}")
    port = value["port"]
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}.port: {port} is not a TCP port")
    return _simulated(Listener(str(value.get("host", "0.0.0.0")), port))


def _simulated(listener: Listener) -> Listener:
    """*listener*, with a wildcard host replaced by LISTEN_ENV in a plain-process simulation."""
    override = os.environ.get(LISTEN_ENV) if os.environ.get(ROOT_ENV) else None
    if override and listener.host in ("0.0.0.0", "::", ""):
        return Listener(override, listener.port)
    return listener


def _known(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _keys(k: Any, where: str) -> KeysConfig:
    if not isinstance(k, dict):
        raise ConfigError(f"{where}: expected an object")
    kind = k.get("source", "ra-tls")
    if kind not in KEY_SOURCES:
        raise ConfigError(f"{where}.source: {kind!r}; allowed: "
                          + ", ".join(f'"{s}"' for s in KEY_SOURCES))
    names = k.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{where}.names: expected an array of key names")
    if kind == "files":
        _known(k, {"source", "directory", "names"}, where)
        directory = k.get("directory")
        if not isinstance(directory, str) or not directory.startswith("/"):
            raise ConfigError(f"{where}.directory: expected the absolute image path of the "
                              "key files (source \"files\")")
        return KeysConfig("", "", tuple(names), source=kind, directory=directory)
    _known(k, {"source", "server", "ca", "names", "timeout_seconds", "evidence",
               "server_identity"}, where)
    if not isinstance(k.get("server"), str):
        raise ConfigError(f"{where}.server: required (a string) with source \"ra-tls\"")
    trust = None
    if "server_identity" in k:
        if "ca" in k:
            raise ConfigError(f"{where}: give ca or server_identity, not both")
        trust = _server_identity(k["server_identity"], f"{where}.server_identity")
    elif not isinstance(k.get("ca"), str):
        raise ConfigError(f"{where}.ca: required (a string) with source \"ra-tls\" unless "
                          "server_identity is given")
    return KeysConfig(k["server"], k.get("ca", ""), tuple(names),
                      float(k.get("timeout_seconds", 10.0)), k.get("evidence", "tcg-dice"),
                      server_identity=trust)


def _hex32(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def _u16(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF


def _server_identity(t: Any, where: str) -> ServerTrustConfig:
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: expected an object")
    _known(t, {"pin", "builds", "root_ca", "collateral", "pccs_url", "allowed_tcb_statuses"},
           where)
    pin = t.get("pin")
    if pin not in SERVER_PINS:
        raise ConfigError(f"{where}.pin: {pin!r}; allowed: "
                          + ", ".join(f'"{p}"' for p in SERVER_PINS))
    items = t.get("builds")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}.builds: expected a non-empty array of identities")
    builds = []
    for i, b in enumerate(items):
        at = f"{where}.builds[{i}]"
        if not isinstance(b, dict):
            raise ConfigError(f"{at}: expected an object")
        _known(b, {"mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "debug"}, at)
        if not _hex32(b.get("mr_signer")):
            raise ConfigError(f"{at}.mr_signer: expected 64 lower-case hex digits")
        if (pin == "mr_enclave") != ("mr_enclave" in b) or (
                "mr_enclave" in b and not _hex32(b["mr_enclave"])):
            raise ConfigError(f"{at}.mr_enclave: " + (
                "expected 64 lower-case hex digits (pin \"mr_enclave\")"
                if pin == "mr_enclave" else "not with pin \"mr_signer\""))
        for name in ("isv_prod_id", "isv_svn"):
            if not _u16(b.get(name)):
                raise ConfigError(f"{at}.{name}: expected an integer 0..65535")
        if b.get("debug", False) is not False:
            raise ConfigError(f"{at}.debug: must be false (a DEBUG secret server cannot be "
                              "trusted: its host reads its memory)")
        builds.append(ExpectedServer(b["mr_signer"], b["isv_prod_id"], b["isv_svn"], False,
                                     b.get("mr_enclave")))
    root = t.get("root_ca", "intel")
    if not isinstance(root, str) or not (root == "intel" or root.startswith("/")):
        raise ConfigError(f"{where}.root_ca: \"intel\" or the absolute image path of a PEM root")
    collateral, pccs = t.get("collateral"), t.get("pccs_url")
    if (collateral is None) == (pccs is None):
        raise ConfigError(f"{where}: give exactly one of collateral and pccs_url")
    if collateral is not None and not (isinstance(collateral, str) and collateral.startswith("/")):
        raise ConfigError(f"{where}.collateral: expected the absolute image path of a file")
    if pccs is not None and not (isinstance(pccs, str) and pccs.startswith(("https://",
                                                                             "http://"))):
        raise ConfigError(f"{where}.pccs_url: expected an http(s) URL")
    statuses = t.get("allowed_tcb_statuses", ["UpToDate"])
    if (not isinstance(statuses, list) or not statuses
            or not all(s in TCB_STATUSES for s in statuses)):
        raise ConfigError(f"{where}.allowed_tcb_statuses: expected a non-empty array of "
                          f"{', '.join(TCB_STATUSES)}")
    return ServerTrustConfig(pin, tuple(builds), None if root == "intel" else root, collateral,
                             pccs, tuple(statuses))


def parse_config(data: dict[str, Any], source: str = "config") -> ServerConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    _known(data, {"version", "service", "models", "grpc", "rest", "tls", "limits", "keys",
                  "drain_seconds", "metrics"}, source)
    if data.get("version") != CONFIG_VERSION:
        raise ConfigError(f"{source}: version must be {CONFIG_VERSION}")
    models = []
    for i, item in enumerate(data.get("models") or []):
        where = f"{source}: models[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected an object")
        _known(item, {"name", "version", "backend", "path", "key", "instances", "threads",
                      "options", "max_queue"}, where)
        queue = item.get("max_queue")
        if queue is not None and (not isinstance(queue, int) or isinstance(queue, bool)
                                  or queue < 0):
            raise ConfigError(f"{where}.max_queue: expected an integer >= 0, got {queue!r}")
        try:
            models.append(ModelConfig(
                name=str(item["name"]), version=str(item.get("version", "1")),
                backend=str(item["backend"]), path=str(item["path"]), key=item.get("key"),
                instances=int(item.get("instances", 1)), threads=int(item.get("threads", 1)),
                options=dict(item.get("options") or {}), max_queue=queue))
        except KeyError as exc:
            raise ConfigError(f"{where}: missing {exc.args[0]}") from None
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: model names must be unique")
    tls = None
    if data.get("tls") is not None:
        t = data["tls"]
        _known(t, {"cert", "key", "key_name", "client_ca"}, f"{source}: tls")
        tls = TLSConfig(t["cert"], t["key"], t.get("key_name"), t.get("client_ca"))
    keys = None
    if data.get("keys") is not None:
        keys = _keys(data["keys"], f"{source}: keys")
    limits_table = data.get("limits") or {}
    if not isinstance(limits_table, dict):
        raise ConfigError(f"{source}: limits: expected an object")
    _known(limits_table, {"max_request_bytes", "max_concurrent_requests", "max_queue",
                          "max_buffered_bytes", "max_connections", "max_grpc_connections",
                          "max_streams_per_connection", "first_byte_timeout",
                          "header_timeout", "idle_timeout", "body_timeout",
                          "body_stall_timeout"}, f"{source}: limits")
    for k, v in limits_table.items():
        if k.endswith("_timeout"):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ConfigError(f"{source}: limits.{k}: expected a positive number of "
                                  f"seconds, got {v!r}")
        elif not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "max_queue" else 1):
            raise ConfigError(f"{source}: limits.{k}: expected a positive integer, got {v!r}")
    limits = Limits(**limits_table)
    return ServerConfig(
        service=str(data.get("service", "model-server")), models=tuple(models),
        grpc=_listener(data.get("grpc"), f"{source}: grpc") if "grpc" in data
        else _simulated(Listener("0.0.0.0", 8001)),
        rest=_listener(data.get("rest"), f"{source}: rest") if "rest" in data
        else _simulated(Listener("0.0.0.0", 8000)),
        tls=tls, limits=limits, keys=keys,
        drain_seconds=float(data.get("drain_seconds", 20.0)), metrics=bool(data.get("metrics", True)))


def load_config(path: str) -> ServerConfig:
    try:
        data = json.loads(host_path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    return parse_config(data, path)
