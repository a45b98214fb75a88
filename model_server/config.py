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

ROOT_ENV = "ENCLAVE_BUILD_ROOT"
CONFIG_VERSION = 1


class ConfigError(ValueError):
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
      past both a request is refused (UNAVAILABLE / 503).
    * ``max_buffered_bytes``: server-wide budget of request bytes being received or held (REST
      bodies, gRPC messages, decompressed bodies), reserved before a REST body is read; when it
      is used up a request is refused with HTTP 503 / gRPC RESOURCE_EXHAUSTED. 0 (the default)
      means 4 x ``max_request_bytes``; never less than ``max_request_bytes``.
    * ``max_connections``: open REST connections; one more is answered 503 and closed.
    * ``header_timeout``: seconds a REST client has to send a whole request header block
      (from its first byte), and for a TLS handshake; ``idle_timeout``: seconds a keep-alive
      connection may sit idle between requests (and a response may wait for a client that does
      not read); ``body_timeout``: seconds to receive a request body.
    """

    max_request_bytes: int = 64 << 20
    max_concurrent_requests: int = 64   # requests executing or queued for an interpreter
    max_queue: int = 256                # waiting beyond that: refused (RESOURCE_EXHAUSTED / 503)
    max_buffered_bytes: int = 0         # 0: 4 x max_request_bytes
    max_connections: int = 256          # open REST connections
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    body_timeout: float = 60.0

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


#: How the keys reach the server: fetched by the server itself over RA-TLS (Gramine), or left
#: in files by the libOS before the server starts (Occlum's init, which fetched them over its
#: own mutual RA-TLS and decrypted the whole image; no quote device exists for the server).
KEY_SOURCES = ("ra-tls", "files")


@dataclass(frozen=True)
class KeysConfig:
    """The wrap keys the server needs before any model is opened.

    ``source = "ra-tls"`` (default): fetched inside the enclave, one RA-TLS connection each,
    from *server*, checked against *ca*. ``source = "files"``: read from *directory*/NAME,
    where the libOS put them (Occlum); the models are then opened as they are."""

    server: str                   # HOST:PORT of the secret server ("" with source "files")
    ca: str                       # image path of the secret server's CA certificate (trusted)
    names: tuple[str, ...]        # key names; each is asked for by TLS server name (SNI)
    timeout_seconds: float = 10.0
    evidence: str = "tcg-dice"    # RA-TLS certificate format presented
    source: str = "ra-tls"        # one of KEY_SOURCES
    directory: str | None = None  # image path of the key files (source "files")


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
    return Listener(str(value.get("host", "0.0.0.0")), port)


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
    _known(k, {"source", "server", "ca", "names", "timeout_seconds", "evidence"}, where)
    for name in ("server", "ca"):
        if not isinstance(k.get(name), str):
            raise ConfigError(f"{where}.{name}: required (a string) with source \"ra-tls\"")
    return KeysConfig(k["server"], k["ca"], tuple(names), float(k.get("timeout_seconds", 10.0)),
                      k.get("evidence", "tcg-dice"))


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
                      "options"}, where)
        try:
            models.append(ModelConfig(
                name=str(item["name"]), version=str(item.get("version", "1")),
                backend=str(item["backend"]), path=str(item["path"]), key=item.get("key"),
                instances=int(item.get("instances", 1)), threads=int(item.get("threads", 1)),
                options=dict(item.get("options") or {})))
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
                          "max_buffered_bytes", "max_connections", "header_timeout",
                          "idle_timeout", "body_timeout"}, f"{source}: limits")
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
        grpc=_listener(data.get("grpc"), f"{source}: grpc") if "grpc" in data else Listener("0.0.0.0", 8001),
        rest=_listener(data.get("rest"), f"{source}: rest") if "rest" in data else Listener("0.0.0.0", 8000),
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
