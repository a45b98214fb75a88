"""What a request may cost the model server, decided before it is paid: the estimates of what
parsing and decoding allocate, the hold a request keeps in the byte budget, the gate gRPC
messages wait at before they are received, and the pool large REST documents are decoded in."""

from __future__ import annotations

import gc
import json
import threading
import time
import tracemalloc

import numpy as np
import pytest

from enclave_build.model_server import protocol as pb
from enclave_build.model_server.core import ByteBudget, Hold, ServeError
from enclave_build.model_server.costs import answer_cost, json_cost
from enclave_build.model_server.datatypes import TensorError, from_list, from_repeated
from enclave_build.model_server.decode_pool import DecodePool
from enclave_build.model_server.pb_cost import MAX_FIELDS, MAX_NAME, parse_cost
from enclave_build.model_server.receive_gate import Holder, ReceiveGate, receive_share

# ---------------------------------------------------------------- JSON

ADVERSARIAL_JSON = {
    "empty lists": b"[" + b"[]," * 100_000 + b"[]]",
    "empty objects": b"[" + b"{}," * 100_000 + b"{}]",
    "nested lists": b"[" + b"[[[[[[[[[[]]]]]]]]]]," * 20_000 + b"[]]",
    "deep": b"[" * 900 + b"]" * 900,
    "floats": b"[" + b"0.5," * 100_000 + b"1]",
    "big ints": b"[" + b"1234567890123," * 50_000 + b"1]",
    "long ints": b"[" + b",".join([b"9" * 4200] * 50) + b"]",
    "long float": b"[" + b"1" * 200_000 + b".5]",
    "short strings": b"[" + b'"ab",' * 100_000 + b'"a"]',
    "keys": b"{" + b",".join(b'"%d":1' % i for i in range(50_000)) + b"}",
    "one-key objects": b"[" + b'{"a":1},' * 50_000 + b'{"a":1}]',
    "nulls": b"[" + b"null," * 100_000 + b"null]",
    "spaces in a string": b'["' + b" " * 300_000 + b'"]',
    "non-BMP": b'["' + b"a" * 200_000 + "\U0001f600".encode() + b'"]',
    "non-BMP keys": b'{"\xf0\x9f\x98\x80' + b"a" * 50_000 + b'":1}',
    "escapes": b'["' + b"\\ud83d\\ude00" * 20_000 + b'"]',
    "a request": json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 20000],
                    "data": np.random.default_rng(1).random(20000).astype(np.float32).tolist(),
                }
            ]
        }
    ).encode(),
}


def _allocated(fn) -> int:
    """Peak bytes *fn* allocates (tracemalloc), less what json.loads costs for any document."""
    json.loads(b"0")
    gc.collect()
    tracemalloc.start()
    json.loads(b"0")
    base = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    gc.collect()
    tracemalloc.start()
    try:
        value = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del value
    return peak - base


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_JSON))
def test_json_cost_bounds_what_parsing_allocates(name):
    """A 57 MiB body of empty lists took 1.5 GB once parsed (22x); the estimate reserved before
    parsing is never below what json.loads allocates, whatever the document's shape."""
    text = ADVERSARIAL_JSON[name]
    assert json_cost(text) >= _allocated(lambda: json.loads(text)), name


def test_json_cost_of_a_float_tensor_is_near_what_it_takes():
    text = ADVERSARIAL_JSON["a request"]
    assert json_cost(text) < 2.5 * _allocated(lambda: json.loads(text))


# ---------------------------------------------------------------- numbers in JSON


@pytest.mark.parametrize(
    "data, what",
    [
        ([None, 1], "null"),
        ([True, 1.0], "a boolean"),
        ([1.5, False], "a boolean"),
        (["1e39", 1], "the string '1e39'"),
        ([" NaN", 1], "the string ' NaN'"),
        (["nan", 1], "the string 'nan'"),
        ([[1], [None]], "null"),
        ([{"a": 1}, 2], "an object"),
    ],
)
def test_json_numbers_refuse_null_booleans_and_other_strings(data, what):
    """null used to become NaN, true 1.0, and numpy parsed any numeric-looking string."""
    with pytest.raises(TensorError, match=f"does not convert to FP32: it holds {what}"):
        from_list(data, "FP32", [2, 1] if isinstance(data[0], list) else [2])


