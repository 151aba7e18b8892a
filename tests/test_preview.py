"""The preview draws exactly the sampled frames, however the segments' GOPs fall (it seeks to a keyframe and decodes on)."""

from __future__ import annotations

import pytest

from media import frames_at, make_clip, preview_tiles
from shared.containers import output_container
from shared.plan import plan_batches
from shared.preview import sample_indices, write_preview
from shared.probe import probe
from shared.split import split_video

X264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
CLIPS = {
    "long-gop-bframes.mp4": X264 + ["-g", "300", "-bf", "3"],
    "open-gop.mp4": X264 + ["-g", "30", "-bf", "3", "-x264-params", "open-gop=1"],
    "bframes.ts": X264 + ["-g", "40", "-bf", "2"],
}


@pytest.mark.parametrize("name", list(CLIPS))
def test_preview_tiles_are_the_sampled_frames(name, tmp_path):
    source = make_clip(tmp_path / name, seconds=3, audio=False, codec=CLIPS[name])
    info = probe(source)
    batches = plan_batches(info, 30)
    segments = split_video(info, batches, tmp_path / "segments", output_container(info)).segments
    samples = 7
    # The segments stand in for the styled ones too: keyframes only where the source has them.
    preview = write_preview(batches, segments, segments, tmp_path / "preview.png", samples=samples)
    indices = sample_indices(info.frame_count, samples)
    tiles = preview_tiles(preview, len(indices))
    height, width = tiles[0][0].shape[:2]
    for row, ((left, right), expected) in enumerate(zip(tiles, frames_at(source, indices, width, height), strict=True)):
        assert (left == expected).all() and (right == expected).all(), f"row {row}: not frame {indices[row]}"
