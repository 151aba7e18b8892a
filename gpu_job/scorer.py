"""Score batches: decode each segment, style its frames, encode the styled segment.

Three stages run at once, linked by small bounded queues: a decoder thread, the model on the
calling thread (every stream of its engine busy), and an encoder thread. Frames live only in
memory, a few at a time, whatever the segment's length. The inference engines and FFmpeg release
the GIL while they work, so the stages overlap. Consecutive segments flow through the model as one
stream (:func:`score_segments`), so a batch's start and end cost the model no idle time.

With a stabiliser (issue 23), a fourth stage runs between the model and the encoder: it stabilises the
styled frames in order, off the model's thread, and drops the segment's context frames (decoded from
before the batch's first frame and styled only to prime the stabiliser) before they reach the encoder.

Colours follow the source (its matrix, range, primaries and transfer, see gpu_job/colour.py).
A packet FFmpeg cannot decode is skipped, as the ffmpeg command line skips it: its frame is left
out of the styled segment, and only such frames may be missing from it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from gpu_job.colour import from_rgb, tag_encoder, to_rgb
from gpu_job.styler import T, FrameStyler, paired
from shared.atomic import AtomicFile
from shared.colour import ColourPlan, plan_colour
from shared.config import Settings
from shared.decode import SEGMENT_DEMUXERS, open_input, tolerant_frames
from shared.errors import InvalidInputError
from shared.preview import tile, tile_size
from shared.probe import display_matrix, frame_times, stream_colour
from shared.report import STABILISER_COUNTS
from shared.split import muxer_options

if TYPE_CHECKING:
    from gpu_job.temporal import Stabiliser

_DONE = object()
log = logging.getLogger(__name__)
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
    temporal: dict | None = None
    """What stabilised the frames (the stabiliser's description); None when nothing did."""


@dataclass
class _Decoded:
    """What the decoder saw: the times (seconds) of the frames it passed on, the decode errors it skipped, and
    the preview tiles of the frames shown at ``tile_times``."""

    shown: set[Fraction]
    errors: list[str]
    tile_times: frozenset[Fraction] = frozenset()
    tiles: dict[Fraction, np.ndarray] = field(default_factory=dict)


def _decode(path: Path, start: Fraction, end: Fraction | None, plan: ColourPlan, out: queue.Queue, stop: threading.Event,
            decoded: _Decoded, context_start: Fraction | None = None) -> None:
    """Put (pts, display matrix, rgb frame) for frames shown at start <= t < end (seconds), in display order, preceded by the
    context frames shown from ``context_start`` on; record the frames from ``start`` on in ``decoded``."""
    begin = start if context_start is None else context_start
    try:
        with open_input(path, SEGMENT_DEMUXERS) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in tolerant_frames(container, stream, decoded.errors):
                if frame.pts is None:
                    raise InvalidInputError(f"{path.name}: FFmpeg decodes frames without timestamps from it")
                shown_at = frame.pts * stream.time_base
                if stop.is_set() or (end is not None and shown_at >= end):
                    break
                if shown_at < begin:
                    continue
                out.put((frame.pts, display_matrix(frame), to_rgb(frame, plan)))
                if shown_at < start:  # a context frame
                    continue
                decoded.shown.add(shown_at)
                if shown_at in decoded.tile_times:  # sized as the styled frame
                    decoded.tiles[shown_at] = tile(frame, tile_size(frame.width, frame.height))
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
        self.closed = threading.Event()
        self.after: threading.Event | None = None
        """Set by :meth:`Segment.follow`: opens its encoder only once this is set (the segment before has closed its own)."""
        self._input_ended = False

    def run(self) -> None:
        try:
            self._encode()
        except BaseException as exc:
            self.error = exc
            while not self._input_ended and self.inbox.get() is not _DONE:  # unblock whoever still sends frames
                pass
        finally:
            if self.after is not None:  # closed in order, even with no frame to encode
                self.after.wait()
            self.closed.set()

    def _encode(self) -> None:
        container = stream = None
        reformatter = VideoReformatter()
        try:
            for pts_list, display, frames in _items(self.inbox):
                if container is None:
                    if self.after is not None:
                        self.after.wait()
                    container, stream = self._open(frames.shape[2], frames.shape[1], display)
                for pts, rgb in zip(pts_list, frames):
                    frame = from_rgb(rgb, self._plan, reformatter)
                    frame.pts, frame.time_base = pts, self._time_base
                    if pts * self._time_base in self._key_times:
                        frame.pict_type = PictureType.I
                    container.mux(stream.encode(frame))
                self.written += len(pts_list)
                if self._on_frames:
                    self._on_frames(len(pts_list))
            self._input_ended = True
            if container is not None:
                container.mux(stream.encode(None))
        finally:
            if container is not None:
                container.close()

    def _open(self, width: int, height: int, display: tuple[int, ...] | None):
        container = av.open(str(self._tmp), "w", format=SEGMENT_MUXER, options=muxer_options(SEGMENT_MUXER, Fraction(self._time_base)))
        stream = container.add_stream(self._settings.codec, rate=self._rate)
        stream.width, stream.height, stream.pix_fmt = width, height, self._plan.output_pix_fmt(width, height)
        stream.time_base = self._time_base
        stream.codec_context.time_base = self._time_base
        tag_encoder(stream.codec_context, self._plan.output)
        # No B-frames: decode order equals display order, so independently encoded segments
        # join with strictly increasing decode timestamps whatever the frame timing.
        stream.codec_context.max_b_frames = 0
        stream.options = {"crf": str(self._settings.crf), "preset": self._settings.preset}
        if display:  # the whole matrix: a rotation may come with a mirror
            stream.set_display_matrix(display)
        return container, stream


class _Stabilising(threading.Thread):
    """Stabilises a segment's styled frames in order, with their input frames, and passes those shown from ``start``
    (seconds) on to ``encoder``: the context frames before them only prime the stabiliser. Its own thread, so the
    stabiliser overlaps the model and the encoder."""

    def __init__(self, stabiliser: Stabiliser, start: Fraction, time_base: Fraction, encoder: queue.Queue) -> None:
        super().__init__(daemon=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.stabiliser, self._start, self._time_base, self._encoder = stabiliser, start, time_base, encoder
        self._primed: dict = {}
        """The stabiliser's description once the context frames were through: its counts then are the previous batch's."""

    def description(self) -> dict:
        """What stabilised the segment's own frames: the stabiliser's description, its counts without the context frames'
        (they are the batch before's own frames, counted there)."""
        described = self.stabiliser.describe()
        for key in STABILISER_COUNTS:
            if type(described.get(key)) is int and type(self._primed.get(key)) is int:
                described[key] -= self._primed[key]
        return described

    def run(self) -> None:
        try:
            self.stabiliser.reset()  # the segment's output depends on its own frames only
            for pts_list, display, styled, inputs in _items(self.inbox):
                context = sum(pts * self._time_base < self._start for pts in pts_list)
                if context:
                    self.stabiliser(inputs[:context], styled[:context])
                    self._primed = self.stabiliser.describe()
                if context < len(pts_list):
                    stabilised = self.stabiliser(inputs[context:], styled[context:])
                    self._encoder.put((pts_list[context:], display, stabilised))
        except BaseException as exc:
            self.error = exc
            while self.inbox.get() is not _DONE:
                pass
        finally:
            self._encoder.put(_DONE)


class Segment:
    """One segment being scored: opened (its decoder and encoder threads started), fed its styled frames in
    order, then finished (checked, its file committed) or failed (its file discarded).

    The model's thread calls :meth:`groups` and :meth:`deliver`; another thread may call :meth:`finish`,
    which waits until every group read has been delivered.

    With a ``stabiliser`` (a fresh one, or one no other segment uses), the frames shown from ``context_start`` on are
    decoded and styled, and stabilised in order; only those from ``start`` on are encoded. Without one, every frame is
    styled on its own and nothing before ``start`` is decoded.
    """

    def __init__(self, src: Path, dst: Path, *, start: Fraction, end: Fraction | None, expected_frames: int, batch_size: int = 4,
                 encoder: EncoderSettings = EncoderSettings(), on_frames: Callable[[int], None] | None = None,
                 preview_frames: Collection[int] = (), stabiliser: Stabiliser | None = None,
                 context_start: Fraction | None = None, rate: Fraction | None = None) -> None:
        """``rate``: the frame rate the encoder is told (the video's, :attr:`shared.plan.Batch.frame_rate`; default the
        segment's own). ``preview_frames``: offsets among the frames shown at ``start <= t < end`` (seconds) that start a GOP of
        the styled segment, and whose input tiles the result holds."""
        with open_input(src, SEGMENT_DEMUXERS) as source:
            stream = source.streams.video[0]
            timing = (stream.time_base, rate or stream.guessed_rate or stream.average_rate or 25)
            plan = plan_colour(stream_colour(stream.codec_context), stream.codec_context.height, encoder.keep_10bit)
        self._planned = frame_times(src, start, end)
        if len(self._planned) != expected_frames:
            raise InvalidInputError(f"{src.name}: holds {len(self._planned)} frames in its range, the plan says {expected_frames}")
        self._src, self._batch_size = src, batch_size
        self._file = AtomicFile(dst)
        sampled = frozenset(self._planned[offset] for offset in preview_frames)
        self._writer = _Encoder(self._file.tmp, timing, encoder, plan, on_frames, sampled)
        self._stage = None if stabiliser is None else _Stabilising(stabiliser, start, Fraction(timing[0]), self._writer.inbox)
        self._sink = self._writer.inbox if self._stage is None else self._stage.inbox
        """Where styled frames go: the encoder, or the stabiliser before it."""
        self._seen = _Decoded(shown=set(), errors=[], tile_times=sampled)
        self._decoded: queue.Queue = queue.Queue(maxsize=2 * batch_size)
        self._stop = threading.Event()
        context_start = None if stabiliser is None else context_start
        self._reader = threading.Thread(target=_decode, args=(src, start, end, plan, self._decoded, self._stop, self._seen, context_start),
                                        daemon=True)
        self._reader.start()
        self._writer.start()
        if self._stage is not None:
            self._stage.start()
        self._read = self._delivered = 0
        self._input_done = False
        self.styled = threading.Event()
        """Set once every group read has been delivered, or the model failed."""
        self._error: BaseException | None = None

    def groups(self) -> Iterator[tuple[list, tuple[int, ...] | None, np.ndarray]]:
        """(timestamps, display matrix, stacked frames) of each group of decoded frames, in order; ends early once the segment failed."""
        frames = _items(self._decoded)
        try:
            while self._error is None and not self._writer.error and not (self._stage and self._stage.error) and (
                    group := list(itertools.islice(frames, self._batch_size))):
                self._read += 1
                yield [pts for pts, _, _ in group], group[0][1], np.stack([rgb for _, _, rgb in group])
        except Exception as exc:  # this segment fails; the stream goes on with the next
            self._error = exc
        finally:
            self._input_done = True
            self._check_styled()

    def follow(self, previous: Segment) -> None:
        """Open this segment's encoder only once ``previous`` has closed its own: two never hold their frame
        buffers at once, so a worker's memory is that of one segment (its first frames wait in the encoder's
        inbox meanwhile, for the few milliseconds of the flush)."""
        self._writer.after = previous._writer.closed

    def deliver(self, pts_list: list, display: tuple[int, ...] | None, styled: np.ndarray, inputs: np.ndarray) -> None:
        """The styled frames of a group :meth:`groups` gave, with its input frames (which a stabiliser needs)."""
        self._sink.put((pts_list, display, styled) if self._stage is None else (pts_list, display, styled, inputs))
        self._delivered += 1
        self._check_styled()

    def abort(self, error: BaseException) -> None:
        """The model failed: unless every frame is styled already, no more come."""
        if not self.styled.is_set():
            self._error = self._error or error
            self._end()

    def _check_styled(self) -> None:
        if self._input_done and self._delivered == self._read and not self.styled.is_set():
            self._end()

    def _end(self) -> None:
        """No more frames for the encoder: it flushes and closes now, whoever finishes the segment and whenever."""
        self._sink.put(_DONE)
        self.styled.set()

    def finish(self) -> ScoreResult:
        """Once every frame read is styled: wait for the encoder and check what was decoded; commit the styled segment,
        or discard it and raise the segment's error."""
        self.styled.wait()
        self._stop.set()
        if self._stage is not None:
            self._stage.join()
        self._writer.join()
        _drain(self._decoded)
        self._reader.join()
        try:
            if self._error:
                raise self._error
            if self._stage is not None and self._stage.error:
                raise self._stage.error
            if self._writer.error:
                raise self._writer.error
            skipped = _check_decoded(self._src, self._seen, self._planned, self._writer.written)
        except BaseException:
            self._file.discard()
            raise
        self._file.commit()
        return ScoreResult(frames=self._writer.written, skipped=skipped, input_tiles=self._seen.tiles,
                           temporal=None if self._stage is None else self._stage.description())


SegmentOutcome = ScoreResult | Exception
"""A segment's outcome: what was styled, or why it failed."""


def score_segments(requests: Iterable[T], open_segment: Callable[[T], Segment], styler: FrameStyler,
                   on_done: Callable[[T, SegmentOutcome], None]) -> None:
    """Score the segment of each request through one stream of ``styler``; ``on_done`` gets each outcome, in order.

    The engine's streams stay busy across segments: the next request is opened (its decoder started) and its
    frames styled while the last frames of the one before are still in the model, and a thread finishes each
    segment (the encoder's flush, the checks, the commit) while the next is styled. A segment that fails
    fails alone, except when the model itself fails, which fails every segment not yet styled. ``requests``
    is read as far ahead as the engine reads frames (each request read is opened): it should end rather than
    wait for a request, and its caller bounds how many it holds. ``on_done`` runs on another thread. Returns
    once every outcome has been handed to it.
    """
    finishing: queue.Queue = queue.Queue()
    unstyled: list[Segment] = []

    def finish_in_order() -> None:
        while (item := finishing.get()) is not _DONE:
            request, segment = item
            outcome = segment
            if isinstance(segment, Segment):
                try:
                    outcome = segment.finish()
                except Exception as exc:
                    outcome = exc
            try:
                on_done(request, outcome)
            except Exception:  # its outcome is lost, not the next segments'
                log.exception("a segment's outcome could not be handed on")

    def groups() -> Iterator[tuple[Segment, list, tuple[int, ...] | None, np.ndarray]]:
        last = None
        for request in requests:
            try:
                segment = open_segment(request)
            except Exception as exc:
                finishing.put((request, exc))
                continue
            if last is not None:
                segment.follow(last)
            last = segment
            finishing.put((request, segment))
            unstyled[:] = [*(s for s in unstyled if not s.styled.is_set()), segment]
            for pts_list, display, frames in segment.groups():
                yield segment, pts_list, display, frames

    finisher = threading.Thread(target=finish_in_order, daemon=True)
    finisher.start()
    styled = paired(groups(), lambda group: group[3], styler.stream)
    try:
        for (segment, pts_list, display, inputs), frames in styled:
            segment.deliver(pts_list, display, frames, inputs)
    except BaseException as exc:  # the model failed (or we are interrupted): no segment still in it gets its frames
        for segment in unstyled:
            segment.abort(exc)
        if not isinstance(exc, Exception):
            raise
    else:  # every segment is styled, unless the model gave back fewer batches than it took
        for segment in unstyled:
            segment.abort(RuntimeError(f"{styler.describe().get('model', 'the model')} returned fewer batches than it was given"))
    finally:
        styled.close()
        finishing.put(_DONE)
        finisher.join()


def score_segment(src: Path, dst: Path, styler: FrameStyler, **options) -> ScoreResult:
    """Style one segment (``options``: :class:`Segment`'s) into ``dst``, atomically; raises what failed it."""
    outcomes: list[SegmentOutcome] = []
    score_segments([dst], lambda _: Segment(src, dst, **options), styler, lambda _, outcome: outcomes.append(outcome))
    (outcome,) = outcomes
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


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
