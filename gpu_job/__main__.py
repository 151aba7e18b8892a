"""``python -m gpu_job``: the warm worker. Runs the same on a laptop and on an Azure ML node.

    python -m gpu_job worker [--stdio] [--preload MODEL] [options]   # video batches, each model loaded once
    python -m gpu_job worker --work shards [--stdio]                  # shards of many anomaly models (no torch)
    python -m gpu_job batch --input SEG --output OUT --model M ...    # one batch, for debugging

``worker`` drains the queue of its kind of work named by the ``STYLIZE_*`` settings (storage from
``DataStorage`` or ``DataStorage__*``) until it has been idle for ``--idle-seconds``; with
``--stdio`` it reads messages as JSON lines on standard input and answers with JSON lines on
standard output instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import NoReturn

from gpu_job.command import WorkerOptions
from shared.config import Settings
from shared.work import KINDS
from shared.errors import PipelineError
from shared.messages import BatchMessage, ModelSpec
from shared.plan import Batch


def _add_worker_options(parser: argparse.ArgumentParser, settings: Settings) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=settings.infer_batch, help="frames per forward pass (0: by device)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the inference engine")
    parser.add_argument("--crf", type=int, default=settings.crf)
    parser.add_argument("--preset", default=settings.preset)
    parser.add_argument("--cache-dir", type=Path, default=settings.model_cache_dir, help="where downloaded styles are cached")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """How to run the model (for ``worker``: the preloaded one; batch messages carry their own)."""
    parser.add_argument("--precision", choices=("auto", "fp32"), default="auto", help="auto: the engine's fastest (bf16/fp16); fp32: full")
    parser.add_argument("--style-image", type=Path, default=None, help="picture to take the style from (with the model arbitrary)")
    parser.add_argument("--style-strength", type=float, default=1.0, help="0..1: how much of the style to apply")


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpu_job", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="do work item after work item: style batches, each model loaded once, or score shards")
    worker.add_argument("--work", choices=sorted(KINDS), default="batches", help="what to do (default: %(default)s)")
    worker.add_argument("--stdio", action="store_true", help="take messages as JSON lines on stdin instead of the work's queue")
    worker.add_argument("--preload", default=None, help="load this model (with the options below) before the first batch")
    worker.add_argument("--idle-seconds", type=float, default=settings.worker_idle_s, help="queue mode: stop after this long without work")
    _add_worker_options(worker, settings)
    _add_model_options(worker)
    batch = commands.add_parser("batch", help="style one batch segment (debugging)")
    batch.add_argument("--input", required=True, type=Path, help="batch segment (MP4 cut by stream copy)")
    batch.add_argument("--output", required=True, type=Path, help="styled segment to write (MP4)")
    batch.add_argument("--model", required=True, help="a name `stylize styles` lists, or a .pth checkpoint path")
    batch.add_argument("--start-pts", required=True, type=int, help="timestamp of the batch's first frame")
    batch.add_argument("--end-pts", type=int, default=None, help="timestamp of the next batch's first frame (omit for the last batch)")
    batch.add_argument("--time-base", type=Fraction, required=True, help="unit of --start-pts and --end-pts, e.g. 1/30000")
    batch.add_argument("--frames", required=True, type=int, help="frames the batch must yield")
    batch.add_argument("--keep-10bit", action="store_true", help="10-bit output for sources of more than 8 bits (default: 8-bit)")
    _add_worker_options(batch, settings)
    _add_model_options(batch)
    return parser


def parse_args(argv: list[str] | None = None, settings: Settings | None = None) -> argparse.Namespace:
    parser = build_parser(settings or Settings.from_env())
    args = parser.parse_args(argv)
    if args.batch_size < 0 or (args.command == "batch" and args.frames <= 0):
        parser.error("--frames must be positive and --batch-size not negative")
    if args.command == "worker" and args.work != "batches" and args.preload:
        parser.error("--preload goes with --work batches")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, settings)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker %(process)d: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # not every storage request and response
    try:
        handler = _handler(args, settings)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "batch":
        return _one_batch(handler.worker, args)
    if args.stdio:
        from gpu_job.worker import serve_stdio

        serve_stdio(handler, sys.stdin, sys.stdout, preload=_preload_spec(args))
        _leave_now()
    from gpu_job.queue_worker import QueueWorker

    if args.preload:
        handler.preload(_preload_spec(args))
    QueueWorker(handler, settings).serve(args.idle_seconds)
    return 0


def _handler(args: argparse.Namespace, settings: Settings):
    """What the worker does: score shards (no torch imported), or style batches with a warm :class:`Worker`."""
    if args.command == "worker" and args.work == "shards":
        from gpu_job.shard_work import ShardWork

        return ShardWork(settings)
    from gpu_job.batch_work import BatchWork
    from gpu_job.worker import Worker

    options = WorkerOptions(device=args.device, batch_size=args.batch_size, crf=args.crf, preset=args.preset, threads=args.threads)
    return BatchWork(Worker(options, args.cache_dir), settings)


def _model_spec(model: str, args: argparse.Namespace) -> ModelSpec:
    style_image = None if args.style_image is None else str(args.style_image)
    return ModelSpec(model, args.precision, style_image, args.style_strength)


def _preload_spec(args: argparse.Namespace) -> ModelSpec | None:
    return _model_spec(args.preload, args) if args.preload else None


def _leave_now() -> NoReturn:
    """Exit 0 without the interpreter's teardown: unloading OpenVINO, FFmpeg and NumPy takes 50-100 ms, which
    the runner that closed our input would wait through. Every file is closed and every result sent by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _one_batch(worker, args: argparse.Namespace) -> int:
    time_base = args.time_base
    batch = Batch(index=0, first_frame=0, frame_count=args.frames, start_pts=args.start_pts, end_pts=args.end_pts,
                  time_base=f"{time_base.numerator}/{time_base.denominator}", first_gop=0, last_gop=0)
    spec = _model_spec(args.model, args)
    message = BatchMessage(job_id="debug", batch=batch, attempt=1, model=spec.model, segment=str(args.input), styled=str(args.output),
                           precision=spec.precision, style_image=spec.style_image, style_strength=spec.style_strength,
                           keep_10bit=args.keep_10bit)
    result = worker.style(message, args.input, args.output)
    print(json.dumps(result.to_dict()), flush=True)
    if result.succeeded:
        return 0
    print(f"error: {result.error}", file=sys.stderr)
    return 1 if result.retryable else 2


if __name__ == "__main__":
    sys.exit(main())
