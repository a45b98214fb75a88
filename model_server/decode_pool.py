"""Work that would block the REST event loop (parsing a large JSON document, decoding many BYTES
elements, decompressing, writing large JSON answers), done by a few daemon threads.

Jobs are queued per key (the model) and the keys are served in turn, with at most one job of a
key running at a time: a model whose clients send large documents delays its own requests, not
another model's (which takes the next free thread). :meth:`DecodePool.close` cancels every job
not yet started, and since the threads are daemons, a job still running never holds the process
past its drain.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future

log = logging.getLogger("model_server")


class DecodePool:
    def __init__(self, threads: int = 2, name: str = "rest-decode") -> None:
        self.max_threads = max(1, threads)
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[Hashable, collections.deque] = {}
        self._ready: collections.deque = collections.deque()  # keys with work, none running
        self._running: set = set()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def submit(self, key: Hashable, fn: Callable, *args) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the decode pool is closed")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
            queue.append((future, fn, args))
            if len(queue) == 1 and key not in self._running:
                self._ready.append(key)
            if self._idle:
                self._cond.notify()
            elif len(self._threads) < self.max_threads:
                self._start()
        return future

    def _start(self) -> None:
        thread = threading.Thread(
            target=self._work, daemon=True, name=f"{self._name}_{len(self._threads)}"
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no more threads (an enclave's max_threads)
            if not self._threads:
                raise
            log.warning(
                "REST: cannot start another decode thread (%s); %d serve", exc, len(self._threads)
            )
            self.max_threads = len(self._threads)
            return
        self._threads.append(thread)

    def _work(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._ready:
                    if self._closed:
                        return
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                key = self._ready.popleft()
                future, fn, args = self._queues[key].popleft()
                self._running.add(key)
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args
            with cond:
                self._running.discard(key)
                if self._queues[key]:
                    self._ready.append(key)  # behind the other keys
                else:
                    del self._queues[key]

    def close(self) -> int:
        """No more jobs; every job not yet started is cancelled (returns how many). Jobs
        running finish in their (daemon) threads."""
        with self._cond:
            self._closed = True
            jobs = [job for queue in self._queues.values() for job in queue]
            for queue in self._queues.values():
                queue.clear()
            self._ready.clear()
            self._cond.notify_all()
        return sum(1 for future, _, _ in jobs if future.cancel())
