"""``stylize``: style a whole video on this machine (CPU or a local GPU)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.config import Settings
from shared.errors import InvalidInputError, PipelineError


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylize", description="Frame-exact neural style transfer of whole videos.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="style INPUT into OUTPUT, keeping every frame and the original sound")
    run.add_argument("input", type=Path)
    run.add_argument("output", type=Path, help="styled video to write (.mp4, .m4v, .mov or .mkv; if it cannot hold the input's tracks, "
                                                "another container is used and named on stderr)")
    run.add_argument("--model", default=settings.default_style,
                     help="candy, mosaic, rain_princess, udnie, a .pth checkpoint, identity or random (default: %(default)s)")
    run.add_argument("--fallback-model", default=None, help="model to use, with a warning, if --model cannot be fetched")
    run.add_argument("--batch-frames", type=int, default=settings.batch_frames, help="frames per batch (default: %(default)s)")
    run.add_argument("--workers", type=int, default=1, help="batches scored at once (default: %(default)s)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--report", type=Path, default=None, help="JSON report path (default: OUTPUT.report.json beside OUTPUT)")
    run.add_argument("--work-dir", type=Path, default=None, help="where batch segments are kept while running (default: system temp)")
    run.add_argument("--keep-10bit", action="store_true",
                     help="write 10-bit output for sources of more than 8 bits (default: 8-bit; HDR is tone-mapped to SDR either way)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except PipelineError as exc:
        print(f"stylize: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    from runner.local import RunRequest, run

    request = RunRequest(
        input=args.input, output=args.output, model=args.model, batch_frames=args.batch_frames, workers=args.workers,
        device=args.device, report=args.report, fallback_model=args.fallback_model, work_dir=args.work_dir, keep_10bit=args.keep_10bit,
    )
    try:
        report = run(request, settings)
    except InvalidInputError as exc:
        print(f"stylize: error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"stylize: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stylize: interrupted; no output written", file=sys.stderr)
        return 130
    summary = report.to_dict()
    print(f"styled {summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.2f} frames/s) "
          f"with model {report.model['used']}", file=sys.stderr)
    print(f"output:  {report.output}\npreview: {request.preview_path}\nreport:  {request.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