def test_json_numbers_keep_the_documented_names_and_booleans_for_bool():
    got = from_list(["NaN", "Infinity", "-Infinity", 1], "FP32", [4])
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf and got[3] == 1
    assert from_list([[1, 2], [3, 4]], "INT32", [2, 2]).tolist() == [[1, 2], [3, 4]]
    assert from_list([True, False], "BOOL", [2]).tolist() == [True, False]
    with pytest.raises(TensorError, match="holds null; expected booleans"):
        from_list([None, True], "BOOL", [2])
    with pytest.raises(TensorError, match="INT32: it holds a string"):
        from_list(["NaN", 1], "INT32", [2])


# ---------------------------------------------------------------- typed gRPC contents


def _typed(field: str, values, datatype: str = "FP32"):
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=[len(values)])
    getattr(t.contents, field).extend(values)
    return pb.ModelInferRequest.FromString(req.SerializeToString())


def test_typed_contents_become_arrays_without_a_python_list():
    values = np.arange(200_000, dtype=np.float32)
    field = _typed("fp32_contents", values).inputs[0].contents.fp32_contents
    got = from_repeated(field, "FP32", [1000, 200])
    assert got.dtype == np.float32 and np.array_equal(got.reshape(-1), values)
    # a list of per-element floats would take ~32 bytes an element; the array 4
    assert _allocated(lambda: from_repeated(field, "FP32", [200_000])) < 6 * 200_000


def test_typed_contents_checked_against_the_shape_before_anything_is_made():
    field = _typed("int_contents", [1, 2, 300], "INT8").inputs[0].contents.int_contents
    with pytest.raises(TensorError, match="needs 1000000000000 elements, got 3"):
        from_repeated(field, "INT8", [1_000_000, 1_000_000])
    with pytest.raises(TensorError, match="does not convert to INT8"):
        from_repeated(field, "INT8", [3])


# ---------------------------------------------------------------- protobuf parse cost


def _ld(number: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_parse_cost_counts_elements_not_bytes():
    """A message of 2-byte empty bytes elements grows 16x once parsed; a raw tensor does not."""
    n = 100_000
    empties = _ld(1, b"m") + _ld(5, _ld(1, b"s") + _ld(2, b"BYTES") + _ld(5, b"B\x00" * n))
    raw = _ld(1, b"m") + _ld(7, bytes(2 * n))
    assert parse_cost(empties) >= 32 * n  # (16-byte views, doubling as they grow)
    assert parse_cost(raw) < 100
    packed = _ld(1, b"m") + _ld(5, _ld(5, _ld(3, b"\x01" * n)))  # int64_contents, packed
    assert parse_cost(packed) >= 8 * n


@pytest.mark.parametrize(
    "message, error",
    [
        (_ld(1, b"m") + b"2\x00" * (MAX_FIELDS + 1), f"more than {MAX_FIELDS} fields"),
        (_ld(1, b"m" * (MAX_NAME + 1)), "model_name is longer"),
        (_ld(5, _ld(3, b"\x01" * 400)), "more than 32 dimensions"),
        (_ld(5, b"\x0a\x05ab"), "truncated"),
    ],
)
def test_parse_cost_refuses_what_no_client_sends(message, error):
    with pytest.raises(ServeError, match=error) as info:
        parse_cost(message)
    assert info.value.kind == ServeError.INVALID


# ---------------------------------------------------------------- holds and answers


def test_hold_grows_shrinks_and_releases():
    budget = ByteBudget(1000)
    hold = Hold(budget)
    hold.grow(300, "x")
    hold.set(500, "y")
    assert budget.used == 500 == hold.held
    hold.set(100, "z")
    assert budget.used == 100
    other = Hold(budget, 0)
    other.grow(800, "w")
    with pytest.raises(ServeError, match="server busy") as busy:
        hold.grow(200, "more")
    assert busy.value.kind == ServeError.UNAVAILABLE
    with pytest.raises(ServeError, match="more than the server holds") as never:
        other.grow(300, "too much")
    assert never.value.kind == ServeError.TOO_LARGE
    hold.release()
    other.release()
    assert budget.used == 0


def test_answer_cost_and_max_response_bytes():
    y = np.zeros((1000, 2), np.float32)
    assert answer_cost({"y": y}, [("y", True)], 8000) == 8000  # copied into the answer
    assert answer_cost({"y": y.T}, [("y", True)], 8000) == 16000  # made contiguous first
    assert answer_cost({"y": y}, [("y", False)], 8000) > 100 * 2000  # JSON: objects, text
    with pytest.raises(ServeError, match=r"limits\.max_response_bytes 7999") as info:
        answer_cost({"y": y}, [("y", True)], 7999)
    assert info.value.kind == ServeError.TOO_LARGE


# ---------------------------------------------------------------- the receive gate


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_receive_share_leaves_rest_one_largest_request():
    assert receive_share(256, 64) == 192
    assert receive_share(100, 64) == 100


def test_gate_reserves_the_largest_message_and_hands_it_over():
    """A call reserves a room (the largest message) before receiving. Once its message has
    arrived, the request gets bytes of its own (the message's size) and its connection keeps
    the room, bytes reserved, for its next call; at most all rooms but one are kept, beyond
    that the request gets the room's bytes."""
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=1, max_waiting=2)
    holders = [gate.enter(lambda: None, "c1") for _ in range(3)]  # share: 300
    assert all(holders) and budget.used == 300 and gate.receiving == 300
    assert gate.hand_over(holders[0], 30) == 30  # now the request's
    gate.leave(holders[0])  # (nothing more to give back)
    assert budget.used == 330 and gate.receiving == 200 and gate.keeping == 100
    assert gate.hand_over(holders[1], 30) == 30
    assert gate.hand_over(holders[2], 30) == 100  # two rooms kept already
    assert gate.kept == 2 and gate.receiving == 0 and budget.used == 360
    budget.release(30 + 30 + 100)  # the requests end
    again = gate.enter(lambda: None, "c1")  # a kept room: no new bytes
    assert again is not None and budget.used == 200 and gate.kept == 1
    gate.leave(again)
    assert budget.used == 100 and gate.holders == 0 and gate.receiving == 0


