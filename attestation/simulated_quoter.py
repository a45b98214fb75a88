"""A SIMULATED quoting service: SGX quotes for one enclave identity, without an enclave.

Where no quote device exists (``gramine-direct`` has only ``/dev/attestation/keys``; a plain
process has no ``/dev/attestation`` at all), the in-enclave key fetcher asks this service for
its quotes instead (``ENCLAVE_BUILD_SIMULATED_QUOTER=HOST:PORT``). The quotes are signed by a
:class:`~attestation.synthetic.SyntheticPKI`: a secret server accepts them only when its
configuration trusts that synthetic root (and it warns that it does).

**THIS IS NOT AN ENCLAVE.** Anything that can connect to the port receives quotes claiming the
configured identity for report data of its choosing; the process that asks is not measured.
For tests and ``enclave-build run --simulate`` only. It listens on 127.0.0.1.

Protocol, one request per TCP connection: the client sends exactly 64 bytes of report data;
the quoter answers a 4-byte big-endian length and the quote, then closes. Fewer than 64 bytes
(before the client closes or the deadline passes), or more than 64, get no answer.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from . import wire
from .errors import AttestationError
from .measurements import Measurements
from .synthetic import SyntheticPKI
from .wire import LENGTH_BYTES, REPORT_DATA_SIZE

WARNING = (
    "WARNING: SIMULATED ATTESTATION: the simulated quoter signs quotes with a SYNTHETIC "
    "TEST PKI for whoever connects. This is NOT an enclave and proves nothing; for tests "
    "and simulation only."
)


class QuoterError(AttestationError, RuntimeError):
    """The simulated quoter cannot start, or a client could not get a quote."""


class SimulatedQuoter:
    """Quotes for the identity in *measurements* (a :class:`Measurements` or its file)."""

    def __init__(
        self,
        pki: SyntheticPKI,
        measurements: Measurements | str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 16,
        timeout: float = 5.0,
        warn: bool = True,
    ):
        if not isinstance(measurements, Measurements):
            measurements = Measurements.load(measurements)
        self.pki = pki
        self.measurements = measurements
        self._identity = (
            bytes.fromhex(measurements.mr_enclave),
            bytes.fromhex(measurements.mr_signer),
            measurements.isv_prod_id,
            measurements.isv_svn,
            measurements.debug,
        )
        self._bind = (host, port)
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._warn = warn
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._workers: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.address: tuple[str, int] | None = None
        self.served = 0  # quotes handed out
        self.rejected = 0  # connections that got no quote

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> tuple[str, int]:
        if self._listener is not None:
            raise QuoterError("the simulated quoter is already running")
        try:
            listener = socket.create_server(self._bind, backlog=64)
        except OSError as exc:
            raise QuoterError(
                f"simulated quoter: cannot listen on "
                f"{self._bind[0]}:{self._bind[1]}: {exc.strerror}"
            ) from None
        listener.settimeout(0.2)
        self._listener = listener
        self.address = listener.getsockname()[:2]
        if self._warn:
            print(
                f"{WARNING} Serving enclave {self.measurements.mr_enclave} "
                f"({self.measurements.service}) on {self.address[0]}:{self.address[1]}.",
                file=sys.stderr,
                flush=True,
            )
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="simulated-quoter", daemon=True
        )
        self._acceptor.start()
        return self.address

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, wait for the connections in flight (each has a deadline)."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)

    def __enter__(self) -> SimulatedQuoter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env_value(self) -> str:
        """The value of ENCLAVE_BUILD_SIMULATED_QUOTER that points at this quoter."""
        if self.address is None:
            raise QuoterError("the simulated quoter is not running")
        return f"{self.address[0]}:{self.address[1]}"

    # ------------------------------------------------------------------ serving

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != REPORT_DATA_SIZE:
            raise QuoterError(
                f"report data must be {REPORT_DATA_SIZE} bytes, not {len(report_data)}"
            )
        mr_enclave, mr_signer, prod_id, svn, debug = self._identity
        return self.pki.quote(mr_enclave, mr_signer, report_data, prod_id, svn, debug)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            if not self._slots.acquire(blocking=False):
                self.rejected += 1
                sock.close()  # bounded: excess connections are closed at once
                continue
            worker = threading.Thread(
                target=self._serve_one, args=(sock,), name="simulated-quoter-conn", daemon=True
            )
            with self._lock:
                self._workers.add(worker)
            worker.start()

    def _serve_one(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(self._timeout)
            report_data = wire.recv_exact(sock, REPORT_DATA_SIZE)
            if len(report_data) != REPORT_DATA_SIZE or _more_pending(sock):
                self.rejected += 1
                return
            quote = self.quote(report_data)
            self.served += 1  # before sending: a client holding the quote sees it counted
            sock.sendall(len(quote).to_bytes(LENGTH_BYTES, "big") + quote)
        except OSError:
            self.rejected += 1
        finally:
            sock.close()
            self._slots.release()
            with self._lock:
                self._workers.discard(threading.current_thread())


def _more_pending(sock: socket.socket) -> bool:
    """True when the client already sent more than the request (a protocol error)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)  # with a timeout set, recv would first wait for data
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except (BlockingIOError, InterruptedError):
        return False
    finally:
        sock.settimeout(timeout)


def request_quote(address: str, report_data: bytes, timeout: float = 10.0) -> bytes:
    """Ask the simulated quoter at HOST:PORT for a quote over *report_data* (64 bytes).

    (The in-enclave client in :mod:`model_server.keys` uses the same wire.request_quote.)"""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise QuoterError(f"simulated quoter address {address!r} is not HOST:PORT")
    if len(report_data) != REPORT_DATA_SIZE:
        raise QuoterError(f"report data must be {REPORT_DATA_SIZE} bytes")
    try:
        return wire.request_quote(host.strip("[]"), int(port), report_data, timeout)
    except wire.QuoteAnswerError as exc:
        raise QuoterError(f"simulated quoter {address} {exc}") from None
    except OSError as exc:
        raise QuoterError(f"simulated quoter {address}: {exc}") from None
