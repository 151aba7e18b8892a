"""Batch submitter (queue trigger), completion path (blob trigger, Azure ML events) and the status endpoint."""

from __future__ import annotations

import json
import logging
import posixpath

import azure.durable_functions as df
import azure.functions as func

from function_app.compute import backend_for
from function_app.orchestrator import RESULT_EVENT
from function_app.storage import blob_service, blob_trigger_source
from shared.config import Settings
from shared.messages import BatchMessage, BatchResult, MessageError, parse_styled_name

bp = df.Blueprint()
settings = Settings.from_env()
log = logging.getLogger(__name__)
ACTIVE = {df.OrchestrationRuntimeStatus.Running, df.OrchestrationRuntimeStatus.Pending}
AML_FAILED_STATES = {"Failed", "Canceled", "NotResponding"}


async def submit_batch(body: str, client: df.DurableOrchestrationClient, backend=None) -> str | None:
    """Validate the message and submit it; a malformed message or unknown job raises, so the host retries then poisons it."""
    message = BatchMessage.from_json(body)
    status = await client.get_status(message.job_id)
    if status is None or status.runtime_status is None:
        raise MessageError(f"batch message for unknown job {message.job_id}")
    if status.runtime_status not in ACTIVE:
        log.info("job %s is %s; dropping %s attempt %d", message.job_id, status.runtime_status, message.batch.name, message.attempt)
        return None
    name = (backend or backend_for(settings)).submit(message)
    log.info("submitted %s attempt %d of %s as %s", message.batch.name, message.attempt, message.job_id, name)
    return name


async def report_styled_blob(job_id: str, file_name: str, client: df.DurableOrchestrationClient) -> BatchResult | None:
    """Turn a styled segment or failure marker written for a job into a ``batch_result`` event."""
    parsed = parse_styled_name(file_name)
    if parsed is None:
        return None
    index, attempt, failed = parsed
    blob = f"jobs/{job_id}/styled/{file_name}"
    error = None
    if failed:
        marker = blob_service(settings).get_blob_client(settings.work_container, blob).download_blob().readall()
        error = json.loads(marker).get("error", "scorer failed")
    result = BatchResult(batch=index, attempt=attempt, succeeded=not failed, styled_blob=None if failed else blob, error=error)
    await client.raise_event(job_id, RESULT_EVENT, result.to_dict())
    return result


async def report_azureml_status(event: dict, client: df.DurableOrchestrationClient) -> BatchResult | None:
    """An Azure ML run that ends badly never writes its output, so its status event reports the failure."""
    data = event.get("data") or {}
    tags = data.get("runTags") or {}
    if data.get("runStatus") not in AML_FAILED_STATES or "orchestration_id" not in tags:
        return None
    result = BatchResult(batch=int(tags["batch"]), attempt=int(tags["attempt"]), succeeded=False,
                         error=f"Azure ML job {data.get('runId')} {data.get('runStatus')}")
    await client.raise_event(tags["orchestration_id"], RESULT_EVENT, result.to_dict())
    return result


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


@bp.queue_trigger(arg_name="message", queue_name=settings.batch_queue, connection=settings.storage_connection)
@bp.durable_client_input(client_name="client")
async def on_batch_message(message: func.QueueMessage, client: df.DurableOrchestrationClient) -> None:
    await submit_batch(message.get_body().decode("utf-8", errors="replace"), client)


@bp.blob_trigger(
    arg_name="styled",
    path=f"{settings.work_container}/jobs/{{job}}/styled/{{file}}",
    connection=settings.storage_connection,
    source=blob_trigger_source(settings),
)
@bp.durable_client_input(client_name="client")
async def on_styled_segment(styled: func.InputStream, client: df.DurableOrchestrationClient) -> None:
    parts = styled.name.split("/")
    await report_styled_blob(parts[-3], posixpath.basename(styled.name), client)


@bp.event_grid_trigger(arg_name="event")
@bp.durable_client_input(client_name="client")
async def on_azureml_run_status(event: func.EventGridEvent, client: df.DurableOrchestrationClient) -> None:
    await report_azureml_status({"data": event.get_json()}, client)


@bp.route(route="jobs/{job_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def job_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    status = await client.get_status(req.route_params["job_id"])
    if status is None or status.runtime_status is None:
        return func.HttpResponse(json.dumps({"error": "no such job"}), status_code=404, mimetype="application/json")
    return func.HttpResponse(json.dumps(describe(status)), mimetype="application/json")
