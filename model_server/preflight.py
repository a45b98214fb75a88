"""What the model server checks before it fetches any key: every runtime it will import is
installed, and every port it will listen on is free.

A key is fetched over RA-TLS with a fresh quote, and the secret server logs each release; a
server that then cannot start (a port held by another process, a runtime missing from the
Python environment) fetched it for nothing and reported the real problem late, in another
library's words (a gRPC C++ log line). So :func:`preflight` runs first, and says in one line
what is wrong and what to change:

* a missing runtime names the module and the install line (the distributions of
  enclave-build's ``serve`` extra for the server and the builtin backends,
  :func:`~model_server.runtimes.serve_install_command`; a backend's own
  :attr:`~model_server.backends.Backend.runtimes` for plugins);
* a port in use names the spec key that set it (``[tflite] grpc_port``, carried in
  model-server.json): the port is measured into the enclave, so another port is a rebuild.

Standard library only, besides the backends' classes (``enclave-build run`` uses it too).
"""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from enclave_build.contract.server_config import Listener, ServerConfig

from .backends import BackendError, load_backend_class
from .runtimes import SERVE_EXTRA, Runtime

#: Exit codes: a runtime missing is the installation's problem (as an unknown backend: 2), a
#: port in use the machine's (as any listener that fails: 1).
MISSING_RUNTIME, PORT_IN_USE = 2, 1

#: What the server imports for each listener (besides numpy, a dependency of enclave-build).
GRPC_RUNTIMES = (Runtime(("grpc",)), Runtime(("google.protobuf",)))
REST_RUNTIMES = (Runtime(("httptools",)),)


@dataclass(frozen=True)
class Failure:
    """One thing that stops the server before it fetches a key."""

    message: str
    exit_code: int


def spec_key_text(spec_key: str | None) -> str:
    """``tflite.grpc_port`` -> ``[tflite] grpc_port``."""
    if not spec_key:
        return ""
    section, _, key = spec_key.rpartition(".")
    return f"[{section}] {key}" if section else key


def port_failure(kind: str, listener: Listener, reason: str, *, where: str = "") -> Failure:
    """The one line for a port that cannot be listened on (*kind*: gRPC, REST)."""
    address = (
        f"[{listener.host}]:{listener.port}"
        if ":" in listener.host
        else f"{listener.host}:{listener.port}"
    )
    key = spec_key_text(listener.spec_key)
    setting = (
        f"it is {key} in the spec{where}"
        if key
        else f"it is the {kind} port of model-server.json{where}"
    )
    return Failure(
        f"cannot listen for {kind} on {address}: {reason}; {setting}, measured into "
        "the enclave: another port changes MRENCLAVE (rebuild with it), or stop "
        "what holds this one",
        PORT_IN_USE,
    )


def listen_problem(host: str, port: int) -> str | None:
    """Why a TCP server cannot listen on *host*:*port* now (tried with a socket that is closed
    again at once: SO_REUSEADDR as servers set it, so only a listening socket, not a
    connection in TIME_WAIT, holds the port), or None."""
    return _try_listen([(host, port)])[0]


def _try_listen(addresses: Iterable[tuple[str, int]]) -> list[str | None]:
    """Bind every address at once (so two listeners on one port are found too); the reason
    each one cannot be bound, or None."""
    held: list[socket.socket] = []
    reasons: list[str | None] = []
    try:
        for host, port in addresses:
            if port == 0:
                reasons.append(None)
                continue
            try:
                family, address = _address(host, port)
            except socket.gaierror as exc:
                reasons.append(f"cannot resolve {host!r} ({exc.strerror})")
                continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
                sock.listen(1)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    reasons.append("the address is already in use (another process listens there)")
                else:
                    reasons.append(exc.strerror or str(exc))
                continue
            reasons.append(None)
    finally:
        for sock in held:
            sock.close()
    return reasons


def _address(host: str, port: int) -> tuple[int, tuple]:
    """The socket family and address to bind: an IP literal as it is (no resolver involved,
    as inside an enclave), a name through getaddrinfo."""
    try:
        ip = ipaddress.ip_address(host.strip("[]") if host else "0.0.0.0")
    except ValueError:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return family, address
    if ip.version == 6:
        return socket.AF_INET6, (str(ip), port, 0, 0)
    return socket.AF_INET, (str(ip), port)


def runtime_failures(
    config: ServerConfig,
    backend_class: Callable[[str], type] | None = None,
    find: Callable[[str], object] = importlib.util.find_spec,
) -> list[Failure]:
    """Each runtime the server or a model's backend needs and *find* does not find.
    *backend_class* maps a backend name to its class (default: the server's loader); a
    backend that cannot even be loaded is a failure naming it."""
    load = backend_class or load_backend_class
    needed: list[tuple[str, Runtime]] = []
    if config.grpc is not None:
        needed += [("the gRPC listener", r) for r in GRPC_RUNTIMES]
    if config.rest is not None:
        needed += [("the REST listener", r) for r in REST_RUNTIMES]
    failures: list[Failure] = []
    for backend in dict.fromkeys(m.backend for m in config.models):
        models = ", ".join(m.name for m in config.models if m.backend == backend)
        try:
            cls = load(backend)
        except BackendError as exc:
            failures.append(Failure(f"{exc} (models: {models})", MISSING_RUNTIME))
            continue
        for runtime in getattr(cls, "runtimes", ()):
            needed.append((f"the {backend} backend (models: {models})", runtime))
    reported: set[tuple[str, ...]] = set()
    for who, runtime in needed:
        if runtime.modules in reported or not runtime.missing(find):
            continue
        reported.add(runtime.modules)
        failures.append(
            Failure(
                f"{who} needs the Python module {runtime.describe()}, which is "
                f"not installed where the server runs: {runtime.install_command()}",
                MISSING_RUNTIME,
            )
        )
    return failures


def port_failures(config: ServerConfig) -> list[Failure]:
    """Each listener of *config* whose address cannot be listened on now."""
    listeners = [
        (kind, item)
        for kind, item in (("gRPC", config.grpc), ("REST", config.rest))
        if item is not None
    ]
    reasons = _try_listen([(item.host, item.port) for _, item in listeners])
    return [
        port_failure(kind, item, reason)
        for (kind, item), reason in zip(listeners, reasons, strict=True)
        if reason is not None
    ]


def preflight(config: ServerConfig) -> list[Failure]:
    """Everything that would stop the server after its keys were fetched: missing runtimes,
    then ports in use."""
    return runtime_failures(config) + port_failures(config)


__all__ = [
    "SERVE_EXTRA",
    "Runtime",
    "Failure",
    "GRPC_RUNTIMES",
    "REST_RUNTIMES",
    "listen_problem",
    "port_failure",
    "port_failures",
    "runtime_failures",
    "preflight",
    "spec_key_text",
    "MISSING_RUNTIME",
    "PORT_IN_USE",
]
