"""The flicker benchmark's instrument (bench/temporal.py): the generated clips' ground truth is exact, and the flow
used on real clips recovers a known motion, so its E_warp figures measure the output and not the metric's own errors."""

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
