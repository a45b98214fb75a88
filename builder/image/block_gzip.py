"""Deterministic gzip, compressed in parallel blocks, with incompressible blocks stored.

What pigz does, in a form whose output depends only on the input (and zlib's version), never
on the number of cores: the uncompressed stream is cut into :data:`BLOCK` byte blocks; each is
compressed on its own as raw deflate at :data:`LEVEL`, primed with the previous block's last
32 KiB as the preset dictionary (so matches reach back across the cut, as in one stream), and
ends in a sync flush, an empty stored block that byte-aligns it, so the blocks concatenate into
one deflate stream. The last block ends the stream. The result is a single gzip member (header
with mtime 0, no file name, OS "unknown"; CRC-32 and size at the end) that every gzip reader
takes: gunzip, Python's gzip, Go's compress/gzip in Docker and containerd.

Blocks go to a thread pool (zlib releases the GIL), so a layer compresses on every core while
the calling thread hashes and writes.

**Stored blocks.** Deflate gains little on model weights (float32 weights: about 7 %) and
nothing on ciphertext (Gramine protected files), yet costs ~30-50 MB/s per core on both. A
block whose samples (:data:`SAMPLES` slices of :data:`SAMPLE` bytes, compressed at the block's
level) do not shrink below :data:`STORE_RATIO` of their size is stored (deflate level 0, memory
speed): a little more to push and pull, far less time to build. The decision is a function of
the block's bytes, so it is as deterministic as the rest.
"""

from __future__ import annotations

import collections
import os
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

#: Uncompressed bytes per block.
BLOCK = 1 << 20
#: zlib level of the blocks that are compressed (gzip's default).
LEVEL = 6
#: Deflate's window: how much of the previous block primes the next one.
WINDOW = 32 << 10
#: A block is stored when its samples compress to at least this fraction of their size.
STORE_RATIO = 0.90
SAMPLE = 4 << 10
SAMPLES = 3

#: The gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown (255).
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def is_incompressible(block: bytes, level: int = LEVEL, dictionary: bytes = b"") -> bool:
    """Whether deflate at *level* would not bring *block* below STORE_RATIO, judged from
    SAMPLES slices spread over it (all of it when it is small). The first slice is primed with
    *dictionary* (the previous block's tail), which only it is close enough to reach."""
    if len(block) <= SAMPLE * SAMPLES:
        samples = [block]
    else:
        step = (len(block) - SAMPLE) // (SAMPLES - 1)
        samples = [block[i * step : i * step + SAMPLE] for i in range(SAMPLES)]
    size = sum(len(s) for s in samples)
    if size == 0:
        return False
    packed = 0
    for index, sample in enumerate(samples):
        if index == 0 and dictionary:
            packer = zlib.compressobj(
                level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, dictionary
            )
            packed += len(packer.compress(sample)) + len(packer.flush())
        else:
            packed += len(zlib.compress(sample, level))
    return packed >= STORE_RATIO * size


def deflate_block(block: bytes, dictionary: bytes, last: bool, level: int = LEVEL) -> bytes:
    """*block* as raw deflate, ending in a sync flush (or, *last*, the end of the stream)."""
    chosen = 0 if block and is_incompressible(block, level, dictionary) else level
    if dictionary:
        packer = zlib.compressobj(
            chosen, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, dictionary
        )
    else:
        packer = zlib.compressobj(chosen, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    return packer.compress(block) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class BlockGzipWriter:
    """A writable that gzips what it is given into *target* (see the module doc).

    ``close()`` writes the end of the member and must be called; ``abort()`` stops the pool
    (blocks being compressed finish, queued ones are dropped) without writing the end. Both
    leave *target* open."""

    def __init__(self, target: BinaryIO, workers: int | None = None, level: int = LEVEL):
        self.target = target
        self.level = level
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="block-gzip")
        self._pending: collections.deque[Future[bytes]] = collections.deque()
        self._buffer = bytearray()
        self._previous = b""
        self._crc = 0
        self._size = 0
        self._closed = False
        target.write(HEADER)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed BlockGzipWriter")
        if not self._buffer and len(data) == BLOCK and isinstance(data, bytes):
            self._submit(data, last=False)  # a whole block as it comes: no copy
            return BLOCK
        self._buffer += data
        while len(self._buffer) >= BLOCK:
            block = bytes(self._buffer[:BLOCK])
            del self._buffer[:BLOCK]
            self._submit(block, last=False)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush before close (a partial block waits for more input)."""

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._submit(bytes(self._buffer), last=True)
            self._buffer.clear()
            while self._pending:
                self.target.write(self._pending.popleft().result())
            self.target.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._pool.shutdown(wait=True)

    def abort(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def _submit(self, block: bytes, last: bool) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        self._pending.append(
            self._pool.submit(deflate_block, block, self._previous, last, self.level)
        )
        self._previous = (
            block[-WINDOW:] if len(block) >= WINDOW else (self._previous + block)[-WINDOW:]
        )
        # Keep every worker busy, and at most two blocks per worker in memory.
        while self._pending and (len(self._pending) > 2 * self.workers or self._pending[0].done()):
            self.target.write(self._pending.popleft().result())

    def __enter__(self) -> BlockGzipWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


__all__ = ["BlockGzipWriter", "deflate_block", "is_incompressible", "BLOCK", "LEVEL", "STORE_RATIO"]
