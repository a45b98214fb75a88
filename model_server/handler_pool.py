"""Threads for inference: a :class:`concurrent.futures.Executor` that starts a thread only
when no started one is idle, up to ``max_workers``, and runs calls FIFO. grpc runs its calls in
one; REST hands each inference to one from the event loop with :meth:`HandlerPool.run`, which
settles the awaiting asyncio future directly (one hand-off each way, no concurrent Future
chained to it).

Where threads are scarce (an enclave has ``sgx.max_threads``), a thread that cannot be started
is not an error: the pool's capacity becomes the threads it has (``on_capacity`` is told, once,
so admission can share that many among the models) and calls wait for one of them.

Calls wait in a :class:`queue.SimpleQueue` (workers block in C, no Python lock juggling per
call); who takes the next call is counted exactly under a lock: an idle thread, a thread
started for it, or (at capacity) the next thread to finish.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

log = logging.getLogger("model_server")


class HandlerPool(Executor):
    def __init__(
        self,
        max_workers: int,
        thread_name_prefix: str = "grpc",
        on_capacity: Callable[[int], None] | None = None,
        thread_factory: Callable[..., threading.Thread] = threading.Thread,
    ) -> None:
        self.capacity = max(1, max_workers)
        self._prefix = thread_name_prefix
        self._on_capacity = on_capacity
        self._thread_factory = thread_factory
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads blocked (or about to block) on an empty queue
        self._backlog = 0  # calls queued at capacity, for the next thread that finishes
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self._enqueue(future, fn, args, kwargs)
        return future

    async def run(self, fn, /, *args) -> Any:
        """``fn(*args)`` in one of the threads, awaited from the running event loop (cancelling
        the await before the call has started skips it)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(_LoopResult(loop, future), fn, args, {})
        return await future

    def _enqueue(self, future, fn, args, kwargs) -> None:
        reduced = None
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.capacity:
                thread = self._thread_factory(
                    target=self._run, daemon=True, name=f"{self._prefix}_{len(self._threads)}"
                )
                try:
                    thread.start()
                except RuntimeError as exc:  # "can't start new thread"
                    if not self._threads:
                        raise
                    self.capacity = reduced = len(self._threads)
                    self._backlog += 1
                    log.warning(
                        "gRPC: cannot start another handler thread (%s); calls wait "
                        "for one of the %d running",
                        exc,
                        reduced,
                    )
                else:
                    self._threads.append(thread)
            else:
                self._backlog += 1
            self._queue.put((future, fn, args, kwargs))
        if reduced is not None and self._on_capacity is not None:
            self._on_capacity(reduced)

    def _run(self) -> None:
        get, lock = self._queue.get, self._lock
        while True:
            item = get()
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs
            with lock:
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Executor's shutdown: see :meth:`stop`."""
        self.stop(wait, cancel_futures=cancel_futures)

    def stop(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> bool:
        """No new calls; the queued ones still run (grpc answers them) unless *cancel_futures*.
        With *wait*, joins the threads for at most *timeout* seconds (None: as long as they
        run); True when every thread has ended."""
        with self._lock:
            if self._shutdown:
                threads = []
            else:
                self._shutdown = True
                if cancel_futures:
                    while True:
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        item[0].cancel()
                threads = list(self._threads)
                for _ in threads:
                    self._queue.put(None)
        if not wait:
            return not any(t.is_alive() for t in threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)


class _LoopResult:
    """The outcome of a call for an event loop: settles its asyncio future from the worker
    thread through ``call_soon_threadsafe`` (the part of a Future that ``_run`` uses)."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
        self.loop = loop
        self.future = future

    def set_running_or_notify_cancel(self) -> bool:
        return not self.future.done()  # cancelled while it waited: skipped

    def set_result(self, result) -> None:
        self._post(_settle, result)

    def set_exception(self, exc: BaseException) -> None:
        self._post(_settle_exception, exc)

    def _post(self, settle, value) -> None:
        try:
            self.loop.call_soon_threadsafe(settle, self.future, value)
        except RuntimeError:  # the loop has closed: nobody awaits the result
            pass


def _settle(future: asyncio.Future, result) -> None:
    if not future.done():
        future.set_result(result)


def _settle_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
