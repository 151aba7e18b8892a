"""Video batches as the worker's work: style segments with a warm :class:`gpu_job.worker.Worker`.

Locally a batch's segment and styled output are files; from the batch queue they are blobs in the
work container: the segment is downloaded to a scratch folder (while the batch before it is styled),
styled there, and the styled segment uploaded with the preview rows the worker drew beside it (a
styled segment already there, written by a worker that died before reporting, is reused). Either
way consecutive batches stream through the model (:meth:`gpu_job.worker.Worker.style_all`).
Only the queue paths import the storage clients (the Azure SDK takes 0.3 s to import), so a local
worker starts without them.
"""

from __future__ import annotations

import hashlib
import posixpath
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_job.worker import Feed, FeedItem, StyleJob, Worker, one_line
from shared.atomic import atomic_path
from shared.config import Settings
from shared.errors import InvalidInputError
from gpu_job.styles import ARBITRARY, STYLE_IMAGE_MAX_BYTES, is_known_style
from shared.messages import BatchMessage, BatchResult, MessageError, ModelSpec, styled_name
from shared.names import check_blob_name, check_job_id, shown
from shared.preview import rows_name
from shared.work import BATCHES

if TYPE_CHECKING:
    from gpu_job.queue_worker import QueueFeed, QueueItem


PRECISIONS = ("auto", "fp32")
PROGRESS_INTERVAL_S = 0.2
"""Frames events go out at most this often: one per frame would cost the model's cores a pipe write and a parse each."""


class _Progress:
    """Counts styled frames and sends the count on, at most every :data:`PROGRESS_INTERVAL_S` and when flushed."""

    def __init__(self, send: Callable[[int], None]) -> None:
        self.send, self.pending, self.sent_at = send, 0, time.monotonic()

    def add(self, frames: int) -> None:
        self.pending += frames
        if time.monotonic() - self.sent_at >= PROGRESS_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.send(self.pending)
            self.pending, self.sent_at = 0, time.monotonic()


