"""Benchmarks of the local pipeline. Prints a Markdown table; results are kept in bench/RESULTS.md.

    .venv/bin/python bench/run.py [--size 640x360] [--seconds 10] [--skip-memory]

1. Overhead: wall time of ``stylize run`` over the pure model time for the same frames and threads.
2. Reference method (frames dumped to PNG, scored one by one, re-encoded, audio remuxed) against ours.
3. Peak memory (largest process RSS) for a 10 s and a 60 s clip: it must not grow with length.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_job.__main__ import AUTO_BATCH  # noqa: E402
from gpu_job.models import random_transformer  # noqa: E402
from gpu_job.scorer import FrameStyler  # noqa: E402

STYLIZE = str(Path(sys.executable).with_name("stylize"))


def make_clip(path: Path, size: str, seconds: float, rate: int = 24) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"mandelbrot=size={size}:rate={rate}",
         "-f", "lavfi", "-i", "sine=frequency=330:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(rate * 2), "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )
    return path


def pure_model_seconds(clip: Path, threads: int, batch: int) -> tuple[float, int]:
    torch.set_num_threads(threads)
    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    styler = FrameStyler(random_transformer(), torch.device("cpu"))
    styler(np.stack(frames[:1]))
    began = time.perf_counter()
    for i in range(0, len(frames), batch):
        styler(np.stack(frames[i : i + batch]))
    return time.perf_counter() - began, len(frames)


def timed(command: list[str], **kwargs) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, **kwargs)
    return time.perf_counter() - began


def ours(clip: Path, out: Path, model: str = "random", batch_frames: int = 240) -> float:
    return timed([STYLIZE, "run", str(clip), str(out), "--model", model, "--batch-frames", str(batch_frames), "--workers", "1"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reference_method(clip: Path, work: Path, threads: int) -> float:
    """The older architecture's way: every frame an image file on disk, scored one at a time."""
    from PIL import Image

    torch.set_num_threads(threads)
    frames_in, frames_out = work / "in", work / "out"
    frames_in.mkdir()
    frames_out.mkdir()
    began = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), str(frames_in / "%06d.png")], check=True)
    model = random_transformer().eval()
    with torch.inference_mode():
        for image_path in sorted(frames_in.iterdir()):
            rgb = np.asarray(Image.open(image_path).convert("RGB"))
            h, w = rgb.shape[:2]
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
            x = torch.nn.functional.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
            y = model(x)[0, :, :h, :w].clamp(0, 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(y).save(frames_out / image_path.name)
    with av.open(str(clip)) as container:
        rate = str(container.streams.video[0].average_rate)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-framerate", rate, "-i", str(frames_out / "%06d.png"), "-i", str(clip),
         "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "copy", str(work / "reference.mp4")],
        check=True,
    )
    return time.perf_counter() - began


def peak_rss_mib(command: list[str]) -> float:
    """Largest RSS of any process the command ran (it runs in a fresh child, so earlier runs do not count)."""
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], check=True, capture_output=True, text=True).stdout
    return int(out.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        clip = make_clip(work / "clip.mp4", args.size, args.seconds)
        model_s, frames = pure_model_seconds(clip, threads, batch=AUTO_BATCH["cpu"])
        ours_s = ours(clip, work / "ours.mp4")
        rows.append((f"pure model time (random TransformerNet, batch {AUTO_BATCH['cpu']})", f"{model_s:.1f} s", f"{frames / model_s:.2f} frames/s"))
        rows.append(("stylize run, 1 worker", f"{ours_s:.1f} s", f"overhead x{ours_s / model_s:.3f}"))
        reference_s = reference_method(clip, work, threads)
        rows.append(("reference method (PNG files, frame by frame)", f"{reference_s:.1f} s", f"ours is x{reference_s / ours_s:.2f} faster"))
        if not args.skip_memory:
            for seconds in (10, 60):
                long_clip = make_clip(work / f"clip{seconds}.mp4", args.size, seconds)
                cmd = [STYLIZE, "run", str(long_clip), str(work / f"out{seconds}.mp4"), "--model", "identity"]
                rows.append((f"peak RSS, {seconds} s clip (identity)", f"{peak_rss_mib(cmd):.0f} MiB", ""))
    print(f"machine: {platform.processor() or platform.machine()}, {threads} cores, torch {torch.__version__}, clip {args.size} {args.seconds} s, {frames} frames")
    print("| measure | value | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
