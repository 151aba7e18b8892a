"""``stylize``: style a whole video on this machine (CPU or a local GPU), or in the cloud (:mod:`runner.cloud`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner import cloud
from shared.config import Settings
from shared.errors import InvalidInputError, PipelineError


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylize", description="Frame-exact neural style transfer of whole videos.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="style INPUT into OUTPUT, keeping every frame and the original sound")
    run.add_argument("input", type=Path)
    run.add_argument("output", type=Path, help="styled video to write (.mp4, .m4v, .mov or .mkv; if it cannot hold the input's tracks, "
                                                "another container is used and named on stderr)")
    run.add_argument("--model", default=None,
                     help="a name `stylize styles` lists, a blend such as starry:0.7+ember:0.3, or a .pth checkpoint "
                          f"(default: {settings.default_style}, or arbitrary with --style-image)")
    run.add_argument("--style-image", type=Path, default=None, help="any picture as the style (model arbitrary)")
    run.add_argument("--style-strength", type=float, default=1.0, help="0..1: how much of the style to apply (default: %(default)s)")
    run.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                     help="auto: the engine's fastest (bf16 on CPUs that have it, fp16 on CUDA); fp32: full precision")
    run.add_argument("--fallback-model", default=None, help="model to use, with a warning, if --model cannot be fetched")
    run.add_argument("--batch-frames", type=int, default=settings.batch_frames, help="frames per batch (default: %(default)s)")
    run.add_argument("--workers", type=int, default=1, help="worker processes, each loading the model once and styling batch after batch (default: %(default)s)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--report", type=Path, default=None, help="JSON report path (default: OUTPUT.report.json beside OUTPUT)")
    run.add_argument("--work-dir", type=Path, default=None, help="where batch segments are kept while running (default: system temp)")
    run.add_argument("--temporal", choices=("on", "off"), default="on" if settings.temporal else "off",
                     help="stabilise the styled frames over time, against flicker (never with model identity; default: %(default)s)")
    run.add_argument("--temporal-strength", type=float, default=settings.temporal_strength,
                     help="0..1: how strongly (default: %(default)s)")
    run.add_argument("--keep-10bit", action="store_true",
                     help="write 10-bit output for sources of more than 8 bits (default: 8-bit; HDR is tone-mapped to SDR either way)")
    styles = commands.add_parser("styles", help="list every name --model accepts (name first), or draw them all on one frame")
    styles.add_argument("--sheet", nargs=2, type=Path, metavar=("FRAME_OR_VIDEO", "OUT.png"), default=None,
                        help="render every built-in style on a picture or a video's middle frame into one PNG")
    cloud.add_commands(commands, settings)
    return parser


def list_styles(args: argparse.Namespace) -> int:
    from gpu_job.styles import catalog

    if args.sheet:
        from runner.sheet import write_sheet

        source, out = args.sheet
        print(f"sheet: {write_sheet(source, out)}")
        return 0
    for name, description in catalog():
        print(f"{name}\t{description}")
    print("blend built-in styles with +, weights with :, e.g. starry:0.7+ember:0.3; a .pth checkpoint path also works", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except PipelineError as exc:
        print(f"stylize: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    try:
        if args.command == "styles":
            return list_styles(args)
        if args.command in ("submit", "status", "jobs"):
            return cloud.run_command(args, settings)
        report, request = _run(args, settings)
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
    styler = report.model.get("styler", {})
    print(f"styled {summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.2f} frames/s) "
          f"with model {styler.get('model', report.model['used'])}, style {styler.get('style', '?')}, "
          f"engine {styler.get('engine', '?')} ({styler.get('precision', '?')}); {_temporal_summary(report.temporal)}", file=sys.stderr)
    print(f"output:  {report.output}\npreview: {request.preview_path}\nreport:  {request.report_path}")
    return 0


def _temporal_summary(temporal: dict) -> str:
    if temporal.get("used") != "on":
        return f"temporal stabilisation off ({temporal.get('reason', 'not asked for')})"
    return f"temporal stabilisation at strength {temporal['strength']} with {temporal['context_frames']} context frames per batch"


def _run(args: argparse.Namespace, settings: Settings):
    from gpu_job.styles import ARBITRARY
    from runner.local import RunRequest, run

    model = args.model or (ARBITRARY if args.style_image else settings.default_style)
    request = RunRequest(
        input=args.input, output=args.output, model=model, batch_frames=args.batch_frames, workers=args.workers,
        device=args.device, report=args.report, fallback_model=args.fallback_model, work_dir=args.work_dir,
        precision=args.precision, style_image=args.style_image, style_strength=args.style_strength, keep_10bit=args.keep_10bit,
        temporal=args.temporal == "on", temporal_strength=args.temporal_strength,
    )
    return run(request, settings), request


if __name__ == "__main__":
    sys.exit(main())
