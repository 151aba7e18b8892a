"""Function-app-only storage helpers: output names, the blob trigger's source, error reports.

Clients and the work-container layout are in :mod:`shared.storage`, shared with the workers.
"""

from __future__ import annotations

import json
import posixpath

import azure.functions as func

from shared.config import Settings
from shared.storage import blob_service


def output_names(input_blob: str, style: str, suffix: str = ".mp4") -> dict[str, str]:
    """Output blob names for an input: ``holiday/trip.mp4`` styled ``candy`` -> ``holiday/trip.candy.mp4`` and friends.

    ``suffix`` is the container :func:`shared.containers.output_container` picked for the input's tracks.
    """
    stem = posixpath.splitext(input_blob)[0]
    return {"video": f"{stem}.{style}{suffix}", "preview": f"{stem}.{style}.preview.png", "report": f"{stem}.{style}.report.json"}


def blob_trigger_source(settings: Settings) -> func.BlobSource:
    """Event Grid in Azure (Flex Consumption needs it); container polling for ``func start`` on Azurite."""
    return func.BlobSource.EVENT_GRID if settings.blob_trigger_source == "EventGrid" else func.BlobSource.LOGS_AND_CONTAINER_SCAN


def write_error_report(settings: Settings, input_blob: str, style: str, error: str, job_id: str | None = None) -> str:
    """A JSON error report where the output would have been (``<stem>.<style>.error.json``); never touches the input."""
    name = output_names(input_blob, style)["report"].replace(".report.json", ".error.json")
    body = json.dumps({"input": input_blob, "style": style, "status": "failed", "error": error, "job_id": job_id}, indent=2)
    blob_service(settings).get_blob_client(settings.output_container, name).upload_blob(body.encode(), overwrite=True)
    return name
