"""Orchestrations publish their progress twice: as the Durable custom status (the HTTP status endpoint, for tools) and
as the job's status document in the output container (:mod:`shared.job_status`, readable with the uploader's own role),
written by the ``publish_status`` activity."""

from __future__ import annotations

import azure.durable_functions as df

from shared.config import Settings
from shared.job_status import write_status
from shared.storage import blob_service

bp = df.Blueprint()
settings = Settings.from_env()
PUBLISH_ACTIVITY = "publish_status"


def status_update(context: df.DurableOrchestrationContext, about: dict, status: dict) -> tuple[str, dict]:
    """Set the custom status; returns the activity (name, input) that writes the same as the job's document, with
    ``about`` (the job's fixed facts: id, kind, input, style) and the orchestration's time."""
    context.set_custom_status(status)
    return PUBLISH_ACTIVITY, {**about, **status, "updated": context.current_utc_datetime.isoformat()}


def publish(context: df.DurableOrchestrationContext, about: dict, status: dict):
    """Set and publish ``status`` (``yield from``). A document that could not be written is left for the next change:
    it is a copy for readers, and the job goes on without it."""
    try:
        yield context.call_activity(*status_update(context, about, status))
    except Exception:  # the activity's failure, raised here by the SDK
        return


def publish_status(document: dict, limits: Settings = settings) -> str:
    return write_status(blob_service(limits), limits.output_container, document["job_id"], document)


@bp.function_name(PUBLISH_ACTIVITY)
@bp.activity_trigger(input_name="document")
def publish_status_activity(document: dict) -> str:
    return publish_status(document)
