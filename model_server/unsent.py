"""Answers written but not yet sent: their bytes stay in the byte budget until the client has
read them.

An answer handed to the protocol layer (asyncio's write buffer for REST, grpc core for gRPC)
stays in memory until the client reads it, and a client that never reads would otherwise keep
it there outside the budget (24 REST connections each leaving a 15 MiB answer unread grew the
server by 268 MiB; gRPC streams announcing a zero flow-control window, by 400 MiB). So the bytes
an answer holds move from its request to an :class:`UnsentAnswers` entry, and go back to the
budget when the answer has been sent (REST: its connection's write buffer drained; gRPC: the
call ended). When the budget refuses a reservation (``ByteBudget.on_short``), the answers
waiting longest, at least ``grace`` seconds, are dropped (their connection closed, their call
cancelled) and their bytes go back at once; when a gRPC call waits for room to receive its
message (``ByteBudget.press``), the answer waiting longest (at least ``grace``) is dropped.
Unread answers so cannot keep other requests out for more than about ``grace``; an answer a
client reads slowly is dropped only while others need its room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import ByteBudget, Hold

log = logging.getLogger("model_server")

#: Seconds an unsent answer keeps its bytes before the budget may take them back (a client
#: reading its answer has it well within this).
UNSENT_GRACE = 1.0


class Unsent:
    """One answer waiting to be sent."""

    __slots__ = ("bytes", "drop", "since")

    def __init__(self, size: int, drop: Callable[[], None], since: float) -> None:
        self.bytes = size
        self.drop = drop
        self.since = since


class UnsentAnswers:
    def __init__(
        self,
        budget: ByteBudget,
        *,
        grace: float = UNSENT_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.grace = grace
        self.clock = clock
        self._waiting: dict[Unsent, None] = {}  # oldest first
        self._lock = threading.Lock()
        budget.on_short(self._shed)
        budget.on_pressure(self._relieve)

    @property
    def count(self) -> int:
        return len(self._waiting)

    @property
    def held(self) -> int:
        return sum(u.bytes for u in self._waiting)

    def keep(self, hold: Hold, drop: Callable[[], None]) -> Unsent | None:
        """The bytes of *hold* (the answer's) now belong to an entry until :meth:`sent`;
        *drop* (quick, thread-safe) closes the connection or cancels the call when the budget
        takes them back. None (and nothing held) when *hold* holds nothing."""
        size, hold.held = hold.held, 0
        if not size:
            return None
        entry = Unsent(size, drop, self.clock())
        with self._lock:
            self._waiting[entry] = None
        return entry

    def sent(self, entry: Unsent | None) -> None:
        """The answer was sent (or will never be): its bytes go back, once."""
        if entry is None:
            return
        with self._lock:
            if self._waiting.pop(entry, False) is False:
                return  # (already taken back)
            size, entry.bytes = entry.bytes, 0
        self.budget.release(size)

    def _relieve(self) -> None:
        """Someone waits for room (any thread): the answer unsent the longest, if for at least
        ``grace`` seconds, goes."""
        freed = self._shed(1)
        if freed:
            self.budget.release(freed)

    def _shed(self, short: int) -> int:
        """The budget refused *short* bytes (any thread): drop the answers unsent for at least
        ``grace`` seconds, oldest first, until that much is freed; returns the bytes freed
        (now the budget's)."""
        now = self.clock()
        dropped: list[Unsent] = []
        freed = 0
        with self._lock:
            for entry in list(self._waiting):
                if freed >= short or now - entry.since < self.grace:
                    break
                del self._waiting[entry]
                freed += entry.bytes
                dropped.append(entry)
        for entry in dropped:
            log.info(
                "dropping an answer not read for %.1f s (%d bytes): the byte budget needs room",
                now - entry.since,
                entry.bytes,
            )
            entry.drop()
        return freed
