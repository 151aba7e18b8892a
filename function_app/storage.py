"""Function-app-only storage helpers: output names, the blob trigger's source, error reports.

Clients and the work-container layout are in :mod:`shared.storage`, shared with the workers.
"""

from __future__ import annotations

import hashlib
import json

import azure.functions as func
from azure.core.exceptions import ResourceNotFoundError

from gpu_job.styles import STYLE_IMAGE_MAX_BYTES, check_style_image, is_known_style
from shared.config import Settings
from shared.errors import InvalidInputError, public
from shared.job_status import output_names  # noqa: F401  (the activities and tests take it from here)
from shared.names import UPLOAD_NAME_MAX_CHARS, UnsafeNameError, check_blob_name
from shared.storage import blob_service, read_blob_within


def error_report_name(input_blob: str, style: str) -> str:
    """Where an upload's error report goes: beside its outputs (``<name>.<style>.error.json``) when the name is a safe
    upload name and the style a known one; else ``refused/<hash of both>.error.json``, so that neither can steer the
    report into another folder or container."""
    try:
        check_blob_name(input_blob, "upload name", UPLOAD_NAME_MAX_CHARS)
    except UnsafeNameError:
        known = False
    else:
        known = is_known_style(style)
    if not known:
        digest = hashlib.sha256(f"{input_blob}\n{style}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"refused/{digest}.error.json"
    return f"{input_blob}.{style}.error.json"


def blob_trigger_source(settings: Settings) -> func.BlobSource:
    """Event Grid in Azure (Flex Consumption needs it); container polling for ``func start`` on Azurite."""
    return func.BlobSource.EVENT_GRID if settings.blob_trigger_source == "EventGrid" else func.BlobSource.LOGS_AND_CONTAINER_SCAN


def write_error_report(settings: Settings, input_blob: str, style: str, error: str, job_id: str | None = None) -> str:
    """A JSON error report where the output would have been (:func:`error_report_name`); never touches the input."""
    name = error_report_name(input_blob, style)
    body = json.dumps({"input": input_blob, "style": style, "status": "failed", "error": public(error), "job_id": job_id}, indent=2)
    blob_service(settings).get_blob_client(settings.output_container, name).upload_blob(body.encode(), overwrite=True)
    return name


def read_style_picture(settings: Settings, name: str) -> bytes:
    """The upload's style picture (metadata ``style_image``: a blob in the styles container), checked: a plain name,
    at most :data:`gpu_job.styles.STYLE_IMAGE_MAX_BYTES` by its properties before it is read, that version only, and an
    accepted format within the megapixel bound by its header. Raises a one-line InvalidInputError."""
    check_blob_name(name, "metadata style_image")
    try:
        data = read_blob_within(blob_service(settings), settings.styles_container, name, STYLE_IMAGE_MAX_BYTES, f"style image {name}")
    except ResourceNotFoundError:
        raise InvalidInputError(f"style image {name}: no such blob in container {settings.styles_container}") from None
    check_style_image(data, name, settings.max_style_megapixels)
    return data
