"""The pieces behind the model server's gRPC limits, without sockets: the inference handler
pool (threads on demand, a capacity that shrinks where threads cannot be started), the
deadline watchdog that ends calls whose message never comes, the health pool started with the
server, grpc's channel arguments, and the file-descriptor budget (sys.fds.limit, RLIMIT_NOFILE).
The same limits over real connections: test_grpc_hostile."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from enclave_build.model_server.config import Limits, ModelConfig, parse_config
from enclave_build.model_server.grpc_service import control_pool, server_options
from enclave_build.model_server.handler_pool import HandlerPool
from enclave_build.model_server.resources import OWN_FDS, config_fds, fds_needed
from enclave_build.model_server.watchdog import Watchdog

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- handler pool


def test_handler_pool_starts_threads_only_when_none_is_idle():
    pool = HandlerPool(8)
    assert pool.submit(lambda: 1).result(10) == 1
    for _ in range(20):  # one at a time: the same thread serves them all
        pool.submit(lambda: None).result(10)
    assert pool.threads == 1
    gate = threading.Event()
    held = [pool.submit(gate.wait, 10) for _ in range(3)]  # three blocked calls: three threads
    assert pool.submit(lambda: 2).result(10) == 2  # a fourth thread, not a wait
    assert pool.threads == 4
    gate.set()
    assert all(f.result(10) for f in held)
    pool.shutdown()


def test_handler_pool_runs_calls_for_the_event_loop():
    """REST's inference hand-off: the call runs in a pool thread (never the loop's), its result
    or exception comes back to the awaiting task, and a call cancelled while it waits for a
    thread is skipped."""
    import asyncio

    pool = HandlerPool(1)
    ran: list[str] = []

    def where(tag: str) -> str:
        ran.append(tag)
        return threading.current_thread().name

    def fail() -> None:
        raise ValueError("bad input")

    async def main() -> None:
        loop_thread = threading.current_thread().name
        assert await pool.run(where, "a") not in (loop_thread, "")
        with pytest.raises(ValueError, match="bad input"):
            await pool.run(fail)
        gate = threading.Event()
        blocker = asyncio.ensure_future(pool.run(gate.wait, 10))
        waiting = asyncio.ensure_future(pool.run(where, "cancelled"))
        await asyncio.sleep(0.05)
        waiting.cancel()  # still queued behind the blocked call
        gate.set()
        assert await blocker is True
        assert await pool.run(where, "b")
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())
    assert ran == ["a", "b"] and pool.threads == 1
    pool.shutdown()


def test_handler_pool_runs_calls_fifo_at_capacity():
    pool = HandlerPool(1)
    gate, order = threading.Event(), []
    first = pool.submit(gate.wait, 10)
    later = [pool.submit(order.append, i) for i in range(5)]
    gate.set()
    first.result(10)
    for f in later:
        f.result(10)
    assert order == [0, 1, 2, 3, 4] and pool.threads == 1
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)


def test_handler_pool_capacity_shrinks_when_a_thread_cannot_start():
    """An enclave's max_threads: the third thread cannot start. The call waits for one of the
    two instead of failing, and the pool reports its real capacity (once)."""
    started = []

    def scarce(**kwargs):
        thread = threading.Thread(**kwargs)
        if len(started) == 2:

            class Refused(threading.Thread):
                def start(self):
                    raise RuntimeError("can't start new thread")

            return Refused(**kwargs)
        started.append(thread)
        return thread

    told = []
    pool = HandlerPool(8, on_capacity=told.append, thread_factory=scarce)
    gate = threading.Event()
    held = [pool.submit(gate.wait, 10) for _ in range(2)]
    waiting = pool.submit(lambda: "ran")
    assert told == [2] and pool.capacity == 2 and pool.threads == 2
    assert not waiting.done()
    gate.set()
    assert waiting.result(10) == "ran" and all(f.result(10) for f in held)
    pool.submit(lambda: None).result(10)
    assert told == [2]
    pool.shutdown()


def test_handler_pool_without_any_thread_raises():
    def none(**kwargs):
        class Refused(threading.Thread):
            def start(self):
                raise RuntimeError("can't start new thread")

        return Refused(**kwargs)

    pool = HandlerPool(4, thread_factory=none)
    with pytest.raises(RuntimeError, match="can't start"):
        pool.submit(lambda: None)


# ---------------------------------------------------------------- watchdog


def test_watchdog_fires_late_deadlines_in_order_and_never_disarmed_ones():
    fired, done = [], threading.Event()
    dog = Watchdog(0.05)
    try:
        kept = dog.arm(lambda: fired.append("a"))
        dropped = dog.arm(lambda: fired.append("b"))
        dog.arm(lambda: (fired.append("c"), done.set()))
        assert dog.disarm(dropped) is True
        assert done.wait(10)
        assert fired == ["a", "c"]
        assert kept.fired and dog.disarm(kept) is False  # too late: it ran
    finally:
        dog.stop()


def test_watchdog_lets_go_of_a_disarmed_action():
    """A disarmed deadline keeps nothing alive: its action is a grpc context's cancel, and a
    context kept alive keeps its call's HTTP/2 stream open, which ran a connection out of
    streams after max_streams_per_connection calls."""
    import gc
    import weakref

    class Call:
        def cancel(self):
            pass

    dog = Watchdog(60)
    try:
        call = Call()
        gone = weakref.ref(call)
        assert dog.disarm(dog.arm(call.cancel))
        del call
        gc.collect()
        assert gone() is None
    finally:
        dog.stop()


def test_watchdog_survives_a_failing_action():
    done = threading.Event()
    dog = Watchdog(0.01)
    try:
        dog.arm(lambda: 1 / 0)
        dog.arm(done.set)
        assert done.wait(10)
    finally:
        dog.stop()


# ---------------------------------------------------------------- health pool and options


def test_control_pool_threads_exist_before_any_call():
    pool = control_pool(2)
    names = [t.name for t in threading.enumerate() if t.name.startswith("grpc-health")]
    assert len(names) >= 2
    gate = threading.Event()
    held = [pool.submit(gate.wait, 10) for _ in range(2)]
    gate.set()
    assert all(f.result(10) for f in held)
    pool.shutdown()


def test_grpc_options_carry_the_limits():
    opts = dict(
        server_options(
            Limits(
                max_request_bytes=1000,
                max_grpc_connections=7,
                max_streams_per_connection=3,
                header_timeout=1.5,
                idle_timeout=20,
            )
        )
    )
    assert opts["grpc.max_receive_message_length"] == 1000
    assert opts["grpc.max_allowed_incoming_connections"] == 7
    assert opts["grpc.max_concurrent_streams"] == 3
    assert opts["grpc.server_handshake_timeout_ms"] == 1500
    assert opts["grpc.max_connection_idle_ms"] == 20000


# ---------------------------------------------------------------- file descriptors


def test_fds_needed_counts_connections_model_files_and_the_servers_own():
    models = [
        ModelConfig("a", "1", "tflite", "/a", instances=2),
        ModelConfig("b", "1", "openvino", "/b"),
    ]
    assert fds_needed(Limits(), models) == 256 + 1024 + 2 * 3 + OWN_FDS
    assert (
        fds_needed(Limits(max_connections=10, max_grpc_connections=20), models, rest=False)
        == 20 + 6 + OWN_FDS
    )


def test_fit_open_files_raises_the_soft_limit_or_lowers_the_caps():
    """In a child whose hard RLIMIT_NOFILE is 300: the default caps do not fit, so both are
    lowered in proportion; a configuration that fits leaves the limits alone but raises the
    soft limit to what it needs."""
    code = f"""
