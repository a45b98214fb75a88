"""The secret server: the configuration it serves, its listeners, and the processes serving
them (see the package docstring for the whole)."""

from __future__ import annotations

import datetime as _dt
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from OpenSSL import SSL

from enclave_build.contract.secrets_config import GrSecretSettings, SecretsConfig

from ..config import load_config
from ..upload import UploadStore
from .admission import Admission, Limits, peer_text
from .audit import AuditLog, Reloaded, Started, Stopped
from .grsecret_service import GrSecretService
from .identity import IdentityError, ServerIdentity
from .listener import Listener, ListenFactory, listen_tcp
from .protocol import SecretProtocol
from .secret_prov import SecretProv
from .state import ServerState, VerifierFactory
from .supervisor import ServerError, Workers, run_worker
from .tls import describe
from .verifier import ClientVerifier, utc_now


class SecretServer:
    """Serves ``[server]`` (Gramine's secret_prov, key upload) and ``[grsecret]`` (Occlum's
    GrSecret) of one secrets.toml.

    *now* is the clock quotes and collateral are checked against; *verifier_for* makes the
    client verifier of a configuration (default: :meth:`ClientVerifier.for_config`);
    *listen* makes the listening sockets (default: :func:`listen_tcp`)."""

    def __init__(
        self,
        config: SecretsConfig,
        *,
        now: Callable[[], _dt.datetime] | None = None,
        verifier_for: VerifierFactory | None = None,
        listen: ListenFactory = listen_tcp,
    ):
        clock = now or utc_now
        self._verifier_for = verifier_for or (lambda cfg: ClientVerifier.for_config(cfg, clock))
        self._listen = listen
        self.audit = AuditLog(config.server.audit_log)
        try:  # the server's own RA-TLS certificates (if configured): once per start
            self._identity = ServerIdentity.make(config)
        except IdentityError as exc:
            self.audit.close()
            raise ServerError(str(exc)) from None
        try:
            self._state = ServerState.load(config, self._identity, self._verifier_for)
        except BaseException:
            self.audit.close()
            raise
        self.uploads = UploadStore()  # keys owners uploaded ([upload]); memory only
        # the reader always sets it (the cores the server may use when secrets.toml does not)
        assert config.server.processes is not None
        self.processes: int = config.server.processes
        self.address: tuple[str, int] | None = None
        self.grsecret_address: tuple[str, int] | None = None
        # (listening socket, its protocol, its acceptor thread's name)
        self._sockets: list[tuple[socket.socket, SecretProtocol, str]] = []
        self._workers = Workers(self._worker_main, self.audit)
        self._admission: Admission | None = None  # set while this process serves
        self._listeners: list[Listener] = []
        self._stopping = threading.Event()

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """The worker processes (none when this process serves itself)."""
        return self._workers.pids

    @property
    def admission(self) -> Admission | None:
        """This process's connection machinery while it serves (None in a supervisor)."""
        return self._admission

    # ------------------------------------------------------------------ configuration

    def reload(self, path: str | Path | None = None) -> None:
        """Re-read the configuration, measurements, secrets and the TLS certificate and key;
        keep the old state (all of it) on any error. The listening addresses, process and
        worker counts and connection caps stay as started. With worker processes, the
        configuration is checked here first, then every worker reloads it; an error in any
        raises."""
        config = load_config(path or self._state.config.path)
        if not self._identity.matches(config) or _address(config.grsecret) != _address(
            self._state.config.grsecret
        ):
            raise ServerError(
                f"{config.path}: server.identity and [grsecret] (its presence and "
                "listen address) cannot change on reload: restart the server"
            )
        try:
            state = ServerState.load(config, self._identity, self._verifier_for)
        except SSL.Error as exc:
            raise ServerError(
                f"{config.server.cert} / {config.server.key}: cannot use the TLS "
                f"certificate and key: {describe(exc)}"
            ) from None
        self._state = state  # new connections use it; those in flight finish as they are
        if self._workers.running:
            self._workers.reload(str(config.path))
            return
        self.audit.write(
            Reloaded(
                len(state.policy.measurements),
                len(state.policy.secrets),
                str(config.server.cert),
                os.getpid(),
            )
        )

    # ------------------------------------------------------------------ serving

    def start(self) -> tuple[str, int]:
        config = self._state.config
        server = config.server
        try:
            listener = self._listen(server.host, server.port)
        except OSError as exc:
            raise ServerError(
                f"{config.path}: server.listen: cannot listen on "
                f"{peer_text((server.host, server.port))}: "
                f"{exc.strerror or exc}"
            ) from None
        self.address = listener.getsockname()[:2]
        self._sockets.append(
            (listener, SecretProv(self._identity.dice is not None), "secret-accept")
        )
        grpc = config.grsecret
        grsecret = None
        if grpc is not None:  # a port of its own, shared by the worker processes like the other
            try:
                grpc_listener = self._listen(grpc.host, grpc.port)
            except OSError as exc:
                listener.close()
                raise ServerError(
                    f"{config.path}: grsecret.listen: cannot listen on "
                    f"{peer_text((grpc.host, grpc.port))}: "
                    f"{exc.strerror or exc}"
                ) from None
            self.grsecret_address = grpc_listener.getsockname()[:2]
            self._sockets.append((grpc_listener, GrSecretService(), "grsecret-accept"))
            grsecret = f"{self.grsecret_address[0]}:{self.grsecret_address[1]}"
        listen = f"{self.address[0]}:{self.address[1]}"
        if self.processes == 1:
            self._start_serving()
            self.audit.write(Started(listen, grsecret, 1, pid=os.getpid()))
            return self.address
        try:
            self._workers.start(self.processes)
        except ServerError:
            self.shutdown()
            raise
        self.audit.write(Started(listen, grsecret, self.processes, pids=self._workers.pids))
        return self.address

    def supervise(self) -> list[int]:
        """Replace worker processes that exited without being asked to (the CLI calls this
        periodically); returns the pids of the replacements."""
        return self._workers.replace_exited()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish the connections in flight (every process), stop."""
        if self._workers.running:
            self._stopping.set()
            self._workers.stop(timeout)
            self._close_sockets()
        elif self._admission is not None:
            self._stop_serving(timeout)
        else:
            self._close_sockets()
        self.audit.write(Stopped(os.getpid()))
        self.audit.close()

    # ------------------------------------------------------------------ this process serving

    def _worker_main(self, control: socket.socket) -> int:
        return run_worker(control, self._start_serving, self._stop_serving, self.reload)

    def _start_serving(self) -> None:
        """This process's connection machinery: limits, worker threads, watchdog, acceptors."""
        self._admission = Admission(
            Limits.of(self._state.config.server), self.audit, lambda: self._state, self.uploads
        )
        self._listeners = [
            Listener(sock, protocol, self._admission, self._stopping, name)
            for sock, protocol, name in self._sockets
        ]
        for listener in self._listeners:
            listener.start()

    def _stop_serving(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._close_sockets()
        for listener in self._listeners:
            listener.join(timeout)
        if self._admission is not None:
            self._admission.stop()

    def _close_sockets(self) -> None:
        for sock, _, _ in self._sockets:
            sock.close()


def _address(settings: GrSecretSettings | None) -> tuple[str, int] | None:
    return None if settings is None else (settings.host, settings.port)
