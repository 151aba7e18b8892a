"""Benchmarks of the local pipeline, side by side in one run. Prints Markdown; results go in bench/RESULTS.md.

    .venv/bin/python bench/run.py [--model random] [--skip-memory] [--rounds 5]

1. Cost per batch: a 20 s 256x144 clip (500 frames) as 20 batches of 25 against 1 batch of 500, in
   ``--rounds`` interleaved rounds, medians.
2. A one-frame video: wall time, and where it goes (interpreter, imports, worker start, stages).
3. ``stylize run`` against the bare model loop (bench/bare_loop.py: same decoder, styler, engine streams and threads),
   both timed as whole commands, on a 6 s clip at 256x144 and at 640x360, with the default encoder
   and with the former default (x264 medium, CRF 18); ``--rounds`` interleaved rounds, medians.
4. ``stylize run`` against the 2019 reference method (bench/reference_2019.py: JPEG per frame, eager
   fp32, batch 1, re-encode from images) on the same 6 s 256x144 clip, in the same rounds.
5. Peak memory (largest process RSS) for a 10 s and a 60 s clip: it must not grow with length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
STYLIZE = str(Path(sys.executable).with_name("stylize"))


def make_clip(path: Path, size: str, seconds: float, rate: int = 25, frames: int | None = None) -> Path:
    length = ["-frames:v", str(frames)] if frames else ["-t", str(seconds)]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"mandelbrot=size={size}:rate={rate}",
         "-f", "lavfi", "-i", "sine=frequency=330:sample_rate=48000", *length, "-t", str(seconds),
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(rate * 2), "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )
    return path


def timed(command: list[str], env: dict | None = None) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    return time.perf_counter() - began, done.stdout


def stylize(clip: Path, out: Path, model: str, batch_frames: int, workers: int = 1, preset: str | None = None,
            crf: int | None = None) -> tuple[float, dict]:
    encoder = {**({"STYLIZE_PRESET": preset} if preset else {}), **({"STYLIZE_CRF": str(crf)} if crf is not None else {})}
    env = {**os.environ, **encoder} if encoder else None
    seconds, _ = timed([STYLIZE, "run", str(clip), str(out), "--model", model, "--batch-frames", str(batch_frames), "--workers", str(workers)], env)
    return seconds, json.loads(out.with_name(f"{out.stem}.report.json").read_text())


def spread(values: list[float]) -> str:
    return f"median of {len(values)}, range {min(values):.2f}-{max(values):.2f} s"


def rounds(top: list[float], bottom: list[float], digits: int = 3) -> str:
    """Each round's ratio, and their median: the rounds are paired (interleaved), so this one is spared the
    slow spells that can put the two medians above in different rounds."""
    ratios = [t / b for t, b in zip(top, bottom, strict=True)]
    return f"rounds: {', '.join(f'x{r:.{digits}f}' for r in ratios)}; median round x{median(ratios):.{digits}f}"


def peak_rss_mib(command: list[str]) -> float:
    """Largest RSS of any process the command ran (it runs in a fresh child, so earlier runs do not count)."""
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([PYTHON, "-c", probe, *command], check=True, capture_output=True, text=True).stdout
    return int(out.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="random", help="any --model value (default: random TransformerNet, the cost of a real style)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each comparison (medians reported)")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)

        clip20 = make_clip(work / "clip20.mp4", "256x144", 20)
        whole: list[float] = []
        batched: list[float] = []
        for _ in range(args.rounds):  # interleaved, as below
            whole.append(stylize(clip20, work / "one.mp4", args.model, 500)[0])
            many_s, many_report = stylize(clip20, work / "many.mp4", args.model, 25)
            batched.append(many_s)
        one_s, many_s = median(whole), median(batched)
        rows.append(("20 s 256x144 (500 frames), 1 batch of 500", f"{one_s:.1f} s", spread(whole)))
        rows.append(("same clip, 20 batches of 25", f"{many_s:.1f} s",
                     f"{spread(batched)}; **x{many_s / one_s:.3f}** ({rounds(batched, whole)}); "
                     f"{(many_s - one_s) / 19:.3f} s per extra batch; model loads {[w['model_loads'] for w in many_report['worker_stats']]}"))

        single = make_clip(work / "single.mp4", "256x144", 1, frames=1)
        start_s, _ = timed([PYTHON, "-c", "pass"])
        imports_s, _ = timed([PYTHON, "-c", "import runner.local"])
        torch_s, _ = timed([PYTHON, "-c", "import torch"])
        ready_s, _ = timed([PYTHON, "-m", "gpu_job", "worker", "--stdio", "--preload", args.model])
        single_s, single_report = stylize(single, work / "single-out.mp4", args.model, 240)
        stages = ", ".join(f"{name} {value:.2f} s" for name, value in single_report["stages"].items())
        rows.append(("one-frame video, stylize run", f"{single_s:.2f} s",
                     f"interpreter {start_s:.2f} s; main imports {imports_s:.2f} s; worker ready {ready_s:.2f} s "
                     f"(no torch import: that alone takes {torch_s:.2f} s), overlapping probe and split; stages: {stages}"))

        for size in ("256x144", "640x360"):
            clip = make_clip(work / f"clip6-{size}.mp4", size, 6)
            runs: dict[str, list[float]] = {"bare": [], "ours": [], "former": [], "reference": []}
            bare_styling: list[float] = []
            frames = 0
            for _ in range(args.rounds):  # interleaved, so a slow spell of the machine hits every variant alike
                bare_s, bare_out = timed([PYTHON, str(BENCH / "bare_loop.py"), str(clip), "--model", args.model, "--threads", str(threads)])
                runs["bare"].append(bare_s)
                bare_report = json.loads(bare_out)
                bare_styling.append(bare_report["model_s"])
                frames = bare_report["frames"]
                runs["ours"].append(stylize(clip, work / f"ours-{size}.mp4", args.model, 240)[0])
                runs["former"].append(stylize(clip, work / f"former-{size}.mp4", args.model, 240, preset="medium", crf=18)[0])
                if size == "256x144":
                    runs["reference"].append(timed([PYTHON, str(BENCH / "reference_2019.py"), str(clip), str(work / "reference.mp4"),
                                                    "--threads", str(threads)])[0])
            bare, ours, former = median(runs["bare"]), median(runs["ours"]), median(runs["former"])
            rows.append((f"6 s {size}: bare model loop (whole command)", f"{bare:.2f} s",
                         f"{spread(runs['bare'])}; styling alone {median(bare_styling):.2f} s ({frames / median(bare_styling):.1f} frames/s)"))
            rows.append((f"6 s {size}: stylize run, 1 worker", f"{ours:.2f} s",
                         f"{spread(runs['ours'])}; **x{ours / bare:.3f}** of the bare loop ({rounds(runs['ours'], runs['bare'])})"))
            rows.append((f"6 s {size}: stylize run, 1 worker, former encoder default (medium, CRF 18)", f"{former:.2f} s",
                         f"{spread(runs['former'])}; x{former / bare:.3f} of the bare loop"))
            if runs["reference"]:
                reference = median(runs["reference"])
                rows.append(("6 s 256x144: 2019 reference method (JPEG per frame, eager fp32)", f"{reference:.2f} s",
                             f"{spread(runs['reference'])}; **ours is x{reference / ours:.2f} faster** "
                             f"({rounds(runs['reference'], runs['ours'], 2)})"))

        if not args.skip_memory:
            for seconds in (10, 60):
                long_clip = make_clip(work / f"clip{seconds}.mp4", "640x360", seconds)
                command = [STYLIZE, "run", str(long_clip), str(work / f"out{seconds}.mp4"), "--model", "identity"]
                rows.append((f"peak RSS, {seconds} s 640x360 clip (identity)", f"{peak_rss_mib(command):.0f} MiB", ""))
    import torch

    print(f"machine: {platform.machine()}, {threads} cores, torch {torch.__version__}, model {args.model}, 25 fps clips")
    print("| measure | value | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
