"""The queue worker's feed (gpu_job/queue_worker.py), stepped with a stand-in for the queue: which messages a worker
takes ahead, when it stops for idleness, and that a storage error while answering loses nothing else."""

from __future__ import annotations

import time
from collections import deque

from gpu_job.queue_worker import QueueFeed, QueueItem


class _Keeper:
    def stop(self) -> str:
        return "receipt"


class _Queued:
    def __init__(self, message_id: str, delivery: int) -> None:
        self.id, self.dequeue_count, self.pop_receipt = message_id, delivery, "receipt"


class _Result:
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id

    def to_json(self) -> str:
        return self.message_id


class _Results:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_message(self, content: str) -> None:
        self.sent.append(content)


class _Queue:
    """Messages (id, delivery) to hand out; ``fetch_s``: how long the handler's fetch of each takes."""

    def __init__(self, messages: list[tuple[str, int]], fetch_s: float = 0.0, delete_fails: bool = False) -> None:
        self.messages, self.fetch_s, self.delete_fails = deque(messages), fetch_s, delete_fails
        self.results, self.deleted = _Results(), []
        self.handler = self

    def take(self) -> QueueItem | None:
        if not self.messages:
            return None
        message_id, delivery = self.messages.popleft()
        return QueueItem(self, _Queued(message_id, delivery), message_id, _Keeper())

    def fetch(self, message: str, delivery: int) -> tuple[str, None]:
        time.sleep(self.fetch_s)
        return message, None

    def delete(self, message_id: str, pop_receipt: str) -> None:
        if self.delete_fails:
            raise ConnectionError("storage unreachable")
        self.deleted.append(message_id)


def _drain(feed: QueueFeed) -> list[str]:
    done = []
    while (item := feed.next()) is not None:
        done.append(item.message)
        item.answer(_Result(item.message))
    return done


def test_a_fetch_longer_than_the_idle_time_does_not_stop_the_worker():
    stand_in = _Queue([("a", 1), ("b", 1), ("c", 1)], fetch_s=1.5)
    assert _drain(QueueFeed(stand_in, idle_s=1, ahead=True)) == ["a", "b", "c"]
    assert stand_in.deleted == ["a", "b", "c"]


def test_the_next_message_is_taken_ahead_but_not_behind_a_redelivered_one():
    stand_in = _Queue([("a", 1), ("b", 1), ("c", 2), ("d", 1)])
    feed = QueueFeed(stand_in, idle_s=1, ahead=True)
    a = feed.next()
    time.sleep(0.3)
    b = feed.next(wait=False)
    assert (a.message, b and b.message) == ("a", "b"), "b was taken while a was held"
    time.sleep(0.3)
    assert feed.next(wait=False) is None, "nothing beyond two"
    a.answer(_Result("a"))
    time.sleep(0.3)
    assert feed.next(wait=False) is None, "c, delivered before, waits until the worker holds nothing else"
    b.answer(_Result("b"))
    c = feed.next()
    time.sleep(0.3)
    assert c.message == "c" and feed.next(wait=False) is None, "and nothing is taken behind it"
    c.answer(_Result("c"))
    assert _drain(feed) == ["d"]


def test_a_delete_that_fails_loses_no_other_message():
    stand_in = _Queue([("a", 1), ("b", 1)], delete_fails=True)
    assert _drain(QueueFeed(stand_in, idle_s=1, ahead=True)) == ["a", "b"]
    assert stand_in.results.sent == ["a", "b"], "each result posted; the messages reappear and their second results are ignored"


def test_without_taking_ahead_a_message_is_taken_when_asked_for():
    stand_in = _Queue([("a", 1), ("b", 1)])
    feed = QueueFeed(stand_in, idle_s=1, ahead=False)
    a = feed.next()
    assert a.message == "a" and feed.next(wait=False) is None and list(stand_in.messages) == [("b", 1)]
    a.answer(_Result("a"))
    assert _drain(feed) == ["b"]
