"""The warm worker: loads each model once, then does work item after work item.

One worker serves a whole run and does one kind of work (:mod:`shared.work`): video batches, with
a :class:`Worker` that styles them (:class:`gpu_job.batch_work.BatchWork`), or model shards
(:class:`gpu_job.shard_work.ShardWork`). A local run feeds it messages as JSON lines on standard
input (:func:`serve_stdio`); on Azure it drains its queue (:mod:`gpu_job.queue_worker`). Either
way an item is one call of its handler, and its outcome a result.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TextIO

from gpu_job.command import WorkerOptions
from shared.errors import InvalidInputError
from shared.messages import BatchMessage, BatchResult, MessageError, ModelSpec
from shared.work import WorkKind

AUTO_BATCH = {"cpu": 1, "cuda": 8}
MODEL_CACHE_SIZE = 4


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
    if choice == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if choice == "cuda":
        raise InvalidInputError("--device cuda: no CUDA device is available")
    return "cpu"


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
        """Style one batch from ``segment`` into ``styled``, and the rows of the preview it holds beside it (when the
        message names any), with ``spec`` (default: the message's, whose style picture is then a local path);
        every failure becomes a result, never an exception."""
        from gpu_job.scorer import score_segment
        from shared.preview import draw_rows, rows_name

        began = time.perf_counter()
        facts = dict(job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, worker=self.name, delivery=delivery)
        try:
            if not segment.is_file():
                raise InvalidInputError(f"{segment}: no such segment")
            styler = self.models.get(spec or message.model_spec)
            scored = score_segment(
                segment, styled, styler, start=message.batch.start_time, end=message.batch.end_time,
                expected_frames=message.batch.frame_count, batch_size=self.batch_size, on_frames=on_frames,
                encoder=replace(self.encoder, keep_10bit=message.keep_10bit), preview_frames=message.preview_frames,
            )
            draw_rows(scored.input_tiles, styled, Path(rows_name(str(styled))))
        except Exception as exc:  # reported to whoever sent the batch, which decides about retrying
            return BatchResult(**facts, succeeded=False, error=one_line(exc), retryable=not isinstance(exc, InvalidInputError),
                               seconds=round(time.perf_counter() - began, 4), model_loads=self.models.loads)
        return BatchResult(**facts, succeeded=True, styled=message.styled, frames=scored.frames, styler=styler.describe(),
                           seconds=round(time.perf_counter() - began, 4), model_loads=self.models.loads)


class WorkHandler(Protocol):
    """Does one kind of work: items with local paths (stdio) or with blob names (queue)."""

    kind: WorkKind
    name: str

    def ready(self) -> dict:
        """Facts to announce once the worker is ready."""

    def local(self, message, emit: Callable[[dict], None]):
        """Do an item whose paths are on this machine; ``emit`` sends progress events. Every failure becomes a result."""

    def queued(self, message, delivery: int):
        """Do an item from the queue (its files are blobs); ``delivery`` counts the message's deliveries."""

    def closed(self, message) -> bool:
        """Whether the item's job or run has ended, so the item is dropped."""

    def failure(self, message, error: str, delivery: int):
        """The result of an item that failed for good, without being done."""


def serve_stdio(handler: WorkHandler, source: TextIO, sink: TextIO, preload: ModelSpec | None = None) -> None:
    """Do the messages read as JSON lines from ``source`` until it closes.

    Writes JSON lines to ``sink``: ``ready`` once, progress events (``frames`` for batches), one
    ``result`` per message, and ``error`` for a line that is not a message of the handler's kind or
    a model that failed to preload (``preload``: batches only, a model to load before the first one).
    """
    def emit(event: dict) -> None:
        sink.write(json.dumps(event, separators=(",", ":")) + "\n")
        sink.flush()

    if preload:
        try:
            handler.preload(preload)
        except Exception as exc:  # the items that need it report the same error
            emit({"event": "error", "error": one_line(exc)})
    emit({"event": "ready", "worker": handler.name, **handler.ready()})
    for line in source:
        if not line.strip():
            continue
        try:
            message = handler.kind.parse(line)
        except MessageError as exc:
            emit({"event": "error", "error": str(exc)})
            continue
        emit({"event": "result", **handler.local(message, emit).to_dict()})
