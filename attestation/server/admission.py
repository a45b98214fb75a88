"""One process's connections, from accept to close: connection caps, per-peer limits,
deadlines, worker threads and the TLS handshake; then the protocol converses.

* **Caps.** At most ``max_connections`` at once, and ``max_connections_per_peer`` from one
  address; an excess connection is refused at once (closed, with an audit line).
* **Deadline.** Each connection has ``timeout`` seconds from the moment it was accepted (also
  while it waits for a worker thread), enforced by one watchdog thread that shuts the socket
  down when they pass, which unblocks whatever its worker waits on.
* **Workers.** A bounded pool of ``workers`` threads: connections beyond them wait in its
  queue (still within ``max_connections``), so 1000 simultaneous clients do not become 1000
  threads fighting over two cores.
* **Lifecycle.** Every connection ends in exactly one audit line with a decision and a reason
  (GrSecret: one per call), written before the connection is closed: once a client has seen the
  end of its connection, its line exists.
"""

from __future__ import annotations

import heapq
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from OpenSSL import SSL

from enclave_build.contract.secrets_config import ServerSettings

from ..upload import UploadStore
from .audit import AuditLog, ConnectionEvent
from .protocol import SecretProtocol, Session
from .state import ServerState
from .tls import describe


@dataclass(frozen=True)
class Limits:
    """``[server]``'s connection limits (per process)."""

    max_connections: int  # at once
    max_connections_per_peer: int  # at once from one address
    workers: int  # threads serving connections
    timeout: float  # seconds from accept to close

    @classmethod
    def of(cls, server: ServerSettings) -> Limits:
        return cls(
            server.max_connections, server.max_connections_per_peer, server.workers, server.timeout
        )


def peer_text(peer: tuple) -> str:
    """HOST:PORT of a socket address ([HOST]:PORT for IPv6)."""
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Admission:
    """Admits, serves and releases one process's connections."""

    def __init__(
        self,
        limits: Limits,
        audit: AuditLog,
        state: Callable[[], ServerState],
        uploads: UploadStore,
    ):
        self.limits = limits
        self._audit = audit
        self._state = state
        self._uploads = uploads
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._free = limits.max_connections
        self._per_peer: dict[str, int] = {}
        self._peer_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=min(limits.workers, limits.max_connections),
            thread_name_prefix="secret-conn",
        )
        self._watchdog = Watchdog()

    # ------------------------------------------------------------------ what is in use

    @property
    def free_slots(self) -> int:
        """Connections that may still be admitted (of ``max_connections``)."""
        with self._peer_lock:
            return self._free

    def connections_from(self, address: str) -> int:
        """Connections admitted from *address* and not yet released."""
        with self._peer_lock:
            return self._per_peer.get(address, 0)

    # ------------------------------------------------------------------ admission

    def admit(self, sock: socket.socket, peer: tuple, protocol: SecretProtocol) -> None:
        """Queue an accepted connection, or refuse it at once (one audit line either way)."""
        limits = self.limits
        address = peer[0]
        if not self._slots.acquire(blocking=False):
            self._refuse_now(sock, peer, "too many concurrent connections")
            return
        with self._peer_lock:
            count = self._per_peer.get(address, 0)
            if count < limits.max_connections_per_peer:
                self._per_peer[address] = count + 1
                self._free -= 1
        if count >= limits.max_connections_per_peer:
            self._slots.release()
            self._refuse_now(
                sock,
                peer,
                "too many concurrent connections from this peer "
                "(max_connections_per_peer = "
                f"{limits.max_connections_per_peer})",
            )
            return
        deadline = time.monotonic() + limits.timeout
        ticket = self._watchdog.watch(sock, limits.timeout)
        try:
            self._pool.submit(self._serve, sock, peer, ticket, deadline, protocol)
        except RuntimeError:  # shutting down
            self._watchdog.forget(ticket)
            sock.close()
            self._release(address)
            self._refuse_now(None, peer, "server shutting down")

    def _refuse_now(self, sock: socket.socket | None, peer: tuple, reason: str) -> None:
        event = ConnectionEvent(peer_text(peer))
        event.deny(reason)
        self._audit.write(event)
        if sock is not None:
            sock.close()

    def _release(self, address: str) -> None:
        with self._peer_lock:
            left = self._per_peer.get(address, 1) - 1
            if left > 0:
                self._per_peer[address] = left
            else:
                self._per_peer.pop(address, None)
            self._free += 1
        self._slots.release()

    def stop(self) -> None:
        """Finish the connections in flight (each within its deadline), then stop."""
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._watchdog.stop()

    # ------------------------------------------------------------------ one connection

    def _serve(
        self,
        sock: socket.socket,
        peer: tuple,
        ticket: int,
        deadline: float,
        protocol: SecretProtocol,
    ) -> None:
        state = self._state()
        event = ConnectionEvent(peer_text(peer))
        conn: SSL.Connection | None = None
        audited = False
        try:
            if time.monotonic() >= deadline:
                event.deny("deadline passed while waiting for a worker (server overloaded)")
                return
            conn = SSL.Connection(protocol.context(state), sock)
            conn.set_accept_state()
            event.protocol = protocol.audit_name
            try:
                conn.do_handshake()
            except (SSL.Error, OSError) as exc:
                protocol.handshake_failed(event, describe(exc))
                return
            event.tls = conn.get_protocol_version_name()
            session = Session(conn, state, event, deadline, self._audit, self._uploads)
            protocol.converse(session)
            audited = session.audited
        except (SSL.Error, OSError) as exc:
            if not event.decided:
                event.deny(f"connection failed: {describe(exc)}")
        except Exception as exc:  # noqa: BLE001 - whatever happens, the refusal is audited
            event.deny(
                f"internal error handling the connection: {type(exc).__name__}: {str(exc)[:300]}"
            )
        finally:
            self._watchdog.forget(ticket)
            if not event.decided:  # cannot happen; never leave a line without one
                event.deny("connection ended without a decision")
            # The line is written before the connection is closed. (GrSecret wrote one per
            # call.)
            if not audited:
                self._audit.write(event)
            if conn is not None:
                try:
                    conn.shutdown()
                except (SSL.Error, OSError):
                    pass
            sock.close()
            self._release(peer[0])


class Watchdog:
    """One thread that enforces every connection's deadline (a thread per connection would
    cost more than the work): when a deadline passes, the socket is shut down, which unblocks
    whatever its worker is waiting on."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._counter = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="secret-watchdog", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        with self._lock:
            self._counter += 1
            # Wake the watchdog only when this deadline comes first (with one timeout for every
            # connection, almost never): a wake-up per connection would cost a thread switch.
            earliest = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, self._counter, sock))
            self._live.add(self._counter)
            if earliest:
                self._lock.notify()
            return self._counter

    def forget(self, ticket: int) -> None:
        with self._lock:
            self._live.discard(ticket)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()
        self._thread.join(5)

    def _run(self) -> None:
        with self._lock:
            while not self._stopped:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._lock.wait()
                    continue
                deadline, ticket, sock = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._lock.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(ticket)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
