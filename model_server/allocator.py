"""Large blocks go back to the system when they are freed.

glibc's malloc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes with a mapping of
its own, unmapped when it is freed. By default it then raises the threshold to the size of that
block (up to 32 MiB), so the next blocks of a request's size are carved from the allocating
thread's arena instead and stay there once freed. The server allocates request-sized blocks
(bodies, messages, tensors, answers) on many threads (gRPC handlers, decode threads, the event
loop), and each thread's arena keeps its own: after a few large requests the process holds
several times what it ever used at once, memory no other thread can reuse (in an enclave, heap
that is gone for the rest of the run). Setting the threshold fixes it (and turns the adjustment
off): blocks of :data:`LARGE` bytes or more are always mapped, and unmapped when freed.

Where the C library has no ``mallopt`` or does not take the setting (e.g. musl, Occlum's libc),
nothing changes.
"""

from __future__ import annotations

import ctypes

#: mallopt parameter numbers (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
#: Blocks this large or larger are mapped on their own and given back when freed.
LARGE = 1 << 20


def return_large_blocks(threshold: int = LARGE) -> bool:
    """Have the C allocator map blocks of *threshold* bytes or more and unmap them when freed.
    True when it took the setting (glibc); False where it has no such setting."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
