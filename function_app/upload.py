"""Upload trigger: a new blob in the input container starts one orchestration per (blob, ETag)."""

from __future__ import annotations

import logging

import azure.durable_functions as df
import azurefunctions.extensions.bindings.blob as blob_binding
from azure.storage.blob import BlobClient

from function_app.storage import blob_trigger_source, read_style_picture, write_error_report
from gpu_job.styles import ARBITRARY, is_known_style
from shared.config import Settings
from shared.errors import InvalidInputError, public
from shared.job_status import video_job_id as instance_id_for
from shared.job_status import write_status
from shared.names import UPLOAD_NAME_MAX_CHARS, UnsafeNameError, check_blob_name, shown
from shared.plan import TemporalPlan, plan_temporal
from shared.storage import blob_service
from shared.uploads import upload_problem

bp = df.Blueprint()
settings = Settings.from_env()
log = logging.getLogger(__name__)
STYLE_METADATA_KEY = "style"
STYLE_IMAGE_METADATA_KEY = "style_image"
STRENGTH_METADATA_KEY = "strength"
TEMPORAL_METADATA_KEY = "temporal"
TEMPORAL_STRENGTH_METADATA_KEY = "temporal_strength"


def _metadata(metadata: dict[str, str], key: str) -> str | None:
    """A metadata value by case-insensitive key (Azure keeps the case it was given)."""
    return next((value for name, value in metadata.items() if name.lower() == key), None)


def style_for(blob_name: str, metadata: dict[str, str], default: str) -> str:
    """Metadata ``style_image`` means ``arbitrary``; else metadata ``style``; else a leading folder named after a style
    (``candy/clip.mp4``); else the default."""
    style = _metadata(metadata, STYLE_METADATA_KEY)
    if _metadata(metadata, STYLE_IMAGE_METADATA_KEY) and not style:
        return ARBITRARY
    if style:
        return style
    folder = blob_name.split("/", 1)[0] if "/" in blob_name else ""
    if is_known_style(folder):
        return folder
    return default


def style_strength(metadata: dict[str, str], key: str = STRENGTH_METADATA_KEY, default: float = 1.0) -> float:
    """Metadata ``strength`` (0..1: how much of the style to apply; default 1), or another 0..1 ``key``, or a one-line
    InvalidInputError."""
    raw = _metadata(metadata, key)
    if raw is None:
        return default
    try:
        strength = float(raw) if len(raw) <= 32 else float("nan")
    except ValueError:
        strength = float("nan")
    if not 0.0 <= strength <= 1.0:
        raise InvalidInputError(f"metadata {key} {shown(raw, 32)} is not a number from 0 to 1")
    return strength


def temporal_plan(style: str, metadata: dict[str, str], limits: Settings) -> TemporalPlan:
    """The job's temporal stabilisation: metadata ``temporal`` (on or off) and ``temporal_strength`` (0..1), each
    defaulting to the settings; a malformed one is a one-line InvalidInputError."""
    raw = _metadata(metadata, TEMPORAL_METADATA_KEY)
    if raw is not None and raw.strip().lower() not in ("on", "off"):
        raise InvalidInputError(f"metadata {TEMPORAL_METADATA_KEY} {shown(raw, 32)} is not on or off")
    on = limits.temporal if raw is None else raw.strip().lower() == "on"
    strength = style_strength(metadata, TEMPORAL_STRENGTH_METADATA_KEY, limits.temporal_strength)
    return plan_temporal(style, on, strength, limits.temporal_context_frames)


def _shown_if_unsafe(name: str) -> str:
    try:
        return check_blob_name(name, "upload name", UPLOAD_NAME_MAX_CHARS)
    except UnsafeNameError:
        return shown(name)


def check_upload(blob_name: str, size: int, style: str, limits: Settings) -> str | None:
    """The reason to refuse an upload before any work, or None."""
    problem = upload_problem(blob_name, size, limits)
    if problem is None and not is_known_style(style):
        return f"{blob_name}: unknown style {shown(style)} (`stylize styles` lists the names)"
    return problem


def check_style_image_blob(style: str, style_image: str | None, limits: Settings) -> str | None:
    """The reason to refuse the upload's style picture (metadata ``style_image``, a blob in the styles container), or None."""
    if style_image is None:
        return f"style {ARBITRARY!r} needs metadata {STYLE_IMAGE_METADATA_KEY}=<picture in container {limits.styles_container}>" if style == ARBITRARY else None
    if style != ARBITRARY:
        return f"metadata {STYLE_IMAGE_METADATA_KEY} goes with style {ARBITRARY!r}, not {shown(style)}"
    try:
        read_style_picture(limits, style_image)
    except InvalidInputError as exc:
        return str(exc)
    return None


async def start_job(blob: BlobClient, client: df.DurableOrchestrationClient, limits: Settings = settings) -> str | None:
    """Validate the upload and start its orchestration; returns the instance id (None if refused)."""
    properties = blob.get_blob_properties()
    name = blob.blob_name
    metadata = properties.metadata or {}
    style = style_for(name, metadata, limits.default_style)
    style_image = _metadata(metadata, STYLE_IMAGE_METADATA_KEY)
    problem = check_upload(name, properties.size, style, limits) or check_style_image_blob(style, style_image, limits)
    try:
        strength = style_strength(metadata)
        temporal = temporal_plan(style, metadata, limits)
    except InvalidInputError as exc:
        strength, temporal, problem = 1.0, TemporalPlan(), problem or str(exc)
    instance_id = instance_id_for(name, properties.etag)
    if problem:
        log.warning("upload refused: %s", problem)
        report = write_error_report(limits, name, style, problem, instance_id)
        write_status(blob_service(limits), limits.output_container, instance_id,
                     {"kind": "video", "stage": "refused", "input": _shown_if_unsafe(name), "style": style if is_known_style(style) else shown(style),
                      "error": public(problem), "error_report": report})
        return None
    existing = await client.get_status(instance_id)
    if existing and existing.runtime_status is not None:
        log.info("upload %s already has orchestration %s (%s); not starting another", name, instance_id, existing.runtime_status)
        return instance_id
    job = {"job_id": instance_id, "input_blob": name, "etag": properties.etag, "style": style, "size": properties.size,
           "style_image": style_image, "style_strength": strength, "temporal": temporal.describe(),
           "temporal_strength": temporal.strength, "context_frames": temporal.context_frames}
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
