"""What the scorer's pixel conversion costs per frame: SDR beside HDR (tone-mapped), side by side in one run.

    .venv/bin/python bench/colour.py [--size 1920x1080] [--frames 20]

Times gpu_job.colour.to_rgb (decoded frame -> RGB for the network) and from_rgb (styled RGB -> frame
for the encoder) on in-memory frames: 8-bit BT.709 SDR, 10-bit SDR, and 10-bit BT.2020 PQ and HLG.
Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_job.colour import from_rgb, to_rgb  # noqa: E402
from shared.colour import Colour, plan_colour  # noqa: E402

SOURCES = {
    "8-bit SDR BT.709": (Colour(1, 1, 1, 1, 8), "yuv420p"),
    "10-bit SDR BT.709": (Colour(1, 1, 1, 1, 10), "yuv420p10le"),
    "10-bit HDR PQ BT.2020": (Colour(1, 9, 16, 9, 10), "yuv420p10le"),
    "10-bit HDR HLG BT.2020": (Colour(1, 9, 18, 9, 10), "yuv420p10le"),
}


def _frames(width: int, height: int, pix_fmt: str, count: int) -> list[av.VideoFrame]:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    frames = []
    for _ in range(count):
        rgb = np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        frames.append(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt))
    return frames


def _ms_per_frame(work, items) -> float:
    work(items[0])
    began = time.perf_counter()
    for item in items:
        work(item)
    return 1000 * (time.perf_counter() - began) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--frames", type=int, default=20)
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split("x"))
    print(f"{platform.machine()}, {platform.python_version()}, PyAV {av.__version__}, {args.size}, {args.frames} frames\n")
    print("| source | to_rgb (ms/frame) | from_rgb (ms/frame) | output |")
    print("|---|---|---|---|")
    for name, (colour, pix_fmt) in SOURCES.items():
        plan = plan_colour(colour, height)
        frames = _frames(width, height, pix_fmt, args.frames)
        rgbs = [to_rgb(frame, plan) for frame in frames]
        decode = _ms_per_frame(lambda frame: to_rgb(frame, plan), frames)
        reformatter = VideoReformatter()
        encode = _ms_per_frame(lambda rgb: from_rgb(rgb, plan, reformatter), rgbs)
        print(f"| {name} | {decode:.1f} | {encode:.1f} | {plan.output_pix_fmt(width, height)}{', tone-mapped' if plan.tone_map else ''} |")


if __name__ == "__main__":
    main()
