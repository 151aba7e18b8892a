"""The whole pipeline on this machine: probe, plan, split, style batches with warm workers, stitch.

``--workers N`` worker processes (``python -m gpu_job worker --stdio``, the same worker an Azure ML
node runs) start once, load the model while the video is being split, and are fed batch after
batch over a pipe. A failed batch is retried on its own, up to the configured attempts; a worker
that dies is replaced and its batch retried; an error that will repeat fails the run at once.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from gpu_job.command import WorkerOptions, worker_command
from gpu_job.styles import ARBITRARY, check_style_image
from shared.colour import plan_colour
from shared.config import Settings
from shared.containers import MUXERS, NOT_WRITTEN, ContainerChoice, output_container
from shared.errors import BatchFailedError, InvalidInputError, PipelineError
from shared.messages import BatchMessage, BatchResult, MessageError, ModelSpec
from shared.plan import plan_batches
from shared.preview import write_preview
from shared.probe import VideoInfo, probe
from shared.report import BatchRecord, RunReport, worker_stats
from shared.split import split_video
from shared.stitch import skipped_frames, skipped_note, stitch

OUTPUT_SUFFIXES = sorted({*MUXERS, *NOT_WRITTEN})
LOCAL_JOB = "local"
STOP_GRACE_S = 10

Launcher = Callable[[list[str]], subprocess.Popen]


def launch_worker(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)


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
    if not 0.0 <= request.style_strength <= 1.0:
        raise InvalidInputError(f"--style-strength must be between 0 and 1, got {request.style_strength}")
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


def run(request: RunRequest, settings: Settings, launcher: Launcher = launch_worker) -> RunReport:
    """Style ``request.input``; the report's ``output`` names the file written (its container may differ from the one asked for)."""
    started = time.perf_counter()
    info = probe(request.input)
    request, container = check_request(request, info)
    notes = [*container.notes, *filter(None, [plan_colour(info.colour, info.height, request.keep_10bit).note()])]
    for note in notes:
        tqdm.write(f"note: {note}", file=sys.stderr)
    model = resolve_with_fallback(request, settings)
    batches = plan_batches(info, request.batch_frames)
    workers = min(request.workers, len(batches))
    report = RunReport(
        input=info.summary(), output=str(request.output), model=model, device=request.device,
        batch_frames=request.batch_frames, workers=workers, notes=notes,
    )
    report.batches = [BatchRecord(b.index, b.first_frame, b.frame_count) for b in batches]
    options = WorkerOptions.from_settings(settings, device=request.device, threads=max(1, (os.cpu_count() or 1) // workers))
    spec = ModelSpec(model["path"], request.precision, None if request.style_image is None else str(request.style_image.resolve()),
                     request.style_strength)
    command = worker_command(options, stdio=True, preload=spec)
    with tempfile.TemporaryDirectory(prefix="stylize-", dir=request.work_dir) as scratch, \
            WorkerPool(command, workers, settings.max_attempts, launcher) as pool:
        work = Path(scratch)
        with report.stage("split"):
            parts = split_video(info, batches, work / "segments", container)
        styled = [work / "styled" / f"{b.name}.mp4" for b in batches]
        messages = [BatchMessage(job_id=LOCAL_JOB, batch=b, attempt=1, model=spec.model, segment=str(segment), styled=str(target),
                                 precision=spec.precision, style_image=spec.style_image, style_strength=spec.style_strength,
                                 keep_10bit=request.keep_10bit)
                    for b, segment, target in zip(batches, parts.segments, styled)]
        with report.stage("score"), tqdm(total=info.frame_count, unit="frame", desc="styling", disable=None) as bar:
            report.worker_stats = pool.run(messages, report.batches, bar)
        report.model["styler"] = pool.styler
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


class WorkerProcess:
    """One ``python -m gpu_job worker --stdio``: send it a batch, read its events until the batch's result."""

    def __init__(self, launcher: Launcher, command: list[str]) -> None:
        self.process = launcher(command)
        self.name = f"pid {self.process.pid}"
        self._stderr: deque[str] = deque(maxlen=20)
        self._drain = threading.Thread(target=lambda: self._stderr.extend(self.process.stderr), daemon=True)
        self._drain.start()

    def style(self, message: BatchMessage, on_frames: Callable[[int], None]) -> BatchResult:
        """The batch's result; a worker that dies on the way yields a failed, retryable result."""
        try:
            self.process.stdin.write(message.to_json() + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._died(message)
        for line in self.process.stdout:
            event = _parse_event(line)
            kind = event.pop("event", None)
            if kind == "frames":
                on_frames(event["frames"])
            elif kind == "ready":
                self.name = event["worker"]
            elif kind == "result":
                try:
                    result = BatchResult.from_dict(event)
                except MessageError as exc:
                    return BatchResult(job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, succeeded=False, error=str(exc))
                return result
        return self._died(message)

    def _died(self, message: BatchMessage) -> BatchResult:
        code = self.process.wait()
        self._drain.join(timeout=5)
        last = next((line.strip() for line in reversed(self._stderr) if line.strip()), "")
        error = f"worker {self.name} exited with code {code}" + (f": {last}" if last else "")
        return BatchResult(job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, succeeded=False, error=error)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Close its input (it finishes and exits); kill it if it does not."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.process.kill()


class WorkerPool:
    """``workers`` warm worker processes sharing one list of batches; each failed batch is retried alone."""

    def __init__(self, command: list[str], workers: int, max_attempts: int, launcher: Launcher = launch_worker) -> None:
        self.command, self.max_attempts, self.launcher = command, max_attempts, launcher
        self.lock = threading.Lock()
        self.failure: PipelineError | None = None
        self.done_by: list[dict] = []
        self.styler: dict = {}
        """What styled the frames (model, style, engine, device, precision), from the workers' results."""
        self.slots = [WorkerProcess(launcher, command) for _ in range(workers)]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        for process in self.slots:
            if exc_info[0] is None:
                process.stop()
            else:
                process.kill()

    def run(self, messages: Sequence[BatchMessage], records: Sequence[BatchRecord], bar: tqdm) -> list[dict]:
        """Style every message; returns each worker's name, batches styled and model loads."""
        pending: queue.Queue[int | None] = queue.Queue()
        for index in range(len(messages)):
            pending.put(index)
        self._remaining = len(messages)
        threads = [threading.Thread(target=self._serve, args=(slot, messages, records, pending, bar), daemon=True)
                   for slot in range(len(self.slots))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.failure:
            raise self.failure
        return worker_stats(self.done_by)

    def _serve(self, slot: int, messages, records, pending: queue.Queue, bar: tqdm) -> None:
        while (index := pending.get()) is not None:
            record = records[index]
            if not self.slots[slot].alive:
                self.slots[slot] = WorkerProcess(self.launcher, self.command)
            record.attempts += 1
            frames = 0

            def progress(count: int) -> None:
                nonlocal frames
                frames += count
                bar.update(count)

            began = time.perf_counter()
            result = self.slots[slot].style(replace(messages[index], attempt=record.attempts), progress)
            record.seconds = round(time.perf_counter() - began, 4)
            if self.failure:
                return
            if result.succeeded:
                record.worker = result.worker
                self.styler = result.styler or self.styler
                self.done_by.append({"worker": result.worker, "model_loads": result.model_loads})
                self._finished(pending)
                continue
            bar.update(-frames)
            record.errors.append(result.error)
            batch = messages[index].batch
            if not result.retryable or record.attempts >= self.max_attempts:
                span = f"{batch.name} (frames {batch.first_frame}-{batch.first_frame + batch.frame_count - 1})"
                error = (InvalidInputError(f"{span}: {result.error}") if not result.retryable else
                         BatchFailedError(f"{span} failed {record.attempts} times; last error: {result.error}"))
                self._fail(error, pending)
                return
            tqdm.write(f"warning: {batch.name} attempt {record.attempts} failed ({result.error}); retrying")
            pending.put(index)

    def _finished(self, pending: queue.Queue) -> None:
        with self.lock:
            self._remaining -= 1
            if self._remaining == 0:
                for _ in self.slots:
                    pending.put(None)

    def _fail(self, error: PipelineError, pending: queue.Queue) -> None:
        with self.lock:
            if self.failure is None:
                self.failure = error
                for process in self.slots:
                    process.kill()
                for _ in self.slots:
                    pending.put(None)


def _parse_event(line: str) -> dict:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}
