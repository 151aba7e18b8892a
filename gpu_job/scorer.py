"""Score one batch: decode its segment, style its frames, encode the styled segment.

Three stages run at once, linked by small bounded queues: a decoder thread, the model on the
calling thread (every stream of its engine busy), and an encoder thread. Frames live only in
memory, a few at a time, whatever the segment's length. The inference engines and FFmpeg release
the GIL while they work, so the stages overlap.

Colours follow the source (its matrix, range, primaries and transfer, see gpu_job/colour.py).
A packet FFmpeg cannot decode is skipped, as the ffmpeg command line skips it: its frame is left
out of the styled segment, and only such frames may be missing from it.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from gpu_job.colour import from_rgb, tag_encoder, to_rgb
from gpu_job.styler import FrameStyler, paired
from shared.atomic import atomic_path
from shared.colour import ColourPlan, plan_colour
from shared.config import Settings
from shared.decode import tolerant_frames
from shared.errors import InvalidInputError
from shared.preview import tile, tile_size
from shared.probe import frame_times, stream_colour
from shared.split import muxer_options

_DONE = object()
SEGMENT_MUXER = "mp4"


@dataclass(frozen=True)
class EncoderSettings:
    codec: str = "libx264"
    crf: int = Settings.crf
    preset: str = Settings.preset
    keep_10bit: bool = False
    """Encode 10-bit output when the source has more than 8 bits (else 8-bit)."""


@dataclass(frozen=True)
class ScoreResult:
    frames: int
    skipped: int = 0
    """Frames of the batch left out because FFmpeg could not decode them."""
    input_tiles: dict[Fraction, np.ndarray] = field(default_factory=dict)
    """Preview tiles (:func:`shared.preview.tile`) of the input frames asked for, by the time they are shown."""


@dataclass
class _Decoded:
    """What the decoder saw: the times (seconds) of the frames it passed on, the decode errors it skipped, and
    the preview tiles of the frames shown at ``tile_times``."""

    shown: set[Fraction]
    errors: list[str]
    tile_times: frozenset[Fraction] = frozenset()
    tiles: dict[Fraction, np.ndarray] = field(default_factory=dict)


def _decode(path: Path, start: Fraction, end: Fraction | None, plan: ColourPlan, out: queue.Queue, stop: threading.Event,
            decoded: _Decoded) -> None:
    """Put (pts, rotation, rgb frame) for frames shown at start <= t < end (seconds), in display order; record them in ``decoded``."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in tolerant_frames(container, stream, decoded.errors):
                if frame.pts is None:
                    raise InvalidInputError(f"{path.name}: FFmpeg decodes frames without timestamps from it")
                shown_at = frame.pts * stream.time_base
                if stop.is_set() or (end is not None and shown_at >= end):
                    break
                if shown_at < start:
                    continue
                out.put((frame.pts, frame.rotation, to_rgb(frame, plan)))
                decoded.shown.add(shown_at)
                if shown_at in decoded.tile_times:  # sized as the styled frame, whose sides are rounded up to even
                    decoded.tiles[shown_at] = tile(frame, tile_size(frame.width + frame.width % 2, frame.height + frame.height % 2))
        out.put(_DONE)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        out.put(exc)


