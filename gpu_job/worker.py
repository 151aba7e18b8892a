"""The warm worker: loads each model once, then does work item after work item.

One worker serves a whole run and does one kind of work (:mod:`shared.work`): video batches, with
a :class:`Worker` that styles them (:class:`gpu_job.batch_work.BatchWork`), or model shards
(:class:`gpu_job.shard_work.ShardWork`). A local run feeds it messages as JSON lines on standard
input (:func:`serve_stdio`), and may send the next before the last is answered: a batch worker
then styles consecutive batches as one stream through the model. On Azure it drains its queue
(:mod:`gpu_job.queue_worker`), taking the next batch while it styles the last, to the same effect.
Either way each item's outcome is a result.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TextIO, TypeVar

from gpu_job.command import WorkerOptions
from gpu_job.engines import check_cuda_engines
from shared.errors import InvalidInputError
from shared.messages import BatchMessage, BatchResult, ModelSpec
from shared.plan import PASS_THROUGH_MODEL
from shared.work import WorkKind

if TYPE_CHECKING:
    from gpu_job.scorer import Segment, SegmentOutcome
    from gpu_job.styler import FrameStyler
    from gpu_job.temporal import Stabiliser

T = TypeVar("T")
AUTO_BATCH = {"cpu": 1, "cuda": 8}
MODEL_CACHE_SIZE = 4


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _meaning(exc: Exception) -> Exception:
    """FFmpeg's EINVAL (PyAV raises it as a ValueError) answers the same data and settings the same way every time: an
    error that will repeat, said in words rather than as the errno and the call that returned it."""
    if isinstance(exc, ValueError) and getattr(exc, "errno", None) == errno.EINVAL:
        return InvalidInputError("FFmpeg refused the batch: invalid argument (the styled segment's encoder settings, or its "
                                 "frames' timestamps or format); it would fail the same way again")
    return exc


class ModelCache:
    """Stylers by model spec, least recently used dropped first; counts how often it loaded one."""

    def __init__(self, load: Callable[[ModelSpec], Callable], capacity: int = MODEL_CACHE_SIZE) -> None:
        self._load, self._capacity = load, capacity
        self._stylers: OrderedDict[ModelSpec, Callable] = OrderedDict()
        self.loads = 0

    def get(self, spec: ModelSpec) -> Callable:
        if spec in self._stylers:
            self._stylers.move_to_end(spec)
            return self._stylers[spec]
        styler = self._load(spec)
        self.loads += 1
        self._stylers[spec] = styler
        while len(self._stylers) > self._capacity:
            self._stylers.popitem(last=False)
        return styler


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device; on Linux without an NVIDIA driver, answered without importing torch (a second or two)."""
    if sys.platform == "linux" and not Path("/proc/driver/nvidia/version").exists():
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(choice: str) -> str:
    if choice == "cuda":
        check_cuda_engines()
        return "cuda"
    return "cuda" if choice == "auto" and cuda_available() else "cpu"


@dataclass(eq=False)
class StyleJob:
    """One batch to style from ``segment`` into ``styled``, with ``spec`` (default: the message's, whose style
    picture is then a local path); ``on_frames`` hears of frames as they are encoded."""

    message: BatchMessage
    segment: Path
    styled: Path
    delivery: int = 1
    on_frames: Callable[[int], None] | None = None
    spec: ModelSpec | None = None
    began: float = field(default_factory=time.perf_counter)

    @property
    def model_spec(self) -> ModelSpec:
        return self.spec or self.message.model_spec


