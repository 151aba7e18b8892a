"""Blob and queue access for the Function app and the workers: a connection string locally (Azurite),
a managed identity in Azure.

The settings follow the Functions convention for a binding connection named ``DataStorage``:
``DataStorage`` holds a connection string, or ``DataStorage__blobServiceUri`` and
``DataStorage__queueServiceUri`` (plus ``DataStorage__clientId`` for a user-assigned identity) name
the endpoints reached with Microsoft Entra ID. The same settings drive the triggers, the app's own
clients and the workers (which get them as environment variables).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobServiceClient, ContentSettings
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from shared.config import Settings
from shared.errors import InvalidInputError
from shared.plan import Batch

CONTENT_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska", ".png": "image/png", ".json": "application/json"}
IDENTITY_SETTINGS = ("blobServiceUri", "queueServiceUri", "credential", "clientId")
RUNS_FOLDER = "runs"
CLOSED_MARKER = "closed"
"""Written in a job's or a run's folder when it ends: workers then skip its leftover messages."""


def _credential(prefix: str):
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=os.environ.get(f"{prefix}__clientId"))


def connection_env(settings: Settings) -> dict[str, str]:
    """The environment variables that carry the storage connection to another process (a worker)."""
    name = settings.storage_connection
    keys = [name, *(f"{name}__{suffix}" for suffix in IDENTITY_SETTINGS)]
    return {key: os.environ[key] for key in keys if os.environ.get(key)}


def blob_service(settings: Settings) -> BlobServiceClient:
    name = settings.storage_connection
    if os.environ.get(name):
        return BlobServiceClient.from_connection_string(os.environ[name])
    return BlobServiceClient(os.environ[f"{name}__blobServiceUri"], credential=_credential(name))


def queue_client(settings: Settings, queue: str, decode: bool = True) -> QueueClient:
    """A queue with Base64 text encoding: the encoding the Functions queue trigger expects by default. Without
    ``decode``, received messages' bodies come as sent (for a reader that must survive a body that is not Base64)."""
    name = settings.storage_connection
    codec = dict(message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy() if decode else None)
    if os.environ.get(name):
        return QueueClient.from_connection_string(os.environ[name], queue, **codec)
    url = f"{os.environ[f'{name}__queueServiceUri'].rstrip('/')}/{queue}"
    return QueueClient.from_queue_url(url, credential=_credential(name), **codec)


@dataclass(frozen=True)
class JobLayout:
    """Where a job's intermediate blobs live in the work container."""

    job_id: str

    @property
    def root(self) -> str:
        return f"jobs/{self.job_id}"

    @property
    def closed_marker(self) -> str:
        """Written when the job ends (done or failed): workers then skip its leftover messages."""
        return f"{self.root}/{CLOSED_MARKER}"

    @property
    def style_picture(self) -> str:
        """The job's style picture (model ``arbitrary``), copied here once checked: workers read this one, never a name
        a message gives, and a picture replaced in the styles container later changes no running job."""
        return f"{self.root}/style.picture"

    def segment(self, batch: Batch) -> str:
        from shared.split import SEGMENT_SUFFIX  # here: splitting needs PyAV, which a shard worker's image has not

        return f"{self.root}/segments/{batch.name}{SEGMENT_SUFFIX}"

    def styled(self, file_name: str) -> str:
        return f"{self.root}/styled/{file_name}"


def close_job(service: BlobServiceClient, settings: Settings, job_id: str) -> None:
    try:
        service.get_blob_client(settings.work_container, JobLayout(job_id).closed_marker).upload_blob(b"", overwrite=False)
    except ResourceExistsError:
        pass


def job_closed(service: BlobServiceClient, settings: Settings, job_id: str) -> bool:
    return service.get_blob_client(settings.work_container, JobLayout(job_id).closed_marker).exists()


def upload_file(service: BlobServiceClient, container: str, blob: str, path: Path, metadata: dict | None = None) -> str:
    """Upload ``path``; a block blob becomes visible only when its block list commits, so readers never see half of it."""
    content = ContentSettings(content_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
    with path.open("rb") as data:
        service.get_blob_client(container, blob).upload_blob(data, overwrite=True, content_settings=content, metadata=metadata, max_concurrency=4)
    return blob


def read_blob_within(service: BlobServiceClient, container: str, blob: str, max_bytes: int, what: str) -> bytes:
    """The blob's content, its size checked from its properties before any of it is read, and that version only (a blob
    replaced meanwhile fails the read). Over ``max_bytes``: a one-line InvalidInputError naming ``what``."""
    client = service.get_blob_client(container, blob)
    properties = client.get_blob_properties()
    if properties.size > max_bytes:
        raise InvalidInputError(f"{what}: {properties.size} bytes is over the limit of {max_bytes}")
    return client.download_blob(etag=properties.etag, match_condition=MatchConditions.IfNotModified).readall()


def download_file(service: BlobServiceClient, container: str, blob: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        service.get_blob_client(container, blob).download_blob(max_concurrency=4).readinto(out)
    return path



def run_prefix(run_id: str) -> str:
    """Where an Azure run of many models keeps its files in the work container (a :class:`BlobStore` prefix)."""
    return f"{RUNS_FOLDER}/{run_id}/"


class BlobStore:
    """Files under a prefix of a container (a run's :class:`shared.many_models.run_state.Store` in Azure).

    A block blob becomes visible only when its block list commits: a write built from many parts
    (staged blocks) is as atomic as one upload.
    """

    def __init__(self, service: BlobServiceClient, container: str, prefix: str) -> None:
        self.container = service.get_container_client(container)
        self.prefix = prefix

    def read(self, name: str) -> bytes | None:
        try:
            return self.container.download_blob(self.prefix + name).readall()
        except ResourceNotFoundError:
            return None

    def write(self, name: str, parts: Iterable[bytes]) -> None:
        blob = self.container.get_blob_client(self.prefix + name)
        content = ContentSettings(content_type=CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"))
        blocks = []
        for part in parts:
            if part:
                block = BlobBlock(block_id=base64.b64encode(f"{len(blocks):08d}".encode()).decode())
                blob.stage_block(block.id, part)
                blocks.append(block)
        if blocks:
            blob.commit_block_list(blocks, content_settings=content)
        else:
            blob.upload_blob(b"", overwrite=True, content_settings=content)

    def names(self, folder: str) -> list[str]:
        start = f"{self.prefix}{folder}/"
        return sorted(name for blob in self.container.list_blobs(name_starts_with=start)
                      if "/" not in (name := blob.name[len(start):]))

    def empty(self) -> bool:
        return next(iter(self.container.list_blobs(name_starts_with=self.prefix)), None) is None

    def exists(self, name: str) -> bool:
        return self.container.get_blob_client(self.prefix + name).exists()

    def delete(self, name: str) -> None:
        try:
            self.container.delete_blob(self.prefix + name)
        except ResourceNotFoundError:
            pass

    def where(self, name: str) -> str:
        return f"{self.container.container_name}/{self.prefix}{name}"
