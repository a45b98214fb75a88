"""Room for gRPC request messages, reserved before they are received, shared fairly between
connections.

grpc buffers a call's whole message once the handler asks for it (``next(requests)``), and does
not say how large it is or how much of it has arrived. So a ModelInfer call first takes a
*room*: the largest message (``limits.max_request_bytes``) reserved in the server's byte budget;
only then does it ask for its message. The rooms together hold at most the budget less one
largest request (:func:`receive_share`), so REST always has room beside them, and however many
calls are open, the messages being received take at most what the rooms hold. A smaller
reservation would not be sound: grpc accepts any message up to ``max_request_bytes`` on any
call (it has no per-call limit) and does not say how much of one it has buffered.

Rooms are few (three with the defaults), so who gets one decides who is served. Calls are
grouped by their HTTP/2 connection (grpc's ``context.peer()``: address and port; not by address
alone, which every client behind one proxy or on one host shares). A connection's *holdings*
are its calls holding a room, the rooms it keeps (below) and rooms on their way to its calls.
A call that finds no room waits, and while it waits:

* **a connection holding two or more rooms more than the waiting call's** loses one at once: a
  kept room, else its newest call that has held its room for :data:`MIN_HOLD` (a message
  already sent is not cut) is cancelled. One connection with many streams never holds the
  rooms against another;
* **a connection holding more than the waiting call's** loses its call that has been receiving
  the longest, once that call has held its room for ``grace`` x rooms / connections contending
  (at least :data:`MIN_HOLD`, at most ``grace``): with many connections each holds a room for
  its share of ``grace`` and gives it up, so a waiting call has a room within about ``grace``
  however many connections contend. A call whose large message arrives slowly is cut by this
  rule only while calls of connections holding fewer rooms wait;
* any call still receiving after ``grace`` (``limits.first_byte_timeout``) is cancelled;
  without contention a call may receive for ``limits.body_timeout``.

Rooms are taken for one waiting call at a time, the *claimant*: of the connections holding the
fewest, its newest call (a call arriving after a burst of stalled ones does not queue behind
them). A cancelled call's room, bytes reserved, goes to the call it was cancelled for; a free
room to the waiting call of the connection holding the fewest, newest first.

**Kept rooms.** When a call's message arrives, its connection keeps the room, bytes reserved,
for its next call for :data:`KEEP` seconds (the request gets bytes of its own for the message;
without them, it takes the room's and nothing is kept). A client whose messages arrive at once
so keeps being served at once, instead of competing for each call with streams that never send
theirs. At most all rooms but
one are kept, and a connection holding two or more rooms more than the claimant's gives its
kept rooms to the claimant first. A kept room never makes a request be refused: when the byte
budget refuses a reservation elsewhere (``ByteBudget.on_short``), kept rooms go back to it,
lapsed ones first, then the oldest.

**Prompt connections.** A connection whose last message arrived within :data:`MIN_HOLD` of its
call getting a room is *prompt* (for ``grace`` seconds, or until one of its calls is cancelled,
ends without its message after holding a room that long, or is refused as busy), and while it
has no more calls waiting than there are rooms. A waiting call
of a prompt connection holding no room takes a room another connection keeps at once: kept
rooms are for clients that send their messages at once, and two such clients share them by
turns instead of one keeping them from the other (two connections sending a tiny message every
0.6 s would otherwise keep two of three rooms for good, and a third holding the last with
streams that never send their message would leave everyone else waiting). A connection that has
not yet sent a message promptly (a fresh one, or one whose calls stall) cannot take a kept
room this way, so uploads that stop halfway do not take the room of a client that sends at
once.

**Busy connections.** When a request was refused for lack of room in the byte budget after its
message arrived (:meth:`ReceiveGate.busy`), its connection's calls get no room for
:data:`BUSY_WAIT` seconds (twice as long each time it is refused again soon after, up to
``grace``), then receive one at a time for ``grace`` seconds: a client sending messages the
server cannot take would otherwise have it receive one after the other, with the CPU every
other client needs.

At most ``max_waiting`` calls wait (a handler thread each), each for at most twice ``grace``;
when the waiting room is full, a new call drops the longest waiter of the connection with the
most calls waiting (itself, if that is its own connection), of one that is not prompt when
counts are equal. When it is the byte budget that is
short (REST bodies hold it), a waiter says so (``ByteBudget.press``): REST then refuses a body
that has stopped arriving, as it does for its own requests.
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
#: Seconds a connection keeps the room its last message arrived in, for its next call.
KEEP = 1.0
#: Seconds a call holds its room before any rule may cancel it (a message already sent arrives
#: well within this).
MIN_HOLD = 0.25
#: Seconds a connection whose request was refused for lack of room in the byte budget waits
#: before its next call gets a room ("server busy" means later, not at once); for ``grace``
#: seconds more its calls receive one at a time.
BUSY_WAIT = 0.5
#: Connections remembered as prompt before the stale ones are forgotten.
PROMPT_PRUNE = 256


def receive_share(budget: int, slot: int) -> int:
    """Bytes gRPC calls receiving their messages may reserve together: the budget less one
    largest request (when it holds two or more), so one protocol's receivers cannot take it
    all."""
    return budget - slot if budget >= 2 * slot else budget


class Holder:
    """A call holding room for its message."""

    __slots__ = ("bytes", "cancel", "evicted", "heir", "peer", "since")

    def __init__(self, since: float, cancel: Callable[[], None], size: int, peer: str) -> None:
        self.since = since
        self.cancel = cancel
        self.evicted = False
        self.bytes = size
        self.peer = peer
        self.heir: _Waiter | None = None  # the call its room goes to once it is cancelled


class _Waiter:
    __slots__ = ("active", "cancel", "dropped", "event", "holder", "owed", "peer")

    def __init__(self, cancel: Callable[[], None], peer: str, active: Callable[[], bool]) -> None:
        self.event = threading.Event()
        self.holder: Holder | None = None
        self.cancel = cancel
        self.dropped = False
        self.peer = peer
        self.owed = False  # a call was cancelled to make room for this one
        self.active = active  # false once the call has ended (its client went away)


class _Kept:
    """A room a connection keeps for its next call, its bytes still reserved in the budget."""

    __slots__ = ("bytes", "peer", "until")

    def __init__(self, peer: str, until: float, size: int) -> None:
        self.peer = peer
        self.until = until
        self.bytes = size


class ReceiveGate:
    def __init__(
        self,
        budget: ByteBudget,
        slot: int,
        *,
        grace: float,
        max_waiting: int,
        clock: Callable[[], float] = time.monotonic,
        keep: float = KEEP,
        min_hold: float = MIN_HOLD,
        busy_wait: float = BUSY_WAIT,
    ) -> None:
        self.budget = budget
        self.slot = slot
        self.share = receive_share(budget.limit, slot)
        self.rooms = max(1, self.share // slot)
        self.grace = grace
        self.keep = keep
        self.min_hold = min(min_hold, grace)
        self.busy_wait = busy_wait
        self.max_waiting = max(1, max_waiting)
        self.clock = clock
        self.receiving = 0  # bytes reserved by holders
        self.keeping = 0  # bytes reserved by kept rooms
        self._holders: list[Holder] = []
        self._kept: list[_Kept] = []
        self._waiters: list[_Waiter] = []  # oldest first
        self._waiting_of: dict[str, int] = {}  # connection -> its calls waiting
        # connection -> (until when its calls get no room, until when one at a time, the wait)
        self._busy: dict[str, tuple[float, float, float]] = {}
        # connection -> when its last message arrived promptly (see "Prompt connections")
        self._prompt: dict[str, float] = {}
        self._lock = threading.Lock()
        budget.on_release(self._room_changed)
        budget.on_short(self._shed)

    @property
    def holders(self) -> int:
        return len(self._holders)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def kept(self) -> int:
        return len(self._kept)

    def enter(
        self, cancel: Callable[[], None], peer: str = "", active: Callable[[], bool] = lambda: True
    ) -> Holder | None:
        """Room for one message, or None when there was none within twice ``grace`` seconds (or
        the call was dropped from the waiting room, or ended while waiting: *active* says
        whether it still runs). *cancel* ends the call (eviction); *peer* names its
        connection."""
        freed = 0
        try:
            with self._lock:
                now = self.clock()
                freed = self._expire(now)
                self._rebalance(now)
                kept = self._kept_of(peer)
                if kept is not None:  # the room its connection kept
                    return self._from_kept(kept, peer, cancel, now)
                if not self._waiters and self._may_take(peer, now, self._holdings()):
                    holder = self._take(peer, now)
                    if holder is not None:
                        holder.cancel = cancel
                        return holder
                waiter = self._queue(cancel, peer, active)
                self._grant(now)
        finally:
            if freed:
                self.budget.release(freed)
        return self._wait(waiter)

    def hand_over(self, holder: Holder, need: int = 0) -> int:
        """The call's message arrived: its room leaves the gate, and bytes for the request
        (*need*, its message's size) now belong to the caller (to release or adjust); returns
        how many. The call's connection keeps the room, bytes reserved, for its next call
        (:data:`KEEP` seconds) when the budget has *need* bytes besides; otherwise the caller
        gets the room's bytes."""
        freed = 0
        with self._lock:
            self._holders.remove(holder)
            self.receiving -= holder.bytes
            size, holder.bytes = holder.bytes, 0
            now = self.clock()
            freed = self._expire(now)
            if not holder.evicted and now - holder.since <= self.min_hold:
                self._prompt[holder.peer] = now
            else:
                self._prompt.pop(holder.peer, None)
            heir = holder.heir
            held = size
            if heir is not None and heir in self._waiters:
                successor = self._reserve(heir.peer, now)
                if successor is not None:
                    self._give(heir, successor)
            elif (
                not holder.evicted
                and holder.peer not in self._busy
                and len(self._kept) < self.rooms - 1
                and self.budget.try_reserve(need, shed=False)
            ):
                self._kept.append(_Kept(holder.peer, now + self.keep, size))
                self.keeping += size
                held = need
            self._grant(now)
        if freed:
            self.budget.release(freed)
        return held

    def busy(self, peer: str) -> None:
        """A request of connection *peer* was refused for lack of room in the byte budget after
        its message arrived: its connection's calls get no room for :data:`BUSY_WAIT` seconds
        (twice its last wait, up to ``grace``, when it is refused again within ``grace`` of
        that wait's end), then receive one at a time for ``grace`` seconds (a client sending
        what the server cannot take would otherwise have it receive message after message);
        the rooms it keeps go back."""
        with self._lock:
            now = self.clock()
            freed = self._expire(now)
            last = self._busy.get(peer)
            wait = self.busy_wait if last is None else min(self.grace, 2 * last[2])
            self._busy[peer] = (now + wait, now + wait + self.grace, wait)
            self._prompt.pop(peer, None)
            for kept in [k for k in self._kept if k.peer == peer]:
                self._kept.remove(kept)
                self.keeping -= kept.bytes
                freed += kept.bytes
        if freed:
            self.budget.release(freed)

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
            if holder.evicted or self.clock() - holder.since > self.min_hold:
                self._prompt.pop(holder.peer, None)
            heir = holder.heir
            if heir is not None and heir in self._waiters:
                successor = Holder(self.clock(), _nothing, size, heir.peer)
                self._holders.append(successor)
                self.receiving += size
                self._give(heir, successor)
                return
        self.budget.release(size)  # (wakes the waiters through _room_changed)

    def _wait(self, waiter: _Waiter) -> Holder | None:
        pressed = 0.0
        # (every holder may be evicted within `grace` of getting its room, so a waiter that
        # waits twice that sees at least one chance)
        deadline = self.clock() + 2 * self.grace
        while True:
            freed = 0
            gone = not waiter.active()  # (grpc's lock: not under ours)
            with self._lock:
                waiter.event.clear()
                if waiter.holder is not None or waiter.dropped:
                    break
                if gone:  # its client went away
                    self._waiters.remove(waiter)
                    self._out(waiter.peer)
                    self._nudge()
                    break
                now = self.clock()
                freed = self._expire(now)
                self._grant(now)
                if waiter.holder is not None:
                    break
                victim, wake = self._evict_for(waiter, now)
                if waiter.holder is not None:  # (a kept room was taken for it)
                    break
                if victim is not None:  # room is coming back: wait for it
                    deadline = max(deadline, now + self.grace)
                elif now >= deadline:
                    self._waiters.remove(waiter)
                    self._out(waiter.peer)
                    self._nudge()
                    break
                if self._kept:
                    wake = min(wake, min(k.until for k in self._kept))
                busy = self._busy.get(waiter.peer)
                if busy is not None and now < busy[0]:
                    wake = min(wake, busy[0])  # (after that: woken when a room is freed)
                wait = min(deadline, wake) - now
                # a room is free but the budget has not its bytes (REST bodies hold them)
                short = self._room_free() and self.budget.limit - self.budget.used < self.slot
            if freed:
                self.budget.release(freed)
            if victim is not None:
                victim()  # (outside the lock: grpc takes its own)
            if short and now - pressed >= PRESS_EVERY:
                pressed = now
                self.budget.press()  # (REST may refuse a stalled body)
            waiter.event.wait(max(0.0, min(wait, PRESS_EVERY)))
        if freed:
            self.budget.release(freed)
        return None if waiter.dropped else waiter.holder

    # ------------------------------------------------------------ under the lock

    def _queue(self, cancel: Callable[[], None], peer: str, active: Callable[[], bool]) -> _Waiter:
        """A new waiter; when the waiting room is full, the longest waiter of the connection
        with the most waiting is dropped first."""
        if len(self._waiters) >= self.max_waiting:
            now = self.clock()
            counts = self._waiting_of

            def crowding(p: str) -> tuple[int, bool]:
                return counts[p], not self._is_prompt(p, now)

            crowd = max(counts, key=crowding)
            if peer in counts and crowding(peer) >= crowding(crowd):
                crowd = peer  # its own connection crowds the room
            oldest = next(w for w in self._waiters if w.peer == crowd)
            self._waiters.remove(oldest)
            self._out(crowd)
            oldest.dropped = True
            oldest.event.set()
        waiter = _Waiter(cancel, peer, active)
        self._waiters.append(waiter)
        self._waiting_of[peer] = self._waiting_of.get(peer, 0) + 1
        self._nudge()
        return waiter

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
        """A holder for *peer* in a room counted free, if the budget has its bytes."""
        if not self.budget.try_reserve(self.slot, shed=False):
            return None
        holder = Holder(now, _nothing, self.slot, peer)
        self._holders.append(holder)
        self.receiving += self.slot
        return holder

    def _take(self, peer: str, now: float) -> Holder | None:
        if not self._room_free():
            return None
        return self._reserve(peer, now)

    def _kept_of(self, peer: str) -> _Kept | None:
        return next((k for k in self._kept if k.peer == peer), None)

    def _from_kept(self, kept: _Kept, peer: str, cancel: Callable[[], None], now: float) -> Holder:
        """A kept room (its bytes already reserved) becomes a holder's, of connection *peer*."""
        self._kept.remove(kept)
        self.keeping -= kept.bytes
        holder = Holder(now, cancel, kept.bytes, peer)
        self._holders.append(holder)
        self.receiving += kept.bytes
        return holder

    def _expire(self, now: float) -> int:
        """Kept rooms past their time leave (and connections' busy waits end); returns their
        bytes, for the caller to release once out of the lock."""
        if self._busy and any(t[1] <= now for t in self._busy.values()):
            self._busy = {p: t for p, t in self._busy.items() if t[1] > now}
        if len(self._prompt) > PROMPT_PRUNE:
            self._prompt = {p: t for p, t in self._prompt.items() if now - t <= self.grace}
        if not self._kept or all(k.until > now for k in self._kept):
            return 0
        gone = [k for k in self._kept if k.until <= now]
        self._kept = [k for k in self._kept if k.until > now]
        freed = sum(k.bytes for k in gone)
        self.keeping -= freed
        return freed

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
        claimant = self._claimant(self._holdings(), self.clock())
        if claimant is not None:
            claimant.event.set()

    def _may_take(self, peer: str, now: float, held: dict[str, int]) -> bool:
        """Whether a call of *peer* may have a room now (see :meth:`busy`)."""
        busy = self._busy.get(peer)
        return busy is None or (now >= busy[0] and not held.get(peer, 0))

    def _is_prompt(self, peer: str, now: float) -> bool:
        """Whether *peer*'s last message arrived promptly, within ``grace`` seconds, and it has
        no more calls waiting than there are rooms (streams waiting beyond what it could use
        are not what a prompt client opens)."""
        since = self._prompt.get(peer)
        return (
            since is not None
            and now - since <= self.grace
            and self._waiting_of.get(peer, 0) <= self.rooms
        )

    def _lend_kept(self, now: float) -> None:
        """Kept rooms of other connections to the waiting calls of prompt connections holding
        no room, newest first; the room comes from the connection holding the most (then the
        one kept the longest)."""
        for waiter in reversed(self._waiters[:]):
            if not self._kept:
                return
            if waiter.owed or not self._is_prompt(waiter.peer, now):
                continue
            held = self._holdings()
            if held.get(waiter.peer, 0) or not self._may_take(waiter.peer, now, held):
                continue
            kept = max(
                (k for k in self._kept if k.peer != waiter.peer),
                key=lambda k: (held[k.peer], -k.until),
                default=None,
            )
            if kept is not None:
                self._give(waiter, self._from_kept(kept, waiter.peer, waiter.cancel, now))

    def _claimant(self, held: dict[str, int], now: float) -> _Waiter | None:
        """The waiter rooms are taken for first: of the connection holding the fewest, the
        newest."""
        best, key = None, None
        for i, w in enumerate(self._waiters):
            if not w.owed and self._may_take(w.peer, now, held):
                k = (held.get(w.peer, 0), -i)
                if key is None or k < key:
                    best, key = w, k
        return best

    def _grant(self, now: float) -> None:
        """Rooms to waiters: a connection's kept rooms to its own calls, then free rooms to the
        calls they were freed for, then to the calls of the connections holding the fewest,
        newest first, then kept rooms to calls of prompt connections holding none."""
        if not self._waiters:
            return
        self._rebalance(now)
        if self._kept:
            for waiter in reversed(self._waiters[:]):
                kept = self._kept_of(waiter.peer)
                if kept is not None:  # (a busy connection keeps none)
                    self._give(waiter, self._from_kept(kept, waiter.peer, waiter.cancel, now))
        while self._waiters and self._room_free():
            held = self._holdings()
            ready = [
                i
                for i, w in enumerate(self._waiters)
                if w.owed or self._may_take(w.peer, now, held)
            ]
            if not ready:
                break
            best = min(
                ready,
                key=lambda i: (not self._waiters[i].owed, held.get(self._waiters[i].peer, 0), -i),
            )
            waiter = self._waiters[best]
            holder = self._reserve(waiter.peer, now)
            if holder is None:
                break  # the budget is short
            self._give(waiter, holder)
        if self._kept and self._waiters:
            self._lend_kept(now)

    def _rebalance(self, now: float) -> None:
        """Kept rooms of a connection holding two or more rooms more than the claimant's go to
        the claimant (before that connection's own next call could take them)."""
        while self._kept and self._waiters:
            held = self._holdings()
            claimant = self._claimant(held, now)
            if claimant is None:
                return
            mine = held.get(claimant.peer, 0)
            kept = max(
                (k for k in self._kept if k.peer != claimant.peer),
                key=lambda k: held[k.peer],
                default=None,
            )
            if kept is None or held[kept.peer] < mine + 2:
                return
            self._give(claimant, self._from_kept(kept, claimant.peer, claimant.cancel, now))

    def _turn(self, contenders: int) -> float:
        """How long a call may hold its room while calls of connections holding fewer rooms
        wait: its share of ``grace`` among the connections contending."""
        return min(self.grace, max(self.min_hold, self.grace * self.rooms / max(1, contenders)))

    def _evict_for(self, waiter: _Waiter, now: float) -> tuple[Callable[[], None] | None, float]:
        """A room for *waiter* by the rules in the module docstring: a kept room taken at once
        (given to it), or a holder marked to be cancelled (returned; its room will come to the
        waiter), or nothing yet. Also returns when to look again."""
        if waiter.owed:
            return None, now + PRESS_EVERY
        held = self._holdings()
        if waiter is not self._claimant(held, now):
            return None, now + 2 * self.grace  # (woken when it becomes the claimant)
        mine = held.get(waiter.peer, 0)
        contenders = len(set(held) | set(self._waiting_of))
        turn = self._turn(contenders)
        wake = now + 2 * self.grace
        live = [h for h in self._holders if not h.evicted]
        # a connection holding two or more rooms more than the waiter's: its kept room, else
        # its newest call that has held its room for min_hold
        richest = max((p for p in held if p != waiter.peer), key=held.__getitem__, default=None)
        if richest is not None and held[richest] >= mine + 2:
            kept = self._kept_of(richest)
            if kept is not None:
                self._give(waiter, self._from_kept(kept, waiter.peer, waiter.cancel, now))
                return None, now
            theirs = [h for h in live if h.peer == richest]
            ready = [h for h in theirs if now - h.since >= self.min_hold]
            if ready:
                return self._cancel(
                    max(ready, key=lambda h: h.since),
                    waiter,
                    "its connection held more rooms than others waiting",
                ), now
            if theirs:
                wake = min(wake, min(h.since for h in theirs) + self.min_hold)
        # a connection holding more than the waiter's: its call receiving the longest, after
        # its turn
        for holder in sorted(live, key=lambda h: h.since):
            if holder.peer != waiter.peer and held.get(holder.peer, 0) >= mine + 1:
                if now - holder.since >= turn:
                    return self._cancel(
                        holder,
                        waiter,
                        f"message not received within its "
                        f"turn ({turn:.2g} s) while calls of other connections "
                        "waited",
                    ), now
                wake = min(wake, holder.since + turn)
                break
        # anyone still receiving after grace
        if live:
            oldest = min(live, key=lambda h: h.since)
            if now - oldest.since >= self.grace:
                return self._cancel(
                    oldest,
                    waiter,
                    f"message not received within "
                    f"limits.first_byte_timeout ({self.grace:g} s) while "
                    "other calls waited",
                ), now
            wake = min(wake, oldest.since + self.grace)
        return None, wake

    def _cancel(self, holder: Holder, waiter: _Waiter, why: str) -> Callable[[], None]:
        holder.evicted = True
        holder.heir = waiter
        waiter.owed = True
        self._nudge()
        log.info(
            "gRPC ModelInfer from %s: call cancelled to make room for a call from %s: %s",
            holder.peer or "?",
            waiter.peer or "?",
            why,
        )
        return holder.cancel

    def _shed(self, short: int) -> int:
        """The budget refused *short* bytes elsewhere (any thread, not under our lock): kept
        rooms go, expired ones first, then the oldest, until that much is freed; returns the
        bytes they held (now the budget's)."""
        with self._lock:
            freed = self._expire(self.clock())
            while freed < short and self._kept:
                kept = min(self._kept, key=lambda k: k.until)
                self._kept.remove(kept)
                self.keeping -= kept.bytes
                freed += kept.bytes
            return freed

    def _room_changed(self) -> None:
        """Called after bytes go back to the budget (any thread): room for the waiters."""
        if not self._waiters:
            return
        with self._lock:
            self._grant(self.clock())


def _nothing() -> None:
    pass