class Worker:
    def __init__(self, options: WorkerOptions, cache_dir: Path) -> None:
        from gpu_job.models import load_styler
        from gpu_job.scorer import EncoderSettings

        self.device = resolve_device(options.device)
        self.models = ModelCache(lambda spec: load_styler(
            spec.model, self.device, cache_dir, precision=spec.precision, style_strength=spec.style_strength, threads=options.threads,
            style_image=None if spec.style_image is None else Path(spec.style_image)))
        self.encoder = EncoderSettings(crf=options.crf, preset=options.preset)
        self.batch_size = options.batch_size or AUTO_BATCH[self.device]
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def style(self, message: BatchMessage, segment: Path, styled: Path, delivery: int = 1,
              on_frames: Callable[[int], None] | None = None, spec: ModelSpec | None = None) -> BatchResult:
        """Style one batch (see :class:`StyleJob`); every failure becomes a result, never an exception."""
        jobs = iter([StyleJob(message, segment, styled, delivery, on_frames, spec)])
        results: list[BatchResult] = []
        self.style_all(lambda wait: next(jobs, None), lambda job, result: results.append(result))
        (result,) = results
        return result

    def style_all(self, next_job: Callable[[bool], StyleJob | None], on_result: Callable[[StyleJob, BatchResult], None]) -> None:
        """Style jobs until ``next_job(True)`` gives None; ``on_result`` gets each result, in the jobs' order, from
        another thread.

        Consecutive jobs with one model go through it as one stream (:func:`gpu_job.scorer.score_segments`): a
        batch's start and end overlap its neighbours'. ``next_job(False)`` gives a job only if one is there already;
        the stream ends when none is, and the next job starts another.

        Each styled segment gets the rows of the preview it holds beside it, when its message names any.
        Every failure becomes a result, never an exception.
        """
        from gpu_job.scorer import score_segments

        job = next_job(True)
        while job is not None:
            try:
                styler = self.models.get(job.model_spec)
            except Exception as exc:  # each job with this model reports it
                on_result(job, self._result(job, exc, None))
                job = next_job(True)
                continue
            held: list[StyleJob] = []

            def same_model(first: StyleJob) -> Iterator[StyleJob]:
                current: StyleJob | None = first
                while current is not None:
                    if current.model_spec != first.model_spec:
                        held.append(current)
                        return
                    yield current
                    current = next_job(False)

            score_segments(same_model(job), self._open, styler, lambda done, outcome: on_result(done, self._result(done, outcome, styler)))
            job = held[0] if held else next_job(True)

    def _open(self, job: StyleJob) -> Segment:
        from gpu_job.scorer import Segment

        job.began = time.perf_counter()
        if not job.segment.is_file():
            raise InvalidInputError(f"{job.segment}: no such segment")
        batch = job.message.batch
        return Segment(job.segment, job.styled, start=batch.start_time, end=batch.end_time, expected_frames=batch.frame_count,
                       batch_size=self.batch_size, encoder=replace(self.encoder, keep_10bit=job.message.keep_10bit),
                       on_frames=job.on_frames, preview_frames=job.message.preview_frames, stabiliser=self._stabiliser(job),
                       context_start=batch.context_time, rate=None if batch.frame_rate is None else Fraction(batch.frame_rate))

    def _stabiliser(self, job: StyleJob) -> Stabiliser | None:
        """A fresh stabiliser for the job's segment, on this worker's device; None when its message asks for none, and
        for the identity model whatever it asks (its frames pass through, checked exactly; its context is not decoded)."""
        strength = job.message.temporal_strength
        if not strength or job.model_spec.model == PASS_THROUGH_MODEL:
            return None
        from gpu_job.temporal import Stabiliser

        return Stabiliser(strength, device=self.device)

    def _result(self, job: StyleJob, outcome: SegmentOutcome | Exception, styler: FrameStyler | None) -> BatchResult:
        """The job's result from its segment's outcome (a ScoreResult or an exception), once its preview rows are drawn."""
        from shared.preview import draw_rows, rows_name

        message = job.message
        facts = dict(job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, worker=self.name, delivery=job.delivery,
                     model_loads=self.models.loads)
        try:
            if isinstance(outcome, Exception):
                raise outcome
            draw_rows(outcome.input_tiles, job.styled, Path(rows_name(str(job.styled))))
        except Exception as exc:  # reported to whoever sent the batch, which decides about retrying
            exc = _meaning(exc)
            return BatchResult(**facts, succeeded=False, error=one_line(exc), retryable=not isinstance(exc, InvalidInputError),
                               seconds=round(time.perf_counter() - job.began, 4))
        return BatchResult(**facts, succeeded=True, styled=message.styled, frames=outcome.frames, styler=styler.describe(),
                           temporal=outcome.temporal, seconds=round(time.perf_counter() - job.began, 4))


@dataclass(frozen=True)
class FeedItem:
    """A message read from standard input, numbered from 0 in the order read; ``emit`` sends an event about it."""

    number: int
    message: Any
    emit: Callable[[dict], None]


