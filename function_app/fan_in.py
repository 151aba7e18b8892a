"""The fan-in every orchestration shares: items on a work queue, workers kept alive, results as events.

Workers report each item on a results queue, which becomes an external event. An item that fails,
or that has not reported when the deadline timer fires, is resubmitted alone with the next attempt
number, up to ``max_attempts``; results of superseded attempts are ignored, and so are duplicates.
An item that fails for good (an error that will repeat, or its last attempt) either fails the
whole orchestration (video: a missing batch spoils the video) or is kept as failed while the others
go on (model shards), as the :class:`Work` says. Every ``worker_check_s`` the orchestration makes
sure enough workers are alive (replacing any that ended early).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import timedelta

import azure.durable_functions as df

from function_app.publish import status_update
from shared.errors import public


class WorkersUnavailable(Exception):
    """Workers could not be started (the compute service refused or failed): the job cannot progress."""


class ItemFailed(Exception):
    """An item failed for good, and the work fails with it."""


@dataclass(frozen=True)
class Work:
    """What the fan-in needs to know of one orchestration's items."""

    event: str
    """The external event that carries a result."""
    parse: Callable[[dict], object]
    """A result from the event's payload."""
    key: Callable[[object], Hashable]
    """The item a result is for."""
    name: Callable[[Hashable], str]
    """An item, for the errors list ("batch 3")."""
    submit: Callable[[list, dict], tuple[str, dict]]
    """The activity (name, input) that queues the given items at their current attempts: all of them at first, a retry alone later."""
    ensure_workers: Callable[[int], dict]
    """The ensure_workers activity's input for this many outstanding items."""
    status: Callable[[dict, list[str], dict], dict]
    """Custom status while collecting, from (done results by item, errors, workers)."""
    about: dict
    """The job's fixed facts for its status document (:func:`function_app.publish.status_update`)."""
    give_up: Callable[[Hashable, str], object] | None = None
    """The result to keep for an item that failed for good; None: such an item fails the work (:class:`ItemFailed`)."""


@dataclass
class Progress:
    """The items' attempts, and the results kept so far (filled in as they come, so a caller that catches
    :class:`WorkersUnavailable` still has them)."""

    attempts: dict
    done: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    workers: dict = field(default_factory=lambda: {"running": [], "started": []})


class _Inbox:
    """The results, with a waiter for the next one always open (also while an activity runs).

    The Durable Python SDK keeps an event that arrives while no waiter is open as the answer to
    every later waiter of that name, and keeps only the last such event
    (Azure/azure-functions-durable-python issue 507): with a waiter always open, none arrives so.
    """

    def __init__(self, context: df.DurableOrchestrationContext, work: Work) -> None:
        self.context, self.work = context, work
        self.waiter = context.wait_for_external_event(work.event)
        self.arrived: deque = deque()

    def take(self) -> None:
        """Keep the result the waiter got, and open the next waiter."""
        self.arrived.append(self.work.parse(self.waiter.result))
        self.waiter = self.context.wait_for_external_event(self.work.event)

    def call(self, name: str, payload: dict):
        """An activity's result, taking the results that arrive meanwhile."""
        task = self.context.call_activity(name, payload)
        while (yield self.context.task_any([task, self.waiter])) is not task:
            self.take()
        return (yield task)  # completed: its result, or its failure raised here

    def publish(self, status: dict):
        """Set and publish the status (as :func:`function_app.publish.publish`, taking results meanwhile)."""
        try:
            yield from self.call(*status_update(self.context, self.work.about, status))
        except Exception:  # a document not written is left for the next change
            return

    def ensure_workers(self, outstanding: int):
        try:
            return (yield from self.call("ensure_workers", self.work.ensure_workers(outstanding)))
        except Exception as exc:
            raise WorkersUnavailable(f"could not start workers: {reason(exc)}") from None


def collect(context: df.DurableOrchestrationContext, work: Work, progress: Progress, limits: dict):
    """Queue the items (all of them at their attempts in ``progress``, with ``work.submit``), keep workers alive
    and take results until every item is done (or given up).

    ``limits``: ``max_attempts``, ``timeout_s`` (deadline for outstanding items), ``worker_check_s``.
    Raises :class:`ItemFailed` (work without ``give_up``) or :class:`WorkersUnavailable`.
    """
    attempts, done, errors = progress.attempts, progress.done, progress.errors
    last_error: dict = {}
    inbox = _Inbox(context, work)
    yield from inbox.call(*work.submit(list(attempts), attempts))
    progress.workers = yield from inbox.ensure_workers(len(attempts))
    yield from inbox.publish(work.status(done, errors, progress.workers))
    deadline = context.create_timer(context.current_utc_datetime + timedelta(seconds=limits["timeout_s"]))
    check = context.create_timer(context.current_utc_datetime + timedelta(seconds=limits["worker_check_s"]))
    while len(done) < len(attempts):
        winner = None
        if not inbox.arrived:
            winner = yield context.task_any([inbox.waiter, deadline, check])
            if winner is inbox.waiter:
                inbox.take()
        if winner is check:
            progress.workers = yield from inbox.ensure_workers(len(attempts) - len(done))
            yield from inbox.publish(work.status(done, errors, progress.workers))
            check = context.create_timer(context.current_utc_datetime + timedelta(seconds=limits["worker_check_s"]))
            continue
        if winner is deadline:
            late = sorted(key for key in attempts if key not in done)
            for key in late:
                last_error[key] = f"{work.name(key)} attempt {attempts[key]} timed out"
                errors.append(last_error[key])
            retry = late
        else:
            result = inbox.arrived.popleft()
            key = work.key(result)
            if key not in attempts or result.attempt != attempts[key] or key in done:
                continue
            if result.succeeded:
                done[key] = result
                yield from inbox.publish(work.status(done, errors, progress.workers))
                continue
            last_error[key] = public(f"{work.name(key)} attempt {result.attempt} failed: {result.error}")
            errors.append(last_error[key])
            if not result.retryable:
                if work.give_up is None:
                    _cancel(deadline, check)
                    raise ItemFailed(public(f"{work.name(key)} failed: {result.error}"))
                done[key] = result
                yield from inbox.publish(work.status(done, errors, progress.workers))
                continue
            retry = [key]
        exhausted = [key for key in retry if attempts[key] >= limits["max_attempts"]]
        if exhausted and work.give_up is None:
            _cancel(deadline, check)
            raise ItemFailed(f"{work.name(exhausted[0])} failed {attempts[exhausted[0]]} times; last: {last_error[exhausted[0]]}")
        for key in exhausted:
            done[key] = work.give_up(key, f"failed {attempts[key]} times; last: {last_error[key]}")
        retry = [key for key in retry if key not in exhausted]
        if retry:
            for key in retry:
                attempts[key] += 1
            yield from inbox.call(*work.submit(retry, attempts))
            progress.workers = yield from inbox.ensure_workers(len(attempts) - len(done))
        yield from inbox.publish(work.status(done, errors, progress.workers))
        if winner is deadline and len(done) < len(attempts):
            deadline = context.create_timer(context.current_utc_datetime + timedelta(seconds=limits["timeout_s"]))
    _cancel(deadline, check)


def workers_count(workers: dict) -> int:
    return len(workers["running"]) + len(workers["started"])


def _cancel(*timers) -> None:
    for timer in timers:
        if not timer.is_completed:
            timer.cancel()


def reason(exc: Exception) -> str:
    """The activity's own message, fit to show (:func:`shared.errors.public`): the Durable SDK wraps it as
    'Reason \\n Details'."""
    text = str(exc).strip()
    return public(text.split("\n")[0].strip()) or type(exc).__name__
