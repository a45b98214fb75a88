"""Helpers of the `enclave-build dev` tests: free ports, a tiny model made here, the spec's
ports, and what is left running or listening afterwards."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import numpy as np

from enclave_build.builder.dev.requests import output_digest


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def make_ir_model(directory: Path) -> Path:
    """x f32[1,4] -> y = relu(x + 1): an OpenVINO IR made with OpenVINO's own API."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 4], np.float32, name="x")
    y = ops.relu(ops.add(x, ops.constant(np.ones((1, 4), np.float32))))
    y.output(0).get_tensor().set_names({"y"})
    path = directory / "tiny.xml"
    ov.save_model(ov.Model([y], [x], "tiny"), str(path))
    return path


def set_ports(spec: Path, section: str, grpc: int, rest: int) -> None:
    text = spec.read_text()
    head, sep, tail = text.partition(f"[{section}]")
    tail = re.sub(r"(?m)^grpc_port = \d+", f"grpc_port = {grpc}", tail, count=1)
    tail = re.sub(r"(?m)^rest_port = \d+", f"rest_port = {rest}", tail, count=1)
    spec.write_text(head + sep + tail)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention *text* (a test's own directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ")[1][0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def expected_digest() -> str:
    return output_digest([("y", "FP32", np.ones((1, 4), np.float32))])


def kill_user_processes(uid: int) -> None:
    """SIGKILL every process of *uid* (a user a test created), found by id in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
