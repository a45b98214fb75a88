"""What the server's limits cost in file descriptors, and a process allowed that many.

Each open connection is a descriptor, so the connection caps (``limits.max_connections`` for
REST, ``limits.max_grpc_connections``) decide what the server needs; the builder writes the
enclave's ``sys.fds.limit`` from :func:`fds_needed` (Gramine's default, 900, is less than the
default caps), and a plain process raises its RLIMIT_NOFILE (:func:`fit_open_files`).
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Iterable

from .config import Limits, ModelConfig, ServerConfig

#: The server's own descriptors besides connections and models: Python, the runtimes' libraries,
#: the listeners, grpc's pollers and wakeup fds, key fetches, /proc reads for the metrics,
#: REST's health-check headroom past its cap, and connections accepted in one burst before the
#: cap closes them (asyncio accepts up to its listen backlog at a time).
OWN_FDS = 128
#: Per model instance: its model file(s) (an OpenVINO IR is an .xml and a .bin).
FDS_PER_INSTANCE = 2


def fds_needed(
    limits: Limits, models: Iterable[ModelConfig], *, grpc: bool = True, rest: bool = True
) -> int:
    """Descriptors the server may hold at once with these limits and models."""
    connections = (limits.max_connections if rest else 0) + (
        limits.max_grpc_connections if grpc else 0
    )
    return connections + FDS_PER_INSTANCE * sum(max(1, m.instances) for m in models) + OWN_FDS


def config_fds(config: ServerConfig) -> int:
    return fds_needed(
        config.limits, config.models, grpc=config.grpc is not None, rest=config.rest is not None
    )


def fit_open_files(config: ServerConfig) -> tuple[ServerConfig, str | None]:
    """Raise the soft RLIMIT_NOFILE to what *config* needs (up to the hard limit). If the
    process still may not open that many, lower both connection caps in proportion so the
    server stays below its limit. Returns the configuration to serve with, and what was lowered
    (None when nothing was)."""
    needed = config_fds(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return config, None
    limits = config.limits
    rest = limits.max_connections if config.rest is not None else 0
    grpc = limits.max_grpc_connections if config.grpc is not None else 0
    room = max(2, soft - (needed - rest - grpc))
    scale = room / max(1, rest + grpc)
    lowered = dataclasses.replace(
        limits,
        max_connections=max(1, int(limits.max_connections * scale)),
        max_grpc_connections=max(1, int(limits.max_grpc_connections * scale)),
    )
    message = (
        f"the process may open {soft} files (RLIMIT_NOFILE {soft}) but these limits need "
        f"{needed}: serving at most {lowered.max_connections} REST and "
        f"{lowered.max_grpc_connections} gRPC connections"
    )
    return dataclasses.replace(config, limits=lowered), message
