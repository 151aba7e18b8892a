"""A job's status document: a small JSON blob in the output container that the uploader's own role can read.

The orchestrations write one per job (video) or run (many models) at every change of their progress, through the
``publish_status`` activity; the upload trigger writes one for a refused upload. ``stylize status``, ``stylize jobs``
and the status page read them. A document is outside input to its readers like any blob: its name derives from the
job id (checked), its size is checked from its properties before it is read, and it must be a JSON object.
"""

from __future__ import annotations

import hashlib
import json

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContentSettings

from shared.errors import InvalidInputError
from shared.names import STYLE_NAME_MAX_CHARS, UPLOAD_NAME_MAX_CHARS, UnsafeNameError, check_blob_name, check_job_id, check_run_id, shown

STATUS_FOLDER = "status"
STATUS_MAX_BYTES = 64 * 1024
"""A document holds counts, a few names and the last five errors: far below this."""
MODELS_PREFIX = "score-models-"
"""A many-models run's orchestration id is this and its window's run id."""
ENDED = ("done", "failed", "refused")
"""Stages after which a document no longer changes."""


def video_job_id(blob_name: str, etag: str) -> str:
    """A video job's id, from its upload's name and ETag: same blob, same content version -> same id, so a repeated event
    cannot start a second run. The upload trigger names the orchestration so, and ``stylize submit`` prints it."""
    digest = hashlib.sha256(f"{blob_name}\n{etag.strip(chr(34))}".encode()).hexdigest()[:32]
    return f"stylize-{digest}"


def output_names(input_blob: str, style: str, suffix: str = ".mp4") -> dict[str, str]:
    """Output blob names for an input: ``holiday/trip.mov`` styled ``candy`` -> ``holiday/trip.mov.candy.mp4`` and friends.

    The input's whole name is kept, so distinct inputs (``clip.mp4``, ``clip.mkv``) never write the same outputs; the
    upload trigger bounds it and the style (:data:`shared.names.UPLOAD_NAME_MAX_CHARS`,
    :data:`shared.names.STYLE_NAME_MAX_CHARS`), so every name stays under Azure's bound. ``suffix`` is the
    container :func:`shared.containers.output_container` picked for the input's tracks.
    """
    base = f"{input_blob}.{style}"
    return {"video": f"{base}{suffix}", "preview": f"{base}.preview.png", "report": f"{base}.report.json"}


def check_status_id(job_id: object) -> str:
    """A video job's id (``stylize-<hex>``) or a many-models run's (``score-models-<window>``); else UnsafeNameError."""
    try:
        if isinstance(job_id, str) and job_id.startswith(MODELS_PREFIX):
            check_run_id(job_id[len(MODELS_PREFIX):])
        else:
            check_job_id(job_id)
    except UnsafeNameError:
        raise UnsafeNameError(f"job id {shown(job_id)} is not a video job's (stylize-<32 hex digits>) "
                              f"or a many-models run's (score-models-<window>)") from None
    return job_id


def status_blob(job_id: str) -> str:
    return f"{STATUS_FOLDER}/{check_status_id(job_id)}.json"


def write_status(service: BlobServiceClient, container: str, job_id: str, document: dict) -> str:
    """Replace the job's document (one upload: a reader sees the old one or the new one, whole)."""
    name = status_blob(job_id)
    body = json.dumps({**document, "job_id": job_id}, indent=1, default=str).encode()
    service.get_blob_client(container, name).upload_blob(
        body, overwrite=True, content_settings=ContentSettings(content_type="application/json", cache_control="no-store"))
    return name


def parse_status(data: bytes, job_id: str) -> dict:
    """A document's content, checked: a JSON object whose ``job_id`` is the one it was read for."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInputError(f"the status document of {job_id} is not JSON") from None
    if not isinstance(document, dict) or document.get("job_id") != job_id or not isinstance(document.get("stage"), str):
        raise InvalidInputError(f"the status document of {job_id} is not a status document")
    return document


def read_status(service: BlobServiceClient, container: str, job_id: str) -> dict | None:
    """The job's document, or None if it has none (yet). Raises a one-line InvalidInputError for a malformed one."""
    name = status_blob(job_id)
    client = service.get_blob_client(container, name)
    try:
        properties = client.get_blob_properties()
        if properties.size > STATUS_MAX_BYTES:
            raise InvalidInputError(f"the status document of {job_id}: {properties.size} bytes is over the limit of {STATUS_MAX_BYTES}")
        data = client.download_blob(etag=properties.etag, match_condition=MatchConditions.IfNotModified).readall()
    except ResourceNotFoundError:
        return None
    return parse_status(data, job_id)