class Handoff(Generic[T]):
    """Items passed from the thread that takes them to the worker that does them, until :meth:`end`; from there on,
    :meth:`next` gives None for good. Both feeds (stdio and queue) hand their items over through one."""

    def __init__(self) -> None:
        self._items: queue.Queue[T | None] = queue.Queue()
        self._ended = False

    def put(self, item: T) -> None:
        self._items.put(item)

    def end(self) -> None:
        self._items.put(None)

    def next(self, wait: bool = True) -> T | None:
        """The next item; None at the end, or (``wait`` False) when none is there yet."""
        if self._ended:
            return None
        try:
            item = self._items.get(block=wait)
        except queue.Empty:
            return None
        self._ended = item is None
        return item


class Feed:
    """The messages of a stdio worker's input, read by a thread so that a worker busy with one sees whether the next has come."""

    def __init__(self, source: TextIO, kind: WorkKind, emit: Callable[[dict], None]) -> None:
        self._items: Handoff[FeedItem] = Handoff()
        self._source, self._kind, self._emit = source, kind, emit
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        """Every line but blank ones, numbered in order; one that is not a message is answered at once, with an
        ``error`` event for its number."""
        try:
            for number, line in enumerate(line for line in self._lines() if line is None or line.strip()):
                try:
                    if line is None:
                        raise ValueError("the line is not UTF-8 text")
                    message = self._kind.parse(line)
                except Exception as exc:  # noqa: BLE001 - any line that is not a message is answered, and the next one read
                    self._emit({"event": "error", "item": number, "error": one_line(exc)})
                    continue
                self._items.put(FeedItem(number, message, lambda event, n=number: self._emit({**event, "item": n})))
        finally:  # input closed, or unreadable: the worker ends once it has answered what it took
            self._items.end()

    def _lines(self) -> Iterator[str | None]:
        """The input's lines, each decoded alone (None for one that is not UTF-8), so that one bad line is answered
        instead of ending the input."""
        raw = getattr(self._source, "buffer", None)
        if raw is None:
            yield from self._source
            return
        for line in raw:
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                yield None

    def next(self, wait: bool = True) -> FeedItem | None:
        """The next message; None once the input has closed, or (``wait`` False) when none has come yet."""
        return self._items.next(wait)


class WorkHandler(Protocol):
    """Does one kind of work: items with local paths (stdio) or with blob names (queue)."""

    kind: WorkKind
    name: str

    def ready(self) -> dict:
        """Facts to announce once the worker is ready."""

    def serve(self, feed: Feed) -> None:
        """Do the items of ``feed`` (their paths are on this machine) until it ends, each answered with a ``result``
        event, in the order read; every failure becomes a result."""

    queue_ahead: bool
    """From the queue, take the next item (and fetch it) while working on the last."""

    def fetch(self, message, delivery: int) -> tuple[Any, Any]:
        """For an item from the queue (its files are blobs; ``delivery`` counts the message's deliveries): what its
        work needs, fetched, as (work, None); or (None, its result) when there is nothing to do."""

    def serve_queue(self, feed) -> None:
        """Do the items of a :class:`gpu_job.queue_worker.QueueFeed` until it ends, answering each."""

    def check_queued(self, message):
        """The message, if it may be acted on from the queue (its names are those its job's layout gives, its model a
        name); else raises :class:`shared.messages.MessageError`."""

    def closed(self, message) -> bool:
        """Whether the item's job or run has ended, so the item is dropped."""

    def failure(self, message, error: str, delivery: int):
        """The result of an item that failed for good, without being done."""


def serve_stdio(handler: WorkHandler, source: TextIO, sink: TextIO, preload: ModelSpec | None = None) -> None:
    """Do the messages read as JSON lines from ``source`` until it closes.

    Writes JSON lines to ``sink``: ``ready`` once, then for each line its progress events (``frames`` for
    batches) and one ``result``, each with ``item``, the line's number in the order read (from 0, blank lines
    aside); results come in that order, but a message's events may come before the previous one's result. A line
    that is not a message of the handler's kind is answered with an ``error`` event instead of a result; an
    ``error`` without ``item`` is a model that failed to preload (``preload``: batches only, a model to load
    before the first one).
    """
    lock = threading.Lock()

    def emit(event: dict) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with lock:
            sink.write(line)
            sink.flush()

    if preload:
        try:
            handler.preload(preload)
        except Exception as exc:  # the items that need it report the same error
            emit({"event": "error", "error": one_line(exc)})
    emit({"event": "ready", "worker": handler.name, **handler.ready()})
    handler.serve(Feed(source, handler.kind, emit))
