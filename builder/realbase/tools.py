"""Running the tools that make a base: their output shown line by line as it comes, a line of
its own when a tool has been silent for a while, the tool stopped when we are interrupted; and
removing a half-made root filesystem safely (nothing mounted below it first)."""

from __future__ import annotations

import ctypes
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import EnclaveBuildError

Log = Callable[[str], None]
_TAIL = 25
_MNT_DETACH = 2


class ToolError(EnclaveBuildError):
    """A tool making the base failed (the message has the end of its output)."""


def run(
    args: list[str],
    what: str,
    log: Log,
    heartbeat: float = 10.0,
    env: dict[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    show_output: bool = True,
) -> None:
    """Run *args*; each output line goes to *log* (indented; only kept for the error message
    when not *show_output*), and after *heartbeat* seconds without a line shown, a line says
    the step still runs. A non-zero exit raises ToolError naming
    *what* with the last lines; an interrupt stops the tool before it propagates."""
    try:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except OSError as exc:
        raise ToolError(f"{what}: cannot run {args[0]}: {exc.strerror or exc}") from None
    lines: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    reader = threading.Thread(target=pump, name=f"output of {args[0]}", daemon=True)
    reader.start()
    tail: list[str] = []
    start = last = clock()
    try:
        while True:
            try:
                raw = lines.get(timeout=heartbeat)
            except queue.Empty:
                raw = b""
            if raw is None:
                break
            if raw:
                text = "".join(
                    c if c.isprintable() else "?"
                    for c in raw.decode("utf-8", "replace").rstrip("\r\n")
                )
                tail = (tail + [text])[-_TAIL:]
                if show_output:
                    log(f"  | {text}")
                    last = clock()
            now = clock()
            if now - last >= heartbeat:
                log(f"  ({what}: still running, {now - start:.0f} s)")
                last = now
        code = proc.wait()
    except BaseException:
        stop(proc)
        raise
    if code != 0:
        raise ToolError(f"{what} failed ({args[0]} exited with {code}):\n" + "\n".join(tail))


def stop(proc: subprocess.Popen) -> None:
    """Terminate *proc* (then kill it after 20 s) and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below *path* (from /proc/self/mountinfo), deepest first."""
    top = os.path.realpath(path)
    found = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")  # octal escapes: \040 ...
        if point == top or point.startswith(top.rstrip("/") + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a half-made root filesystem: detach whatever a tool left mounted below it
    first (never descend into a host /proc, /sys or /dev); refuse if something stays."""
    if not os.path.lexists(path):
        return
    remaining = mounts_below(path)
    if remaining:
        libc = ctypes.CDLL(None, use_errno=True)
        for point in remaining:
            libc.umount2(os.fsencode(point), _MNT_DETACH)
        remaining = mounts_below(path)
    if remaining:
        raise EnclaveBuildError(
            f"{path}: left in place, because {remaining[0]} is still "
            "mounted below it; unmount it and remove the directory"
        )
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["run", "stop", "ToolError", "mounts_below", "remove_tree"]
