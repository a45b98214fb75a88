"""builder.image.block_gzip: a standard gzip member, byte-identical whatever the number of
workers, stored blocks for what does not compress, compressed blocks for what does."""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
import zlib

import pytest

from enclave_build.builder.image.block_gzip import (
    BLOCK,
    BlockGzipWriter,
    deflate_block,
    is_incompressible,
)


def _gzip(data: bytes, workers: int, pieces: int = 7) -> bytes:
    out = io.BytesIO()
    writer = BlockGzipWriter(out, workers=workers)
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):  # writes of odd sizes, across block bounds
        writer.write(data[start : start + step])
    writer.close()
    return out.getvalue()


def _text(size: int, seed: int = 1) -> bytes:
    words = [b"tensor", b"weight", b"bias", b"layer", b"conv2d", b"relu", b"0.125", b"\n"]
    rng = random.Random(seed)
    return b" ".join(rng.choice(words) for _ in range(size // 5))[:size]


CASES = {
    "empty": b"",
    "small": b"hello enclave\n" * 3,
    "one block exactly": _text(BLOCK),
    "text over blocks": _text(3 * BLOCK + 12345),
    "random": os.urandom(2 * BLOCK + 777),
    "mixed": _text(BLOCK) + os.urandom(BLOCK) + _text(BLOCK // 2, 2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_and_same_bytes_for_any_number_of_workers(name):
    data = CASES[name]
    one = _gzip(data, workers=1)
    assert gzip.decompress(one) == data
    assert _gzip(data, workers=4, pieces=3) == one  # the output never depends on cores
    # One member (a reader that stops after the first member sees everything).
    member = zlib.decompressobj(31)
    assert member.decompress(one) == data and member.eof and member.unused_data == b""
    assert one[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # mtime 0, no name


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip program")
def test_gunzip_accepts_it(tmp_path):
    data = CASES["mixed"]
    path = tmp_path / "layer.gz"
    path.write_bytes(_gzip(data, workers=2))
    proc = subprocess.run(["gzip", "-dc", str(path)], capture_output=True)
    assert proc.returncode == 0 and proc.stdout == data


def test_incompressible_blocks_are_stored_and_compressible_ones_compressed():
    noise = os.urandom(3 * BLOCK)
    stored = _gzip(noise, workers=2)
    # Stored deflate blocks: 5 bytes of framing per 64 KiB, plus the sync flushes.
    assert len(noise) < len(stored) < len(noise) * 1.001
    text = _text(3 * BLOCK)
    packed = _gzip(text, workers=2)
    assert len(packed) < len(text) * 0.5
    assert len(packed) <= len(gzip.compress(text, 6)) * 1.02  # as good as one stream
    assert is_incompressible(noise[:BLOCK]) and not is_incompressible(text[:BLOCK])


def test_blocks_reach_back_into_the_previous_block():
    """The preset dictionary: a block that repeats the end of the previous one compresses."""
    tail = os.urandom(20_000)
    alone = deflate_block(tail, b"", last=True)
    primed = deflate_block(tail, b"x" * 100 + tail, last=True)
    assert len(primed) < len(alone) // 10
    assert zlib.decompressobj(-15, zdict=b"x" * 100 + tail).decompress(primed) == tail


def test_abort_drops_the_queue_and_writes_no_end():
    out = io.BytesIO()
    writer = BlockGzipWriter(out, workers=2)
    writer.write(os.urandom(5 * BLOCK))
    writer.abort()
    with pytest.raises(ValueError):
        writer.write(b"x")
    with pytest.raises((EOFError, gzip.BadGzipFile, zlib.error)):
        gzip.decompress(out.getvalue())
