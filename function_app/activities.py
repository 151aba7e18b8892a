"""Activities: thin adapters that move blobs in and out of a scratch folder around the shared core."""

from __future__ import annotations

import json
import posixpath
import tempfile
from pathlib import Path

import azure.durable_functions as df

from function_app.storage import JobLayout, batch_queue, blob_service, download_file, output_names, upload_file, write_error_report
from shared.colour import plan_colour
from shared.config import Settings
from shared.containers import output_container
from shared.errors import InvalidInputError
from shared.messages import BatchMessage, styled_name
from shared.plan import Batch, plan_batches
from shared.preview import sampled_batches, write_preview
from shared.probe import VideoInfo, probe
from shared.report import BatchRecord, RunReport
from shared.split import split_video
from shared.stitch import skipped_frames, skipped_note, stitch

bp = df.Blueprint()
settings = Settings.from_env()


def check_limits(info: VideoInfo, limits: Settings) -> None:
    """Refuse videos over the configured limits before any GPU time is spent."""
    problems = []
    if info.duration_s > limits.max_duration_s:
        problems.append(f"duration {info.duration_s:.1f} s over {limits.max_duration_s:.0f} s")
    if info.width > limits.max_width or info.height > limits.max_height:
        problems.append(f"resolution {info.width}x{info.height} over {limits.max_width}x{limits.max_height}")
    if info.frame_count > limits.max_frames:
        problems.append(f"{info.frame_count} frames over {limits.max_frames}")
    if problems:
        raise InvalidInputError(f"{Path(info.path).name}: {'; '.join(problems)}")


def split_job(job: dict, limits: Settings = settings) -> dict:
    """Download the input, probe and check it, cut batch segments by stream copy, upload them and the audio."""
    service = blob_service(limits)
    layout = JobLayout(job["job_id"])
    with tempfile.TemporaryDirectory(prefix="split-") as scratch:
        local = download_file(service, limits.input_container, job["input_blob"], Path(scratch) / f"input{Path(job['input_blob']).suffix}")
        info = probe(local)
        check_limits(info, limits)
        container = output_container(info)
        batches = plan_batches(info, limits.batch_frames)
        parts = split_video(info, batches, Path(scratch) / "segments", container)
        for batch, segment in zip(batches, parts.segments):
            upload_file(service, limits.work_container, layout.segment(batch), segment)
        tracks_blob = upload_file(service, limits.work_container, f"{layout.root}/{parts.tracks.name}", parts.tracks) if parts.tracks else None
    notes = [*container.notes, *filter(None, [plan_colour(info.colour, info.height).note()])]
    return {"batches": [b.to_dict() for b in batches], "frames": info.frame_count, "tracks_blob": tracks_blob, "video": info.summary(),
            "output_suffix": container.suffix, "notes": notes}


def enqueue_batches(request: dict, limits: Settings = settings) -> int:
    """One queue message per batch attempt. A replay may send one twice; the submitter makes that harmless."""
    job, layout = request["job"], JobLayout(request["job"]["job_id"])
    queue = batch_queue(limits)
    for item in request["batches"]:
        batch = Batch.from_dict(item["batch"])
        message = BatchMessage(
            job_id=job["job_id"], batch=batch, attempt=item["attempt"], model=job["style"],
            segment_blob=layout.segment(batch), styled_blob=layout.styled(styled_name(batch, item["attempt"])),
        )
        queue.send_message(message.to_json())
    return len(request["batches"])


def stitch_job(request: dict, limits: Settings = settings) -> dict:
    """Join the styled segments with the original audio; upload video, preview and report to the output container."""
    job, plan, layout = request["job"], request["plan"], JobLayout(request["job"]["job_id"])
    service = blob_service(limits)
    names = output_names(job["input_blob"], job["style"], plan["output_suffix"])
    with tempfile.TemporaryDirectory(prefix="stitch-") as scratch:
        folder = Path(scratch)
        styled = [download_file(service, limits.work_container, blob, folder / "styled" / Path(blob).name) for blob in request["styled"]]
        tracks = download_file(service, limits.work_container, plan["tracks_blob"], folder / Path(plan["tracks_blob"]).name) if plan["tracks_blob"] else None
        video = stitch(styled, tracks, folder / f"output{plan['output_suffix']}")
        batches = [Batch.from_dict(item) for item in plan["batches"]]

        def segment(position: int) -> Path:
            blob = layout.segment(batches[position])
            local = folder / "segments" / posixpath.basename(blob)
            return local if local.exists() else download_file(service, limits.work_container, blob, local)

        skipped = skipped_frames(batches, styled, segment)
        preview = write_preview(batches, {position: segment(position) for position in sampled_batches(batches)}, styled, folder / "preview.png")
        report = RunReport(input=plan["video"], output=names["video"], model={"requested": job["style"], "used": job["style"]},
                           device="azureml" if limits.compute_backend == "azureml" else limits.compute_backend,
                           batch_frames=limits.batch_frames, workers=len(plan["batches"]), frames=plan["frames"] - len(skipped),
                           status="succeeded", notes=plan["notes"] + ([skipped_note(skipped, plan["frames"])] if skipped else []),
                           skipped_frames=[round(float(t), 6) for t in skipped])
        attempts = {int(index): count for index, count in request["attempts"].items()}
        report.batches = [BatchRecord(b["index"], b["first_frame"], b["frame_count"], attempts=attempts[b["index"]]) for b in plan["batches"]]
        report.error = "; ".join(request["errors"][-5:]) or None
        report_path = report.write(folder / "report.json")
        metadata = {"job_id": job["job_id"], "source": job["input_blob"], "style": job["style"]}
        upload_file(service, limits.output_container, names["preview"], preview, metadata)
        upload_file(service, limits.output_container, names["report"], report_path, metadata)
        upload_file(service, limits.output_container, names["video"], video, metadata)
    return names


def report_failure(request: dict, limits: Settings = settings) -> str:
    job = request["job"]
    return write_error_report(limits, job["input_blob"], job["style"], request["error"], job["job_id"])


@bp.function_name("split_job")
@bp.activity_trigger(input_name="job")
def split_job_activity(job: dict) -> dict:
    return split_job(job)


@bp.function_name("enqueue_batches")
@bp.activity_trigger(input_name="request")
def enqueue_batches_activity(request: dict) -> int:
    return enqueue_batches(request)


@bp.function_name("stitch_job")
@bp.activity_trigger(input_name="request")
def stitch_job_activity(request: dict) -> dict:
    return stitch_job(request)


@bp.function_name("report_failure")
@bp.activity_trigger(input_name="request")
def report_failure_activity(request: dict) -> str:
    return report_failure(request)


ACTIVITIES = {"split_job": split_job, "enqueue_batches": enqueue_batches, "stitch_job": stitch_job, "report_failure": report_failure}
