"""Listening sockets and the threads that accept from them.

A listening socket is made before the worker processes fork, so all of them accept from it
(the kernel gives each connection to one). Each process runs one :class:`Listener` thread per
socket, which hands every accepted connection to the process's admission.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from .admission import Admission
from .protocol import SecretProtocol

#: Makes a listening socket for HOST, PORT (OSError when it cannot).
ListenFactory = Callable[[str, int], socket.socket]


def listen_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket listening on HOST:PORT (IPv6 when HOST has a ':'), with a short accept
    timeout so an acceptor notices a stop."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(4096)
    except OSError:
        listener.close()
        raise
    listener.settimeout(0.2)
    return listener


def no_delay(sock: socket.socket) -> None:
    """Small writes go out at once: without TCP_NODELAY, Nagle's algorithm holds the server's
    small TLS/HTTP/2 records until the client's delayed ACK (~40 ms per GrSecret connection,
    measured by benchmarks/grsecret.py)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not a TCP socket (e.g. a test's socketpair)


class Listener:
    """Accepts from one listening socket on a thread of its own until *stopping* is set."""

    def __init__(
        self,
        sock: socket.socket,
        protocol: SecretProtocol,
        admission: Admission,
        stopping: threading.Event,
        name: str,
    ):
        self._sock = sock
        self._protocol = protocol
        self._admission = admission
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = self._sock.accept()
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # e.g. out of file descriptors: retry, never die
                continue
            no_delay(sock)
            self._admission.admit(sock, peer, self._protocol)
