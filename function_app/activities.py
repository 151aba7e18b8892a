"""Activities: thin adapters that move blobs in and out of a scratch folder around the shared core."""

from __future__ import annotations

import contextlib
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import azure.durable_functions as df
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from function_app.compute import ensure_workers
from function_app.storage import output_names, read_style_picture, write_error_report
from shared.colour import plan_colour
from shared.config import Settings
from shared.containers import output_container
from shared.errors import InvalidInputError
from shared.messages import BatchMessage, styled_name
from shared.plan import Batch, plan_batches
from shared.preview import preview_offsets, rows_name, sampled_batches, write_preview
from shared.probe import probe
from shared.report import BatchRecord, RunReport, temporal_report, worker_stats
from shared.split import split_video
from shared.stitch import descriptions, skipped_frames, skipped_note, stitch
from shared.storage import JobLayout, blob_service, close_job, download_file, queue_client, upload_file

bp = df.Blueprint()
settings = Settings.from_env()

# A Flex Consumption instance has 0.8 GB of temporary storage and no persisted storage (Azure
# Functions service limits, "Storage (temporary)"). The core splits and stitches files, so a split
# holds its input and all its segments at once, and a stitch all styled segments and their output:
# about twice the video each. One of them at a time per worker process uses that disk, and each
# refuses a video it cannot hold in one line before filling it (STYLIZE_MAX_UPLOAD_BYTES keeps
# uploads within it). The free space a volume reports may exceed the instance's quota, hence both.
INSTANCE_DISK_BYTES = 800 * 1000**2
_disk = threading.Lock()


def split_disk_bytes(input_bytes: int) -> int:
    """Disk a split needs: the input, its segments and audio (the same packets again), and a tenth
    more for the GOP that a batch starting on an open GOP repeats."""
    return 2 * input_bytes + input_bytes // 10


@contextlib.contextmanager
def scratch(prefix: str, needed: int, subject: str) -> Iterator[Path]:
    """A temporary folder for one split or stitch, refused (not retried) when the disk cannot hold ``needed`` bytes."""
    with _disk, tempfile.TemporaryDirectory(prefix=prefix) as folder:
        room = min(shutil.disk_usage(folder).free, INSTANCE_DISK_BYTES)
        if needed > room:
            raise InvalidInputError(f"{subject}: needs {needed / 1e6:.0f} MB of scratch disk, the instance has {room / 1e6:.0f} MB")
        yield Path(folder)


def _blob_bytes(service: BlobServiceClient, container: str, blobs: list[str]) -> int:
    return sum(service.get_blob_client(container, blob).get_blob_properties().size for blob in blobs)


def split_job(job: dict, limits: Settings = settings) -> dict:
    """Copy the checked style picture into the job's folder; download the input, probe and check it, cut batch segments
    by stream copy, upload them and the audio."""
    service = blob_service(limits)
    layout = JobLayout(job["job_id"])
    needed = split_disk_bytes(_blob_bytes(service, limits.input_container, [job["input_blob"]]))
    if job.get("style_image"):
        service.get_blob_client(limits.work_container, layout.style_picture).upload_blob(
            read_style_picture(limits, job["style_image"]), overwrite=True)
    with scratch("split-", needed, job["input_blob"]) as folder:
        local = download_file(service, limits.input_container, job["input_blob"], folder / f"input{Path(job['input_blob']).suffix}")
        info = probe(local, limits)  # refuses what is over the limits before reading what they bound
        container = output_container(info)
        batches = plan_batches(info, limits.batch_frames, job.get("context_frames", 0))
        parts = split_video(info, batches, folder / "segments", container)
        for batch, segment in zip(batches, parts.segments):
            upload_file(service, limits.work_container, layout.segment(batch), segment)
        tracks_blob = upload_file(service, limits.work_container, f"{layout.root}/{parts.tracks.name}", parts.tracks) if parts.tracks else None
    notes = [*container.notes, *filter(None, [plan_colour(info.colour, info.height).note()])]
    return {"batches": [b.to_dict() for b in batches], "frames": info.frame_count, "tracks_blob": tracks_blob, "video": info.summary(),
            "output_suffix": container.suffix, "notes": notes}


def enqueue_batches(request: dict, limits: Settings = settings) -> int:
    """One queue message per batch attempt. A replay may send one twice; the worker then finds the styled segment and reuses it."""
    job, layout = request["job"], JobLayout(request["job"]["job_id"])
    queue = queue_client(limits, limits.batch_queue)
    for item in request["batches"]:
        batch = Batch.from_dict(item["batch"])
        message = BatchMessage(
            job_id=job["job_id"], batch=batch, attempt=item["attempt"], model=job["style"],
            segment=layout.segment(batch), styled=layout.styled(styled_name(batch.index, item["attempt"])),
            precision=limits.precision, style_image=job.get("style_image"), style_strength=job.get("style_strength", 1.0),
            preview_frames=preview_offsets(batch, request["frames"]), temporal_strength=job.get("temporal_strength", 0.0),
        )
        queue.send_message(message.to_json())
    return len(request["batches"])