def test_gate_waiters_get_room_newest_first_and_old_holders_are_evicted():
    """Holders that never receive their message are cancelled once they have held their room
    for `grace` seconds while someone waits; the newest waiter gets the room first."""
    clock = _Clock()
    budget = ByteBudget(300)
    gate = ReceiveGate(budget, 100, grace=0.5, max_waiting=4, clock=clock)  # share: 200
    cancelled = []
    stalled = gate.enter(lambda: cancelled.append("stalled"))
    assert stalled is not None and budget.used == 100
    second = gate.enter(lambda: cancelled.append("second"))
    assert second is not None and gate.receiving == 200
    got = {}

    def wait(name: str) -> None:
        got[name] = gate.enter(lambda: cancelled.append(name))

    first_waiter = threading.Thread(target=wait, args=("older",))
    first_waiter.start()
    _until(lambda: gate.waiting == 1)
    newest = threading.Thread(target=wait, args=("newer",))
    newest.start()
    _until(lambda: gate.waiting == 2)
    assert not cancelled
    gate.leave(second)  # room for one: the newest waiter
    newest.join(5)
    assert got["newer"] is not None and "older" not in got
    clock.now += 1.0  # `stalled` has held room for 1 s
    _until(lambda: cancelled == ["stalled"])  # ... so the older waiter evicts it
    gate.leave(stalled)  # (its call ends: room given back)
    first_waiter.join(5)
    assert got["older"] is not None
    for holder in (got["older"], got["newer"]):
        gate.leave(holder)
    assert budget.used == 0


def test_gate_waiting_room_drops_the_longest_waiter_and_wait_ends():
    budget = ByteBudget(100)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=1)
    holder = gate.enter(lambda: None)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("old", gate.enter(lambda: None)))
    t.start()
    _until(lambda: gate.waiting == 1)
    t2 = threading.Thread(target=lambda: got.setdefault("new", gate.enter(lambda: None)))
    t2.start()
    t.join(5)
    assert got["old"] is None  # dropped for the newer one
    gate.leave(holder)
    t2.join(5)
    assert got["new"] is not None
    gate.leave(got["new"])
    short = ReceiveGate(ByteBudget(100), 100, grace=0.05, max_waiting=1)
    short.enter(lambda: None)
    assert short.enter(lambda: None) is None  # no room within the grace


class _Calls:
    """Calls entering a gate from threads: what each got (a holder or None), and which were
    cancelled to make room."""

    def __init__(self, gate: ReceiveGate) -> None:
        self.gate = gate
        self.got: dict[str, object] = {}
        self.cancelled: list[str] = []
        self.threads: dict[str, threading.Thread] = {}

    def enter(self, name: str, peer: str) -> None:
        def run() -> None:
            self.got[name] = self.gate.enter(lambda: self.cancelled.append(name), peer)

        self.threads[name] = threading.Thread(target=run, daemon=True)
        self.threads[name].start()

    def holder(self, name: str):
        self.threads[name].join(5)
        assert name in self.got, f"{name} is still waiting"
        return self.got[name]


