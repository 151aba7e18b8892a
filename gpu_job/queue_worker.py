"""Queue mode: drain a work queue until idle, each item done once, none lost.

The same loop serves every kind of work (video batches, model shards; :mod:`shared.work`): a worker
takes a message and keeps it invisible while its handler works (renewing the visibility timeout),
posts the item's result on the kind's results queue, and only then deletes the message. If the
worker dies, the message reappears after its visibility timeout and another worker does the item.
A message delivered more than ``max_deliveries`` times (its workers died each time) goes to the
poison queue and its item is reported failed for good, so the orchestration learns why. An item
whose job or run has ended (its ``closed`` marker) is dropped.

A handler that streams its items (batches: ``queue_ahead``) gets the next one taken, and what it
needs fetched (the segment downloaded), while it works on the last; it then holds two messages.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from gpu_job.worker import Handoff, WorkHandler, one_line
from shared.config import Settings
from shared.storage import queue_client

log = logging.getLogger("gpu_job.queue")
POLL_MIN_S, POLL_MAX_S = 0.5, 5.0
POISON_TEXT_MAX = 48 * 1024
"""The most of a message's text the poison queue takes whole: 64 KiB once Base64-encoded."""
ITEMS_AHEAD = 1
"""Messages a streaming handler's worker takes beyond the one it works on."""


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
                except AzureError as exc:  # storage unreachable for now: the next renewal may get through in time
                    log.warning("could not renew message %s (%s); trying again", self._id, one_line(exc))

    def stop(self) -> str:
        """Stop renewing; returns the pop receipt to delete the message with."""
        with self._lock:
            self._stopped.set()
        self.join()
        return self.pop_receipt


class QueueItem:
    """A message taken from the work queue, held invisible until :meth:`answer` (or :meth:`leave`); ``work`` is
    what the handler fetched for it."""

    def __init__(self, worker: QueueWorker, queued, message, keeper: VisibilityKeeper) -> None:
        self._worker, self._queued, self._keeper = worker, queued, keeper
        self.message, self.delivery = message, queued.dequeue_count
        self.work: Any = None
        self.on_settled: Callable[[QueueItem], None] = lambda item: None

    def answer(self, result) -> None:
        """Post the result, then delete the message; if storage refuses the result, the message reappears and is done
        again (if it refuses the delete, the result is posted and the orchestration ignores the second one)."""
        try:
            self._worker.results.send_message(result.to_json())
        except Exception as exc:  # noqa: BLE001 - storage unreachable and the like
            self.leave(one_line(exc))
            return
        try:
            self._worker.delete(self._queued.id, self._keeper.stop())
        except Exception as exc:  # noqa: BLE001 - likewise
            log.error("message %s answered but not deleted: %s", self._queued.id, one_line(exc))
        finally:
            self.on_settled(self)

    def leave(self, why: str) -> None:
        """Let the message reappear for another delivery, without a result."""
        log.error("message %s left for another delivery: %s", self._queued.id, why)
        try:
            self._keeper.stop()
        finally:
            self.on_settled(self)


class QueueFeed:
    """The work queue's items, as a handler takes them; ends once the handler holds none and the queue has been empty
    for ``idle_s`` seconds.

    With ``ahead``, a thread takes the next item, and has the handler fetch it, while the handler works on the
    last: the worker then holds two messages. A worker that dies holding two uses up a delivery of both, so a
    message delivered before (one whose worker may have died of it) is held alone: nothing is taken behind it,
    and it waits until the worker holds nothing else. Without ``ahead`` (or where a message may be delivered
    only once: ``max_deliveries`` 1), an item is taken and fetched when asked for. Either way, an item with
    nothing to do (its result known from the fetch) is answered there and never offered.
    """

    def __init__(self, worker: QueueWorker, idle_s: float, ahead: bool) -> None:
        self._worker, self._idle_s = worker, idle_s
        self.handled = 0
        self._ready: Handoff[QueueItem] = Handoff()
        self._held: list[QueueItem] = []
        """Taken and not yet settled: ready, or with the handler."""
        self._changed = threading.Condition()
        self._idle_since = time.monotonic()
        self._taker: threading.Thread | None = None
        if ahead:
            self._taker = threading.Thread(target=self._take_ahead, daemon=True)
            self._taker.start()

    def next(self, wait: bool = True) -> QueueItem | None:
        """The next item; None once the feed has ended, or (``wait`` False) when none is ready."""
        if self._taker is None:
            self._idle_since = time.monotonic()
            return self._take(self._idle) if wait else None
        return self._ready.next(wait)

    def _take_ahead(self) -> None:
        try:
            while (item := self._take(self._idle)) is not None:
                with self._changed:
                    if item.delivery > 1:  # held alone: once the items before it are done
                        self._changed.wait_for(lambda: not self._held)
                    self._held.append(item)
                item.on_settled = self._settled
                self._ready.put(item)
                with self._changed:
                    self._changed.wait_for(lambda: len(self._held) <= ITEMS_AHEAD and all(held.delivery == 1 for held in self._held))
        finally:
            self._ready.end()

    def _idle(self) -> bool:
        """The worker holds no item, and has taken none for ``idle_s`` seconds."""
        with self._changed:
            return not self._held and time.monotonic() - self._idle_since >= self._idle_s

    def _settled(self, item: QueueItem) -> None:
        with self._changed:
            self._held.remove(item)
            if not self._held:
                self._idle_since = time.monotonic()
            self._changed.notify_all()

    def _take(self, give_up: Callable[[], bool]) -> QueueItem | None:
        """Take messages until one has work to do (fetched); None once ``give_up()`` says so while the queue is empty."""
        pause = POLL_MIN_S
        while True:
            try:
                item = self._worker.take()
            except Exception as exc:  # noqa: BLE001 - storage unreachable and the like: try again after a pause
                log.error("could not take a message: %s", one_line(exc))
                item = None
            if item is not None:
                self.handled += 1
                self._idle_since = time.monotonic()
                if isinstance(item, QueueItem) and self._fetch(item):
                    return item
                pause = POLL_MIN_S
            elif give_up():
                return None
            else:
                time.sleep(pause)
                pause = min(2 * pause, POLL_MAX_S)

    def _fetch(self, item: QueueItem) -> bool:
        """Have the handler fetch the item; False when that settled it."""
        try:
            item.work, result = self._worker.handler.fetch(item.message, item.delivery)
        except Exception as exc:  # noqa: BLE001 - storage refused: another delivery may do better
            item.leave(one_line(exc))
            return False
        if result is not None:
            item.answer(result)
            return False
        return True


