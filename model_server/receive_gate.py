"""Room for gRPC request messages, reserved before they are received, shared fairly between
connections.

grpc buffers a call's whole message once the handler asks for it (``next(requests)``), and does
not say how large it is or how much of it has arrived. So a ModelInfer call first takes a
*room*: the largest message (``limits.max_request_bytes``) reserved in the server's byte budget;
only then does it ask for its message. The rooms together hold at most the budget less one
largest request (:func:`receive_share`), so REST always has room beside them, and however many
calls are open, the messages being received take at most what the rooms hold. A smaller
reservation would not be sound: grpc accepts any message up to ``max_request_bytes`` for any
call, and has no per-call limit.

Rooms are few (three with the defaults), so who gets one decides who is served. Calls are
grouped by their HTTP/2 connection (grpc's ``context.peer()``: address and port), and a
connection's *holdings* are its calls holding a room, the rooms it keeps (below) and rooms on
their way to its calls. A call that finds no room waits, and while it waits:

* **a connection holding two or more rooms more than the waiting call's** loses one at once: a
  kept room, else its newest call that has held its room for :data:`MIN_HOLD` is cancelled (a
  message already sent is not cut). One connection with many streams
  never holds the rooms against another;
* **a connection holding more than the waiting call's** loses its call that has been receiving
  the longest, once that call has held its room for ``grace`` × rooms / connections contending
  (at least :data:`MIN_HOLD`, at most ``grace``): with many connections, each holds a room for
  its share of ``grace`` and then gives it up, so a waiting call has a room within about
  ``grace`` however many connections contend. A call whose message is large and arrives slowly
  is cut by this rule only while calls of connections holding fewer rooms wait;
* any call still receiving after ``grace`` (``limits.first_byte_timeout``) is cancelled, one per
  waiting call; without contention a call may receive for ``limits.body_timeout``.

Room freed goes first to the call it was freed for, then to the waiting call whose connection
holds the fewest rooms, the newest of them first (a call arriving after a burst of stalled ones
does not queue behind them).

**Kept rooms.** When a call's message arrives, its connection keeps the room for
:data:`KEEP` seconds, for its next call: a client whose messages arrive at once keeps being
served at once, instead of competing for each call against streams that never send theirs. A
kept room allocates nothing (its bytes are reserved again when a call takes it); at most all
rooms but one are kept, and a connection holding two or more rooms more than a waiting call's
loses its kept rooms first.

At most ``max_waiting`` calls wait (a handler thread each), each for at most twice ``grace``;
when the waiting room is full, a new call drops the longest waiter of the connection with the
most calls waiting (itself, if that is its own connection). When it is the byte budget that is
short (REST bodies hold it), a waiter says so (``ByteBudget.press``): REST then refuses a body
that has stopped arriving, as it does for its own requests.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .core import ByteBudget

log = logging.getLogger("model_server")

#: How often a waiter tells the budget it is short of room (see ByteBudget.press).
PRESS_EVERY = 0.5
#: Seconds a connection keeps the room its last message arrived in, for its next call.
KEEP = 1.0
#: Seconds a call holds its room before any rule may cancel it (a message already sent arrives
#: well within this).
MIN_HOLD = 0.25


def receive_share(budget: int, slot: int) -> int:
    """Bytes gRPC calls receiving their messages may reserve together: the budget less one
    largest request (when it holds two or more), so one protocol's receivers cannot take it
    all."""
    return budget - slot if budget >= 2 * slot else budget


class Holder:
    """A call holding room for its message."""

    __slots__ = ("since", "cancel", "evicted", "bytes", "peer", "heir")

    def __init__(self, since: float, cancel: Callable[[], None], size: int, peer: str) -> None:
        self.since = since
        self.cancel = cancel
        self.evicted = False
        self.bytes = size
        self.peer = peer
        self.heir: _Waiter | None = None    # the call its room goes to once it is cancelled


class _Waiter:
    __slots__ = ("event", "holder", "cancel", "dropped", "peer", "owed")

    def __init__(self, cancel: Callable[[], None], peer: str) -> None:
        self.event = threading.Event()
        self.holder: Holder | None = None
        self.cancel = cancel
        self.dropped = False
        self.peer = peer
        self.owed = False           # a call was cancelled to make room for this one


class _Kept:
    """A room a connection keeps for its next call (nothing reserved in the budget)."""

    __slots__ = ("peer", "until")

    def __init__(self, peer: str, until: float) -> None:
        self.peer = peer
        self.until = until


class ReceiveGate:
    def __init__(self, budget: ByteBudget, slot: int, *, grace: float, max_waiting: int,
                 clock: Callable[[], float] = time.monotonic, keep: float = KEEP,
                 min_hold: float = MIN_HOLD) -> None:
        self.budget = budget
        self.slot = slot
        self.share = receive_share(budget.limit, slot)
        self.rooms = max(1, self.share // slot)
        self.grace = grace
        self.keep = keep
        self.min_hold = min(min_hold, grace)
        self.max_waiting = max(1, max_waiting)
        self.clock = clock
        self.receiving = 0                      # bytes reserved by holders
        self._holders: list[Holder] = []
        self._kept: list[_Kept] = []
        self._waiters: list[_Waiter] = []       # oldest first
        self._waiting_of: dict[str, int] = {}   # connection -> its calls waiting
        self._lock = threading.Lock()
        budget.on_release(self._room_changed)

    @property
    def holders(self) -> int:
        return len(self._holders)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def kept(self) -> int:
        return len(self._kept)

    def enter(self, cancel: Callable[[], None], peer: str = "") -> Holder | None:
        """Room for one message, or None when there was none within twice ``grace`` seconds (or
        the call was dropped from the waiting room). *cancel* ends the call (eviction); *peer*
        names its connection."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            kept = next((k for k in self._kept if k.peer == peer), None)
            if kept is not None:                    # the room its connection kept
                self._kept.remove(kept)
                holder = self._reserve(peer, now)
                if holder is not None:
                    holder.cancel = cancel
                    return holder
            elif not self._waiters:
                holder = self._take(peer, now)
                if holder is not None:
                    holder.cancel = cancel
                    return holder
            if len(self._waiters) >= self.max_waiting:
                crowd = max(self._waiting_of, key=self._waiting_of.__getitem__)
                if self._waiting_of.get(peer, 0) >= self._waiting_of[crowd]:
                    crowd = peer                   # its own connection crowds the room
                oldest = next(w for w in self._waiters if w.peer == crowd)
                self._waiters.remove(oldest)
                self._out(crowd)
                oldest.dropped = True
                oldest.event.set()
                self._nudge()
            waiter = _Waiter(cancel, peer)
            self._waiters.append(waiter)
            self._waiting_of[peer] = self._waiting_of.get(peer, 0) + 1
            self._grant(now)
        pressed = 0.0
        # (every holder may be evicted within `grace` of getting its room, so a waiter that
        # waits twice that sees at least one chance)
        deadline = self.clock() + 2 * self.grace
        while True:
            with self._lock:
                waiter.event.clear()
                if waiter.holder is not None or waiter.dropped:
                    break
                now = self.clock()
                self._expire(now)
                self._grant(now)
                if waiter.holder is not None:
                    break
                victim, wake = self._evict_for(waiter, now)
                if waiter.holder is not None:          # (a kept room was taken for it)
                    break
                if victim is not None:                 # room is coming back: wait for it
                    deadline = max(deadline, now + self.grace)
                elif now >= deadline:
                    self._waiters.remove(waiter)
                    self._out(peer)
                    self._nudge()
                    return None
                if self._kept:
                    wake = min(wake, min(k.until for k in self._kept))
                wait = min(deadline, wake) - now
                short = self._room_free()              # the budget is what is short
            if victim is not None:
                victim()                               # (outside the lock: grpc takes its own)
            if short and now - pressed >= PRESS_EVERY:
                pressed = now
                self.budget.press()                    # (REST may refuse a stalled body)
            waiter.event.wait(max(0.0, min(wait, PRESS_EVERY)))
        if waiter.dropped:
            return None
        return waiter.holder

    def hand_over(self, holder: Holder) -> int:
        """The call's message arrived: its room leaves the gate, and the bytes it reserved now
        belong to the caller (to release or adjust). Returns them. The call's connection keeps
        the room for its next call (:data:`KEEP` seconds)."""
        with self._lock:
            self._holders.remove(holder)
            self.receiving -= holder.bytes
            held, holder.bytes = holder.bytes, 0
            now = self.clock()
            self._expire(now)
            heir = holder.heir
            if heir is not None and heir in self._waiters:
                successor = self._reserve(heir.peer, now)
                if successor is not None:
                    self._give(heir, successor)
            elif not holder.evicted and len(self._kept) < self.rooms - 1:
                self._kept.append(_Kept(holder.peer, now + self.keep))
            self._grant(now)
        return held

    def leave(self, holder: Holder) -> None:
        """The call ends without its message (or after :meth:`hand_over`: nothing to do). A
        call cancelled to make room passes its room, bytes reserved, to the call it was
        cancelled for."""
        if not holder.bytes:
            return
        with self._lock:
            self._holders.remove(holder)
            self.receiving -= holder.bytes
            size, holder.bytes = holder.bytes, 0
            heir = holder.heir
            if heir is not None and heir in self._waiters:
                successor = Holder(self.clock(), _nothing, size, heir.peer)
                self._holders.append(successor)
                self.receiving += size
                self._give(heir, successor)
                return
        self.budget.release(size)              # (wakes the waiters through _room_changed)

    # ------------------------------------------------------------ under the lock

    def _out(self, peer: str) -> None:
        """A waiter of connection *peer* left the waiting room."""
        left = self._waiting_of[peer] - 1
        if left:
            self._waiting_of[peer] = left
        else:
            del self._waiting_of[peer]

    def _room_free(self) -> bool:
        return len(self._holders) + len(self._kept) < self.rooms

    def _reserve(self, peer: str, now: float) -> Holder | None:
        """A holder for *peer* in a room already counted free (or kept), if the budget has its
        bytes."""
        if not self.budget.try_reserve(self.slot):
            return None
        holder = Holder(now, _nothing, self.slot, peer)
        self._holders.append(holder)
        self.receiving += self.slot
        return holder

    def _take(self, peer: str, now: float) -> Holder | None:
        if not self._room_free():
            return None
        return self._reserve(peer, now)

    def _expire(self, now: float) -> None:
        if self._kept and any(k.until <= now for k in self._kept):
            self._kept = [k for k in self._kept if k.until > now]

    def _holdings(self) -> dict[str, int]:
        """Connection -> rooms it holds (calls not being cancelled), keeps, or has coming."""
        held: dict[str, int] = {}
        for h in self._holders:
            if not h.evicted:
                held[h.peer] = held.get(h.peer, 0) + 1
        for k in self._kept:
            held[k.peer] = held.get(k.peer, 0) + 1
        for w in self._waiters:
            if w.owed:
                held[w.peer] = held.get(w.peer, 0) + 1
        return held

    def _give(self, waiter: _Waiter, holder: Holder) -> None:
        self._waiters.remove(waiter)
        self._out(waiter.peer)
        holder.cancel = waiter.cancel
        waiter.holder = holder
        waiter.event.set()
        self._nudge()

    def _nudge(self) -> None:
        """Wake the claimant (see :meth:`_claimant`): its turn to look for a room."""
        claimant = self._claimant(self._holdings())
        if claimant is not None:
            claimant.event.set()

    def _grant(self, now: float) -> None:
        """Rooms to waiters: a connection's kept rooms to its own calls, then free rooms to the
        calls they were freed for, then to the calls of the connections holding the fewest,
        newest first."""
        if not self._waiters:
            return
        if self._kept:
            for waiter in reversed(self._waiters[:]):
                kept = next((k for k in self._kept if k.peer == waiter.peer), None)
                if kept is None:
                    continue
                holder = self._reserve(waiter.peer, now)
                if holder is None:
                    return                          # the budget is short
                self._kept.remove(kept)
                self._give(waiter, holder)
        while self._waiters and self._room_free():
            held = self._holdings()
            best = min(range(len(self._waiters)), key=lambda i: (
                not self._waiters[i].owed, held.get(self._waiters[i].peer, 0), -i))
            waiter = self._waiters[best]
            holder = self._reserve(waiter.peer, now)
            if holder is None:
                return                              # the budget is short
            self._give(waiter, holder)

    def _turn(self, contenders: int) -> float:
        """How long a call may hold its room while calls of connections holding fewer rooms
        wait: its share of ``grace`` among the connections contending."""
        return min(self.grace, max(self.min_hold, self.grace * self.rooms / max(1, contenders)))

    def _evict_for(self, waiter: _Waiter, now: float
                   ) -> tuple[Callable[[], None] | None, float]:
        """A room for *waiter* by the rules in the module docstring: a kept room taken at once
        (given to it), or a holder marked to be cancelled (returned; its room will come to the
        waiter), or nothing yet. Also returns when to look again."""
        if waiter.owed:
            return None, now + PRESS_EVERY
        held = self._holdings()
        if waiter is not self._claimant(held):
            return None, now + 2 * self.grace       # (woken when it becomes the claimant)
        mine = held.get(waiter.peer, 0)
        contenders = len(set(held) | set(self._waiting_of))
        turn = self._turn(contenders)
        wake = now + 2 * self.grace
        live = [h for h in self._holders if not h.evicted]
        # a connection holding two or more rooms more than the waiter's: its kept room, else
        # its newest call
        richest = max((p for p in held if p != waiter.peer), key=held.__getitem__, default=None)
        if richest is not None and held[richest] >= mine + 2:
            kept = next((k for k in self._kept if k.peer == richest), None)
            if kept is not None:
                self._kept.remove(kept)
                holder = self._reserve(waiter.peer, now)
                if holder is not None:
                    self._give(waiter, holder)
                return None, now + PRESS_EVERY
            theirs = [h for h in live if h.peer == richest]
            ready = [h for h in theirs if now - h.since >= self.min_hold]
            if ready:
                return self._cancel(max(ready, key=lambda h: h.since), waiter,
                                    "its connection held more rooms than others waiting"), now
            if theirs:
                wake = min(wake, min(h.since for h in theirs) + self.min_hold)
        # a connection holding more than the waiter's: its call receiving the longest, after
        # its turn
        for holder in sorted(live, key=lambda h: h.since):
            if holder.peer != waiter.peer and held.get(holder.peer, 0) >= mine + 1:
                if now - holder.since >= turn:
                    return self._cancel(holder, waiter, f"message not received within its "
                                        f"turn ({turn:.2g} s) while calls of other connections "
                                        "waited"), now
                wake = min(wake, holder.since + turn)
                break
        # anyone still receiving after grace
        if live:
            oldest = min(live, key=lambda h: h.since)
            if now - oldest.since >= self.grace:
                return self._cancel(oldest, waiter, f"message not received within "
                                    f"limits.first_byte_timeout ({self.grace:g} s) while "
                                    "other calls waited"), now
            wake = min(wake, oldest.since + self.grace)
        return None, wake

    def _claimant(self, held: dict[str, int]) -> _Waiter | None:
        """The waiter rooms are taken for first: of the connection holding the fewest, the
        newest."""
        best, key = None, None
        for i, w in enumerate(self._waiters):
            if not w.owed:
                k = (held.get(w.peer, 0), -i)
                if key is None or k < key:
                    best, key = w, k
        return best

    def _cancel(self, holder: Holder, waiter: _Waiter, why: str) -> Callable[[], None]:
        holder.evicted = True
        holder.heir = waiter
        waiter.owed = True
        self._nudge()
        log.info("gRPC ModelInfer from %s: call cancelled to make room for a call from %s: %s",
                 holder.peer or "?", waiter.peer or "?", why)
        return holder.cancel

    def _room_changed(self) -> None:
        """Called after bytes go back to the budget (any thread): room for the waiters."""
        if not self._waiters:
            return
        with self._lock:
            self._grant(self.clock())


def _nothing() -> None:
    pass
