"""Deadlines that all have the same length, kept by one thread: :meth:`Watchdog.arm` costs an
append, and deadlines expire in the order they were armed, so the thread only ever looks at the
oldest one. What runs at a deadline (``action``) must be quick and must not block."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("model_server")


class Deadline:
    __slots__ = ("action", "disarmed", "due", "fired")

    def __init__(self, due: float, action: Callable[[], object]) -> None:
        self.due = due
        self.action: Callable[[], object] | None = action
        self.fired = self.disarmed = False


class Watchdog:
    def __init__(self, seconds: float, name: str = "watchdog") -> None:
        self.seconds = seconds
        self._armed: collections.deque[Deadline] = collections.deque()
        self._lock = threading.Lock()  # fired vs disarmed: exactly one of them wins
        self._stop = threading.Event()
        # a new deadline is noticed within this (the thread never sleeps longer)
        self._tick = min(1.0, max(0.01, seconds / 4))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def arm(self, action: Callable[[], object]) -> Deadline:
        deadline = Deadline(time.monotonic() + self.seconds, action)
        self._armed.append(deadline)  # deque.append is atomic
        return deadline

    def disarm(self, deadline: Deadline) -> bool:
        """True if the action will never run; False if it ran (or is running) already. The
        action is dropped at once: it may hold a whole call alive (a grpc context keeps its
        call, and with it an HTTP/2 stream counted against the connection's limit)."""
        with self._lock:
            if deadline.fired:
                return False
            deadline.disarmed = True
            deadline.action = None
            return True

    def _run(self) -> None:
        armed = self._armed
        while not self._stop.is_set():
            now = time.monotonic()
            while armed and (armed[0].disarmed or armed[0].due <= now):
                deadline = armed.popleft()
                with self._lock:
                    if deadline.disarmed:
                        continue
                    deadline.fired = True
                    action, deadline.action = deadline.action, None
                try:
                    if action is not None:
                        action()
                except Exception:  # one failing action must not stop the rest
                    log.exception("a deadline's action failed")
                del action
            wait = self._tick
            if armed:
                wait = min(wait, max(0.0, armed[0].due - now))
            self._stop.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