def test_a_connection_holding_more_rooms_loses_its_newest_call_at_once():
    """One connection holds all three rooms with calls whose messages do not come; a call from
    another connection cancels the newest of them at once (not after grace), and gets its room
    even though a newer call of the first connection waits too."""
    clock = _Clock()
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=8, clock=clock)  # 3 rooms
    calls = _Calls(gate)
    for name in ("a1", "a2", "a3"):
        calls.enter(name, "ipv4:127.0.0.1:1000")
        calls.holder(name)
        clock.now += 0.1
    clock.now += 0.3  # a3 has held its room for MIN_HOLD
    calls.enter("b", "ipv4:127.0.0.1:2000")
    _until(lambda: calls.cancelled == ["a3"])
    calls.enter("a4", "ipv4:127.0.0.1:1000")  # newer, but of the connection holding
    _until(lambda: gate.waiting == 2)  # ... two rooms already
    gate.leave(calls.got["a3"])  # the cancelled call ends
    assert calls.holder("b").peer == "ipv4:127.0.0.1:2000"
    assert gate.waiting == 1 and calls.cancelled == ["a3"] and budget.used == 300
    for name in ("a1", "a2", "b"):
        gate.leave(calls.got[name])
    assert calls.holder("a4") is not None
    gate.leave(calls.got["a4"])
    assert budget.used == 0 and gate.holders == 0


def test_connections_holding_one_room_each_take_turns():
    """Three connections hold a room each, their messages never coming; a fourth connection's
    call does not wait for grace (4 s here): the call receiving the longest is cancelled after
    its turn, grace x 3 rooms / 4 connections contending = 3 s."""
    clock = _Clock()
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=4, max_waiting=8, clock=clock)
    calls = _Calls(gate)
    for i in range(3):
        calls.enter(f"a{i}", f"ipv4:127.0.0.1:{1000 + i}")
        calls.holder(f"a{i}")
        clock.now += 0.5
    calls.enter("b", "ipv4:127.0.0.1:2000")
    _until(lambda: gate.waiting == 1)
    clock.now = 100.0 + 3.05  # a0 has held its room 3.05 s
    _until(lambda: calls.cancelled == ["a0"])
    gate.leave(calls.got["a0"])
    assert calls.holder("b") is not None and budget.used == 300


def test_a_connection_keeps_the_room_its_message_arrived_in():
    """A call whose message arrived leaves its room, bytes reserved, to its connection's next
    call: that call has it at once although a call of another connection waits, and what other
    requests hold in the budget cannot take it. Unused, the kept room goes to the waiting call
    after KEEP seconds."""
    clock = _Clock()
    budget = ByteBudget(300)
    gate = ReceiveGate(budget, 100, grace=1, max_waiting=8, clock=clock, keep=1.0)  # 2 rooms
    stalled = gate.enter(lambda: None, "ipv4:127.0.0.1:1000")
    first = gate.enter(lambda: None, "ipv4:127.0.0.1:2000")
    assert gate.hand_over(first, 10) == 10 and gate.kept == 1 and budget.used == 210
    calls = _Calls(gate)
    calls.enter("other", "ipv4:127.0.0.1:3000")
    _until(lambda: gate.waiting == 1)
    budget.release(10)  # (the first request ends)
    budget.reserve(100)  # other requests take what is left
    second = gate.enter(lambda: None, "ipv4:127.0.0.1:2000")
    assert second is not None and second.bytes == 100 and gate.kept == 0
    assert gate.hand_over(second, 10) == 100  # no bytes besides: nothing kept
    assert gate.kept == 0 and budget.used == 300
    budget.release(100 + 100)
    assert calls.holder("other") is not None  # the free room
    gate.leave(calls.got["other"])
    third = gate.enter(lambda: None, "ipv4:127.0.0.1:2000")
    assert gate.hand_over(third, 10) == 10 and gate.kept == 1
    calls.enter("later", "ipv4:127.0.0.1:3000")
    _until(lambda: gate.waiting == 1)
    clock.now += 1.5  # the kept room lapses
    assert calls.holder("later") is not None
    gate.leave(calls.got["later"])
    gate.leave(stalled)
    budget.release(10)
    assert budget.used == 0 and gate.kept == 0 and gate.keeping == 0


