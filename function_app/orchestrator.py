"""The orchestration: split, queue one message per batch, keep workers alive, fan in results, stitch.

Workers report each batch on the results queue, which becomes an external event (``batch_result``),
fanned in by :mod:`function_app.fan_in`: a batch that fails, or that has not reported when the
deadline timer fires, is resubmitted alone with the next attempt number, up to ``max_attempts``;
results of superseded attempts are ignored. An error that will repeat (``retryable`` false), or a
batch's last failed attempt, fails the orchestration at once, with its reason.
"""

from __future__ import annotations

import azure.durable_functions as df

from function_app.fan_in import ItemFailed, Progress, Work, WorkersUnavailable, collect, reason, workers_count
from function_app.publish import publish
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


def about(job: dict) -> dict:
    """The video job's fixed facts in its status document."""
    return {"job_id": job["job_id"], "kind": "video", "input": job.get("input_blob"), "style": job.get("style"),
            **({"temporal": job["temporal"]} if job.get("temporal") else {})}


def batch_work(job: dict, plan: dict) -> Work:
    """The video's batches for the fan-in: a batch that fails for good fails the job."""
    by_index = {batch["index"]: batch for batch in plan["batches"]}

    def status(done: dict, errors: list[str], workers: dict) -> dict:
        frames = sum(by_index[index]["frame_count"] for index in done)
        return _status("scoring", plan, len(done), frames, **({"errors": errors[-5:]} if errors else {}), workers=workers_count(workers))

    return Work(
        event=RESULT_EVENT, parse=BatchResult.from_dict, key=lambda result: result.batch, name=lambda index: f"batch {index}",
        submit=lambda indices, attempts: ("enqueue_batches", {"job": job, "frames": plan["frames"],
                                                               "batches": [{"batch": by_index[i], "attempt": attempts[i]} for i in indices]}),
        ensure_workers=lambda outstanding: {"outstanding": outstanding}, status=status, about=about(job))


@bp.orchestration_trigger(context_name="context")
def stylize_orchestrator(context: df.DurableOrchestrationContext):
    job = context.get_input()
    limits = {"max_attempts": settings.max_attempts, "timeout_s": settings.batch_timeout_s,
              "worker_check_s": settings.worker_check_s, **job.get("limits", {})}
    yield from publish(context, about(job), _status("splitting"))
    try:
        plan = yield context.call_activity("split_job", job)
    except Exception as exc:
        return (yield from _fail(context, job, None, f"split failed: {reason(exc)}"))

    progress = Progress(attempts={batch["index"]: 1 for batch in plan["batches"]})
    try:
        yield from collect(context, batch_work(job, plan), progress, limits)
    except (ItemFailed, WorkersUnavailable) as exc:
        return (yield from _fail(context, job, plan, str(exc), progress.errors))
    done, errors = progress.done, progress.errors
    frames_done = sum(batch["frame_count"] for batch in plan["batches"])
    yield from publish(context, about(job), _status("stitching", plan, len(done), frames_done))
    done_by = {index: {"worker": result.worker, "model_loads": result.model_loads, "seconds": result.seconds, "styler": result.styler,
                       "temporal": result.temporal} for index, result in done.items()}
    request = {"job": job, "plan": plan, "attempts": progress.attempts, "errors": errors, "done_by": done_by}
    try:
        outputs = yield context.call_activity("stitch_job", request)
    except Exception as exc:
        return (yield from _fail(context, job, plan, f"stitch failed: {reason(exc)}", errors))
    yield from publish(context, about(job), _status("done", plan, len(done), frames_done, output=outputs["video"], preview=outputs["preview"],
                                                   report=outputs["report"]))
    return outputs


def _fail(context: df.DurableOrchestrationContext, job: dict, plan: dict | None, why: str, errors: list[str] | None = None):
    report = yield context.call_activity("report_failure", {"job": job, "error": why})
    yield from publish(context, about(job), _status("failed", plan, error=why, errors=(errors or [])[-5:], error_report=report))
    raise RuntimeError(why)
