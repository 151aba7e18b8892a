"""The whole pipeline on this machine: probe, plan, split, score batches in parallel workers, stitch.

Each batch is scored by ``python -m gpu_job`` in its own process, exactly as an Azure ML node runs
it; a failed batch is retried on its own, up to the configured attempts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from gpu_job.command import ScorerOptions, local_command, scorer_args
from shared.colour import plan_colour
from shared.config import Settings
from shared.containers import MUXERS, NOT_WRITTEN, ContainerChoice, output_container
from shared.errors import BatchFailedError, InvalidInputError, PipelineError
from shared.plan import Batch, plan_batches
from shared.preview import write_preview
from shared.probe import VideoInfo, probe
from shared.report import BatchRecord, RunReport
from shared.split import split_video
from shared.stitch import skipped_frames, skipped_note, stitch

OUTPUT_SUFFIXES = sorted({*MUXERS, *NOT_WRITTEN})
SCORER_INVALID_INPUT = 2
"""The scorer's exit status for an error that will repeat: not retried."""

Launcher = Callable[[list[str]], subprocess.Popen]


def launch_scorer(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    keep_10bit: bool = False

    @property
    def report_path(self) -> Path:
        return self.report or self.output.with_name(f"{self.output.stem}.report.json")

    @property
    def preview_path(self) -> Path:
        return self.output.with_name(f"{self.output.stem}.preview.png")


def check_request(request: RunRequest, info: VideoInfo) -> tuple[RunRequest, ContainerChoice]:
    """Refuse what cannot run; returns the request with its output in a container that holds the input's tracks."""
    if request.output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InvalidInputError(f"{request.output}: output must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if request.batch_frames <= 0 or request.workers <= 0:
        raise InvalidInputError("--batch-frames and --workers must be positive")
    container = output_container(info, request.output.suffix)
    if container.suffix != request.output.suffix.lower():
        request = replace(request, output=request.output.with_suffix(container.suffix))
    if request.output.exists() and request.output.resolve() == request.input.resolve():
        raise InvalidInputError(f"{request.output}: output would overwrite the input")
    if request.output.is_dir():
        raise InvalidInputError(f"{request.output}: is a directory")
    return request, container


def resolve_with_fallback(request: RunRequest, settings: Settings) -> dict:
    """Resolve the model once for all workers; on an unreachable style, fall back only if asked to, and say so."""
    from gpu_job.models import ModelUnavailableError, resolve_model

    try:
        return {"requested": request.model, "used": request.model, "path": resolve_model(request.model, settings.model_cache_dir)}
    except ModelUnavailableError as exc:
        if not request.fallback_model:
            raise
        notice = f"style {request.model!r} unavailable ({exc}); using {request.fallback_model!r} instead"
        tqdm.write(f"warning: {notice}")
        path = resolve_model(request.fallback_model, settings.model_cache_dir)
        return {"requested": request.model, "used": request.fallback_model, "path": path, "fallback_reason": notice}


def run(request: RunRequest, settings: Settings, launcher: Launcher = launch_scorer) -> RunReport:
    """Style ``request.input``; the report's ``output`` names the file written (its container may differ from the one asked for)."""
    started = time.perf_counter()
    info = probe(request.input)
    request, container = check_request(request, info)
    notes = [*container.notes, *filter(None, [plan_colour(info.colour, info.height, request.keep_10bit).note()])]
    for note in notes:
        tqdm.write(f"note: {note}", file=sys.stderr)
    model = resolve_with_fallback(request, settings)
    report = RunReport(
        input=info.summary(), output=str(request.output), model=model, device=request.device,
        batch_frames=request.batch_frames, workers=request.workers, notes=notes,
    )
    batches = plan_batches(info, request.batch_frames)
    report.batches = [BatchRecord(b.index, b.first_frame, b.frame_count) for b in batches]
    options = ScorerOptions(
        model=model["path"], device=request.device, batch_size=settings.infer_batch, crf=settings.crf,
        preset=settings.preset, threads=max(1, (os.cpu_count() or 1) // request.workers), keep_10bit=request.keep_10bit,
    )
    with tempfile.TemporaryDirectory(prefix="stylize-", dir=request.work_dir) as scratch:
        work = Path(scratch)
        with report.stage("split"):
            parts = split_video(info, batches, work / "segments", container)
        styled = [work / "styled" / f"{b.name}.mp4" for b in batches]
        with report.stage("score"), tqdm(total=info.frame_count, unit="frame", desc="styling", disable=None) as bar:
            pool = _BatchPool(options, settings.max_attempts, launcher, bar)
            pool.run(batches, parts.segments, styled, report.batches, request.workers)
        with report.stage("stitch"):
            skipped = skipped_frames(batches, styled, parts.segments.__getitem__)
            stitch(styled, parts.tracks, request.output)
        with report.stage("preview"):
            write_preview(batches, parts.segments, styled, request.preview_path)
    report.skipped_frames = [round(float(t), 6) for t in skipped]
    if skipped:
        report.notes.append(skipped_note(skipped, info.frame_count))
        tqdm.write(f"note: {report.notes[-1]}", file=sys.stderr)
    report.frames = info.frame_count - len(skipped)
    report.seconds = round(time.perf_counter() - started, 4)
    report.status = "succeeded"
    report.write(request.report_path)
    return report


class _BatchPool:
    """Runs scorer processes for batches, several at once, retrying each failed batch on its own."""

    def __init__(self, options: ScorerOptions, max_attempts: int, launcher: Launcher, bar: tqdm) -> None:
        self.options, self.max_attempts, self.launcher, self.bar = options, max_attempts, launcher, bar
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()

    def run(self, batches: Sequence[Batch], inputs: Sequence[Path], outputs: Sequence[Path], records: Sequence[BatchRecord], workers: int) -> None:
        outputs[0].parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch") as executor:
            futures = [executor.submit(self._score, b, i, o, r) for b, i, o, r in zip(batches, inputs, outputs, records)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception()]
            if failed:
                self.cancelled.set()
                with self.lock:
                    for process in self.running:
                        process.kill()
                raise failed[0].exception()

    def _score(self, batch: Batch, source: Path, target: Path, record: BatchRecord) -> None:
        command = local_command(scorer_args(str(source), str(target), batch, self.options, progress=True))
        while not self.cancelled.is_set():
            record.attempts += 1
            began = time.perf_counter()
            error, frames_reported, code = self._attempt(command)
            record.seconds = round(time.perf_counter() - began, 4)
            if error is None:
                return
            record.errors.append(error)
            self.bar.update(-frames_reported)
            if code == SCORER_INVALID_INPUT:
                raise InvalidInputError(f"{batch.name}: {error.removeprefix('error: ')}")
            if record.attempts >= self.max_attempts:
                raise BatchFailedError(f"{batch.name} (frames {batch.first_frame}-{batch.first_frame + batch.frame_count - 1}) failed {record.attempts} times; last error: {error}")
            tqdm.write(f"warning: {batch.name} attempt {record.attempts} failed ({error}); retrying")

    def _attempt(self, command: list[str]) -> tuple[str | None, int, int]:
        """Run one scorer process: (None on success else a one-line reason, frames it reported, exit status)."""
        process = self.launcher(command)
        with self.lock:
            self.running.add(process)
        stderr_lines: list[str] = []
        drain = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
        drain.start()
        frames = 0
        for line in process.stdout:
            event = _parse_event(line)
            if event.get("event") == "frames":
                frames += event["frames"]
                self.bar.update(event["frames"])
        code = process.wait()
        drain.join()
        with self.lock:
            self.running.discard(process)
        if code == 0:
            return None, frames, code
        last = next((line.strip() for line in reversed(stderr_lines) if line.strip()), "")
        return last or f"scorer exited with code {code}", frames, code


def _parse_event(line: str) -> dict:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}
