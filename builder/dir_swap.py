"""Replacing a build's output directory so that a crash at any point leaves the old or the
new one: an atomic exchange where the filesystem can, else two renames with the old output
parked beside it, put back by the next build."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path


def replace_dir(new: Path, out: Path, exchange: Callable[[Path, Path], bool] | None = None) -> None:
    """Put the directory *new* at *out*, replacing what is there; at every instant *out* is the
    old or the new output (an exchange), or, where the filesystem cannot exchange, the old one
    is parked as ``.NAME.old-PID`` for the moment between two renames and
    :func:`recover_output` puts it back if the build dies there. *exchange* swaps two paths
    in one step or says it cannot (default :func:`exchange_paths`)."""
    exchange = exchange_paths if exchange is None else exchange
    if not os.path.lexists(out):
        os.rename(new, out)
        return
    if exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # now the old output (a leftover: tidied later)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap the paths *a* and *b* (Linux >= 3.15 renameat2 RENAME_EXCHANGE).
    False where the kernel, libc or filesystem cannot; other failures raise OSError."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    args = (
        ctypes.c_int(_AT_FDCWD),
        os.fsencode(a),
        ctypes.c_int(_AT_FDCWD),
        os.fsencode(b),
        ctypes.c_uint(_RENAME_EXCHANGE),
    )
    if hasattr(libc, "renameat2"):  # glibc >= 2.28
        result = libc.renameat2(*args)
    elif platform.machine() in _SYS_RENAMEAT2 and hasattr(libc, "syscall"):
        result = libc.syscall(ctypes.c_long(_SYS_RENAMEAT2[platform.machine()]), *args)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def recover_output(out: Path) -> None:
    """Undo what a build killed while replacing *out* left: an output parked as
    ``.NAME.old-PID`` (its build is gone) goes back to *out* if *out* is missing, else it is
    removed. Parked outputs of builds still running are left alone."""
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        try:
            pid = int(old.name.rsplit(".old-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and _alive(pid):
            continue
        if not os.path.lexists(out):
            os.rename(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
