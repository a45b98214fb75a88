"""The threads grpc runs inference calls in: a :class:`concurrent.futures.Executor` that
starts a thread only when no started one is idle, up to ``max_workers``, and runs calls FIFO.

Where threads are scarce (an enclave has ``sgx.max_threads``), a thread that cannot be started
is not an error: the pool's capacity becomes the threads it has (``on_capacity`` is told, once,
so admission can share that many among the models) and calls wait for one of them.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Executor, Future
from typing import Callable

log = logging.getLogger("model_server")


class HandlerPool(Executor):
    def __init__(self, max_workers: int, thread_name_prefix: str = "grpc",
                 on_capacity: Callable[[int], None] | None = None,
                 thread_factory: Callable[..., threading.Thread] = threading.Thread) -> None:
        self.capacity = max(1, max_workers)
        self._prefix = thread_name_prefix
        self._on_capacity = on_capacity
        self._thread_factory = thread_factory
        self._work: collections.deque = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._idle = 0          # started threads waiting for work and not yet spoken for
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        reduced = None
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._work.append((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1
                self._cond.notify()
            elif len(self._threads) < self.capacity:
                thread = self._thread_factory(target=self._run, daemon=True,
                                              name=f"{self._prefix}_{len(self._threads)}")
                try:
                    thread.start()
                except RuntimeError as exc:          # "can't start new thread"
                    if not self._threads:
                        self._work.pop()
                        raise
                    self.capacity = reduced = len(self._threads)
                    log.warning("gRPC: cannot start another handler thread (%s); calls wait "
                                "for one of the %d running", exc, reduced)
                else:
                    self._threads.append(thread)
        if reduced is not None and self._on_capacity is not None:
            self._on_capacity(reduced)
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._work:
                    if self._shutdown:
                        return
                    self._idle += 1
                    self._cond.wait()
                future, fn, args, kwargs = self._work.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; the queued ones still run (grpc answers them) unless *cancel_futures*."""
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                while self._work:
                    self._work.popleft()[0].cancel()
            self._idle = 0
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()
