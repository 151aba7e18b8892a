"""The flicker benchmark's instrument (bench/temporal.py): the generated clips' ground truth is exact, and the flow
used on real clips recovers a known motion, so its E_warp figures measure the output and not the metric's own errors."""

import cv2
import numpy as np
import pytest

from bench import temporal as bench


@pytest.fixture(scope="module")
def still_film() -> np.ndarray:
    return bench.film_frames(1280, 720)[:126]  # the stills the generated clips cut from: frames 40, 70, 100 and 125


def test_occluder_scene_truth_warps_the_input_exactly_and_leaves_out_what_the_discs_cover(still_film):
    frames, truth = bench.occluder_scene(still_film, frames=12)
    assert len(truth) == len(frames) - 1
    assert bench.pair_errors(frames, truth).max() == 0.0  # every counted pixel lands on the same content
    counted = np.mean([mask.mean() for _, mask in truth])
    assert 0.6 < counted < 0.99  # the discs' occlusions, the boundaries and the edge are left out, the rest counts
    everything = [(flow, np.ones_like(mask)) for flow, mask in truth]
    assert bench.pair_errors(frames, everything).mean() > 1e-3  # without the mask, occlusions do count
    wrong = [(np.zeros_like(flow), mask) for flow, mask in truth]
    assert bench.pair_errors(frames, wrong).mean() > 1e-3  # and the flow is what makes it exact


def test_pan_truth_is_exact_and_the_variational_flow_finds_it_where_farneback_does_not(still_film):
    pan, strip, truth = bench.pan_and_still(still_film, frames=3)
    assert strip.shape[1] == pan.shape[2] + bench.PAN_STEP * 3
    assert bench.pair_errors(pan, truth).max() == 0.0
    a, b = bench.grey(pan[0]), bench.grey(pan[1])
    true_flow, mask = truth[0]

    def endpoint_error(flow: np.ndarray) -> float:
        return float(np.sqrt(((flow - true_flow) ** 2).sum(axis=2))[mask].mean())

    assert endpoint_error(bench.variational(a, b)) < 0.1
    assert endpoint_error(bench.farneback(a, b)) > 0.5  # the bunny's smooth fur: why the film is not measured with it


def test_labelled_truth_counts_what_stays_visible_away_from_motion_boundaries():
    """A 12x12 square (rows and columns 9-20) moving 8 px right over a still background, 30x30: the flow is each
    label's motion; a pixel counts where it lands on the same label in the next frame and is at least BOUNDARY px
    from a label edge."""
    now, then = np.zeros((30, 30), np.int32), np.zeros((30, 30), np.int32)
    now[9:21, 9:21] = 1
    then[9:21, 17:29] = 1
    (flow, mask), = bench.labelled_truth([now, then], [(0, 0), (8, 0)])
    assert (flow[now == 1] == (8, 0)).all() and (flow[now == 0] == (0, 0)).all()
    band = bench.BOUNDARY
    assert mask[9 + band: 21 - band, 9 + band: 21 - band].all()  # the square's middle counts
    assert not mask[9: 9 + band, 9:21].any() and not mask[9:21, 9: 9 + band].any()  # its edge band does not
    assert not mask[9 - band: 9, 9:21].any() and not mask[9:21, 9 - band: 9].any()  # nor the background's beside it
    assert mask[: 9 - band].all() and mask[21 + band:].all()  # the background further away does
    assert mask[9 + band: 21 - band, : 9 - band].all()
    assert not mask[9:21, 21:29].any()  # the background the square covers next is occluded, however far from its edge
    assert mask[9:21, 29].all()  # the column it does not reach counts


def test_occluder_scene_truth_stays_exact_where_discs_wrap_around(still_film):
    frames, truth = bench.occluder_scene(still_film, frames=40)  # discs leave one side and enter the other at 30, 34, 37
    assert bench.pair_errors(frames, truth).max() == 0.0


