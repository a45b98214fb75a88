"""Whether a base, or an image built on one, is a stand-in: the marker its writer left
(:mod:`enclave_build.contract.standin_base`), read here so that the build, `run` and `doctor`
can say so plainly without importing the stand-in's code."""

from __future__ import annotations

from enclave_build.contract.names import STANDIN_MARKER
from enclave_build.contract.standin_base import StandInBase, StandInBaseError

from .rootfs import RootFS

#: A marker is a few lines of JSON; a larger file is not one (and is not read whole).
MAX_MARKER = 4096


def standin_base(rootfs: RootFS) -> StandInBase | None:
    """The stand-in marker of *rootfs*, or None for a base that carries none (a real one).
    A marker that does not parse is a StandInBaseError naming it."""
    stat = rootfs.stat(STANDIN_MARKER)
    if stat is None:
        return None
    source = f"{rootfs}:{STANDIN_MARKER}"
    if stat.st_size > MAX_MARKER:
        raise StandInBaseError(f"{source}: {stat.st_size} bytes, not a stand-in marker")
    text = rootfs.read_bytes(STANDIN_MARKER).decode("utf-8", "replace")
    return StandInBase.parse(text, source)


__all__ = ["standin_base", "MAX_MARKER"]