def recent_jobs(service: BlobServiceClient, container: str, limit: int) -> list[dict]:
    """The documents of the ``limit`` jobs updated last, newest first; a malformed one is shown as such, not skipped."""
    listed = [blob for blob in service.get_container_client(container).list_blobs(name_starts_with=f"{STATUS_FOLDER}/")
              if blob.name.endswith(".json")]
    listed.sort(key=lambda blob: blob.last_modified, reverse=True)
    documents = []
    for blob in listed[:limit]:
        job_id = blob.name[len(STATUS_FOLDER) + 1: -len(".json")]
        try:
            document = read_status(service, container, job_id)
        except InvalidInputError as exc:
            document = {"job_id": shown(job_id), "stage": "unreadable", "error": str(exc)}
        if document is not None:
            documents.append(document)
    return documents


def job_outputs(document: dict, container: str) -> dict[str, str]:
    """The document's output blobs in ``container`` (kind -> name), each checked against the names the job's layout
    gives: a video's from its input and style, a run's under ``predictions/<run id>/`` (named with their container). A
    name that is not its job's is refused (InvalidInputError)."""
    if document.get("kind") == "models":
        run_id = document["job_id"].removeprefix(MODELS_PREFIX)
        wanted = {"predictions": f"predictions/{run_id}/predictions.csv", "report": f"predictions/{run_id}/report.json"}
        named = {kind: document.get(kind) for kind in wanted if document.get(kind)}
        if any(named[kind] != f"{container}/{wanted[kind]}" for kind in named):
            raise InvalidInputError(f"the status document of {document['job_id']} names outputs that are not its run's")
        return {kind: wanted[kind] for kind in named}
    input_blob, style = document.get("input"), document.get("style")
    named = {"video": document.get("output"), "preview": document.get("preview"), "report": document.get("report")}
    named = {kind: name for kind, name in named.items() if name}
    if not named:
        return {}
    if not isinstance(input_blob, str) or not isinstance(style, str):
        raise InvalidInputError(f"the status document of {document['job_id']} names outputs but not its input and style")
    check_blob_name(input_blob, "input name", UPLOAD_NAME_MAX_CHARS)
    if "/" in style or len(style) > STYLE_NAME_MAX_CHARS or not style.isprintable():
        raise InvalidInputError(f"the status document of {document['job_id']} names a style that is none ({shown(style)})")
    allowed = {kind: {check_blob_name(output_names(input_blob, style, suffix)[kind], "output name") for suffix in (".mp4", ".mkv", ".mov")}
               for kind in named}
    if any(name not in allowed[kind] for kind, name in named.items()):
        raise InvalidInputError(f"the status document of {document['job_id']} names outputs that are not its job's")
    return named


def progress_text(document: dict) -> str:
    """One line: stage, then what is done of what (batches and frames, or shards and models), workers, errors."""
    parts = [str(document.get("stage", "?"))]
    if document.get("batches_total"):
        parts.append(f"batches {document.get('batches_done', 0)}/{document['batches_total']}")
        parts.append(f"frames {document.get('frames_done', 0)}/{document.get('frames_total', 0)}")
    if document.get("shards_total"):
        parts.append(f"shards {document.get('shards_done', 0)}/{document['shards_total']}")
        parts.append(f"models {document.get('models_done', 0)}/{document.get('models_to_score', 0)}")
    if "workers" in document and document.get("stage") not in ENDED:
        parts.append(f"workers {document['workers']}")
    if document.get("errors"):
        parts.append(f"errors {len(document['errors'])}")
    return ", ".join(parts)


def fraction_done(document: dict) -> float:
    """0..1: batches (or shards) done of all; 1 once done."""
    if document.get("stage") == "done":
        return 1.0
    for done, total in (("batches_done", "batches_total"), ("shards_done", "shards_total")):
        if isinstance(document.get(total), int) and document[total] > 0 and isinstance(document.get(done), int):
            return max(0.0, min(1.0, document[done] / document[total]))
    return 0.0