def test_the_budget_takes_kept_rooms_back_when_it_refuses_a_reservation():
    """A reservation the budget cannot make otherwise (REST, say, while no gRPC call comes)
    frees kept rooms: lapsed ones first, then the oldest, only as many as it needs."""
    clock = _Clock()
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=8, clock=clock, keep=1.0)
    gate.hand_over(gate.enter(lambda: None, "ipv4:127.0.0.1:1000"), 0)
    clock.now += 0.5
    gate.hand_over(gate.enter(lambda: None, "ipv4:127.0.0.1:2000"), 0)
    clock.now += 0.7  # the first kept room has lapsed, the second not
    assert gate.kept == 2 and budget.used == 200
    assert budget.try_reserve(300)
    assert gate.kept == 1 and gate.keeping == 100 and budget.used == 400
    budget.release(300)
    assert budget.try_reserve(350)  # the kept room still in its time goes too
    assert gate.kept == 0 and gate.keeping == 0 and budget.used == 350
    assert not budget.try_reserve(100)  # nothing left to take back
    budget.release(350)
    assert budget.used == 0


def test_kept_rooms_go_to_a_connection_holding_two_fewer():
    """A connection keeping two rooms and receiving in the third gives a kept room at once to
    the call of a connection holding none."""
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=8)
    rich = [gate.enter(lambda: None, "ipv4:127.0.0.1:1000") for _ in range(3)]
    for holder in rich[:2]:
        gate.hand_over(holder, 0)
    assert gate.kept == 2 and gate.holders == 1
    other = gate.enter(lambda: None, "ipv4:127.0.0.1:2000")
    assert other is not None and gate.kept == 1 and budget.used == 300


def _entered(gate: ReceiveGate, peer: str) -> Holder:
    holder = gate.enter(lambda: None, peer)
    assert holder is not None
    return holder


def _prompt(gate: ReceiveGate, budget: ByteBudget, peer: str) -> None:
    """A call of *peer* whose message arrives at once, so large that no room is kept: its
    connection is prompt and holds nothing."""
    held = gate.hand_over(_entered(gate, peer), budget.limit)
    assert held == gate.slot and gate.kept == 0
    budget.release(held)


LEGIT, KEEPER_A, KEEPER_B, STALLER = (f"ipv4:127.0.0.1:{n}" for n in (1000, 2000, 3000, 4000))


def _kept_and_stalled(clock: _Clock) -> tuple[ByteBudget, ReceiveGate]:
    """Three rooms: two kept by connections whose messages arrive at once, the third held by a
    call whose message never comes."""
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=2, clock=clock, keep=1.0)
    for keeper in (KEEPER_A, KEEPER_B):
        assert gate.hand_over(_entered(gate, keeper), 0) == 0
    assert gate.enter(lambda: None, STALLER) is not None
    assert gate.kept == 2 and gate.holders == 1
    return budget, gate


def test_two_connections_keeping_rooms_do_not_keep_a_prompt_client_waiting():
    """Two connections each sending a tiny message now and then keep both rooms that may be
    kept, and a third holds the last with a call whose message never comes: a call of a
    connection whose messages arrive at once takes a kept room at once (before, it waited for
    the stalled call's turn to end, call after call), and the keepers take turns with it."""
    clock = _Clock()
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=2, clock=clock, keep=1.0)
    _prompt(gate, budget, LEGIT)
    for keeper in (KEEPER_A, KEEPER_B):
        assert gate.hand_over(gate.enter(lambda: None, keeper), 0) == 0
    assert gate.enter(lambda: None, STALLER) is not None
    calls = _Calls(gate)
    calls.enter("legit", LEGIT)
    mine = calls.holder("legit")
    assert mine is not None and gate.kept == 1 and not calls.cancelled
    assert gate.hand_over(mine, 0) == 0 and gate.kept == 2  # it keeps the room in turn
    calls.enter("keeper", KEEPER_A)  # a keeper's next call takes a kept room back
    assert calls.holder("keeper") is not None and gate.kept == 1