class BatchWork:
    kind = BATCHES

    queue_ahead = True
    """From the queue, the next batch is taken and fetched while the last is styled (they stream through the model)."""

    def __init__(self, worker: Worker, settings: Settings) -> None:
        self.worker, self.settings = worker, settings
        self.name = worker.name
        self._scratch: dict[StyleJob, tempfile.TemporaryDirectory] = {}

    @cached_property
    def blobs(self):
        from shared.storage import blob_service

        return blob_service(self.settings)

    def preload(self, spec: ModelSpec) -> None:
        self.worker.models.get(spec)

    def ready(self) -> dict:
        return {"model_loads": self.worker.models.loads}

    def serve(self, feed: Feed) -> None:
        """Style the feed's batches, the next taken while the last is finishing (:meth:`Worker.style_all`)."""
        items: dict[StyleJob, tuple[FeedItem, _Progress]] = {}

        def next_job(wait: bool) -> StyleJob | None:
            item = feed.next(wait)
            if item is None:
                return None
            message = item.message
            progress = _Progress(lambda frames: item.emit({"event": "frames", "batch": message.batch.index, "frames": frames}))
            job = StyleJob(message, Path(message.segment), Path(message.styled), on_frames=progress.add)
            items[job] = (item, progress)
            return job

        def answer(job: StyleJob, result: BatchResult) -> None:
            item, progress = items.pop(job)
            progress.flush()
            item.emit({"event": "result", **result.to_dict()})

        self.worker.style_all(next_job, answer)

    def check_queued(self, message: BatchMessage) -> BatchMessage:
        """The message, if it may be acted on from the queue: a video job's id, a model by name, a style picture in
        the styles container, and exactly the segment and styled names its job's layout gives (:func:`queued_names`);
        else :class:`MessageError`. A message is never trusted with a path or a blob of its choosing."""
        check_job_id(message.job_id)
        if (message.segment, message.styled) != queued_names(message):
            raise MessageError(f"batch message for {message.batch.name} names blobs that are not its job's")
        if not is_known_style(message.model):
            raise MessageError(f"batch message names model {shown(message.model)}, which is no style name")
        if message.precision not in PRECISIONS:
            raise MessageError(f"batch message names precision {shown(message.precision)}")
        if (message.model == ARBITRARY) != (message.style_image is not None):
            raise MessageError(f"batch message gives a style picture with model {shown(message.model)}, or none with {ARBITRARY!r}")
        if message.style_image is not None:
            check_blob_name(message.style_image, "style picture")
        return message

    def closed(self, message: BatchMessage) -> bool:
        from shared.storage import job_closed

        return job_closed(self.blobs, self.settings, message.job_id)

    def failure(self, message: BatchMessage, error: str, delivery: int) -> BatchResult:
        return replace(self.kind.failed(message, error, False), worker=self.name, delivery=delivery)

    def fetch(self, message: BatchMessage, delivery: int) -> tuple[StyleJob | None, BatchResult | None]:
        """The batch's job, its segment downloaded to a scratch folder, and its style picture; or its result when there
        is nothing to style (a styled segment already there, written by a worker that died before reporting, or a
        blob that is gone). Runs while the batch before it is being styled."""
        from azure.core.exceptions import ResourceNotFoundError

        from shared.storage import download_file

        segment_blob, styled_blob = queued_names(message)
        if self.blobs.get_blob_client(self.settings.work_container, styled_blob).exists():
            return None, BatchResult(job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, succeeded=True,
                                     styled=styled_blob, frames=message.batch.frame_count, worker=self.name,
                                     model_loads=self.worker.models.loads, delivery=delivery)
        scratch = tempfile.TemporaryDirectory(prefix="batch-")
        try:
            segment = Path(scratch.name) / posixpath.basename(segment_blob)
            try:
                download_file(self.blobs, self.settings.work_container, segment_blob, segment)
            except ResourceNotFoundError:
                scratch.cleanup()
                return None, self.failure(message, f"segment of {message.batch.name} is gone (the job expired or was removed)", delivery)
            try:
                spec = self._model_spec(message)
            except ResourceNotFoundError:
                scratch.cleanup()
                return None, self.failure(message, "the job's style picture is gone (the job expired or was removed)", delivery)
            except InvalidInputError as exc:
                scratch.cleanup()
                return None, self.failure(message, str(exc), delivery)
        except BaseException:
            scratch.cleanup()
            raise
        job = StyleJob(message, segment, Path(scratch.name) / posixpath.basename(styled_blob), delivery, spec=spec)
        self._scratch[job] = scratch
        return job, None

    def serve_queue(self, feed: QueueFeed) -> None:
        """Style the queue's batches as one stream (:meth:`Worker.style_all`); upload each styled segment, with the
        preview rows drawn beside it first (a styled segment found in place is then whole, rows and all), and answer."""
        from shared.storage import upload_file

        items: dict[StyleJob, QueueItem] = {}

        def next_job(wait: bool) -> StyleJob | None:
            item = feed.next(wait)
            if item is None:
                return None
            items[item.work] = item
            return item.work

        def answer(job: StyleJob, result: BatchResult) -> None:
            item, scratch, container = items.pop(job), self._scratch.pop(job), self.settings.work_container
            styled_blob = queued_names(job.message)[1]
            try:
                if result.succeeded:
                    rows = Path(rows_name(str(job.styled)))
                    if rows.exists():
                        upload_file(self.blobs, container, rows_name(styled_blob), rows, {"job_id": job.message.job_id})
                    upload_file(self.blobs, container, styled_blob, job.styled, {"job_id": job.message.job_id})
            except Exception as exc:  # noqa: BLE001 - storage refused: another delivery does the batch again
                item.leave(one_line(exc))
            else:
                item.answer(result)
            finally:
                scratch.cleanup()

        self.worker.style_all(next_job, answer)

    def _model_spec(self, message: BatchMessage) -> ModelSpec:
        """The message's model, with its job's style picture (the copy the split checked and left in the job's folder,
        :attr:`shared.storage.JobLayout.style_picture`) fetched to a local file.

        The file is named after the job and the blob's ETag, so every batch of a job shares one cache entry (one
        model load). It is kept beside the model cache, not in it, under one fixed suffix: no picture can pass for a
        checkpoint. Its size is checked from the blob's properties before it is read, and only that version is read.
        """
        from azure.core import MatchConditions

        from shared.storage import JobLayout

        spec = message.model_spec
        if spec.style_image is None:
            return spec
        blob = self.blobs.get_blob_client(self.settings.work_container, JobLayout(message.job_id).style_picture)
        properties = blob.get_blob_properties()
        if properties.size > STYLE_IMAGE_MAX_BYTES:
            raise InvalidInputError(f"style picture of {message.job_id}: {properties.size} bytes is over the limit of {STYLE_IMAGE_MAX_BYTES}")
        key = hashlib.sha256(f"{message.job_id}\n{properties.etag}".encode()).hexdigest()[:32]
        local = style_picture_cache(self.settings) / f"{key}{STYLE_PICTURE_SUFFIX}"
        if not local.exists():
            with atomic_path(local) as partial, partial.open("wb") as out:
                blob.download_blob(etag=properties.etag, match_condition=MatchConditions.IfNotModified).readinto(out)
        return replace(spec, style_image=str(local))


STYLE_PICTURE_SUFFIX = ".picture"


def style_picture_cache(settings: Settings) -> Path:
    """Where a queue worker keeps the style pictures it fetched: beside the model cache, never inside it."""
    return settings.model_cache_dir.parent / "style-pictures"


def queued_names(message: BatchMessage) -> tuple[str, str]:
    """The work container's blobs of a queued batch, from its job's layout: (segment, styled segment)."""
    from shared.storage import JobLayout

    layout = JobLayout(message.job_id)
    return layout.segment(message.batch), layout.styled(styled_name(message.batch.index, message.attempt))