class QueueWorker:
    def __init__(self, handler: WorkHandler, settings: Settings) -> None:
        self.handler, self.settings = handler, settings
        work, results, poison = handler.kind.queues(settings)
        self.work = queue_client(settings, work, decode=False)
        """Read undecoded: a body that is not Base64 must be poisoned here, not fail every receive."""
        self.results = queue_client(settings, results)
        self.poison_name = poison
        self.poison = queue_client(settings, poison)

    def serve(self, idle_s: float) -> int:
        """Do items until none has come for ``idle_s`` seconds; returns how many messages were handled."""
        feed = QueueFeed(self, idle_s, self.handler.queue_ahead and self.settings.max_deliveries > 1)
        self.handler.serve_queue(feed)
        log.info("idle for %.0f s after %d %s messages; stopping", idle_s, feed.handled, self.handler.kind.name)
        return feed.handled

    def take(self) -> QueueItem | bool | None:
        """Receive a message: None when the queue is empty; True when it was settled here (malformed, delivered too
        often, or of a job that has ended); else the item to do, held invisible."""
        queued = self.work.receive_message(visibility_timeout=self.settings.visibility_timeout_s)
        if queued is None:
            return None
        kind = self.handler.kind
        try:
            message = self.handler.check_queued(kind.parse(_decoded(queued.content)))
            label = kind.label(message)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with a message, it will be wrong again: never retried
            log.error("malformed %s message %s moved to %s: %s", kind.name, queued.id, self.poison_name, one_line(exc))
            self._to_poison(queued)
            return True
        if queued.dequeue_count > self.settings.max_deliveries:
            result = self.handler.failure(
                message, (f"{label} attempt {message.attempt} was delivered {queued.dequeue_count - 1} times and its worker "
                          f"stopped each time (killed, out of memory or pre-empted); moved to {self.poison_name}"),
                queued.dequeue_count)
            try:
                self.results.send_message(result.to_json())
            except Exception as exc:  # noqa: BLE001 - the item's deadline reports it instead; the message must not come back
                log.error("could not report %s as failed (%s); its orchestration's deadline will", label, one_line(exc))
            self._to_poison(queued)
            return True
        if self.handler.closed(message):
            log.info("%s attempt %d belongs to a job that has ended; dropped", label, message.attempt)
            self.work.delete_message(queued.id, queued.pop_receipt)
            return True
        keeper = VisibilityKeeper(self.work, queued, self.settings.visibility_timeout_s)
        keeper.start()
        log.info("taken: %s attempt %d (delivery %d)", label, message.attempt, queued.dequeue_count)
        return QueueItem(self, queued, message, keeper)

    def _to_poison(self, queued) -> None:
        """Keep the message's body, as it was sent, in the poison queue (its start, where the whole would not fit one
        message once encoded again); then delete it here, even if the poison queue refused it: a message that cannot
        be acted on must not come back."""
        body = _decoded(queued.content, strict=False)
        if len(body.encode("utf-8", "surrogatepass")) > POISON_TEXT_MAX:
            body = f"{body[:1000]}... (message {queued.id}: {len(body)} characters, cut)"
        try:
            self.poison.send_message(body)
        except Exception as exc:  # noqa: BLE001 - storage refused: the message is dropped, and said so in the log
            log.error("could not keep message %s in %s (%s); dropped", queued.id, self.poison_name, one_line(exc))
        self.delete(queued.id, queued.pop_receipt)

    def delete(self, message_id: str, pop_receipt: str) -> None:
        try:
            self.work.delete_message(message_id, pop_receipt)
        except (ResourceNotFoundError, HttpResponseError) as exc:
            log.warning("message %s was taken over by another worker before it could be deleted (%s)", message_id, one_line(exc))


def _decoded(content: str, strict: bool = True) -> str:
    """A message's text, sent Base64-encoded (the Functions convention); not strict: the body as it came when it is not
    Base64 text."""
    try:
        return base64.b64decode(content, validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        if strict:
            raise ValueError("the body is not Base64-encoded UTF-8 text") from None
        return content
