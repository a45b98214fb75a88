"""A raw HTTP/2 (h2c, prior knowledge) client for attacking a gRPC port the way no grpc client
would: streams opened with HEADERS and never given their DATA, connections that stay idle.
Frames are built and parsed with hyperframe/hpack (what the h2 package uses)."""

from __future__ import annotations

import socket
import time

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SERVICE = "/inference.GRPCInferenceService/"


class H2Connection:
    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = b""
        self.closed = False
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def open_stream(self, stream: int, method: str = "ModelInfer") -> None:
        """HEADERS of a gRPC call, without END_STREAM: the server waits for the message."""
        frame = HeadersFrame(stream)
        frame.data = self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", SERVICE + method),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        frame.flags.add("END_HEADERS")
        self.sock.sendall(frame.serialize())

    def send_message(self, stream: int, message: bytes) -> None:
        frame = DataFrame(stream)
        frame.data = b"\x00" + len(message).to_bytes(4, "big") + message
        frame.flags.add("END_STREAM")
        self.sock.sendall(frame.serialize())

    def read_frames(self, seconds: float, until=None) -> list:
        """Frames read within *seconds* (HEADERS decoded into ``.headers``), stopping early
        when ``until(frames)`` is true or the connection closes."""
        frames: list = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.closed:
            while len(self.buffer) >= 9:
                size = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + size:
                    break
                frame, _ = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                frame.parse_body(memoryview(self.buffer[9 : 9 + size]))
                self.buffer = self.buffer[9 + size :]
                if isinstance(frame, HeadersFrame):
                    # the decoded block, kept on the frame for the tests to read
                    frame.headers = dict(self.decoder.decode(frame.data))  # type: ignore[attr-defined]
                frames.append(frame)
            if until is not None and until(frames):
                break
            self.sock.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.buffer += chunk
        return frames

    def send_partial(
        self, streams: list[int], announce: int, limit: int, seconds: float
    ) -> dict[int, int]:
        """On each of *streams* (opened), a gRPC message announcing *announce* bytes, sent as
        far as the server's flow-control windows allow but never past *limit* bytes (so never
        complete), for *seconds* or until the server has ended every stream. Returns the bytes
        sent per stream."""
        conn_window = 65535
        windows = {s: 65535 for s in streams}
        sent = {s: 0 for s in streams}
        deadline = time.monotonic() + seconds
        chunk = bytes(16384)
        while time.monotonic() < deadline and not self.closed and windows:
            for frame in self.read_frames(0.005):
                if isinstance(frame, WindowUpdateFrame):
                    if frame.stream_id == 0:
                        conn_window += frame.window_increment
                    elif frame.stream_id in windows:
                        windows[frame.stream_id] += frame.window_increment
                elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
                    if 4 in frame.settings:  # SETTINGS_INITIAL_WINDOW_SIZE
                        for stream in windows:
                            windows[stream] += frame.settings[4] - 65535
                elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                    ack = PingFrame(0, frame.opaque_data)
                    ack.flags.add("ACK")
                    self.sock.sendall(ack.serialize())
                elif (
                    isinstance(frame, (RstStreamFrame, HeadersFrame)) and frame.stream_id in windows
                ):
                    del windows[frame.stream_id]  # refused, cancelled or answered
            for stream in list(windows):
                while not self.closed:
                    first = sent[stream] == 0
                    data = (b"\x00" + announce.to_bytes(4, "big") + chunk[:-5]) if first else chunk
                    if sent[stream] + len(data) > limit or min(windows[stream], conn_window) < len(
                        data
                    ):
                        break
                    frame = DataFrame(stream)
                    frame.data = data
                    try:
                        self.sock.sendall(frame.serialize())
                    except OSError:
                        self.closed = True
                    windows[stream] -= len(data)
                    conn_window -= len(data)
                    sent[stream] += len(data)
        return sent

    def close(self) -> None:
        self.sock.close()


def trailers(frames: list) -> dict[int, dict]:
    """Stream id -> the headers of its last HEADERS frame (a gRPC status is in the trailers)."""
    heads = [f for f in frames if isinstance(f, HeadersFrame)]
    return {f.stream_id: f.headers for f in heads}  # type: ignore[attr-defined]  # set by read


def resets(frames: list) -> dict[int, int]:
    """Stream id -> RST_STREAM error code."""
    return {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)}


def goaway(frames: list) -> GoAwayFrame | None:
    return next((f for f in frames if isinstance(f, GoAwayFrame)), None)
