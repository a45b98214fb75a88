"""Tensor decoding against shapes and data a client wrote: no allocation is sized by a shape
alone (checked with tracemalloc, which numpy reports its buffers to), BYTES data holds only
strings, impossible shapes are client errors, and JSON never carries NaN or infinities."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from enclave_build.model_server.datatypes import (
    MAX_RANK,
    TensorError,
    TensorTooLarge,
    from_list,
    from_raw,
    to_list,
)
from tests.ms_backends import NO_SOURCE

HUGE = 100_000_000  # elements: 800 MB of object pointers if allocated from the shape


def _peak_bytes(fn) -> tuple[int, TensorError]:
    """Peak bytes traced while *fn* runs (it must raise TensorError), and that error."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(TensorError) as info:
            fn()
        return tracemalloc.get_traced_memory()[1], info.value
    finally:
        tracemalloc.stop()


def test_bytes_raw_shape_is_checked_against_the_data_before_allocating():
    peak, err = _peak_bytes(lambda: from_raw(b"\x01\0\0\0a", "BYTES", [HUGE]))
    assert "needs at least 400000000 bytes" in str(err) and "got 5" in str(err)
    assert peak < 1 << 20, peak


def test_bytes_list_shape_is_checked_against_the_elements_before_allocating():
    peak, err = _peak_bytes(lambda: from_list(["a", "b"], "BYTES", [HUGE]))
    assert "needs 100000000 elements, got 2" in str(err)
    assert peak < 1 << 20, peak


@pytest.mark.parametrize("item", [10_000_000, 1.5, True, None, {"a": 1}])
def test_bytes_list_elements_must_be_strings(item):
    """An integer used to become bytes(N): a 96-byte request handed the backend 2 GB of zeros."""
    peak, err = _peak_bytes(lambda: from_list(["ok", item], "BYTES", [2]))
    assert "must be strings" in str(err), err
    assert peak < 1 << 20, peak


def test_bytes_list_nested_bytes_and_bad_unicode():
    got = from_list([["a", "bc"], [b"\xff", ""]], "BYTES", [2, 2])
    assert got.shape == (2, 2) and got.tolist() == [[b"a", b"bc"], [b"\xff", b""]]
    with pytest.raises(TensorError, match="not valid Unicode"):
        from_list(["\ud800"], "BYTES", [1])
    deep: list = ["x"]
    for _ in range(MAX_RANK + 1):
        deep = [deep]
    with pytest.raises(TensorError, match="nested more than"):
        from_list(deep, "BYTES", [1])
    with pytest.raises(TensorError, match="got more"):
        from_list(["a"] * 5, "BYTES", [2])
    with pytest.raises(TensorError, match="list of strings"):
        from_list("abc", "BYTES", [3])


def test_numeric_list_shape_is_checked_against_the_elements():
    peak, err = _peak_bytes(lambda: from_list([1, 2], "FP32", [HUGE]))
    assert "needs 100000000 elements, got 2" in str(err)
    assert peak < 1 << 20, peak


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "UINT8"])
@pytest.mark.parametrize(
    "shape, message",
    [
        ([0, 1 << 63], "too large"),  # no elements, but no array numpy can describe
        ([1 << 40, 1 << 40, 0], "too large"),
        ([1] * 100, "dimensions"),  # numpy allows at most 64
        ([2, -1], "negative"),
    ],
)
def test_impossible_shapes_are_client_errors(datatype, shape, message):
    with pytest.raises(TensorError, match=message):
        from_raw(b"", datatype, shape)
    with pytest.raises(TensorError, match=message):
        from_list([], datatype, shape)


def test_max_bytes_refuses_a_shape_no_request_could_carry():
    with pytest.raises(TensorTooLarge, match=r"limits.max_request_bytes"):
        from_raw(b"", "FP32", [1 << 20], max_bytes=1 << 20)  # 4 MiB of FP32
    with pytest.raises(TensorTooLarge, match="needs at least 4000"):
        from_raw(b"", "BYTES", [1000], max_bytes=1000)  # 4 bytes per element
    with pytest.raises(TensorTooLarge):
        from_list([1], "INT64", [1000], max_bytes=1000)
    assert from_raw(b"\0" * 16, "FP32", [4], max_bytes=16).shape == (4,)
    assert isinstance(TensorTooLarge("x"), TensorError)  # callers catching 400 still do


def test_raw_bytes_elements_round_trip():
    raw = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ab", b"", b"xyz"))
    assert from_raw(raw, "BYTES", [3]).tolist() == [b"ab", b"", b"xyz"]
    assert from_raw(b"", "BYTES", [0]).shape == (0,)
    with pytest.raises(TensorError, match="longer than its shape"):
        from_raw(raw + b"\0" * 4, "BYTES", [3])


def test_grpc_typed_bytes_contents_get_the_same_checks():
    from enclave_build.model_server import protocol as pb
    from enclave_build.model_server.config import ModelConfig
    from enclave_build.model_server.core import LoadedModel, ServeError
    from enclave_build.model_server.grpc_service import decode_request

    from .ms_backends import BytesLength

    mc = ModelConfig("len", "1", "tests.ms_backends:BytesLength", "/none")
    model = LoadedModel(mc, [BytesLength(mc, NO_SOURCE)])
    req = pb.ModelInferRequest(model_name="len")
    t = req.inputs.add(name="s", datatype="BYTES", shape=[HUGE])
    t.contents.bytes_contents.extend([b"a", b"b"])
    tracemalloc.start()
    try:
        with pytest.raises(ServeError, match="needs 100000000 elements") as info:
            decode_request(model, req)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.kind == ServeError.INVALID and peak < 1 << 20, peak


def test_non_finite_floats_are_json_strings_and_read_back():
    arr = np.array([1.5, np.nan, np.inf, -np.inf], np.float32)
    data = to_list(arr)
    assert data[0] == 1.5 and data[1:] == ["NaN", "Infinity", "-Infinity"]
    json.dumps(data, allow_nan=False)  # strictly valid JSON
    back = from_list(data, "FP32", [4])
    assert back[0] == 1.5 and np.isnan(back[1]) and back[2] == np.inf and back[3] == -np.inf
    # what tritonclient.http's as_numpy does with a JSON output
    assert np.isnan(np.array(data, dtype=np.float32)[1])
    assert to_list(np.array([1.0, 2.0])) == [1.0, 2.0]  # finite: plain numbers
