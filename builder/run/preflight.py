"""What `enclave-build run` checks on this machine before it starts the quoter and the service:
the ports the service will listen on are free, and (a plain process runs on this Python) the
runtimes enclave-build's model server imports are installed.

The same checks run inside the model server before it fetches a key
(:mod:`enclave_build.model_server.preflight`); here they come before anything starts, with
``run``'s own exit codes. A port names the spec key that set it (service.json records it):
ports are measured, so another one means a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from enclave_build.contract.names import SERVER_CONFIG, SERVICE_FILE
from enclave_build.contract.server_config import ConfigError, Listener, ServerConfig
from enclave_build.contract.service_info import ServiceInfo, ServiceInfoError
from enclave_build.model_server.backends import BackendError, load_backend_class
from enclave_build.model_server.preflight import listen_problem, port_failure, runtime_failures

#: How run names a service.json port in its message (by the port's name).
_KINDS = {"grpc": "gRPC", "http": "REST", "ratls": "RA-TLS", "grsecret": "GrSecret"}


@dataclass(frozen=True)
class HostChecks:
    """What stops a run before it starts: ports in use (the machine's state) and runtimes
    this Python lacks (a plain process cannot run without them)."""

    ports: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()


def check_host(build_dir: Path, root: Path, *, process: bool, host: str) -> HostChecks:
    """Check the ports of *build_dir*'s service.json on *host* (what the service will bind:
    127.0.0.1 for a plain process unless --listen-all, else the wildcard address) and, for a
    plain *process*, the runtimes its model-server.json (in the image's root *root*) needs."""
    ports = tuple(_port_problems(build_dir, host))
    runtimes: tuple[str, ...] = ()
    if process:
        config = _server_config(root)
        if config is not None:
            runtimes = tuple(f.message for f in runtime_failures(config, _host_backend))
    return HostChecks(ports, runtimes)


def _port_problems(build_dir: Path, host: str) -> list[str]:
    try:
        info = ServiceInfo.load(build_dir / SERVICE_FILE)
    except ServiceInfoError:
        return []  # no service.json (a service without ports, or an older build)
    problems = []
    for port in info.ports:
        reason = listen_problem(host, port.number)
        if reason is not None:
            listener = Listener(host, port.number, port.spec_key)
            problems.append(
                port_failure(_KINDS.get(port.name, port.name), listener, reason).message
            )
    return problems


def _server_config(root: Path) -> ServerConfig | None:
    path = root / SERVER_CONFIG.lstrip("/")
    if not path.is_file():
        return None  # not enclave-build's model server
    try:
        return ServerConfig.load(path, SERVER_CONFIG)
    except ConfigError:
        return None  # the server reports it itself, with its line


class _Unknown:
    """A backend that lives in the image only (a plugin's, on the image's PYTHONPATH): the
    server checks its runtimes itself before it fetches a key."""

    runtimes = ()


def _host_backend(name: str) -> type:
    try:
        return load_backend_class(name)
    except BackendError:
        return _Unknown


__all__ = ["HostChecks", "check_host"]
