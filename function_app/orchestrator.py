"""The orchestration: split, queue one message per batch, keep workers alive, fan in results, stitch.

Workers report each batch on the results queue, which becomes an external event (``batch_result``).
A batch that fails, or that has not reported when the deadline timer fires, is resubmitted alone
with the next attempt number, up to ``max_attempts``; results of superseded attempts are ignored.
An error that will repeat (``retryable`` false) fails the orchestration at once, with its reason.
Every ``worker_check_s`` the orchestration makes sure enough workers are alive (replacing any that
ended early).
"""

from __future__ import annotations

from datetime import timedelta

import azure.durable_functions as df

from shared.config import Settings
from shared.messages import BatchResult

bp = df.Blueprint()
settings = Settings.from_env()
RESULT_EVENT = "batch_result"


def _status(stage: str, plan: dict | None = None, done: int = 0, frames_done: int = 0, **extra) -> dict:
    status = {"stage": stage, "batches_done": done, "batches_total": len(plan["batches"]) if plan else 0,
              "frames_done": frames_done, "frames_total": plan["frames"] if plan else 0}
    status.update(extra)
    return status


@bp.orchestration_trigger(context_name="context")
def stylize_orchestrator(context: df.DurableOrchestrationContext):
    job = context.get_input()
    limits = {"max_attempts": settings.max_attempts, "batch_timeout_s": settings.batch_timeout_s,
              "worker_check_s": settings.worker_check_s, **job.get("limits", {})}
    context.set_custom_status(_status("splitting"))
    try:
        plan = yield context.call_activity("split_job", job)
    except Exception as exc:
        return (yield from _fail(context, job, None, f"split failed: {_reason(exc)}"))

    attempts = {batch["index"]: 1 for batch in plan["batches"]}
    by_index = {batch["index"]: batch for batch in plan["batches"]}
    yield context.call_activity("enqueue_batches", {"job": job, "batches": [{"batch": b, "attempt": 1} for b in plan["batches"]]})
    try:
        return (yield from _score_and_stitch(context, job, limits, plan, attempts, by_index))
    except WorkersUnavailable as exc:
        return (yield from _fail(context, job, plan, str(exc)))


def _score_and_stitch(context: df.DurableOrchestrationContext, job: dict, limits: dict, plan: dict, attempts: dict, by_index: dict):
    workers = yield from _ensure_workers(context, len(attempts))
    styled: dict[int, str] = {}
    done_by: dict[int, dict] = {}
    frames_done = 0
    errors: list[str] = []
    context.set_custom_status(_status("scoring", plan, workers=_count(workers)))
    deadline = context.create_timer(context.current_utc_datetime + timedelta(seconds=limits["batch_timeout_s"]))
    check = context.create_timer(context.current_utc_datetime + timedelta(seconds=limits["worker_check_s"]))
    event = None
    while len(styled) < len(attempts):
        # One waiter at a time: a waiter left open after a timeout would swallow the next event.
        event = event or context.wait_for_external_event(RESULT_EVENT)
        winner = yield context.task_any([event, deadline, check])
        if winner == check:
            workers = yield from _ensure_workers(context, len(attempts) - len(styled))
            context.set_custom_status(_status("scoring", plan, len(styled), frames_done, errors=errors[-5:], workers=_count(workers)))
            check = context.create_timer(context.current_utc_datetime + timedelta(seconds=limits["worker_check_s"]))
            continue
        if winner == deadline:
            late = sorted(index for index in attempts if index not in styled)
            errors.extend(f"batch {index} attempt {attempts[index]} timed out" for index in late)
            retry = late
        else:
            result, event = BatchResult.from_dict(event.result), None
            if result.batch not in attempts or result.attempt != attempts[result.batch] or result.batch in styled:
                continue
            if result.succeeded:
                styled[result.batch] = result.styled
                done_by[result.batch] = {"worker": result.worker, "model_loads": result.model_loads, "seconds": result.seconds,
                                         "styler": result.styler}
                frames_done += by_index[result.batch]["frame_count"]
                context.set_custom_status(_status("scoring", plan, len(styled), frames_done, errors=errors[-5:], workers=_count(workers)))
                continue
            errors.append(f"batch {result.batch} attempt {result.attempt} failed: {result.error}")
            if not result.retryable:
                _cancel(deadline, check)
                return (yield from _fail(context, job, plan, f"batch {result.batch} failed: {result.error}", errors))
            retry = [result.batch]
        exhausted = [index for index in retry if attempts[index] >= limits["max_attempts"]]
        if exhausted:
            _cancel(deadline, check)
            reason = f"batch {exhausted[0]} failed {attempts[exhausted[0]]} times; last: {errors[-1]}"
            return (yield from _fail(context, job, plan, reason, errors))
        for index in retry:
            attempts[index] += 1
        yield context.call_activity(
            "enqueue_batches", {"job": job, "batches": [{"batch": by_index[i], "attempt": attempts[i]} for i in retry]}
        )
        workers = yield from _ensure_workers(context, len(attempts) - len(styled))
        context.set_custom_status(_status("scoring", plan, len(styled), frames_done, errors=errors[-5:], workers=_count(workers)))
        if winner == deadline:
            deadline = context.create_timer(context.current_utc_datetime + timedelta(seconds=limits["batch_timeout_s"]))
    _cancel(deadline, check)

    context.set_custom_status(_status("stitching", plan, len(styled), frames_done))
    request = {"job": job, "plan": plan, "styled": [styled[index] for index in sorted(styled)], "attempts": attempts, "errors": errors,
               "done_by": done_by}
    try:
        outputs = yield context.call_activity("stitch_job", request)
    except Exception as exc:
        return (yield from _fail(context, job, plan, f"stitch failed: {_reason(exc)}", errors))
    context.set_custom_status(_status("done", plan, len(styled), frames_done, output=outputs["video"], preview=outputs["preview"], report=outputs["report"]))
    return outputs


class WorkersUnavailable(Exception):
    """Workers could not be started (the compute service refused or failed): the job cannot progress."""


def _ensure_workers(context: df.DurableOrchestrationContext, outstanding: int):
    try:
        return (yield context.call_activity("ensure_workers", {"outstanding": outstanding}))
    except Exception as exc:
        raise WorkersUnavailable(f"could not start workers: {_reason(exc)}") from None


def _count(workers: dict) -> int:
    return len(workers["running"]) + len(workers["started"])


def _cancel(*timers) -> None:
    for timer in timers:
        if not timer.is_completed:
            timer.cancel()


def _reason(exc: Exception) -> str:
    """The activity's own message: the Durable SDK wraps it as 'Reason \\n Details'."""
    text = str(exc).strip()
    return text.split("\n")[0].strip() or type(exc).__name__


def _fail(context: df.DurableOrchestrationContext, job: dict, plan: dict | None, reason: str, errors: list[str] | None = None):
    report = yield context.call_activity("report_failure", {"job": job, "error": reason})
    context.set_custom_status(_status("failed", plan, error=reason, errors=(errors or [])[-5:], error_report=report))
    raise RuntimeError(reason)
