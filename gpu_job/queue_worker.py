"""Queue mode: drain the batch queue until idle, each batch done once, none lost.

A worker takes one message at a time and keeps it invisible while it works (renewing the visibility
timeout), posts the batch's result on the results queue, and only then deletes the message. If the
worker dies, the message reappears after its visibility timeout and another worker does the batch;
a styled segment already written by the dead worker is reused, not styled again. A message
delivered more than ``max_deliveries`` times (its workers died each time) goes to the poison queue
and its batch is reported failed for good, so the orchestration fails with a reason.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from gpu_job.worker import Worker, one_line
from shared.config import Settings
from shared.messages import BatchMessage, BatchResult, MessageError, ModelSpec
from shared.storage import blob_service, download_file, job_closed, queue_client, upload_file

log = logging.getLogger("gpu_job.queue")
POLL_MIN_S, POLL_MAX_S = 0.5, 5.0


class VisibilityKeeper(threading.Thread):
    """Keeps a taken message invisible while its batch is styled; holds the latest pop receipt."""

    def __init__(self, queue, message, timeout_s: int) -> None:
        super().__init__(daemon=True)
        self._queue, self._id, self._timeout_s = queue, message.id, timeout_s
        self.pop_receipt = message.pop_receipt
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._stopped.wait(self._timeout_s / 3):
            with self._lock:
                if self._stopped.is_set():
                    return
                try:
                    self.pop_receipt = self._queue.update_message(self._id, pop_receipt=self.pop_receipt,
                                                                  visibility_timeout=self._timeout_s).pop_receipt
                except (ResourceNotFoundError, HttpResponseError) as exc:
                    log.warning("lost hold of message %s (%s); another worker may take it", self._id, one_line(exc))
                    return

    def stop(self) -> str:
        """Stop renewing; returns the pop receipt to delete the message with."""
        with self._lock:
            self._stopped.set()
        self.join()
        return self.pop_receipt


class QueueWorker:
    def __init__(self, worker: Worker, settings: Settings) -> None:
        self.worker, self.settings = worker, settings
        self.batches = queue_client(settings, settings.batch_queue)
        self.results = queue_client(settings, settings.result_queue)
        self.poison = queue_client(settings, settings.poison_queue)
        self.blobs = blob_service(settings)

    def serve(self, idle_s: float) -> int:
        """Take batches until none has come for ``idle_s`` seconds; returns how many messages were handled."""
        handled, idle_since, pause = 0, time.monotonic(), POLL_MIN_S
        while True:
            queued = self.batches.receive_message(visibility_timeout=self.settings.visibility_timeout_s)
            if queued is None:
                if time.monotonic() - idle_since >= idle_s:
                    log.info("idle for %.0f s after %d batch messages; stopping", idle_s, handled)
                    return handled
                time.sleep(pause)
                pause = min(2 * pause, POLL_MAX_S)
                continue
            try:
                self.handle(queued)
            except Exception as exc:  # storage unreachable and the like: the message reappears and is done again
                log.error("message %s left for another delivery: %s", queued.id, one_line(exc))
            handled += 1
            idle_since, pause = time.monotonic(), POLL_MIN_S

    def handle(self, queued) -> BatchResult | None:
        try:
            message = BatchMessage.from_json(queued.content)
        except MessageError as exc:
            log.error("malformed batch message %s moved to %s: %s", queued.id, self.settings.poison_queue, exc)
            self._to_poison(queued)
            return None
        if queued.dequeue_count > self.settings.max_deliveries:
            result = BatchResult(
                job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, succeeded=False, retryable=False,
                worker=self.worker.name, delivery=queued.dequeue_count,
                error=(f"{message.batch.name} attempt {message.attempt} was delivered {queued.dequeue_count - 1} times and its worker "
                       f"stopped each time (killed, out of memory or pre-empted); moved to {self.settings.poison_queue}"),
            )
            self.results.send_message(result.to_json())
            self._to_poison(queued)
            return result
        if job_closed(self.blobs, self.settings, message.job_id):
            log.info("job %s has ended; dropping %s attempt %d", message.job_id, message.batch.name, message.attempt)
            self.batches.delete_message(queued.id, queued.pop_receipt)
            return None
        keeper = VisibilityKeeper(self.batches, queued, self.settings.visibility_timeout_s)
        keeper.start()
        try:
            log.info("styling %s attempt %d of %s (delivery %d)", message.batch.name, message.attempt, message.job_id, queued.dequeue_count)
            result = self._style(message, queued.dequeue_count)
            self.results.send_message(result.to_json())
        finally:
            pop_receipt = keeper.stop()
        self._delete(queued.id, pop_receipt)
        return result

    def _model_spec(self, message: BatchMessage) -> ModelSpec:
        """The message's model, with its style picture (a blob in the styles container) fetched to a local file.

        The file is named after the blob's name and ETag, so every batch of a job shares one cache entry
        (one model load), and a replaced picture is a new one.
        """
        spec = message.model_spec
        if spec.style_image is None:
            return spec
        blob = self.blobs.get_blob_client(self.settings.styles_container, spec.style_image)
        etag = blob.get_blob_properties().etag
        key = hashlib.sha256(f"{spec.style_image}\n{etag}".encode()).hexdigest()[:32]
        local = self.settings.model_cache_dir / "style-images" / f"{key}{posixpath.splitext(spec.style_image)[1]}"
        if not local.exists():
            download_file(self.blobs, self.settings.styles_container, spec.style_image, local.with_suffix(".part"))
            local.with_suffix(".part").replace(local)
        return replace(spec, style_image=str(local))

    def _style(self, message: BatchMessage, delivery: int) -> BatchResult:
        container = self.settings.work_container
        if self.blobs.get_blob_client(container, message.styled).exists():
            return BatchResult(job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, succeeded=True,
                               styled=message.styled, frames=message.batch.frame_count, worker=self.worker.name,
                               model_loads=self.worker.models.loads, delivery=delivery)
        with tempfile.TemporaryDirectory(prefix="batch-") as scratch:
            segment = Path(scratch) / posixpath.basename(message.segment)
            try:
                download_file(self.blobs, container, message.segment, segment)
            except ResourceNotFoundError:
                return self._gone(message, delivery, f"segment {message.segment} is gone (the job expired or was removed)")
            try:
                spec = self._model_spec(message)
            except ResourceNotFoundError:
                return self._gone(message, delivery, f"style image {message.style_image} is not in the {self.settings.styles_container} container")
            styled = Path(scratch) / posixpath.basename(message.styled)
            result = self.worker.style(message, segment, styled, delivery=delivery, spec=spec)
            if result.succeeded:
                upload_file(self.blobs, container, message.styled, styled, {"job_id": message.job_id})
        return result

    def _gone(self, message: BatchMessage, delivery: int, error: str) -> BatchResult:
        """A blob the batch needs is missing: that will not change, so the batch fails for good."""
        return BatchResult(job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, succeeded=False,
                           retryable=False, worker=self.worker.name, delivery=delivery, error=error)

    def _to_poison(self, queued) -> None:
        self.poison.send_message(queued.content)
        self._delete(queued.id, queued.pop_receipt)

    def _delete(self, message_id: str, pop_receipt: str) -> None:
        try:
            self.batches.delete_message(message_id, pop_receipt)
        except (ResourceNotFoundError, HttpResponseError) as exc:
            log.warning("message %s was taken over by another worker before it could be deleted (%s)", message_id, one_line(exc))
