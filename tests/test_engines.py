"""Engines run several calls at once and give the outputs back in order, with the real OpenVINO and networks."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_job.engines import openvino_engine
from gpu_job.models import RANDOM_SEED, TransformerWeights, converted_transformer, load_styler, random_transformer
from shared.errors import PipelineError


@pytest.fixture(scope="module")
def network_file(tmp_path_factory):
    weights = TransformerWeights("random", f"random-seed{RANDOM_SEED}-test", random_transformer)
    return str(converted_transformer(weights, tmp_path_factory.mktemp("cache")))


def _calls(count: int, height: int = 36, width: int = 64) -> list[tuple[np.ndarray]]:
    generator = np.random.default_rng(3)
    return [(generator.uniform(0, 255, (1, 3, height, width)).astype(np.float32),) for _ in range(count)]


def test_openvino_streams_give_each_output_back_in_input_order(network_file):
    engine = openvino_engine(network_file, "fp32", threads=2, streams=2)
    assert engine.streams == 2 and engine.describe()["streams"] == 2
    calls = _calls(7)
    one_by_one = [engine.run(*inputs) for inputs in calls]
    streamed = list(engine.stream(iter(calls)))
    assert len(streamed) == len(calls)
    for alone, together in zip(one_by_one, streamed):
        np.testing.assert_array_equal(together, alone)
    assert not np.array_equal(streamed[0], streamed[1]), "distinct inputs, distinct outputs"


def test_a_stream_stopped_early_or_failing_leaves_the_engine_usable(network_file):
    engine = openvino_engine(network_file, "fp32", threads=2, streams=2)
    calls = _calls(5)
    expected = engine.run(*calls[4])
    started = engine.stream(iter(calls))
    next(started)
    started.close()  # the calls still in flight finish; their requests are free again
    np.testing.assert_array_equal(engine.run(*calls[4]), expected)
    wrong_rank = (np.zeros((3, 36, 64), np.float32),)
    with pytest.raises(Exception):
        list(engine.stream(iter([calls[0], wrong_rank, calls[1]])))
    np.testing.assert_array_equal(engine.run(*calls[4]), expected)


@pytest.mark.parametrize("model, strength", [("random", 1.0), ("starry", 0.5)])
def test_styler_stream_matches_styling_batch_by_batch(model, strength, tmp_path):
    """Batches of several sizes and odd frame sides (padded, then cropped back to their size), through the
    whole-batch network (TransformerNet) and the frame-by-frame one (multistyle26) with mixing."""
    styler = load_styler(model, "cpu", tmp_path, precision="fp32", style_strength=strength)
    generator = np.random.default_rng(5)
    batches = [generator.integers(0, 256, (size, 37, 63, 3), dtype=np.uint8) for size in (2, 1, 3)]
    streamed = list(styler.stream(iter(batches)))
    assert [s.shape for s in streamed] == [(2, 37, 63, 3), (1, 37, 63, 3), (3, 37, 63, 3)]
    for batch, together in zip(batches, streamed):
        np.testing.assert_array_equal(together, styler(batch))


def test_identity_styler_streams_frames_unchanged(tmp_path):
    styler = load_styler("identity", "cpu", tmp_path)
    frames = np.random.default_rng(1).integers(0, 256, (2, 36, 64, 3), dtype=np.uint8)
    (out,) = styler.stream([frames])
    np.testing.assert_array_equal(out, frames)


def test_unknown_precision_is_refused(network_file):
    with pytest.raises(PipelineError, match="unknown precision"):
        openvino_engine(network_file, "int4")
