"""Queue mode: drain a work queue until idle, each item done once, none lost.

The same loop serves every kind of work (video batches, model shards; :mod:`shared.work`): a worker
takes one message at a time and keeps it invisible while its handler works (renewing the
visibility timeout), posts the item's result on the kind's results queue, and only then deletes the
message. If the worker dies, the message reappears after its visibility timeout and another worker
does the item. A message delivered more than ``max_deliveries`` times (its workers died each time)
goes to the poison queue and its item is reported failed for good, so the orchestration learns why.
An item whose job or run has ended (its ``closed`` marker) is dropped.
"""

from __future__ import annotations

import logging
import threading
import time

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from gpu_job.worker import WorkHandler, one_line
from shared.config import Settings
from shared.messages import MessageError
from shared.storage import queue_client

log = logging.getLogger("gpu_job.queue")
POLL_MIN_S, POLL_MAX_S = 0.5, 5.0


class VisibilityKeeper(threading.Thread):
    """Keeps a taken message invisible while its item is worked on; holds the latest pop receipt."""

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
    def __init__(self, handler: WorkHandler, settings: Settings) -> None:
        self.handler, self.settings = handler, settings
        work, results, poison = handler.kind.queues(settings)
        self.work = queue_client(settings, work)
        self.results = queue_client(settings, results)
        self.poison_name = poison
        self.poison = queue_client(settings, poison)

    def serve(self, idle_s: float) -> int:
        """Take items until none has come for ``idle_s`` seconds; returns how many messages were handled."""
        handled, idle_since, pause = 0, time.monotonic(), POLL_MIN_S
        while True:
            queued = self.work.receive_message(visibility_timeout=self.settings.visibility_timeout_s)
            if queued is None:
                if time.monotonic() - idle_since >= idle_s:
                    log.info("idle for %.0f s after %d %s messages; stopping", idle_s, handled, self.handler.kind.name)
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

    def handle(self, queued):
        """Do one queue message; returns the result posted (None when none was)."""
        kind = self.handler.kind
        try:
            message = kind.parse(queued.content)
        except MessageError as exc:
            log.error("malformed %s message %s moved to %s: %s", kind.name, queued.id, self.poison_name, exc)
            self._to_poison(queued)
            return None
        label = kind.label(message)
        if queued.dequeue_count > self.settings.max_deliveries:
            result = self.handler.failure(
                message, (f"{label} attempt {message.attempt} was delivered {queued.dequeue_count - 1} times and its worker "
                          f"stopped each time (killed, out of memory or pre-empted); moved to {self.poison_name}"),
                queued.dequeue_count)
            self.results.send_message(result.to_json())
            self._to_poison(queued)
            return result
        if self.handler.closed(message):
            log.info("%s attempt %d belongs to a job that has ended; dropped", label, message.attempt)
            self.work.delete_message(queued.id, queued.pop_receipt)
            return None
        keeper = VisibilityKeeper(self.work, queued, self.settings.visibility_timeout_s)
        keeper.start()
        try:
            log.info("working on %s attempt %d (delivery %d)", label, message.attempt, queued.dequeue_count)
            result = self.handler.queued(message, queued.dequeue_count)
            self.results.send_message(result.to_json())
        finally:
            pop_receipt = keeper.stop()
        self._delete(queued.id, pop_receipt)
        return result

    def _to_poison(self, queued) -> None:
        self.poison.send_message(queued.content)
        self._delete(queued.id, queued.pop_receipt)

    def _delete(self, message_id: str, pop_receipt: str) -> None:
        try:
            self.work.delete_message(message_id, pop_receipt)
        except (ResourceNotFoundError, HttpResponseError) as exc:
            log.warning("message %s was taken over by another worker before it could be deleted (%s)", message_id, one_line(exc))
