"""Score one batch: decode its segment, style its frames, encode the styled segment.

Three stages run at once, linked by small bounded queues: a decoder thread, the model on the
calling thread, and an encoder thread. Frames live only in memory, a few at a time, whatever the
segment's length. The inference engines and FFmpeg release the GIL while they work, so the stages overlap.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from shared.atomic import atomic_path
from shared.config import Settings
from shared.errors import PipelineError
from shared.split import muxer_options

_DONE = object()
# Chroma is resampled going to RGB and back; Lanczos keeps about 4 dB more of it than swscale's default.
RESAMPLING = "LANCZOS"


@dataclass(frozen=True)
class EncoderSettings:
    codec: str = "libx264"
    crf: int = Settings.crf
    preset: str = Settings.preset


@dataclass(frozen=True)
class ScoreResult:
    frames: int
    seconds: float
    infer_seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def _decode(path: Path, start: Fraction, end: Fraction | None, out: queue.Queue, stop: threading.Event) -> None:
    """Put (pts, rotation, rgb frame) for frames shown at start <= t < end (seconds), in display order."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                shown_at = frame.pts * stream.time_base
                if stop.is_set() or (end is not None and shown_at >= end):
                    break
                if shown_at < start:
                    continue
                out.put((frame.pts, frame.rotation, frame.to_ndarray(format="rgb24", interpolation=RESAMPLING)))
        out.put(_DONE)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        out.put(exc)


def _items(source: queue.Queue) -> Iterator:
    while (item := source.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise item
        yield item


class _Encoder(threading.Thread):
    """Encodes styled frames with their original timestamps into an MP4 segment."""

    def __init__(self, tmp: Path, timing: tuple, settings: EncoderSettings, on_frames: Callable[[int], None] | None) -> None:
        super().__init__(daemon=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=4)
        self.written = 0
        self.error: BaseException | None = None
        self._tmp, self._settings, self._on_frames = tmp, settings, on_frames
        self._time_base, self._rate = timing

    def run(self) -> None:
        try:
            self._encode()
        except BaseException as exc:
            self.error = exc
            while self.inbox.get() is not _DONE:
                pass

    def _encode(self) -> None:
        container = stream = None
        try:
            for pts_list, rotation, frames in _items(self.inbox):
                if container is None:
                    container, stream = self._open(frames.shape[2], frames.shape[1], rotation)
                for pts, rgb in zip(pts_list, frames):
                    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", interpolation=RESAMPLING)
                    frame.pts, frame.time_base = pts, self._time_base
                    container.mux(stream.encode(frame))
                self.written += len(pts_list)
                if self._on_frames:
                    self._on_frames(len(pts_list))
            if container is not None:
                container.mux(stream.encode(None))
        finally:
            if container is not None:
                container.close()

    def _open(self, width: int, height: int, rotation: int):
        container = av.open(str(self._tmp), "w", options=muxer_options(self._tmp, Fraction(self._time_base)))
        stream = container.add_stream(self._settings.codec, rate=self._rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = self._time_base
        stream.codec_context.time_base = self._time_base
        # No B-frames: decode order equals display order, so independently encoded segments
        # join with strictly increasing decode timestamps whatever the frame timing.
        stream.codec_context.max_b_frames = 0
        stream.options = {"crf": str(self._settings.crf), "preset": self._settings.preset}
        if rotation:
            stream.set_display_rotation(rotation)
        return container, stream


def score_segment(
    src: Path,
    dst: Path,
    styler: Callable[[np.ndarray], np.ndarray],
    *,
    start: Fraction,
    end: Fraction | None,
    expected_frames: int,
    batch_size: int = 4,
    encoder: EncoderSettings = EncoderSettings(),
    on_frames: Callable[[int], None] | None = None,
) -> ScoreResult:
    """Style the frames of ``src`` shown at ``start <= t < end`` (seconds) into ``dst`` (atomically)."""
    started = time.perf_counter()
    infer_seconds = 0.0
    decoded: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    stop = threading.Event()
    with av.open(str(src)) as source:
        stream = source.streams.video[0]
        timing = (stream.time_base, stream.guessed_rate or stream.average_rate or 25)
    with atomic_path(dst) as tmp:
        writer = _Encoder(tmp, timing, encoder, on_frames)
        reader = threading.Thread(target=_decode, args=(src, start, end, decoded, stop), daemon=True)
        reader.start()
        writer.start()
        try:
            pending: list = []
            for item in _items(decoded):
                pending.append(item)
                if len(pending) == batch_size:
                    infer_seconds += _style_and_send(pending, styler, writer)
                    pending = []
                if writer.error:
                    break
            if pending and not writer.error:
                infer_seconds += _style_and_send(pending, styler, writer)
        finally:
            stop.set()
            writer.inbox.put(_DONE)
            writer.join()
            _drain(decoded)
            reader.join()
        if writer.error:
            raise writer.error
        if writer.written != expected_frames:
            raise PipelineError(f"{src.name}: found {writer.written} frames in its range, expected {expected_frames}")
    return ScoreResult(frames=writer.written, seconds=time.perf_counter() - started, infer_seconds=infer_seconds)


def _style_and_send(items: list, styler: Callable[[np.ndarray], np.ndarray], writer: _Encoder) -> float:
    began = time.perf_counter()
    styled = styler(np.stack([rgb for _, _, rgb in items]))
    elapsed = time.perf_counter() - began
    writer.inbox.put(([pts for pts, _, _ in items], items[0][1], styled))
    return elapsed


def _drain(source: queue.Queue) -> None:
    """Unblock a decoder waiting on a full queue after the consumer stopped early."""
    while True:
        try:
            source.get_nowait()
        except queue.Empty:
            return