def stitch_job(request: dict, limits: Settings = settings) -> dict:
    """Join the styled segments with the original audio; upload video, preview and report to the output container."""
    job, plan, layout = request["job"], request["plan"], JobLayout(request["job"]["job_id"])
    service = blob_service(limits)
    names = output_names(job["input_blob"], job["style"], plan["output_suffix"])
    batches = [Batch.from_dict(item) for item in plan["batches"]]
    attempts = {int(index): count for index, count in request["attempts"].items()}
    styled_blobs = [layout.styled(styled_name(batch.index, attempts[batch.index])) for batch in batches]
    stitched = [*styled_blobs, *([plan["tracks_blob"]] if plan["tracks_blob"] else [])]
    needed = 2 * _blob_bytes(service, limits.work_container, stitched)
    with scratch("stitch-", needed, names["video"]) as folder:
        styled = [download_file(service, limits.work_container, blob, folder / "styled" / Path(blob).name) for blob in styled_blobs]
        tracks = download_file(service, limits.work_container, plan["tracks_blob"], folder / Path(plan["tracks_blob"]).name) if plan["tracks_blob"] else None
        video = folder / f"output{plan['output_suffix']}"
        shown = stitch(styled, tracks, video, **descriptions(plan["video"]))

        def segment(position: int) -> Path:
            blob = layout.segment(batches[position])
            local = folder / "segments" / posixpath.basename(blob)
            return local if local.exists() else download_file(service, limits.work_container, blob, local)

        skipped = skipped_frames(batches, shown, segment)
        preview = write_preview(_preview_rows(service, limits, [styled_blobs[position] for position in sampled_batches(batches)],
                                              folder / "rows"), folder / "preview.png")
        done_by = {int(index): facts for index, facts in request["done_by"].items()}
        styler = next((facts["styler"] for facts in done_by.values() if facts.get("styler")), {})
        report = RunReport(input=plan["video"], output=names["video"],
                           model={"requested": job["style"], "used": job["style"], "style_image": job.get("style_image"), "styler": styler},
                           device="azureml" if limits.compute_backend == "azureml" else limits.compute_backend,
                           batch_frames=limits.batch_frames, workers=len({facts["worker"] for facts in done_by.values()}),
                           frames=plan["frames"] - len(skipped), status="succeeded",
                           notes=plan["notes"] + ([skipped_note(skipped, plan["frames"])] if skipped else []),
                           skipped_frames=[round(float(t), 6) for t in skipped])
        report.batches = [BatchRecord(b["index"], b["first_frame"], b["frame_count"], seconds=done_by[b["index"]]["seconds"],
                                      attempts=attempts[b["index"]], worker=done_by[b["index"]]["worker"]) for b in plan["batches"]]
        report.worker_stats = worker_stats(done_by.values())
        report.temporal = temporal_report(job.get("temporal", {"used": "off", "reason": "not asked for"}),
                                          [facts.get("temporal") for facts in done_by.values()])
        report.error = "; ".join(request["errors"][-5:]) or None
        report_path = report.write(folder / "report.json")
        metadata = {"job_id": job["job_id"], "source": job["input_blob"], "style": job["style"]}
        upload_file(service, limits.output_container, names["preview"], preview, metadata)
        upload_file(service, limits.output_container, names["report"], report_path, metadata)
        upload_file(service, limits.output_container, names["video"], video, metadata)
    close_job(service, limits, job["job_id"])
    return names


def _preview_rows(service: BlobServiceClient, limits: Settings, styled: list[str], folder: Path) -> list[Path]:
    """The preview rows the workers drew beside these styled segments (none beside one whose sampled frames did not decode)."""
    rows = []
    for blob in map(rows_name, styled):
        try:
            rows.append(download_file(service, limits.work_container, blob, folder / posixpath.basename(blob)))
        except ResourceNotFoundError:
            continue
    return rows


def report_failure(request: dict, limits: Settings = settings) -> str:
    """Write the error report and close the job, so workers drop its leftover batch messages."""
    job = request["job"]
    close_job(blob_service(limits), limits, job["job_id"])
    return write_error_report(limits, job["input_blob"], job["style"], request["error"], job["job_id"])


def keep_workers(request: dict, limits: Settings = settings) -> dict:
    """Start workers of the request's kind of work (default: batches) until enough are alive for the outstanding items,
    at most the fleet's maximum."""
    return ensure_workers(limits, request["outstanding"], work=request.get("work", "batches"))


@bp.function_name("split_job")
@bp.activity_trigger(input_name="job")
def split_job_activity(job: dict) -> dict:
    return split_job(job)


@bp.function_name("enqueue_batches")
@bp.activity_trigger(input_name="request")
def enqueue_batches_activity(request: dict) -> int:
    return enqueue_batches(request)


@bp.function_name("ensure_workers")
@bp.activity_trigger(input_name="request")
def ensure_workers_activity(request: dict) -> dict:
    return keep_workers(request)


@bp.function_name("stitch_job")
@bp.activity_trigger(input_name="request")
def stitch_job_activity(request: dict) -> dict:
    return stitch_job(request)


@bp.function_name("report_failure")
@bp.activity_trigger(input_name="request")
def report_failure_activity(request: dict) -> str:
    return report_failure(request)


ACTIVITIES = {"split_job": split_job, "enqueue_batches": enqueue_batches, "ensure_workers": keep_workers, "stitch_job": stitch_job,
              "report_failure": report_failure}
