"""The whole pipeline on this machine: probe, plan, split, style batches with warm workers, stitch.

``--workers N`` worker processes (``python -m gpu_job worker --stdio``, the same worker an Azure ML
node runs) start once, load the model while the video is being probed and split, and are fed batch
after batch over a pipe. A failed batch is retried on its own, up to the configured attempts; a
worker that dies is replaced and its batch retried; an error that will repeat fails the run at once.

One worker asked for starts first thing, before this process has even imported what reads video
(0.1-0.2 s); more start once the plan says how many batches there are, each with its share of the cores.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_job.command import WorkerOptions, worker_command
from gpu_job.resolve import ModelUnavailableError, resolve_model
from gpu_job.styles import ARBITRARY, check_style_image
from runner.pool import Launcher, Outcome, WorkerPool, launch_worker
from shared.config import Settings
from shared.errors import BatchFailedError, InvalidInputError
from shared.messages import BatchMessage, BatchResult, ModelSpec
from shared.plan import plan_batches, plan_temporal
from shared.report import BatchRecord, RunReport, temporal_report, worker_stats

if TYPE_CHECKING:
    from tqdm import tqdm

    from shared.containers import ContainerChoice
    from shared.probe import VideoInfo

LOCAL_JOB = "local"


@dataclass(frozen=True)
class RunRequest:
    input: Path
    output: Path
    model: str
    batch_frames: int
    workers: int = 1
    device: str = "auto"
    report: Path | None = None
    fallback_model: str | None = None
    work_dir: Path | None = None
    precision: str = "auto"
    style_image: Path | None = None
    style_strength: float = 1.0
    keep_10bit: bool = False
    temporal: bool = True
    """Stabilise the styled frames over time (never with identity)."""
    temporal_strength: float = 1.0

    @property
    def report_path(self) -> Path:
        return self.report or self.output.with_name(f"{self.output.stem}.report.json")

    @property
    def preview_path(self) -> Path:
        return self.output.with_name(f"{self.output.stem}.preview.png")


def check_request(request: RunRequest, info: VideoInfo) -> tuple[RunRequest, ContainerChoice]:
    """Refuse what cannot run; returns the request with its output in a container that holds the input's tracks."""
    from shared.containers import MUXERS, NOT_WRITTEN, output_container

    suffixes = sorted({*MUXERS, *NOT_WRITTEN})
    if request.output.suffix.lower() not in suffixes:
        raise InvalidInputError(f"{request.output}: output must end in one of {', '.join(suffixes)}")
    if request.batch_frames <= 0 or request.workers <= 0:
        raise InvalidInputError("--batch-frames and --workers must be positive")
    container = output_container(info, request.output.suffix)
    if container.suffix != request.output.suffix.lower():
        request = replace(request, output=request.output.with_suffix(container.suffix))
    if request.output.exists() and request.output.resolve() == request.input.resolve():
        raise InvalidInputError(f"{request.output}: output would overwrite the input")
    if request.output.is_dir():
        raise InvalidInputError(f"{request.output}: is a directory")
    if not 0.0 <= request.style_strength <= 1.0:
        raise InvalidInputError(f"--style-strength must be between 0 and 1, got {request.style_strength}")
    if not 0.0 <= request.temporal_strength <= 1.0:
        raise InvalidInputError(f"--temporal-strength must be between 0 and 1, got {request.temporal_strength}")
    if (request.style_image is not None) != (request.model == ARBITRARY):
        raise InvalidInputError(f"--style-image goes with --model {ARBITRARY} (the default when a style image is given), and only with it")
    if request.style_image is not None:
        try:
            check_style_image(request.style_image.read_bytes(), str(request.style_image))
        except OSError as exc:
            raise InvalidInputError(f"style image {request.style_image}: {exc.strerror or exc}") from None
    return request, container


def resolve_with_fallback(request: RunRequest, settings: Settings) -> dict:
    """Resolve the model once for all workers; on an unreachable style, fall back only if asked to, and say so."""
    try:
        return {"requested": request.model, "used": request.model, "path": resolve_model(request.model, settings.model_cache_dir)}
    except ModelUnavailableError as exc:
        if not request.fallback_model:
            raise
        from tqdm import tqdm

        notice = f"style {request.model!r} unavailable ({exc}); using {request.fallback_model!r} instead"
        tqdm.write(f"warning: {notice}")
        path = resolve_model(request.fallback_model, settings.model_cache_dir)
        return {"requested": request.model, "used": request.fallback_model, "path": path, "fallback_reason": notice}