def test_a_connection_not_yet_prompt_does_not_take_a_kept_room():
    """A fresh connection (or one whose call held its room without its message) waits for the
    rules of the waiting room instead of taking a room a prompt client keeps: uploads that stop
    halfway would otherwise take it call after call."""
    clock = _Clock()
    _budget, gate = _kept_and_stalled(clock)
    calls = _Calls(gate)
    calls.enter("fresh", LEGIT)
    _until(lambda: gate.waiting == 1)
    time.sleep(0.3)  # (the gate looks again at least every PRESS_EVERY)
    assert gate.waiting == 1 and gate.kept == 2 and "fresh" not in calls.got
    # a call of a prompt connection that then held a room past MIN_HOLD without its message
    slow = ReceiveGate(ByteBudget(400), 100, grace=30, max_waiting=2, clock=clock, keep=1.0)
    _prompt(slow, slow.budget, LEGIT)
    stalled = slow.enter(lambda: None, LEGIT)
    clock.now += 0.5
    slow.leave(stalled)
    for keeper in (KEEPER_A, KEEPER_B):
        slow.hand_over(slow.enter(lambda: None, keeper), 0)
    slow.enter(lambda: None, STALLER)
    later = _Calls(slow)
    later.enter("again", LEGIT)
    _until(lambda: slow.waiting == 1)
    time.sleep(0.3)
    assert slow.waiting == 1 and slow.kept == 2
    clock.now += 31  # (the waiters' deadlines pass: let their threads end)
    for c in (calls, later):
        for t in c.threads.values():
            t.join(5)


def test_a_full_waiting_room_drops_a_waiter_of_a_connection_not_prompt_first():
    """Streams that never send their message, from many connections, fill the waiting room:
    a new call drops one of theirs, not the waiting call of a client whose messages arrive at
    once (before: the first connection with the most waiting, which could be that client)."""
    clock = _Clock()
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=2, clock=clock, keep=1.0)
    _prompt(gate, budget, LEGIT)
    holders = [gate.enter(lambda: None, STALLER) for _ in range(3)]
    assert all(holders) and gate.kept == 0
    calls = _Calls(gate)
    calls.enter("legit", LEGIT)
    _until(lambda: gate.waiting == 1)
    calls.enter("x", "ipv4:127.0.0.1:5000")
    _until(lambda: gate.waiting == 2)
    calls.enter("y", "ipv4:127.0.0.1:6000")  # full: x is dropped, not legit
    assert calls.holder("x") is None
    assert "legit" not in calls.got and gate.waiting == 2
    gate.leave(holders[0])
    # (the room goes to a waiter of the connection holding fewest, newest first: y, then legit)
    gate.leave(holders[1])
    assert calls.holder("legit") is not None and calls.holder("y") is not None


def test_a_prompt_connection_with_many_waiters_is_dropped_before_a_fresh_client():
    """A connection that sent one message at once and then opened many streams that never send
    theirs crowds the waiting room: a new call drops one of its waiters, not the single waiting
    call of a fresh connection (before: only connections that were not prompt lost waiters)."""
    clock = _Clock()
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=6, clock=clock, keep=1.0)  # 3 rooms
    _prompt(gate, budget, STALLER)
    holders = [_entered(gate, STALLER) for _ in range(3)]
    calls = _Calls(gate)
    calls.enter("fresh", LEGIT)
    _until(lambda: gate.waiting == 1)
    for n in range(5):
        calls.enter(f"s{n}", STALLER)
        _until(lambda n=n: gate.waiting == 2 + n)
    calls.enter("other", "ipv4:127.0.0.1:5000")  # full: the staller's oldest waiter goes
    assert calls.holder("s0") is None
    assert "fresh" not in calls.got and gate.waiting == 6
    for holder in holders:
        gate.leave(holder)
    assert calls.holder("fresh") is not None
    clock.now += 61  # (the rest give up: let their threads end)
    for t in calls.threads.values():
        t.join(5)


