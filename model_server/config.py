"""The model server's configuration: model-server.json, as the server runs with it.

The file's format is the contract type :class:`enclave_build.contract.server_config.ServerConfig`
(one definition, one reader, one writer): the framework plugin builds it at build time and it
ships into the image as a trusted (measured) file, so what the enclave serves is part of its
identity. This module reads it the way the server needs it:

Paths in the file are absolute paths inside the image. A plain-process simulation runs the image
unpacked under some host directory; it sets ``ENCLAVE_BUILD_ROOT`` to that directory and
:func:`host_path` maps image paths under it. There (only) ``ENCLAVE_BUILD_SIMULATION_LISTEN``
replaces the wildcard listen addresses. Inside an enclave neither variable is ever set.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from enclave_build.contract.names import LISTEN_ENV, ROOT_ENV
from enclave_build.contract.server_config import (
    CONFIG_VERSION,
    KEY_SOURCES,
    SERVER_PINS,
    ConfigError,
    KeysConfig,
    Limits,
    Listener,
    ModelConfig,
    ServerConfig,
    ServerTrustConfig,
    TLSConfig,
)
from enclave_build.contract.tcb import TCB_STATUSES


def host_path(image_path: str) -> Path:
    """Where an image path is on this machine (identity unless a simulation root is set)."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        return Path(image_path)
    return Path(root) / image_path.lstrip("/")


def _simulated(listener: Listener | None) -> Listener | None:
    """*listener*, with a wildcard host replaced by LISTEN_ENV in a plain-process simulation."""
    override = os.environ.get(LISTEN_ENV) if os.environ.get(ROOT_ENV) else None
    if listener is not None and override and listener.host in ("0.0.0.0", "::", ""):
        return dataclasses.replace(listener, host=override)
    return listener


def for_this_host(config: ServerConfig) -> ServerConfig:
    """*config* with its listeners as this run serves them (see :func:`_simulated`)."""
    return dataclasses.replace(config, grpc=_simulated(config.grpc), rest=_simulated(config.rest))


def parse_config(data: Any, source: str = "config") -> ServerConfig:
    """model-server.json's data, checked (every problem in one ConfigError), as served here."""
    return for_this_host(ServerConfig.from_dict(data, source))


def load_config(path: str) -> ServerConfig:
    """The configuration at the image path *path* (under ENCLAVE_BUILD_ROOT in a simulation);
    errors name *path* as given, with the line and key."""
    return for_this_host(ServerConfig.load(host_path(path), path))


__all__ = [
    "ConfigError",
    "ServerConfig",
    "Listener",
    "TLSConfig",
    "Limits",
    "ModelConfig",
    "KeysConfig",
    "ServerTrustConfig",
    "KEY_SOURCES",
    "SERVER_PINS",
    "TCB_STATUSES",
    "CONFIG_VERSION",
    "ROOT_ENV",
    "LISTEN_ENV",
    "host_path",
    "parse_config",
    "load_config",
    "for_this_host",
]
