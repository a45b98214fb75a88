"""Worker processes: forked at start, told to reload or stop over a control channel each,
replaced when they die.

Workers share the listening sockets made before the fork (each accepts from them; the kernel
gives every connection to one of them) and each has its own worker threads, connection limits,
deadline watchdog and verification cache, so the GIL of one process never holds up another.

The supervisor (the starting process) tells every worker to reload (``reload PATH``) and
waits for each to answer ``ok`` or the error; it stops them with SIGTERM, after which each
stops accepting, finishes its connections in flight and exits (SIGKILL if one has not after
the timeout). A worker also obeys SIGHUP and SIGTERM sent to it directly (e.g. to the whole
process group), and stops by itself when the supervisor goes away (its control channel closes).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from ..errors import AttestationError
from .audit import AuditLog, WorkerExited

#: How long a worker may take to start serving, or to answer a reload.
ANSWER_SECONDS = 30.0


class ServerError(AttestationError, RuntimeError):
    """The secret server cannot start, reload or keep its worker processes."""


class Workers:
    """The worker processes of this (supervising) process. Each runs *worker_main(control)*
    in the forked child and exits with what it returns."""

    def __init__(self, worker_main: Callable[[socket.socket], int], audit: AuditLog):
        self._main = worker_main
        self._audit = audit
        self._children: dict[int, socket.socket] = {}  # pid -> control channel
        self._stopping = False

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(sorted(self._children))

    @property
    def running(self) -> bool:
        return bool(self._children)

    def start(self, count: int) -> None:
        """Fork *count* workers and wait until each serves; ServerError (all stopped) if one
        does not."""
        for _ in range(count):
            self._spawn()
        for pid, control in list(self._children.items()):
            if read_line(control, ANSWER_SECONDS) != "ready":
                self.stop(10.0)
                raise ServerError(f"worker process {pid} did not start")

    def _spawn(self) -> int:
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            status = 1
            try:
                parent_end.close()
                for other in self._children.values():
                    other.close()
                self._children = {}
                status = self._main(child_end)
            except BaseException:  # noqa: BLE001 - a worker must never run its parent's code
                import traceback

                traceback.print_exc()
            finally:
                os._exit(status)
        child_end.close()
        self._children[pid] = parent_end
        return pid

    def reload(self, path: str) -> None:
        """Tell every worker to reload *path*; ServerError naming each that failed."""
        failures = []
        for pid, control in list(self._children.items()):
            try:
                control.sendall(b"reload " + path.encode() + b"\n")
            except OSError as exc:
                failures.append(f"worker {pid}: {exc}")
        for pid, control in list(self._children.items()):
            answer = read_line(control, ANSWER_SECONDS)
            if answer != "ok":
                failures.append(f"worker {pid}: {answer or 'no answer'}")
        if failures:
            raise ServerError("reload failed in " + "; ".join(failures))

    def replace_exited(self) -> list[int]:
        """Replace workers that exited without being asked to; the replacements' pids."""
        replaced: list[int] = []
        if self._stopping:
            return replaced
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            self._children.pop(pid).close()
            self._audit.write(WorkerExited(pid, os.waitstatus_to_exitcode(status) if status else 0))
            new = self._spawn()
            if read_line(self._children[new], ANSWER_SECONDS) == "ready":
                replaced.append(new)
        return replaced

    def stop(self, timeout: float) -> None:
        """SIGTERM every worker and reap it; SIGKILL one still there after *timeout* + 5 s."""
        self._stopping = True
        for pid in self._children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + timeout + 5
        for pid, control in list(self._children.items()):
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > end:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.02)
            control.close()
        self._children.clear()


def run_worker(
    control: socket.socket,
    start: Callable[[], None],
    stop: Callable[[], None],
    reload: Callable[[str | None], None],
) -> int:
    """A worker process's life: serve (*start*), obey the supervisor's commands and signals
    (SIGHUP: *reload*; SIGTERM, SIGINT or the supervisor gone: *stop*), exit status 0."""
    stopping, hup = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stopping.set())
    signal.signal(signal.SIGINT, lambda s, f: stopping.set())
    signal.signal(signal.SIGHUP, lambda s, f: hup.set())
    import gc

    gc.freeze()  # what the parent built is long-lived: keep the collector off it
    start()
    control.sendall(b"ready\n")
    buffer = b""
    while not stopping.is_set():
        if hup.is_set():
            hup.clear()
            try:
                reload(None)
            except Exception as exc:  # noqa: BLE001 - keep serving with the old policy
                print(
                    f"worker {os.getpid()}: reload failed, keeping the previous policy: {exc}",
                    file=sys.stderr,
                )
        try:
            ready, _, _ = select.select([control], [], [], 0.2)
        except InterruptedError:
            continue
        if not ready:
            continue
        chunk = control.recv(4096)
        if not chunk:
            break  # the supervisor is gone: stop too
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            command, _, argument = line.decode().partition(" ")
            if command == "reload":
                try:
                    reload(argument or None)
                    control.sendall(b"ok\n")
                except Exception as exc:  # noqa: BLE001 - reported to the supervisor
                    control.sendall(
                        f"{type(exc).__name__}: {exc}".replace("\n", " ").encode()[:2000] + b"\n"
                    )
            elif command == "stop":
                stopping.set()
    stop()
    control.close()
    return 0


def read_line(sock: socket.socket, timeout: float) -> str:
    """One newline-terminated line from a worker's control channel ('' on EOF or timeout)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(1)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        sock.settimeout(None)
    return data.decode(errors="replace").strip()
