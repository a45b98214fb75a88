"""What both protocols share: loaded models with their interpreter pools, request validation,
admission control (per-model queues and a server-wide bound, see :mod:`model_server.admission`),
and the errors the protocols translate.

Both are used from two sides at once: REST requests are asyncio tasks on the event loop
(:meth:`Engine.infer`, inference in :attr:`Engine.executor`), gRPC requests run in the gRPC
server's handler threads and infer right there (:meth:`Engine.infer_sync`, no second thread hop).
Interpreter instances are handed over FIFO under a lock to either kind of waiter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .admission import Admission, InstancePool
from .backends import Backend, TensorSpec, load_backend_class
from .client_access import ClientAccess
from .config import Limits, ModelConfig
from .datatypes import TensorError
from .errors import BudgetShort, ServeError
from .handler_pool import HandlerPool
from .unsent import UnsentAnswers

__all__ = [
    "Admission",
    "ByteBudget",
    "Counters",
    "Engine",
    "Hold",
    "InstancePool",
    "LoadedModel",
    "ServeError",
    "load_models",
    "queue_shares",
]

log = logging.getLogger("model_server")


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
        # one request per instance; the engine sets pool.max_queue from the limits
        self.pool: InstancePool[Backend] = InstancePool(self.name, list(instances), 0)

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    def state(self) -> str | None:
        """The state the model keeps between requests, as its backend reports it (None: none,
        or a backend that cannot say)."""
        report = getattr(self._instances[0], "state", None)
        if report is None:
            return None
        try:
            return report()
        except Exception:  # noqa: BLE001 - a backend's report must never stop the server
            return None

    @property
    def waiting(self) -> int:
        return self.pool.waiting

    def check_input(self, name: str, datatype: str, shape: list[int]) -> TensorSpec:
        spec = self.input_specs.get(name)
        if spec is None:
            raise ServeError(
                ServeError.INVALID,
                f"model {self.name!r} has no input {name!r}; inputs: {', '.join(self.input_specs)}",
            )
        if datatype != spec.datatype:
            raise ServeError(
                ServeError.INVALID,
                f"input {name!r}: datatype {datatype!r}, model expects {spec.datatype}",
            )
        if not spec.accepts(shape):
            raise ServeError(
                ServeError.INVALID,
                f"input {name!r}: shape {list(shape)}, model expects {spec.shape} (-1 = any)",
            )
        if not self.accepts_empty and any(
            got == 0 and want < 0 for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise ServeError(
                ServeError.INVALID,
                f"input {name!r}: shape {list(shape)} has a "
                f"zero-sized dimension; model {self.name!r} does not take empty "
                "tensors",
            )
        return spec

    def check_result(self, result) -> dict[str, np.ndarray]:
        """What a backend returned: every declared output, an array whose shape fits the
        output's spec (rank, fixed dimensions). Anything else is the server's fault (INTERNAL),
        never passed on to a client."""
        if not isinstance(result, dict):
            raise ServeError(
                ServeError.INTERNAL,
                f"model {self.name!r}: the backend returned "
                f"{type(result).__name__}, not a dict of outputs",
            )
        checked = {}
        for spec in self.outputs:
            if spec.name not in result:
                raise ServeError(
                    ServeError.INTERNAL,
                    f"model {self.name!r}: the backend returned no output {spec.name!r}",
                )
            arr = np.asarray(result[spec.name])
            if not spec.accepts(arr.shape):
                raise ServeError(
                    ServeError.INTERNAL,
                    f"model {self.name!r}: output "
                    f"{spec.name!r} has shape {list(arr.shape)}, the model declares "
                    f"{spec.shape}",
                )
            checked[spec.name] = arr
        return checked

    def check_complete(self, arrays: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.input_specs if n not in arrays]
        if missing:
            raise ServeError(
                ServeError.INVALID, f"model {self.name!r}: missing input(s) {', '.join(missing)}"
            )

    def check_outputs(self, names: Iterable[str]) -> list[str]:
        """The outputs a request asks for (none named: every output), each at most once: an
        answer never holds an output twice (a short request naming one output many times would
        otherwise make the server build an answer many times its size)."""
        names = list(names)
        seen = set()
        for n in names:
            if n not in self.output_names:
                raise ServeError(
                    ServeError.INVALID,
                    f"model {self.name!r} has no output {n!r}; "
                    f"outputs: {', '.join(self.output_names)}",
                )
            if n in seen:
                raise ServeError(ServeError.INVALID, f"output {n!r} requested more than once")
            seen.add(n)
        return names or list(self.output_names)

    async def run(
        self,
        executor: HandlerPool,
        arrays: dict[str, np.ndarray],
        started: Callable[[], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """*started* is called once the request has its instance (before that it only waits,
        and may be cancelled)."""
        instance = await self.pool.acquire()
        try:
            if started is not None:
                started()
            result = await executor.run(instance.infer, arrays)
        finally:
            self.pool.release(instance)
        return self.check_result(result)

    def run_sync(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Infer in the calling thread (a gRPC handler thread)."""
        instance = self.pool.acquire_sync()
        try:
            result = instance.infer(arrays)
        finally:
            self.pool.release(instance)
        return self.check_result(result)

    def close(self) -> None:
        for inst in self._instances:
            try:
                inst.close()
            except Exception:  # one instance failing to close must not keep the rest open
                log.exception("closing an instance of model %s", self.name)