def test_a_busy_connection_waits_then_receives_one_call_at_a_time():
    """A connection whose request the budget could not take gets no room for BUSY_WAIT seconds
    (its kept rooms go back), then one room at a time for grace seconds; refused again, it
    waits twice as long. Other connections are served meanwhile."""
    clock = _Clock()
    budget = ByteBudget(400)
    gate = ReceiveGate(budget, 100, grace=2, max_waiting=8, clock=clock, busy_wait=0.5)
    busy = "ipv4:127.0.0.1:1000"
    gate.hand_over(gate.enter(lambda: None, busy), 0)
    assert gate.kept == 1
    gate.busy(busy)
    assert gate.kept == 0 and budget.used == 0
    calls = _Calls(gate)
    calls.enter("b1", busy)
    _until(lambda: gate.waiting == 1)
    other = gate.enter(lambda: None, "ipv4:127.0.0.1:2000")  # not held back
    assert other is not None
    clock.now += 0.6
    first = calls.holder("b1")
    assert first is not None
    calls.enter("b2", busy)  # one at a time
    _until(lambda: gate.waiting == 1)
    gate.leave(first)
    assert calls.holder("b2") is not None
    gate.leave(calls.got["b2"])
    gate.busy(busy)  # refused again: twice the wait
    calls.enter("b3", busy)
    _until(lambda: gate.waiting == 1)
    clock.now += 0.6
    # another connection's call takes the free room under the gate's lock: b3 could have had
    # one then, had its wait not doubled
    assert gate.enter(lambda: None, "ipv4:127.0.0.1:3000") is not None
    assert gate.waiting == 1
    clock.now += 0.5
    gate.leave(calls.holder("b3"))
    clock.now += 2.1  # grace over: no limit
    assert gate.enter(lambda: None, busy) is not None and gate.holders == 3


def test_a_call_held_back_one_at_a_time_waits_without_spinning():
    """A busy connection's call waiting for its connection's other call (one at a time) sleeps
    until a room is freed: its wait loop turns a few times a second, not thousands (it once
    turned without sleeping, taking the gate's lock from every other call)."""
    import time

    clock = _Clock()
    gate = ReceiveGate(ByteBudget(400), 100, grace=30, max_waiting=8, clock=clock, busy_wait=0.5)
    busy = "ipv4:127.0.0.1:1000"
    gate.busy(busy)
    clock.now += 0.6  # the wait is over: one at a time
    first = gate.enter(lambda: None, busy)
    turns = [0]

    def active() -> bool:  # asked once per turn of the loop
        turns[0] += 1
        return True

    got = {}
    t = threading.Thread(
        target=lambda: got.setdefault("second", gate.enter(lambda: None, busy, active)), daemon=True
    )
    t.start()
    try:
        _until(lambda: gate.waiting == 1)
        time.sleep(1.0)  # (counts loop turns, times nothing)
        assert turns[0] < 20, f"{turns[0]} turns of the wait loop in a second"
    finally:
        gate.leave(first)  # (its room: the waiter ends)
        t.join(5)
    assert got["second"] is not None


def test_a_waiting_call_whose_client_went_away_leaves_the_waiting_room():
    gate = ReceiveGate(ByteBudget(100), 100, grace=30, max_waiting=2)
    holder = gate.enter(lambda: None, "ipv4:127.0.0.1:1000")
    running = [True]
    got = {}
    t = threading.Thread(
        target=lambda: got.setdefault(
            "waiter", gate.enter(lambda: None, "ipv4:127.0.0.1:2000", lambda: running[0])
        )
    )
    t.start()
    _until(lambda: gate.waiting == 1)
    running[0] = False  # the client cancels its call
    t.join(5)
    assert got["waiter"] is None and gate.waiting == 0
    gate.leave(holder)


def _until(condition, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.005)


# ---------------------------------------------------------------- the decode pool


def test_decode_pool_serves_models_in_turn_and_close_cancels_queued_jobs():
    """One model's queue of large documents no longer delays another model's: a model runs
    one job at a time and the models take turns. Closing cancels what has not started."""
    pool = DecodePool(threads=1)
    gate = threading.Event()
    order = []

    def job(name):
        if name == "a1":
            gate.wait(5)
        order.append(name)
        return name

    first = pool.submit("a", job, "a1")
    _until(lambda: pool.queued == 0)  # a1 runs (and blocks)
    a2, a3 = pool.submit("a", job, "a2"), pool.submit("a", job, "a3")
    b1 = pool.submit("b", job, "b1")
    gate.set()
    assert [f.result(5) for f in (first, b1, a2, a3)] == ["a1", "b1", "a2", "a3"]
    assert order == ["a1", "b1", "a2", "a3"]  # b1 before a's backlog
    gate.clear()
    blocker = pool.submit("a", job, "a1")
    _until(lambda: pool.queued == 0)
    queued = [pool.submit("a", job, "x"), pool.submit("b", job, "y")]
    assert pool.close() == 2 and all(f.cancelled() for f in queued)
    gate.set()
    assert blocker.result(5) == "a1"
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("a", job, "z")