def run(request: RunRequest, settings: Settings, launcher: Launcher = launch_worker) -> RunReport:
    """Style ``request.input``; the report's ``output`` names the file written (its container may differ from the one asked for)."""
    started = time.perf_counter()
    model = resolve_with_fallback(request, settings)
    spec = ModelSpec(model["path"], request.precision, None if request.style_image is None else str(request.style_image.resolve()),
                     request.style_strength)

    def command(workers: int) -> list[str]:
        options = WorkerOptions.from_settings(settings, device=request.device, threads=max(1, (os.cpu_count() or 1) // workers))
        return worker_command(options, stdio=True, preload=spec)

    with tempfile.TemporaryDirectory(prefix="stylize-", dir=request.work_dir) as scratch, \
            WorkerPool(settings.max_attempts, launcher) as pool:
        if request.workers == 1:  # all the cores are its, whatever the plan
            pool.start(command(1), 1)
        from tqdm import tqdm  # this and what reads video: imported while the worker starts

        from shared.colour import plan_colour
        from shared.preview import preview_offsets, rows_name, sampled_batches, write_preview
        from shared.probe import probe
        from shared.split import split_video
        from shared.stitch import descriptions, skipped_frames, skipped_note, stitch

        info = probe(request.input, settings)  # refuses what is over the limits before reading what they bound
        request, container = check_request(request, info)
        notes = [*container.notes, *filter(None, [plan_colour(info.colour, info.height, request.keep_10bit).note()])]
        for note in notes:
            tqdm.write(f"note: {note}", file=sys.stderr)
        temporal = plan_temporal(model["used"], request.temporal, request.temporal_strength, settings.temporal_context_frames)
        batches = plan_batches(info, request.batch_frames, temporal.context_frames)
        workers = min(request.workers, len(batches))
        pool.start(command(workers), workers)
        report = RunReport(
            input=info.summary(), output=str(request.output), model=model, device=request.device,
            batch_frames=request.batch_frames, workers=workers, notes=notes,
        )
        report.batches = [BatchRecord(b.index, b.first_frame, b.frame_count) for b in batches]
        work = Path(scratch)
        with report.stage("split"):
            parts = split_video(info, batches, work / "segments", container)
        styled = [work / "styled" / f"{b.name}.mp4" for b in batches]
        messages = [BatchMessage(job_id=LOCAL_JOB, batch=b, attempt=1, model=spec.model, segment=str(segment), styled=str(target),
                                 precision=spec.precision, style_image=spec.style_image, style_strength=spec.style_strength,
                                 keep_10bit=request.keep_10bit, preview_frames=preview_offsets(b, info.frame_count),
                                 temporal_strength=temporal.strength)
                    for b, segment, target in zip(batches, parts.segments, styled)]
        with report.stage("score"), tqdm(total=info.frame_count, unit="frame", desc="styling", disable=None) as bar:
            report.worker_stats, report.model["styler"], stabilisers = style_batches(pool, messages, report.batches, bar)
        report.temporal = temporal_report(temporal.describe(), stabilisers)
        with report.stage("stitch"):
            shown = stitch(styled, parts.tracks, request.output, **descriptions(info.summary()))
            skipped = skipped_frames(batches, shown, parts.segments.__getitem__)
        with report.stage("preview"):
            rows = [Path(rows_name(str(styled[position]))) for position in sampled_batches(batches)]
            write_preview([path for path in rows if path.exists()], request.preview_path)
    report.skipped_frames = [round(float(t), 6) for t in skipped]
    if skipped:
        report.notes.append(skipped_note(skipped, info.frame_count))
        tqdm.write(f"note: {report.notes[-1]}", file=sys.stderr)
    report.frames = info.frame_count - len(skipped)
    report.seconds = round(time.perf_counter() - started, 4)
    report.status = "succeeded"
    report.write(request.report_path)
    return report


def style_batches(pool: WorkerPool, messages: Sequence[BatchMessage], records: Sequence[BatchRecord],
                  bar: tqdm) -> tuple[list[dict], dict, list[dict]]:
    """Style every batch with the pool; returns each worker's name, batches styled and model loads, what
    styled the frames (model, style, engine, device, precision), and what stabilised each batch's ({}: nothing did).

    A batch that fails for good (an error that will repeat, or its last attempt) fails the run.
    """
    from tqdm import tqdm

    frames = [0] * len(messages)
    done_by: list[dict] = []
    styler: dict = {}
    stabilisers: list[dict] = []

    def progress(index: int, event: dict) -> None:
        if event.get("event") == "frames":
            frames[index] += event["frames"]
            bar.update(event["frames"])

    def outcome(done: Outcome[BatchResult]) -> None:
        record, result, batch = records[done.index], done.result, messages[done.index].batch
        record.attempts, record.seconds = done.attempt, round(done.seconds, 4)
        if result.succeeded:
            record.worker = result.worker
            done_by.append({"worker": result.worker, "model_loads": result.model_loads})
            styler.update(result.styler or {})
            stabilisers.append(result.temporal or {})
            return
        bar.update(-frames[done.index])
        frames[done.index] = 0
        record.errors.append(result.error)
        if not done.final:
            tqdm.write(f"warning: {batch.name} attempt {done.attempt} failed ({result.error}); retrying")
            return
        span = f"{batch.name} (frames {batch.first_frame}-{batch.first_frame + batch.frame_count - 1})"
        if not result.retryable:
            raise InvalidInputError(f"{span}: {result.error}")
        raise BatchFailedError(f"{span} failed {done.attempt} times; last error: {result.error}")

    pool.run(messages, outcome, progress)
    return worker_stats(done_by), styler, stabilisers
