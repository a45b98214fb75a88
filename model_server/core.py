"""What both protocols share: loaded models with their interpreter pools, request validation,
admission control (bounded concurrency and queue), and the errors the protocols translate.

Both are used from two sides at once: REST requests are asyncio tasks on the event loop
(:meth:`Engine.infer`, inference in :attr:`Engine.executor`), gRPC requests run in the gRPC
server's handler threads and infer right there (:meth:`Engine.infer_sync`, no second thread hop).
Admission slots and interpreter instances are handed over FIFO under a lock to either kind of
waiter.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from .backends import Backend, TensorSpec, load_backend_class
from .config import Limits, ModelConfig
from .datatypes import TensorError

log = logging.getLogger("model_server")


class ServeError(Exception):
    """A request failed; ``kind`` picks the protocol status (see grpc_service / rest)."""

    INVALID = "invalid"          # INVALID_ARGUMENT / 400
    NOT_FOUND = "not_found"      # NOT_FOUND / 404
    UNAVAILABLE = "unavailable"  # UNAVAILABLE / 503 (queue full, draining)
    TOO_LARGE = "too_large"      # RESOURCE_EXHAUSTED / 413
    INTERNAL = "internal"        # INTERNAL / 500

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Waiter:
    """One request waiting for a slot or an instance: an asyncio future (woken on its loop) or a
    thread (woken through a lock). ``granted``/``abandoned`` only change under the owner's lock."""

    __slots__ = ("granted", "abandoned", "value", "_loop", "_fut", "_lock")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.granted = self.abandoned = False
        self.value = None
        self._loop = loop
        if loop is None:
            self._lock = threading.Lock()
            self._lock.acquire()
        else:
            self._fut = loop.create_future()

    def wake(self) -> None:
        if self._loop is None:
            self._lock.release()
        else:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                _resolve(self._fut)
            else:
                self._loop.call_soon_threadsafe(_resolve, self._fut)

    def wait_thread(self):
        self._lock.acquire()
        return self.value

    async def wait_async(self, lock: threading.Lock, waiters: collections.deque,
                         give_back) -> object:
        try:
            await self._fut
        except asyncio.CancelledError:
            with lock:
                owned = self.granted
                if not owned:
                    self.abandoned = True
                    waiters.remove(self)
            if owned:                  # handed over just before the cancellation: pass it on
                give_back(self.value)
            raise
        return self.value


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _grant(waiters: collections.deque, value) -> _Waiter | None:
    """Under the owner's lock: give *value* to the first waiter still waiting (None: nobody
    waits). The caller wakes it after releasing the lock."""
    while waiters:
        w = waiters.popleft()
        if not w.abandoned:
            w.granted = True
            w.value = value
            return w
    return None


