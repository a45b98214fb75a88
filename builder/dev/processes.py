"""The processes ``enclave-build dev`` starts: each in a session of its own (a Ctrl-C at the
terminal reaches only ``dev``, which stops them in order), told to end when ``dev`` dies
(Linux ``PR_SET_PDEATHSIG``: no orphans even if ``dev`` is killed), its output (stdout and
stderr together) streamed line by line with a prefix (``secret-server | ...``) and the last
lines kept for error messages."""

from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..run.failures import EXPLAINED

#: Lines of each process's output kept for an error message.
TAIL_LINES = 25
#: A line that reports an error (``error: ...``, ``model_server: cannot load ...``, an
#: exception's last line ``ValueError: ...``); not a traceback's header or frames.
_ERROR_LINE = re.compile(r"(?i)^error\b|\b(cannot|failed|fatal)\b|\w*Error: ")
_NOT_ERROR = re.compile(r"^(\s|Traceback \(most recent call last\)|WARNING\b)")


def is_error_line(line: str) -> bool:
    """Whether a line of a process's output reports an error (see :data:`_ERROR_LINE`)."""
    return bool(line.strip()) and not _NOT_ERROR.match(line) and bool(_ERROR_LINE.search(line))


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class ManagedProcess:
    """A child process whose output goes to *emit* as ``NAME | line``.

    *watch* is called with every line (before it is emitted), e.g. to notice readiness."""

    name: str
    argv: Sequence[str]
    emit: Callable[[str], None]
    env: Mapping[str, str] | None = None
    watch: Callable[[str], None] | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    tail: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES), init=False
    )
    _reader: threading.Thread | None = field(default=None, init=False)
    #: The first line of its output that reports an error (:func:`is_error_line`), if any.
    first_error: str | None = field(default=None, init=False)

    def start(self) -> None:
        self.process = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(self.env) if self.env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._pump, name=f"{self.name}-log", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        prefix = f"{self.name} | "
        for raw in iter(self.process.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail.append(line)
            if self.first_error is None and is_error_line(line):
                self.first_error = line
            if self.watch is not None:
                self.watch(line)
            self.emit(prefix + line)
        self.process.stdout.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exit_code(self) -> int | None:
        """None while it runs (or before it started)."""
        return self.process.poll() if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def describe_exit(self) -> str:
        code = self.exit_code()
        if code is None:
            return "running"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def log_tail(self) -> str:
        """The last lines of its output, for an error message."""
        self.flush()
        lines = list(self.tail)
        if not lines:
            return f"({self.name} printed nothing)"
        return "\n".join(f"  {self.name} | {line}" for line in lines)

    def key_line(self) -> str:
        """The one line of its output that says most about a failure: the run's explanation
        of it (``run: ...`` lines after :data:`EXPLAINED`) if it gave one, else the first line
        that reports an error, else the last non-empty one; prefixed ``  NAME | `` as
        streamed."""
        self.flush()
        lines = list(self.tail)
        marks = [i for i, text in enumerate(lines) if EXPLAINED in text]
        if marks:
            explained = [t for t in lines[marks[-1] :] if t.startswith("run: ")]
            return "\n".join(f"  {self.name} | {t}" for t in explained)
        line = self.first_error
        if line is None:
            line = next((t for t in reversed(self.tail) if t.strip()), None)
        if line is None:
            return f"  ({self.name} printed nothing)"
        return f"  {self.name} | {line}"

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (a little) until the output of an ended process has been read."""
        if self._reader is not None and self.exit_code() is not None:
            self._reader.join(timeout)

    def signal(self, signum: int) -> None:
        if self.running():
            try:
                self.process.send_signal(signum)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 15.0, then: Sequence[tuple[int, float]] = ()) -> int | None:
        """SIGTERM, wait up to *grace* seconds; then each (signal, seconds) of *then*; at the
        end SIGKILL to its whole process group (its own forked workers). Returns its exit
        status."""
        if self.process is None:
            return None
        steps = [(signal.SIGTERM, grace), *then]
        for signum, seconds in steps:
            if not self.running():
                break
            self.signal(signum)
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                continue
        if self.running():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
        else:
            # Workers it forked share its process group: none may outlive it.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.flush()
        return self.process.returncode


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Poll *condition* until it is true (True) or *timeout* seconds passed (False)."""
    deadline = clock() + timeout
    while True:
        if condition():
            return True
        if clock() >= deadline:
            return False
        sleep(interval)


__all__ = ["ManagedProcess", "wait_until", "is_error_line", "TAIL_LINES"]
