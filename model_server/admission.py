"""Who runs now, who waits, who is refused.

* :class:`InstancePool` — one model's instances, each serving one request at a time. A request
  takes a free instance at once or waits, FIFO, behind at most ``max_queue`` others of the same
  model; past that it is refused (UNAVAILABLE) at once. Queues are per model, so a model whose
  requests pile up never holds another model's requests back. Waiters are gRPC handler threads
  (:meth:`InstancePool.acquire_sync`) and REST asyncio tasks (:meth:`InstancePool.acquire`) in
  one queue; an instance is handed straight to the longest waiter under the pool's lock.
  :meth:`InstancePool.close` fails every waiter at once (the drain deadline).
* :class:`Admission` — the server-wide count of admitted requests, a backstop that refuses and
  never makes a request wait (waiting on a shared gate is what let one model starve others).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Generic, TypeVar

from .errors import ServeError

T = TypeVar("T")


class _Waiter(Generic[T]):
    """One request waiting for an item: an asyncio future (woken on its loop) or a thread
    (woken through a lock). ``done``, ``value`` and ``error`` change only under the pool's
    lock, before the waiter is woken."""

    __slots__ = ("_fut", "_lock", "_loop", "done", "error", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.done = False
        self.value: T  # set (or error) before the waiter is woken
        self.error: ServeError | None = None
        self._loop = loop
        if loop is None:
            self._lock = threading.Lock()
            self._lock.acquire()
        else:
            self._fut = loop.create_future()

    @property
    def is_thread(self) -> bool:
        return self._loop is None

    def wake(self) -> None:
        if self._loop is None:
            self._lock.release()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            _resolve(self._fut)
        else:
            self._loop.call_soon_threadsafe(_resolve, self._fut)

    def wait_thread(self) -> T:
        self._lock.acquire()
        if self.error is not None:
            raise self.error
        return self.value

    async def wait_async(self, pool: InstancePool[T]) -> T:
        try:
            await self._fut
        except asyncio.CancelledError:
            with pool._lock:
                done = self.done
                if not done:
                    pool._waiters.remove(self)
            if done and self.error is None:  # handed an item just before the cancellation
                pool.release(self.value)
            raise
        if self.error is not None:
            raise self.error
        return self.value


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class InstancePool(Generic[T]):
    """*items* handed out one per request; see the module docstring.

    ``max_queue``: requests that may wait (0: none — refused when every item is busy).
    ``max_thread_waiters``: of those, how many may be threads (gRPC handler threads are a
    shared, finite resource: a model may hold at most its share of them waiting); None: no
    separate bound."""

    def __init__(self, name: str, items: list[T], max_queue: int) -> None:
        self.name = name
        self.size = len(items)
        self.max_queue = max_queue
        self.max_thread_waiters: int | None = None
        self._free: collections.deque[T] = collections.deque(items)
        self._waiters: collections.deque[_Waiter[T]] = collections.deque()
        self._thread_waiters = 0
        self._closed: str | None = None  # why every request is refused now
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def idle(self) -> int:
        return len(self._free)

    def _enter(self, loop: asyncio.AbstractEventLoop | None) -> tuple[T | None, _Waiter[T] | None]:
        """(a free item, None), (None, a place in the queue) or ServeError."""
        with self._lock:
            if self._closed is not None:
                raise ServeError(ServeError.UNAVAILABLE, self._closed)
            if self._free:
                return self._free.pop(), None  # LIFO: the most recently used (cache-warm) one
            queued = len(self._waiters)
            if queued >= self.max_queue:
                raise ServeError(
                    ServeError.UNAVAILABLE,
                    f"model {self.name!r} is busy: "
                    f"{self.size} requests running and {queued} queued (its "
                    f"max_queue is {self.max_queue})",
                )
            if (
                loop is None
                and self.max_thread_waiters is not None
                and self._thread_waiters >= self.max_thread_waiters
            ):
                raise ServeError(
                    ServeError.UNAVAILABLE,
                    f"model {self.name!r} is busy: "
                    f"{self.size} requests running and {self._thread_waiters} "
                    "gRPC calls queued (its share of the server's gRPC handler "
                    "threads)",
                )
            w: _Waiter[T] = _Waiter(loop)
            self._waiters.append(w)
            if loop is None:
                self._thread_waiters += 1
            return None, w

    async def acquire(self) -> T:
        item, w = self._enter(asyncio.get_running_loop())
        if w is not None:
            return await w.wait_async(self)
        assert item is not None  # a free item, or a place in the queue
        return item

    def acquire_sync(self) -> T:
        item, w = self._enter(None)
        if w is not None:
            return w.wait_thread()
        assert item is not None  # a free item, or a place in the queue
        return item

    def _pop_waiter(self) -> _Waiter | None:
        """Under the lock: the longest waiter, taken out of the queue."""
        if not self._waiters:
            return None
        w = self._waiters.popleft()
        w.done = True
        if w.is_thread:
            self._thread_waiters -= 1
        return w

    def release(self, item: T) -> None:
        with self._lock:
            w = self._pop_waiter()
            if w is None:
                self._free.append(item)
                return
            w.value = item
        w.wake()

    def close(self, message: str) -> int:
        """Fail every waiting request, and refuse every later one, with UNAVAILABLE and
        *message*; requests holding an item finish and give it back. Returns how many waiters
        failed."""
        with self._lock:
            self._closed = message
            failed = []
            while (w := self._pop_waiter()) is not None:
                w.error = ServeError(ServeError.UNAVAILABLE, message)
                failed.append(w)
        for w in failed:
            w.wake()
        return len(failed)


class Admission:
    """At most *limit* requests admitted at once, server-wide (running or waiting for their
    model); one more is refused at once, never queued."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.in_flight = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.in_flight >= self.limit:
                raise ServeError(
                    ServeError.UNAVAILABLE,
                    f"server busy: {self.in_flight} "
                    "requests admitted (limits.max_concurrent_requests + "
                    f"limits.max_queue = {self.limit})",
                )
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