class LoadedModel:
    """One model: its metadata and a pool of backend instances, each serving one request at a
    time."""

    def __init__(self, config: ModelConfig, instances: list[Backend]) -> None:
        self.config = config
        self.name = config.name
        self.version = config.version
        first = instances[0]
        self.platform = getattr(first, "platform", "unknown")
        # a zero-sized dynamic dimension reaches the backend only when it says it handles one
        self.accepts_empty = bool(getattr(first, "accepts_empty", False))
        self.inputs: list[TensorSpec] = list(first.inputs())
        self.outputs: list[TensorSpec] = list(first.outputs())
        self.input_specs = {s.name: s for s in self.inputs}
        self.output_names = [s.name for s in self.outputs]
        self._instances = instances
        self._free: collections.deque[Backend] = collections.deque(instances)
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def check_input(self, name: str, datatype: str, shape: list[int]) -> TensorSpec:
        spec = self.input_specs.get(name)
        if spec is None:
            raise ServeError(ServeError.INVALID, f"model {self.name!r} has no input {name!r}; "
                             f"inputs: {', '.join(self.input_specs)}")
        if datatype != spec.datatype:
            raise ServeError(ServeError.INVALID, f"input {name!r}: datatype {datatype!r}, "
                             f"model expects {spec.datatype}")
        if not spec.accepts(shape):
            raise ServeError(ServeError.INVALID, f"input {name!r}: shape {list(shape)}, model "
                             f"expects {spec.shape} (-1 = any)")
        if not self.accepts_empty and any(got == 0 and want < 0
                                          for want, got in zip(spec.shape, shape)):
            raise ServeError(ServeError.INVALID, f"input {name!r}: shape {list(shape)} has a "
                             f"zero-sized dimension; model {self.name!r} does not take empty "
                             "tensors")
        return spec

    def check_result(self, result) -> dict[str, np.ndarray]:
        """What a backend returned: every declared output, an array whose shape fits the
        output's spec (rank, fixed dimensions). Anything else is the server's fault (INTERNAL),
        never passed on to a client."""
        if not isinstance(result, dict):
            raise ServeError(ServeError.INTERNAL, f"model {self.name!r}: the backend returned "
                             f"{type(result).__name__}, not a dict of outputs")
        checked = {}
        for spec in self.outputs:
            if spec.name not in result:
                raise ServeError(ServeError.INTERNAL, f"model {self.name!r}: the backend "
                                 f"returned no output {spec.name!r}")
            arr = np.asarray(result[spec.name])
            if not spec.accepts(arr.shape):
                raise ServeError(ServeError.INTERNAL, f"model {self.name!r}: output "
                                 f"{spec.name!r} has shape {list(arr.shape)}, the model declares "
                                 f"{spec.shape}")
            checked[spec.name] = arr
        return checked

    def check_complete(self, arrays: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.input_specs if n not in arrays]
        if missing:
            raise ServeError(ServeError.INVALID, f"model {self.name!r}: missing input(s) "
                             f"{', '.join(missing)}")

    def check_outputs(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        for n in names:
            if n not in self.output_names:
                raise ServeError(ServeError.INVALID, f"model {self.name!r} has no output {n!r}; "
                                 f"outputs: {', '.join(self.output_names)}")
        return names or list(self.output_names)

    async def _acquire(self) -> Backend:
        with self._lock:
            if self._free:
                return self._free.pop()      # LIFO: the most recently used (cache-warm) instance
            w = _Waiter(asyncio.get_running_loop())
            self._waiters.append(w)
        return await w.wait_async(self._lock, self._waiters, self._release)

    def _acquire_sync(self) -> Backend:
        with self._lock:
            if self._free:
                return self._free.pop()
            w = _Waiter(None)
            self._waiters.append(w)
        return w.wait_thread()

    def _release(self, instance: Backend) -> None:
        with self._lock:
            w = _grant(self._waiters, instance)
            if w is None:
                self._free.append(instance)
                return
        w.wake()

    async def run(self, executor: ThreadPoolExecutor, arrays: dict[str, np.ndarray],
                  started: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
        """*started* is called once the request has its instance (before that it only waits,
        and may be cancelled)."""
        instance = await self._acquire()
        try:
            if started is not None:
                started()
            result = await asyncio.get_running_loop().run_in_executor(
                executor, instance.infer, arrays)
        finally:
            self._release(instance)
        return self.check_result(result)

    def run_sync(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Infer in the calling thread (a gRPC handler thread)."""
        instance = self._acquire_sync()
        try:
            result = instance.infer(arrays)
        finally:
            self._release(instance)
        return self.check_result(result)

    def close(self) -> None:
        for inst in self._instances:
            try:
                inst.close()
            except Exception:  # noqa: BLE001
                log.exception("closing an instance of model %s", self.name)


class Admission:
    """At most ``max_concurrent`` requests in flight; up to ``max_queue`` more wait; beyond that
    a request is refused at once (UNAVAILABLE / 503)."""

    def __init__(self, limits: Limits) -> None:
        self.max_concurrent = max(1, limits.max_concurrent_requests)
        self.max_queue = max(0, limits.max_queue)
        self.in_flight = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _enter(self, loop: asyncio.AbstractEventLoop | None) -> _Waiter | None:
        """A slot now (None), a place in the queue (the waiter), or UNAVAILABLE."""
        with self._lock:
            if self.in_flight < self.max_concurrent and not self._waiters:
                self.in_flight += 1
                return None
            if len(self._waiters) >= self.max_queue:
                raise ServeError(ServeError.UNAVAILABLE,
                                 f"server busy: {self.in_flight} requests in flight and "
                                 f"{len(self._waiters)} queued (limits.max_queue)")
            w = _Waiter(loop)
            self._waiters.append(w)
            return w

    async def acquire(self) -> None:
        w = self._enter(asyncio.get_running_loop())
        if w is not None:   # the releasing request hands its slot over (in_flight unchanged)
            await w.wait_async(self._lock, self._waiters, lambda _: self.release())

    def acquire_sync(self) -> None:
        w = self._enter(None)
        if w is not None:
            w.wait_thread()

    def release(self) -> None:
        with self._lock:
            w = _grant(self._waiters, None)
            if w is None:
                self.in_flight -= 1
                return
        w.wake()


class ByteBudget:
    """Server-wide budget of request bytes being received or held (``limits.max_buffered_bytes``),
    shared by REST (reserved before a body is read) and gRPC (reserved for a message before it
    is queued for admission). Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def try_reserve(self, n: int) -> bool:
        with self._lock:
            if n > self.limit - self.used:
                return False
            self.used += n
            return True

    def reserve(self, n: int) -> None:
        """:meth:`try_reserve` or UNAVAILABLE."""
        if not self.try_reserve(n):
            raise ServeError(ServeError.UNAVAILABLE, f"server busy: {self.used} request bytes "
                             f"held, no room for {n} more (limits.max_buffered_bytes "
                             f"{self.limit})")

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass
class Counters:
    accepted: int = 0    # inference requests admitted: passed parsing, handed to the engine
    answered: int = 0    # ... and got an answer (ok or error)
    ok: int = 0
    refused: int = 0     # inference requests refused before admission (malformed, too large,
    #                      unknown model, no buffer room)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        """Count one (gRPC handler threads and the event loop count at the same time)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


class Engine:
    """The models of this server and how a validated request runs on them."""

    def __init__(self, models: dict[str, LoadedModel], limits: Limits) -> None:
        self.models = models
        self.limits = limits
        self.admission = Admission(limits)
        workers = sum(len(m._instances) for m in models.values()) or 1
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        self.ready = True
        self.counters = Counters()
        self.budget = ByteBudget(limits.max_buffered_bytes)

    def model(self, name: str, version: str = "") -> LoadedModel:
        m = self.models.get(name)
        if m is None:
            raise ServeError(ServeError.NOT_FOUND, f"unknown model {name!r}; served: "
                             f"{', '.join(self.models) or 'none'}")
        if version and version != m.version:
            raise ServeError(ServeError.NOT_FOUND, f"model {name!r} has no version {version!r} "
                             f"(served: {m.version})")
        return m

    @property
    def queue_depth(self) -> int:
        return self.admission.waiting + sum(m.waiting for m in self.models.values())

    async def infer(self, model: LoadedModel, arrays: dict[str, np.ndarray],
                    started: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
        """*started*: see :meth:`LoadedModel.run`."""
        model.check_complete(arrays)
        await self.admission.acquire()
        try:
            try:
                return await model.run(self.executor, arrays, started)
            except Exception as exc:  # noqa: BLE001 - translated (or re-raised) below
                raise _inference_error(model, exc) from None
        finally:
            self.admission.release()

    def infer_sync(self, model: LoadedModel, arrays: dict[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
        """:meth:`infer` for a gRPC handler thread: waits in the thread, infers in it."""
        model.check_complete(arrays)
        self.admission.acquire_sync()
        try:
            try:
                return model.run_sync(arrays)
            except Exception as exc:  # noqa: BLE001 - translated (or re-raised) below
                raise _inference_error(model, exc) from None
        finally:
            self.admission.release()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for m in self.models.values():
            m.close()


def _inference_error(model: LoadedModel, exc: Exception) -> ServeError:
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, TensorError):          # includes backends.InferenceError
        return ServeError(ServeError.INVALID, f"model {model.name!r}: {exc}")
    # a runtime failure must not stop serving
    log.error("model %s: inference failed", model.name, exc_info=exc)
    return ServeError(ServeError.INTERNAL, f"model {model.name!r}: inference failed: {exc}")


def load_models(configs: Iterable[ModelConfig], open_source) -> dict[str, LoadedModel]:
    """Construct every model's instances. ``open_source(model_config) -> ModelSource``."""
    models = {}
    for mc in configs:
        cls = load_backend_class(mc.backend)
        source = open_source(mc)
        instances = [cls(mc, source) for _ in range(max(1, mc.instances))]
        models[mc.name] = LoadedModel(mc, instances)
    return models
