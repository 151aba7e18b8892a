"""Batch results (queue trigger on the results queue) and the status endpoint (of any orchestration)."""

from __future__ import annotations

import json
import logging

import azure.durable_functions as df
import azure.functions as func

from function_app.orchestrator import RESULT_EVENT
from shared.config import Settings
from shared.messages import BatchResult, MessageError, parsed, styled_name
from shared.names import check_job_id
from shared.storage import JobLayout

bp = df.Blueprint()
settings = Settings.from_env()
log = logging.getLogger(__name__)
ACTIVE = {df.OrchestrationRuntimeStatus.Running, df.OrchestrationRuntimeStatus.Pending}


async def deliver(client: df.DurableOrchestrationClient, instance_id: str, event: str, payload: dict, what: str) -> bool:
    """Raise a worker's result (``payload``, described by ``what``) as its orchestration's event; False if it was dropped.

    A result for an unknown orchestration raises, so the host retries it and then moves it to the
    poison queue; a result for one that has already ended is dropped.
    """
    status = await client.get_status(instance_id)
    if status is None or status.runtime_status is None:
        raise MessageError(f"{what} for unknown job {instance_id}")
    if status.runtime_status not in ACTIVE:
        log.info("job %s is %s; dropping %s", instance_id, status.runtime_status, what)
        return False
    await client.raise_event(instance_id, event, payload)
    return True


async def deliver_result(body: str, client: df.DurableOrchestrationClient) -> BatchResult | None:
    """A batch result from the results queue to its job's orchestration (a malformed one raises, see :func:`deliver`).

    A result is outside input too: its job id must be a video job's, and a styled segment it names must be the one
    its job's layout gives for its batch and attempt (the stitch derives the names again, and takes none from it)."""
    result = BatchResult.from_json(body)
    parsed("batch result", lambda: check_job_id(result.job_id))
    expected = JobLayout(result.job_id).styled(styled_name(result.batch, result.attempt))
    if result.styled is not None and result.styled != expected:
        raise MessageError(f"the result of batch {result.batch} attempt {result.attempt} names a styled segment that is not its own")
    what = f"the result of batch {result.batch} attempt {result.attempt}"
    return result if await deliver(client, result.job_id, RESULT_EVENT, result.to_dict(), what) else None


def describe(status) -> dict:
    custom = status.custom_status or {}
    if isinstance(custom, str):
        custom = json.loads(custom)
    runtime = status.runtime_status.value if status.runtime_status else None
    return {
        "job_id": status.instance_id,
        "runtime_status": runtime,
        **custom,
        "created": status.created_time.isoformat() if status.created_time else None,
        "last_updated": status.last_updated_time.isoformat() if status.last_updated_time else None,
        "output": status.output if runtime == "Completed" else custom.get("output"),
    }


@bp.queue_trigger(arg_name="message", queue_name=settings.result_queue, connection=settings.storage_connection)
@bp.durable_client_input(client_name="client")
async def on_batch_result(message: func.QueueMessage, client: df.DurableOrchestrationClient) -> None:
    await deliver_result(message.get_body().decode("utf-8", errors="replace"), client)


@bp.route(route="jobs/{job_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def job_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    status = await client.get_status(req.route_params["job_id"])
    if status is None or status.runtime_status is None:
        return func.HttpResponse(json.dumps({"error": "no such job"}), status_code=404, mimetype="application/json")
    return func.HttpResponse(json.dumps(describe(status)), mimetype="application/json")