def test_an_output_asked_for_twice_is_refused():
    from .test_model_server import _echo_model

    model = _echo_model()
    assert model.check_outputs(["y", "n"]) == ["y", "n"]
    with pytest.raises(ServeError, match="output 'y' requested more than once") as info:
        model.check_outputs(["y"] * 400)
    assert info.value.kind == ServeError.INVALID


def test_a_crowded_waiting_room_drops_the_crowding_connections_waiters():
    """A client opening many streams that never send their message fills the waiting room with
    its own calls: a call from another connection then drops one of those, not the other way
    round."""
    budget = ByteBudget(100)
    gate = ReceiveGate(budget, 100, grace=30, max_waiting=2)
    first = gate.enter(lambda: None, "ipv4:10.0.0.1:1")
    got = {}

    def enter(name: str, peer: str) -> threading.Thread:
        t = threading.Thread(target=lambda: got.setdefault(name, gate.enter(lambda: None, peer)))
        t.start()
        return t

    crowd = [enter("a1", "ipv4:10.0.0.1:1")]
    _until(lambda: gate.waiting == 1)
    crowd.append(enter("a2", "ipv4:10.0.0.1:1"))
    _until(lambda: gate.waiting == 2)
    other = enter("b", "ipv4:10.0.0.1:2")  # the room is full: a1 is dropped
    crowd[0].join(5)
    assert got["a1"] is None and gate.waiting == 2
    gate.leave(first)  # room: the newest waiter, b
    other.join(5)
    assert got["b"] is not None and "a2" not in got
    gate.leave(got["b"])
    crowd[1].join(5)
    gate.leave(got["a2"])
    assert budget.used == 0 and gate.holders == 0 and gate.waiting == 0


_BLOCKS = """
import re, sys, threading
from pathlib import Path
from enclave_build.model_server.allocator import return_large_blocks

def rss():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\\s+(\\d+) kB", status, re.M).group(1))

took = return_large_blocks() if sys.argv[1] == "set" else None
before = rss()
together = threading.Barrier(4)

def requests():
    for _ in range(6):
        together.wait()
        body = bytearray(15 << 20)
        copy = bytes(body)
        del body
        answer = bytearray(10 << 20)
        together.wait()
        del copy, answer

threads = [threading.Thread(target=requests) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(took, (rss() - before) >> 10)
"""


def test_large_blocks_freed_on_many_threads_go_back_to_the_system():
    """Blocks of a request's size, allocated and freed on four threads: by default glibc keeps
    them in each thread's arena (here about 130 MiB, for good); with the model server's setting
    they are unmapped when freed."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _BLOCKS, "set"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "True"  # glibc took the setting
    assert int(out[1]) < 16, f"{out[1]} MiB kept"


def test_grpc_raw_inputs_are_read_in_place_from_the_message():
    """The tensors of raw_input_contents are views of the message's bytes (no copy per input):
    each span the walk records is the element the parser reads."""
    from enclave_build.model_server.config import ModelConfig
    from enclave_build.model_server.core import LoadedModel
    from enclave_build.model_server.grpc_service import decode_request, raw_inputs
    from tests.ms_backends import NO_SOURCE
    from tests.sleep_backend import SleepBackend

    x = np.arange(50_000, dtype=np.float32)
    r = pb.ModelInferRequest(model_name="m", id="a")
    r.inputs.add(name="x", datatype="FP32", shape=[x.size])
    r.raw_input_contents.append(x.tobytes())
    r.outputs.add(name="y")
    message = r.SerializeToString()

    spans: list[tuple[int, int]] = []
    parse_cost(message, spans)
    req = pb.ModelInferRequest.FromString(message)
    assert [message[s:e] for s, e in spans] == list(req.raw_input_contents)

    mc = ModelConfig("m", "1", "tests.sleep_backend:SleepBackend", "/none")
    model = LoadedModel(mc, [SleepBackend(mc, NO_SOURCE)])
    arrays, outputs = decode_request(model, req, raw_inputs(req, message, spans))
    assert outputs == ["y"] and np.array_equal(arrays["x"], x)
    assert not arrays["x"].flags.writeable
    start = np.frombuffer(message, np.uint8).__array_interface__["data"][0]
    address = arrays["x"].__array_interface__["data"][0]
    assert start <= address < start + len(message)  # inside the message: not a copy

    # spans the parser does not agree with (never from a real walk): its own elements
    assert raw_inputs(req, message, []) is req.raw_input_contents