def test_held_blend_spends_the_floor_on_every_frame_and_a_lookahead_buys_less_flicker_for_it():
    """bench/temporal_reach.py's measure of what blending can reach: a texture panning 2 px a frame, 'styled' as itself
    plus fresh noise every frame (a boiling style). Every held frame sits at the floor (the bisection spends it all,
    and never more), the blend of the warped previous output flickers far less than the styled frames, at the same
    floor a one-frame lookahead flickers less than the causal blend, and the contrast restoring gives back detail
    within the same floor."""
    from bench import temporal_reach as reach

    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (120, 200)).astype(np.float32), (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 40, 215, cv2.NORM_MINMAX)
    frames = np.stack([np.repeat(texture[:, 2 * t: 2 * t + 160, None], 3, axis=2) for t in range(16)]).round().astype(np.uint8)
    styled = np.clip(frames + rng.normal(0, 18, frames.shape), 0, 255).round().astype(np.uint8)
    flow = np.zeros((120, 160, 2), np.float32)
    flow[..., 0] = -2.0  # what pixel x shows at t, pixel x - 2 shows at t + 1
    mask = np.zeros((120, 160), bool)
    mask[8:-8, 8:-8] = True
    truth = [(flow, mask)] * (len(frames) - 1)
    assert bench.pair_errors(frames, truth).max() < 1e-6  # the truth is exact on the clean texture

    per_frame = bench.pair_errors(styled, truth).mean()
    flows = reach.dis_flows(frames)
    causal = reach.held_blend(styled, flows, 25.0, restore=0.0)
    ahead = reach.held_blend(styled, flows, 25.0, restore=0.0, lookahead=0.25)
    restored = reach.held_blend(styled, flows, 25.0, restore=0.5, lookahead=0.25)
    for held in (causal, ahead, restored):
        psnrs = [bench.psnr(a, b) for a, b in zip(held[1:], styled[1:])]
        assert min(psnrs) >= 25.0 and max(psnrs) < 25.2  # at the floor, not over it
    assert bench.pair_errors(causal, truth).mean() < 0.15 * per_frame  # the carried frame follows the motion
    assert bench.pair_errors(ahead, truth).mean() < 0.9 * bench.pair_errors(causal, truth).mean()
    assert bench.detail(restored) > 1.1 * bench.detail(ahead)


def test_the_worst_frame_detail_finds_a_smeared_frame_that_the_clip_ratio_hides():
    """A clip with one frame of 16 blurred: the clip's ratio (of its sums) stays near 1, the worst frame's is that
    frame's own."""
    rng = np.random.default_rng(0)
    styled = np.clip(128 + 60 * rng.standard_normal((16, 48, 64, 3)), 0, 255).astype(np.uint8)
    frames = styled.copy()
    frames[5] = cv2.GaussianBlur(styled[5], (0, 0), 1.5)
    smeared = bench.detail(frames[5:6]) / bench.detail(styled[5:6])
    assert smeared < 0.5
    assert bench.detail(frames) / bench.detail(styled) > 0.9
    assert bench.worst_frame_detail(frames, styled) == pytest.approx(smeared)
    assert bench.worst_frame_detail(styled, styled) == pytest.approx(1.0)
    assert bench.median_frame_detail(frames, styled) == pytest.approx(1.0), "one frame of 16 does not move the median"
    frames[:9] = [cv2.GaussianBlur(frame, (0, 0), 1.5) for frame in styled[:9]]
    assert bench.median_frame_detail(frames, styled) < 0.5, "nine of 16 do"


def test_the_worst_frame_detail_passes_over_a_flat_frame_that_has_no_detail_to_lose():
    """A styled frame with no gradient at all (a fade's black frame, say) has no detail ratio: the worst frame is taken
    over the others, and a clip of flat frames only has none (nan), rather than a division by zero."""
    rng = np.random.default_rng(1)
    styled = np.clip(128 + 60 * rng.standard_normal((4, 48, 64, 3)), 0, 255).astype(np.uint8)
    styled[2] = 0
    frames = styled.copy()
    frames[1] = cv2.GaussianBlur(styled[1], (0, 0), 1.5)
    frames[2] = 9  # flat as well: the stabiliser lifted a black frame a little
    assert bench.worst_frame_detail(frames, styled) == pytest.approx(bench.detail(frames[1:2]) / bench.detail(styled[1:2]))
    assert np.isnan(bench.worst_frame_detail(frames[2:3], styled[2:3]))
    assert np.isnan(bench.median_frame_detail(frames[2:3], styled[2:3]))


def test_a_flat_clip_has_no_detail_ratio_in_the_tables_rather_than_a_division_by_zero():
    """The clip's detail ratio too: a clip whose styled frames are all flat gets nan in its cells."""
    flat = np.full((3, 48, 64, 3), 40, np.uint8)
    still = [(np.zeros((48, 64, 2), np.float32), np.ones((48, 64), bool))] * 2
    cells = bench.ratio_cells(flat, flat, still, 1.0, bench.detail(flat)).split(" | ")
    assert cells[0] == "0.000" and cells[2] == "nan"


def test_the_boundary_errors_split_at_each_batch_and_keep_the_same_pairs_unbatched():
    pairs = 2 * bench.BATCH_FRAMES + 5  # three batches: two boundaries
    batched, unbatched = np.arange(pairs, dtype=float), -np.arange(pairs, dtype=float)
    split = bench.boundary_errors("starry", 8, batched, unbatched)
    crossing = [bench.BATCH_FRAMES - 1, 2 * bench.BATCH_FRAMES - 1]  # pair t joins frames t and t + 1
    assert split.across.tolist() == crossing and split.unbatched_across.tolist() == [-t for t in crossing]
    assert len(split.inside) == pairs - 2 and not set(split.inside) & set(crossing)
