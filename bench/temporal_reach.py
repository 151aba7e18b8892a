"""What blending can reach on a boiling style (issue 23): the stabiliser beside the most blending the PSNR floor allows.

    PYTHONPATH=$PWD .venv/bin/python bench/temporal_reach.py [--styles starry] [--floor 25] [--restores 0,0.2,0.4,0.6]
        [--lookahead 0.25]

Prints Markdown; results go in bench/RESULTS.md. Same clips, styles, reference flows and measures as bench/temporal.py.

A texture that boils is new paint on every frame, and holding it still moves every frame away from what the style
paints: E_warp (the flicker) and PSNR against per-frame styling trade against each other, and the issue asks for both.
This measures where that trade ends for a blend of warped frames at one weight a frame, without the stabiliser's checks:

- **held**: each frame is the previous output, warped with the stabiliser's flow (its DIS) and OpenCV's bicubic,
  blended with the styled frame at one weight for the whole frame, and its contrast restored as the stabiliser does it
  (the luma's high band times ``restore`` times the share of the output that is not the styled frame). Each frame's
  weight is found by bisection: the highest (up to HELD_MAX_WEIGHT) at which the frame, rounded, is still ``floor``
  dB from its styled frame. So every frame spends all of the floor, frame by frame (greedily: not the best weights for
  the clip as a whole).
- **held two-frame**: the same with a one-frame lookahead: the blend mixed with the next styled frame warped back
  (``lookahead`` times the same per-frame factor), which the pipeline cannot do without a frame after each batch and a
  second full-size warp.
- **the stabiliser** at its defaults, and with no margin under the floor (its budget at ``floor``, ``frame_margin_db`` 0:
  each frame blended again when it falls under the floor) at two contrast restorings.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bench.temporal import SIZE, cpu_model, detail, film_frames, grey, occluder_scene, pair_masks, ratio_cells, warp
from bench.temporal import pair_errors, worst_frame_psnr
from gpu_job.models import load_styler
from gpu_job.temporal import HIGH_BAND, LUMA, RESTORE, Stabiliser, dis_flow

HELD_MAX_WEIGHT = 0.95
"""The highest weight the held blend gives the previous output (at 1 the styled frames would never come in)."""
BISECTION_STEPS = 12
"""Halvings of the per-frame factor's interval: the factor to within 1/4096."""
STABILISER_RESTORES = (RESTORE, 0.15)
"""The stabiliser's contrast restorings with no margin: its default, and one that brings starry's detail nearer 0.85."""


def dis_flows(inputs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The stabiliser's DIS flows between consecutive frames: from each frame t >= 1 back to t - 1, and from each frame
    before the last on to the next (computed once per clip, for every held blend of it)."""
    flow = dis_flow()
    greys = [grey(frame) for frame in inputs]
    return ([flow.calc(greys[t], greys[t - 1], None) for t in range(1, len(greys))],
            [flow.calc(greys[t], greys[t + 1], None) for t in range(len(greys) - 1)])


def held_blend(styled: np.ndarray, flows: tuple[list[np.ndarray], list[np.ndarray]], floor_db: float, restore: float,
               lookahead: float = 0.0) -> np.ndarray:
    """Each frame blended as much as ``floor_db`` allows (module docstring), with the inputs' ``dis_flows``; uint8
    frames like ``styled``."""
    back, forward = flows
    limit = 255.0**2 * 10.0 ** (-floor_db / 10.0)  # the most mean squared difference a frame may have
    luma = np.array(LUMA, np.float32)
    fresh_frames = styled.astype(np.float32)
    carried = fresh_frames[0]
    out = [styled[0]]
    for t in range(1, len(styled)):
        fresh = fresh_frames[t]
        warped = warp(carried, back[t - 1], cv2.INTER_CUBIC)
        ahead = warp(fresh_frames[t + 1], forward[t], cv2.INTER_CUBIC) if lookahead and t + 1 < len(styled) else None

        def frame_at(factor: float) -> tuple[np.ndarray, np.ndarray]:
            """The blend at ``factor`` (carried on) and the frame shown, rounded."""
            weight = HELD_MAX_WEIGHT * factor
            blend = fresh + weight * (warped - fresh)
            shown, kept = blend, weight
            if ahead is not None:
                share = lookahead * factor
                shown, kept = blend + share * (ahead - blend), 1.0 - (1.0 - weight) * (1.0 - share)
            band = cv2.filter2D(shown @ luma, -1, HIGH_BAND, borderType=cv2.BORDER_REPLICATE)
            return blend, np.clip(shown + (restore * kept) * band[..., None], 0, 255).round().astype(np.uint8)

        def within(factor: float) -> bool:
            return float(np.mean((frame_at(factor)[1] - fresh) ** 2)) <= limit

        bottom, top = 0.0, 1.0
        if within(top):
            bottom = top
        else:
            for _ in range(BISECTION_STEPS):
                middle = (bottom + top) / 2
                bottom, top = (middle, top) if within(middle) else (bottom, middle)
        carried, shown = frame_at(bottom)
        out.append(shown)
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--styles", default="starry")
    parser.add_argument("--floor", type=float, default=25.0, help="the PSNR (dB) every held frame is kept at")
    parser.add_argument("--restores", default="0,0.2,0.4,0.6", help="contrast restoring of the held blends")
    parser.add_argument("--lookahead", type=float, default=0.25, help="the next frame's share in the two-frame blend")
    args = parser.parse_args()
    restores = [float(r) for r in args.restores.split(",")]
    film = film_frames(*SIZE)
    occluders, occluder_truth = occluder_scene(film_frames(1280, 720))
    clips = {"BBB 640x360": (film, pair_masks(film)), "BBB every 3rd frame (fast)": (film[::3], pair_masks(film[::3])),
             "occluders (generated, fast)": (occluders, occluder_truth)}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; OpenCV {cv2.__version__}; floor "
          f"{args.floor} dB, lookahead {args.lookahead}\n")
    print("| style | clip | blend | restore | ratio | PSNR dB | detail | worst frame dB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as cache:
        for style in args.styles.split(","):
            styler = load_styler(style, "cpu", Path(cache))
            for name, (inputs, masks) in clips.items():
                flows = dis_flows(inputs)
                styled = np.concatenate([styler(inputs[i: i + 16]) for i in range(0, len(inputs), 16)])
                error, styled_detail = pair_errors(styled, masks).mean(), detail(styled)
                rows = [("the stabiliser (defaults)", RESTORE, Stabiliser()(inputs, styled))]
                rows += [(f"the stabiliser, no margin under {args.floor:g} dB", restore,
                          Stabiliser(fidelity_db=args.floor, restore=restore, frame_margin_db=0.0)(inputs, styled))
                         for restore in STABILISER_RESTORES]
                rows += [(kind, restore, held_blend(styled, flows, args.floor, restore, share))
                         for kind, share in (("held", 0.0), ("held two-frame", args.lookahead)) for restore in restores]
                for kind, restore, frames in rows:
                    cells = ratio_cells(frames, styled, masks, error, styled_detail)
                    print(f"| {style} | {name} | {kind} | {restore:g} | {cells} | {worst_frame_psnr(frames, styled):.1f} |",
                          flush=True)


if __name__ == "__main__":
    main()
