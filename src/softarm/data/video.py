"""Camera video with PyAV: frames decoded by timestamp, front to back, and AV1 written as LeRobot writes it.

A LeRobot v3.0 mp4 holds many episodes one after another; `VideoReader` keeps its decoder where the last episode
ended, so reading the episodes of a file in order decodes it once, without a seek per frame. Writing encodes each
episode on its own and appends its packets to the file (`VideoConcatenation`), so every episode starts on a key frame
and a file's size is known before the next episode decides whether it still fits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import contextlib
from fractions import Fraction
import os
from pathlib import Path

import av
import numpy as np

TOLERANCE_S = 1e-4  # how far a decoded frame's time may be from the requested one (LeRobot's default)
# LeRobot's default encoder: SVT-AV1, yuv420p, a key frame every 2 frames, crf 30, preset 12, fast-decode 0
AV1_OPTIONS = {"g": "2", "crf": "30", "preset": "12", "svtav1-params": "fast-decode=0"}


class VideoError(ValueError):
    pass


class VideoReader:
    """Frames of one video file by presentation time, decoded sequentially."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise VideoError(f"{path} is missing")
        self.path = path
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError) as e:
            raise VideoError(f"{path} is not a readable video ({e})") from None
        self.stream.thread_type = "AUTO"
        self._frames = self.container.decode(self.stream)
        self._last: tuple[float, np.ndarray] | None = None  # the latest decoded frame not yet handed out

    def close(self) -> None:
        self.container.close()

    def _next(self) -> tuple[float, np.ndarray] | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: corrupt video data ({e})") from None
        return float(frame.pts * self.stream.time_base), frame.to_ndarray(format="rgb24")

    def _restart(self, at: float) -> None:
        """Seek to a key frame before `at` (only when reading backwards or far ahead); a second early, as codecs
        with B-frames index key frames by decoding time."""
        self.container.seek(max(0, int((at - 1.0) / self.stream.time_base)), stream=self.stream, backward=True)
        self._frames = self.container.decode(self.stream)
        self._last = None

    def read(self, timestamps: Sequence[float]) -> np.ndarray:
        """uint8 [len(timestamps), H, W, 3]: for each time (increasing), the frame shown at it, within TOLERANCE_S."""
        out = []
        for i, t in enumerate(timestamps):
            if i == 0 and (self._last is None or self._last[0] > t + TOLERANCE_S or t - self._last[0] > 2.0):
                self._restart(t)
            current = self._last or self._next()
            while current is not None and current[0] < t - TOLERANCE_S:
                current = self._next()
            if current is None:
                raise VideoError(f"{self.path} ends before {t:.4f} s")
            if current[0] > t + TOLERANCE_S:
                raise VideoError(f"{self.path} has no frame at {t:.4f} s (next at {current[0]:.4f} s)")
            out.append(current[1])
            self._last = current
        return np.stack(out) if out else np.zeros((0, self.stream.height, self.stream.width, 3), np.uint8)


@contextlib.contextmanager
def _same_scheduling() -> Iterator[None]:
    """Run as root, SVT-AV1 switches the calling thread to real-time scheduling (SCHED_FIFO, priority 99) and leaves
    it so: every process started afterwards inherits it, and one that then busy-waits (OpenBLAS waiting for work)
    starves the rest of the machine for minutes. Give the thread back the policy it had."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def encode(path: Path, frames: np.ndarray, fps: int, codec: str = "libsvtav1") -> Path:
    """Encode uint8 [T, H, W, 3] frames into an mp4 at `fps`, with LeRobot's settings for AV1."""
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise
    options = AV1_OPTIONS if codec == "libsvtav1" else {"g": "2", "crf": "23", "x265-params": "log-level=error"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with _same_scheduling(), av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.pix_fmt, stream.height, stream.width = "yuv420p", frames.shape[1], frames.shape[2]
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


class VideoConcatenation:
    """One mp4 made of episode videos one after another, their packets copied (no re-encoding), as LeRobot v3.0
    concatenates episodes; `duration` is where the next episode starts, `bytes` the size so far."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.duration, self.bytes = path, Fraction(0), 0
        self.container = av.open(str(path), "w")
        self.stream = None

    def append(self, episode: Path, frames: int, fps: int) -> tuple[float, float]:
        """Copy `episode` (an mp4 of `frames` frames at `fps`) to the end; returns its (from, to) timestamps."""
        start = self.duration
        with av.open(str(episode)) as source:
            stream = source.streams.video[0]
            if self.stream is None:
                self.stream = self.container.add_stream_from_template(stream, opaque=True)
            offset = round(start / stream.time_base)
            for packet in source.demux(stream):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                packet.stream = self.stream
                self.bytes += packet.size
                self.container.mux(packet)
        self.duration = start + Fraction(frames, fps)
        return float(start), float(self.duration)

    def close(self) -> None:
        self.container.close()
