"""``python -m gpu_job``: style one batch segment. Runs the same on a laptop and on an Azure ML node."""

from __future__ import annotations

import argparse
import json
import os
import sys
from fractions import Fraction
from pathlib import Path

from shared.config import Settings
from shared.errors import InvalidInputError, PipelineError

AUTO_BATCH = {"cpu": 1, "cuda": 8}
INVALID_INPUT = 2
"""Exit status for an error that will repeat (a damaged or unreadable segment): launchers do not retry it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m gpu_job", description=__doc__)
    parser.add_argument("--input", required=True, type=Path, help="batch segment (MP4 cut by stream copy)")
    parser.add_argument("--output", required=True, type=Path, help="styled segment to write (MP4)")
    parser.add_argument("--model", required=True, help="style name, checkpoint path, 'identity' or 'random'")
    parser.add_argument("--start-pts", required=True, type=int, help="timestamp of the batch's first frame")
    parser.add_argument("--end-pts", type=int, default=None, help="timestamp of the next batch's first frame (omit for the last batch)")
    parser.add_argument("--time-base", type=Fraction, required=True, help="unit of --start-pts and --end-pts, e.g. 1/30000")
    parser.add_argument("--frames", required=True, type=int, help="frames the batch must yield")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=settings.infer_batch, help="frames per forward pass (0: by device)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    parser.add_argument("--crf", type=int, default=settings.crf)
    parser.add_argument("--preset", default=settings.preset)
    parser.add_argument("--keep-10bit", action="store_true", help="10-bit output for sources of more than 8 bits (default: 8-bit)")
    parser.add_argument("--cache-dir", type=Path, default=settings.model_cache_dir)
    parser.add_argument("--progress", action="store_true", help="print one JSON line per encoded batch of frames")
    args = parser.parse_args(argv)
    if args.frames <= 0 or args.batch_size < 0:
        parser.error("--frames must be positive and --batch-size not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch

        from gpu_job.models import build_model, resolve_model
        from gpu_job.scorer import EncoderSettings, FrameStyler, score_segment

        if args.threads:
            torch.set_num_threads(args.threads)
        device = _device(args.device, torch)
        if not args.input.is_file():
            raise PipelineError(f"{args.input}: no such segment")
        styler = FrameStyler(build_model(resolve_model(args.model, args.cache_dir)), device)

        def report(frames: int) -> None:
            if args.progress:
                print(json.dumps({"event": "frames", "frames": frames}), flush=True)

        result = score_segment(
            args.input,
            args.output,
            styler,
            start=args.start_pts * args.time_base,
            end=None if args.end_pts is None else args.end_pts * args.time_base,
            expected_frames=args.frames,
            batch_size=args.batch_size or AUTO_BATCH[device.type],
            encoder=EncoderSettings(crf=args.crf, preset=args.preset, keep_10bit=args.keep_10bit),
            on_frames=report,
        )
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return INVALID_INPUT
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"event": "done", "frames": result.frames, "skipped": result.skipped, "seconds": round(result.seconds, 3),
                      "infer_seconds": round(result.infer_seconds, 3), "device": str(device), "pid": os.getpid()}), flush=True)
    return 0


def _device(choice: str, torch):
    if choice == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda: no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


if __name__ == "__main__":
    sys.exit(main())