import resource, sys
sys.path.insert(0, {str(REPO)!r})
from enclave_build.model_server.config import parse_config
from enclave_build.model_server.resources import config_fds, fit_open_files
resource.setrlimit(resource.RLIMIT_NOFILE, (100, 300))
base = {{"version": 1, "service": "s", "models": [{{"name": "m", "backend": "tflite",
        "path": "/m"}}]}}
small = dict(base, limits={{"max_connections": 20, "max_grpc_connections": 30}})
config, message = fit_open_files(parse_config(small))
print(config.limits.max_connections, config.limits.max_grpc_connections, message,
      resource.getrlimit(resource.RLIMIT_NOFILE)[0])
config, message = fit_open_files(parse_config(base))
print(config.limits.max_connections, config.limits.max_grpc_connections, config_fds(config))
print(message)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0].split() == ["20", "30", "None", str(20 + 30 + 2 + OWN_FDS)]
    rest, grpc, needed = map(int, out[1].split())
    # in proportion to the defaults (256 REST, 1024 gRPC)
    assert abs(grpc - 4 * rest) <= 4 and rest + grpc > 100 and needed <= 300
    assert "may open 300 files" in out[2] and f"at most {rest} REST and {grpc} gRPC" in out[2]


def test_config_fds_leaves_out_a_listener_that_is_off():
    c = parse_config(
        {
            "version": 1,
            "service": "s",
            "grpc": None,
            "models": [{"name": "m", "backend": "tflite", "path": "/m"}],
        }
    )
    assert config_fds(c) == 256 + 2 + OWN_FDS
