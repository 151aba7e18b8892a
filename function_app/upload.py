"""Upload trigger: a new blob in the input container starts one orchestration per (blob, ETag)."""

from __future__ import annotations

import hashlib
import logging
import posixpath

import azure.durable_functions as df
import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_binding
from azure.storage.blob import BlobClient

from function_app.storage import blob_trigger_source, write_error_report
from gpu_job.styles import BUILTIN_MODELS, PRETRAINED_STYLES
from shared.config import Settings

bp = df.Blueprint()
settings = Settings.from_env()
log = logging.getLogger(__name__)
STYLE_METADATA_KEY = "style"


def instance_id_for(blob_name: str, etag: str) -> str:
    """Same blob and same content version -> same id, so a repeated event cannot start a second run."""
    digest = hashlib.sha256(f"{blob_name}\n{etag.strip(chr(34))}".encode()).hexdigest()[:32]
    return f"stylize-{digest}"


def style_for(blob_name: str, metadata: dict[str, str], default: str) -> str:
    """Blob metadata ``style`` wins; else a leading folder named after a style (``candy/clip.mp4``); else the default."""
    style = metadata.get(STYLE_METADATA_KEY) or metadata.get(STYLE_METADATA_KEY.capitalize())
    if style:
        return style
    folder = blob_name.split("/", 1)[0] if "/" in blob_name else ""
    if folder in PRETRAINED_STYLES or folder in BUILTIN_MODELS:
        return folder
    return default


def check_upload(blob_name: str, size: int, style: str, limits: Settings) -> str | None:
    """The reason to refuse an upload before any work, or None."""
    extension = posixpath.splitext(blob_name)[1].lower()
    if extension not in limits.allowed_extensions:
        return f"{blob_name}: extension {extension or '(none)'} is not accepted (use {', '.join(limits.allowed_extensions)})"
    if size <= 0:
        return f"{blob_name}: empty file (0 bytes)"
    if size > limits.max_upload_bytes:
        return f"{blob_name}: {size} bytes is over the limit of {limits.max_upload_bytes}"
    if style not in PRETRAINED_STYLES + BUILTIN_MODELS:
        return f"{blob_name}: unknown style {style!r} (use {', '.join(PRETRAINED_STYLES + BUILTIN_MODELS)})"
    return None


async def start_job(blob: BlobClient, client: df.DurableOrchestrationClient, limits: Settings = settings) -> str | None:
    """Validate the upload and start its orchestration; returns the instance id (None if refused)."""
    properties = blob.get_blob_properties()
    name = blob.blob_name
    style = style_for(name, properties.metadata or {}, limits.default_style)
    problem = check_upload(name, properties.size, style, limits)
    if problem:
        log.warning("upload refused: %s", problem)
        write_error_report(limits, name, style, problem)
        return None
    instance_id = instance_id_for(name, properties.etag)
    existing = await client.get_status(instance_id)
    if existing and existing.runtime_status is not None:
        log.info("upload %s already has orchestration %s (%s); not starting another", name, instance_id, existing.runtime_status)
        return instance_id
    job = {"job_id": instance_id, "input_blob": name, "etag": properties.etag, "style": style, "size": properties.size}
    await client.start_new("stylize_orchestrator", instance_id, job)
    log.info("started %s for %s (style %s)", instance_id, name, style)
    return instance_id


@bp.blob_trigger(
    arg_name="upload",
    path=f"{settings.input_container}/{{name}}",
    connection=settings.storage_connection,
    source=blob_trigger_source(settings),
)
@bp.durable_client_input(client_name="client")
async def on_upload(upload: blob_binding.BlobClient, client: df.DurableOrchestrationClient) -> None:
    await start_job(upload, client)
