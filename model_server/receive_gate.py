"""Room for gRPC request messages, reserved before they are received.

grpc buffers a call's whole message once the handler asks for it (``next(requests)``), and does
not say how much of it has arrived. So a ModelInfer call first reserves room for the largest
message (``limits.max_request_bytes``) in the server's byte budget, and only then asks for its
message: however many calls are open, the messages being received take at most what the budget
holds. Calls receiving together may hold at most the budget less one largest request
(:func:`receive_share`), so REST always has room beside them.

A call that finds no room waits for it, for at most twice ``grace`` seconds, and at most
``max_waiting`` calls wait: waiting costs a handler thread, and handler threads must stay free
for calls whose message has arrived. When the waiting room is full, a new call drops the longest
waiter of the connection with the most calls waiting (itself, if that is its own connection), so
a client opening many streams that never send their message crowds out its own calls, not
another client's. The newest waiter gets room first: a legitimate call arriving after a burst of
stalled ones does not queue behind them, and room a legitimate call gives back (its message
arrives at once) goes to the next one. Since grpc cannot tell a stalled message
from a large one arriving slowly, a call still receiving after ``grace`` seconds
(``limits.first_byte_timeout``) is cancelled when another call is waiting for its room; without
contention it may take ``limits.body_timeout``. When it is the byte budget that is short (REST
bodies hold it), a waiter says so (``ByteBudget.press``): REST then refuses a body that has
stopped arriving, as it does for its own requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .core import ByteBudget

log = logging.getLogger("model_server")

#: How often a waiter tells the budget it is short of room (see ByteBudget.press).
PRESS_EVERY = 0.5


def receive_share(budget: int, slot: int) -> int:
    """Bytes gRPC calls receiving their messages may reserve together: the budget less one
    largest request (when it holds two or more), so one protocol's receivers cannot take it
    all."""
    return budget - slot if budget >= 2 * slot else budget


class Holder:
    """A call holding room for its message."""

    __slots__ = ("bytes", "cancel", "evicted", "peer", "since")

    def __init__(self, since: float, cancel: Callable[[], None], size: int, peer: str) -> None:
        self.since = since
        self.cancel = cancel
        self.evicted = False
        self.bytes = size
        self.peer = peer


class _Waiter:
    __slots__ = ("cancel", "dropped", "event", "holder", "peer")

    def __init__(self, cancel: Callable[[], None], peer: str) -> None:
        self.event = threading.Event()
        self.holder: Holder | None = None
        self.cancel = cancel
        self.dropped = False
        self.peer = peer


class ReceiveGate:
    def __init__(
        self,
        budget: ByteBudget,
        slot: int,
        *,
        grace: float,
        max_waiting: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.slot = slot
        self.share = receive_share(budget.limit, slot)
        self.grace = grace
        self.max_waiting = max(1, max_waiting)
        self.clock = clock
        self.receiving = 0  # bytes reserved by holders
        self._holders: list[Holder] = []
        self._waiters: list[_Waiter] = []  # oldest first
        self._waiting_of: dict[str, int] = {}  # connection -> its calls waiting
        self._lock = threading.Lock()
        budget.on_release(self._room_changed)

    @property
    def holders(self) -> int:
        return len(self._holders)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def enter(self, cancel: Callable[[], None], peer: str = "") -> Holder | None:
        """Room for one message, or None when there was none within twice ``grace`` seconds (or
        the call was dropped from the waiting room). *cancel* ends the call (eviction); *peer*
        names its connection."""
        with self._lock:
            if not self._waiters:
                holder = self._take(peer)
                if holder is not None:
                    holder.cancel = cancel
                    return holder
            if len(self._waiters) >= self.max_waiting:
                crowd = max(self._waiting_of, key=self._waiting_of.__getitem__)
                if self._waiting_of.get(peer, 0) >= self._waiting_of[crowd]:
                    crowd = peer  # its own connection crowds the room
                oldest = next(w for w in self._waiters if w.peer == crowd)
                self._waiters.remove(oldest)
                self._out(crowd)
                oldest.dropped = True
                oldest.event.set()
            waiter = _Waiter(cancel, peer)
            self._waiters.append(waiter)
            self._waiting_of[peer] = self._waiting_of.get(peer, 0) + 1
        pressed = 0.0
        # (every holder may be evicted within `grace` of getting its room, so a waiter that
        # waits twice that sees at least one chance)
        deadline = self.clock() + 2 * self.grace
        while True:
            with self._lock:
                if waiter.holder is not None or waiter.dropped:
                    break
                now = self.clock()
                evict_at, victims = self._evict(now)
                if victims:  # room is coming back: wait for it
                    deadline = max(deadline, now + self.grace)
                elif now >= deadline:
                    self._waiters.remove(waiter)
                    self._out(peer)
                    return None
                wait = deadline - now if evict_at is None else min(deadline, evict_at) - now
                short = self.receiving + self.slot <= self.share  # the budget is what is short
            for victim in victims:
                victim()  # (outside the lock: grpc takes its own)
            if short and now - pressed >= PRESS_EVERY:
                pressed = now
                self.budget.press()  # (REST may refuse a stalled body)
            waiter.event.wait(max(0.0, min(wait, PRESS_EVERY)))
        if waiter.dropped:
            return None
        return waiter.holder

    def hand_over(self, holder: Holder) -> int:
        """The call's message arrived: its room leaves the gate, and the bytes it reserved now
        belong to the caller (to release or adjust). Returns them."""
        with self._lock:
            self._holders.remove(holder)
            self.receiving -= holder.bytes
            held, holder.bytes = holder.bytes, 0
        self._room_changed()
        return held

    def leave(self, holder: Holder) -> None:
        """The call ends without its message (or after :meth:`hand_over`: nothing to do)."""
        if not holder.bytes:
            return
        with self._lock:
            self._holders.remove(holder)
            self.receiving -= holder.bytes
            size, holder.bytes = holder.bytes, 0
        self.budget.release(size)  # (wakes the waiters through _room_changed)

    # ------------------------------------------------------------ under the lock

    def _out(self, peer: str) -> None:
        """A waiter of connection *peer* left the waiting room."""
        left = self._waiting_of[peer] - 1
        if left:
            self._waiting_of[peer] = left
        else:
            del self._waiting_of[peer]

    def _take(self, peer: str) -> Holder | None:
        if self.receiving + self.slot > self.share or not self.budget.try_reserve(self.slot):
            return None
        holder = Holder(self.clock(), _nothing, self.slot, peer)
        self._holders.append(holder)
        self.receiving += self.slot
        return holder

    def _evict(self, now: float) -> tuple[float | None, list[Callable[[], None]]]:
        """Holders receiving for longer than ``grace`` while calls wait (one per waiter), to
        be cancelled; and when the next holder becomes evictable, if any."""
        evicting = sum(1 for h in self._holders if h.evicted)
        victims: list[Callable[[], None]] = []
        for holder in sorted(self._holders, key=lambda h: h.since):
            if holder.evicted:
                continue
            if evicting >= len(self._waiters):
                break
            if now - holder.since < self.grace:
                return holder.since + self.grace, victims
            holder.evicted = True
            evicting += 1
            victims.append(holder.cancel)
            log.info(
                "gRPC ModelInfer: request message not received within %g s while other "
                "calls waited for room to receive theirs (limits.first_byte_timeout); call "
                "cancelled",
                self.grace,
            )
        return None, victims

    def _room_changed(self) -> None:
        """Called after bytes go back to the budget (any thread): room for the newest waiters."""
        if not self._waiters:
            return
        with self._lock:
            while self._waiters:
                holder = self._take(self._waiters[-1].peer)
                if holder is None:
                    return
                waiter = self._waiters.pop()  # the newest first
                self._out(waiter.peer)
                holder.cancel = waiter.cancel
                waiter.holder = holder
                waiter.event.set()


def _nothing() -> None:
    pass