class ByteBudget:
    """Server-wide budget of request bytes being received or held (``limits.max_buffered_bytes``),
    shared by REST (body bytes reserved as they arrive) and gRPC (a message's room reserved
    before it is received), and by what decoding and answering a request will allocate
    (reserved before it is done, see :class:`Hold`). Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._reclaimers: list[Callable[[], None]] = []
        self._shedders: list[Callable[[int], int]] = []

    def on_release(self, listener: Callable[[], None]) -> None:
        """Call *listener* (quick, from any thread, outside the budget's lock) after bytes go
        back to the budget."""
        self._listeners.append(listener)

    def on_pressure(self, reclaimer: Callable[[], None]) -> None:
        """Call *reclaimer* (quick, from any thread) when someone is waiting for room: it may
        free some, e.g. by refusing a body that has stopped arriving."""
        self._reclaimers.append(reclaimer)

    def press(self) -> None:
        """Someone waits for room (see :meth:`on_pressure`)."""
        for reclaimer in self._reclaimers:
            reclaimer()

    def on_short(self, shedder: Callable[[int], int]) -> None:
        """Call *shedder* (quick, from any thread, outside the budget's lock) when a reservation
        is refused, with the bytes missing: it gives up room it holds only as a convenience and
        returns how many bytes it gave up (they go back to the budget)."""
        self._shedders.append(shedder)

    def try_reserve(self, n: int, shed: bool = True) -> bool:
        """Reserve *n* bytes if the budget has them (after the shedders gave back what they
        could, when *shed*)."""
        with self._lock:
            if n <= self.limit - self.used:
                self.used += n
                return True
            short = n - (self.limit - self.used)
        if not shed or n > self.limit:
            return False
        freed = 0
        for shedder in self._shedders:
            got = shedder(short)
            with self._lock:
                self.used -= got
                freed += got
                if n <= self.limit - self.used:
                    self.used += n
                    return True
                short = n - (self.limit - self.used)
        if freed:
            for listener in self._listeners:
                listener()
        return False

    def reserve(self, n: int, what: str = "request bytes") -> None:
        """:meth:`try_reserve` or a ServeError: TOO_LARGE when *n* could never fit, else
        UNAVAILABLE."""
        if n > self.limit:
            raise BudgetShort(
                ServeError.TOO_LARGE,
                f"{what}: {n} bytes, more than the server "
                f"holds for all requests (limits.max_buffered_bytes {self.limit})",
            )
        if not self.try_reserve(n):
            raise BudgetShort(
                ServeError.UNAVAILABLE,
                f"server busy: {self.used} request bytes "
                f"held, no room for {n} more ({what}; limits.max_buffered_bytes "
                f"{self.limit})",
            )

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n
        for listener in self._listeners:
            listener()


class Hold:
    """The bytes one request holds in a :class:`ByteBudget`, grown as its costs become known
    (what decoding, parsing or answering it will allocate, reserved before that is done) and
    released at once when the request ends. Used by one thread (or the event loop) at a time."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: ByteBudget, held: int = 0) -> None:
        self.budget = budget
        self.held = held  # already reserved by the caller, now owned by this hold

    def grow(self, n: int, what: str) -> None:
        """Reserve *n* more bytes, or ServeError (TOO_LARGE if the request as a whole could
        never fit the budget, else UNAVAILABLE)."""
        if n <= 0:
            return
        if self.held + n > self.budget.limit:
            raise BudgetShort(
                ServeError.TOO_LARGE,
                f"{what}: the request would hold "
                f"{self.held + n} bytes, more than the server holds for all "
                f"requests (limits.max_buffered_bytes {self.budget.limit})",
            )
        self.budget.reserve(n, what)
        self.held += n

    def set(self, n: int, what: str) -> None:
        """Hold exactly *n* bytes (grow, or give back what is no longer needed)."""
        if n >= self.held:
            self.grow(n - self.held, what)
        else:
            self.budget.release(self.held - n)
            self.held = n

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0


@dataclass
class Counters:
    accepted: int = 0  # inference requests admitted: passed parsing, handed to the engine
    answered: int = 0  # ... and got an answer (ok or error)
    ok: int = 0
    refused: int = 0  # inference requests refused before admission (malformed, too large,
    #                      unknown model, no buffer room)
    cut_off: int = 0  # admitted, still queued at the drain deadline: answered UNAVAILABLE

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        """Count *n* (gRPC handler threads and the event loop count at the same time)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


def queue_shares(models: Iterable[LoadedModel], places: int) -> dict[str, int]:
    """*places* shared among *models* in proportion to their instances (rounded down)."""
    models = list(models)
    total = sum(m.pool.size for m in models) or 1
    return {m.name: places * m.pool.size // total for m in models}


class Engine:
    """The models of this server and how a validated request runs on them.

    Admission: a request is refused (UNAVAILABLE) when ``limits.max_concurrent_requests +
    limits.max_queue`` requests are admitted server-wide; otherwise it runs on a free instance
    of its model or waits in that model's queue (``models[].max_queue``, default its share of
    ``limits.max_queue`` in proportion to its instances), refused when that queue is full. No
    request ever waits on another model's traffic."""

    def __init__(self, models: dict[str, LoadedModel], limits: Limits) -> None:
        self.models = models
        self.limits = limits
        self.admission = Admission(limits.max_concurrent_requests + limits.max_queue)
        shares = queue_shares(models.values(), limits.max_queue)
        for m in models.values():
            m.pool.max_queue = shares[m.name] if m.config.max_queue is None else m.config.max_queue
        workers = sum(m.pool.size for m in models.values()) or 1
        self.executor = HandlerPool(workers, thread_name_prefix="infer")
        self.ready = True
        self.counters = Counters()
        self.budget = ByteBudget(limits.max_buffered_bytes)
        #: Answers written but not yet read by their clients (their bytes stay in the budget).
        self.unsent = UnsentAnswers(self.budget)
        #: Models restricted to named clients (models[].clients), checked by REST and gRPC.
        self.access = ClientAccess.of(m.config for m in models.values())

    def share_handler_threads(self, threads: int) -> None:
        """gRPC requests wait in handler threads, and there are *threads* of those: each model
        may keep at most its share (in proportion to its instances) of the threads not needed
        by running requests waiting, so one model's calls cannot hold every thread."""
        running = sum(m.pool.size for m in self.models.values())
        shares = queue_shares(self.models.values(), max(0, threads - running))
        for m in self.models.values():
            m.pool.max_thread_waiters = shares[m.name]

    def stop_admitting(self, message: str) -> int:
        """The drain deadline: every queued request fails now, and every later one, with
        UNAVAILABLE and *message*; running requests finish. Returns how many queued requests
        failed."""
        failed = sum(m.pool.close(message) for m in self.models.values())
        self.counters.add("cut_off", failed)
        return failed

    def model(self, name: str, version: str = "") -> LoadedModel:
        m = self.models.get(name)
        if m is None:
            raise ServeError(
                ServeError.NOT_FOUND,
                f"unknown model {name!r}; served: {', '.join(self.models) or 'none'}",
            )
        if version and version != m.version:
            raise ServeError(
                ServeError.NOT_FOUND,
                f"model {name!r} has no version {version!r} (served: {m.version})",
            )
        return m

    @property
    def queue_depth(self) -> int:
        return sum(m.waiting for m in self.models.values())

    async def infer(
        self,
        model: LoadedModel,
        arrays: dict[str, np.ndarray],
        started: Callable[[], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """*started*: see :meth:`LoadedModel.run`."""
        model.check_complete(arrays)
        self.admission.enter()
        try:
            try:
                return await model.run(self.executor, arrays, started)
            except Exception as exc:  # noqa: BLE001 - translated (or re-raised) below
                raise _inference_error(model, exc) from None
        finally:
            self.admission.leave()

    def infer_sync(
        self, model: LoadedModel, arrays: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """:meth:`infer` for a gRPC handler thread: waits in the thread, infers in it."""
        model.check_complete(arrays)
        self.admission.enter()
        try:
            try:
                return model.run_sync(arrays)
            except Exception as exc:  # noqa: BLE001 - translated (or re-raised) below
                raise _inference_error(model, exc) from None
        finally:
            self.admission.leave()

    def busy(self) -> int:
        """Requests admitted and not yet answered (running, or waiting for an instance)."""
        return self.admission.in_flight

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for m in self.models.values():
            m.close()


def _inference_error(model: LoadedModel, exc: Exception) -> ServeError:
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, TensorError):  # includes backends.InferenceError
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
