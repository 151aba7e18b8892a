"""Blob and queue access for the Function app: a connection string locally (Azurite), a managed identity in Azure.

The settings follow the Functions convention for a binding connection named ``DataStorage``:
``DataStorage`` holds a connection string, or ``DataStorage__blobServiceUri`` and
``DataStorage__queueServiceUri`` (plus ``DataStorage__clientId`` for a user-assigned identity) name
the endpoints reached with Microsoft Entra ID. The same setting drives the triggers and this code.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import azure.functions as func
from azure.storage.blob import BlobServiceClient, ContentSettings
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from shared.config import Settings
from shared.plan import Batch
from shared.split import SEGMENT_SUFFIX

CONTENT_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska", ".png": "image/png", ".json": "application/json"}


def _credential(prefix: str):
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=os.environ.get(f"{prefix}__clientId"))


def blob_service(settings: Settings) -> BlobServiceClient:
    name = settings.storage_connection
    if os.environ.get(name):
        return BlobServiceClient.from_connection_string(os.environ[name])
    return BlobServiceClient(os.environ[f"{name}__blobServiceUri"], credential=_credential(name))


def batch_queue(settings: Settings) -> QueueClient:
    """The batch queue, with Base64 text encoding: the encoding the Functions queue trigger expects by default."""
    name = settings.storage_connection
    codec = dict(message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy())
    if os.environ.get(name):
        return QueueClient.from_connection_string(os.environ[name], settings.batch_queue, **codec)
    url = f"{os.environ[f'{name}__queueServiceUri'].rstrip('/')}/{settings.batch_queue}"
    return QueueClient.from_queue_url(url, credential=_credential(name), **codec)


@dataclass(frozen=True)
class JobLayout:
    """Where a job's intermediate blobs live in the work container."""

    job_id: str

    @property
    def root(self) -> str:
        return f"jobs/{self.job_id}"

    def segment(self, batch: Batch) -> str:
        return f"{self.root}/segments/{batch.name}{SEGMENT_SUFFIX}"

    def styled(self, file_name: str) -> str:
        return f"{self.root}/styled/{file_name}"


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


def upload_file(service: BlobServiceClient, container: str, blob: str, path: Path, metadata: dict | None = None) -> str:
    """Upload ``path``; a block blob becomes visible only when its block list commits, so readers never see half of it."""
    content = ContentSettings(content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
    with path.open("rb") as data:
        service.get_blob_client(container, blob).upload_blob(data, overwrite=True, content_settings=content, metadata=metadata, max_concurrency=4)
    return blob


def download_file(service: BlobServiceClient, container: str, blob: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        service.get_blob_client(container, blob).download_blob(max_concurrency=4).readinto(out)
    return path