def _items(source: queue.Queue) -> Iterator:
    while (item := source.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise item
        yield item


class _Encoder(threading.Thread):
    """Encodes styled frames with their original timestamps into an MP4 segment; a frame shown at one of
    ``key_times`` (seconds) starts a GOP."""

    def __init__(self, tmp: Path, timing: tuple, settings: EncoderSettings, plan: ColourPlan, on_frames: Callable[[int], None] | None,
                 key_times: frozenset[Fraction] = frozenset()) -> None:
        super().__init__(daemon=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=4)
        self.written = 0
        self.error: BaseException | None = None
        self._tmp, self._settings, self._plan, self._on_frames = tmp, settings, plan, on_frames
        self._time_base, self._rate = timing
        self._key_times = key_times

    def run(self) -> None:
        try:
            self._encode()
        except BaseException as exc:
            self.error = exc
            while self.inbox.get() is not _DONE:
                pass

    def _encode(self) -> None:
        container = stream = None
        reformatter = VideoReformatter()
        try:
            for pts_list, rotation, frames in _items(self.inbox):
                if container is None:
                    container, stream = self._open(frames.shape[2], frames.shape[1], rotation)
                for pts, rgb in zip(pts_list, frames):
                    frame = from_rgb(rgb, self._plan, reformatter)
                    frame.pts, frame.time_base = pts, self._time_base
                    if pts * self._time_base in self._key_times:
                        frame.pict_type = PictureType.I
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
        container = av.open(str(self._tmp), "w", format=SEGMENT_MUXER, options=muxer_options(SEGMENT_MUXER, Fraction(self._time_base)))
        stream = container.add_stream(self._settings.codec, rate=self._rate)
        stream.width, stream.height, stream.pix_fmt = width, height, self._plan.output_pix_fmt
        stream.time_base = self._time_base
        stream.codec_context.time_base = self._time_base
        tag_encoder(stream.codec_context, self._plan.output)
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
    styler: FrameStyler,
    *,
    start: Fraction,
    end: Fraction | None,
    expected_frames: int,
    batch_size: int = 4,
    encoder: EncoderSettings = EncoderSettings(),
    on_frames: Callable[[int], None] | None = None,
    preview_frames: Collection[int] = (),
) -> ScoreResult:
    """Style the frames of ``src`` shown at ``start <= t < end`` (seconds) into ``dst`` (atomically).

    ``preview_frames``: offsets among those frames that start a GOP of the styled segment, and whose
    input tiles the result holds.
    """
    decoded: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    stop = threading.Event()
    with av.open(str(src)) as source:
        stream = source.streams.video[0]
        timing = (stream.time_base, stream.guessed_rate or stream.average_rate or 25)
        plan = plan_colour(stream_colour(stream.codec_context), stream.codec_context.height, encoder.keep_10bit)
    planned = frame_times(src, start, end)
    if len(planned) != expected_frames:
        raise InvalidInputError(f"{src.name}: holds {len(planned)} frames in its range, the plan says {expected_frames}")
    with atomic_path(dst) as tmp:
        sampled = frozenset(planned[offset] for offset in preview_frames)
        writer = _Encoder(tmp, timing, encoder, plan, on_frames, sampled)
        seen = _Decoded(shown=set(), errors=[], tile_times=sampled)
        reader = threading.Thread(target=_decode, args=(src, start, end, plan, decoded, stop, seen), daemon=True)
        reader.start()
        writer.start()
        try:
            _style(_items(decoded), styler, batch_size, writer)
        finally:
            stop.set()
            writer.inbox.put(_DONE)
            writer.join()
            _drain(decoded)
            reader.join()
        if writer.error:
            raise writer.error
        skipped = _check_decoded(src, seen, planned, writer.written)
    return ScoreResult(frames=writer.written, skipped=skipped, input_tiles=seen.tiles)


def _style(frames: Iterator, styler: FrameStyler, batch_size: int, writer: _Encoder) -> None:
    """Style decoded (pts, rotation, rgb) frames in batches of ``batch_size`` and hand them to ``writer``, in order."""
    def batches() -> Iterator[tuple[list, int, np.ndarray]]:
        """(timestamps, rotation, stacked frames) of each batch."""
        while not writer.error and (group := list(itertools.islice(frames, batch_size))):
            yield [pts for pts, _, _ in group], group[0][1], np.stack([rgb for _, _, rgb in group])

    styled_batches = paired(batches(), lambda batch: batch[2], styler.stream)
    try:
        for (pts_list, rotation, _), styled in styled_batches:
            writer.inbox.put((pts_list, rotation, styled))
    finally:
        styled_batches.close()


def _check_decoded(src: Path, decoded: _Decoded, planned: list[Fraction], written: int) -> int:
    """Every planned frame was styled, or FFmpeg reported errors decoding the ones that were not; returns how many were not."""
    shown = decoded.shown
    if not shown <= set(planned) or written != len(shown):
        raise InvalidInputError(f"{src.name}: decoded frames do not match the segment's packets")
    skipped = len(planned) - len(shown)
    if skipped and not decoded.errors:
        raise InvalidInputError(f"{src.name}: {skipped} frames did not decode, yet FFmpeg reported no error")
    if not shown:
        raise InvalidInputError(f"{src.name}: none of its {len(planned)} frames decodes ({decoded.errors[0]})")
    return skipped


def _drain(source: queue.Queue) -> None:
    """Unblock a decoder waiting on a full queue after the consumer stopped early."""
    while True:
        try:
            source.get_nowait()
        except queue.Empty:
            return
