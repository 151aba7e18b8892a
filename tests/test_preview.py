"""The preview draws exactly the sampled frames, however the segments' GOPs fall (it seeks to a keyframe and decodes on)."""

from __future__ import annotations

import pytest

from media import frames_at as decoded_in_order, make_clip, preview_tiles
from shared.containers import output_container
from shared.errors import PipelineError
from shared.plan import plan_batches
from shared.preview import draw_rows, frames_at, preview_offsets, rows_name, sample_indices, sampled_batches, tile_size, write_preview
from shared.probe import frame_times, probe
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
    size = tile_size(info.width, info.height)
    rows = []
    for position in sampled_batches(batches, samples):
        batch, segment = batches[position], segments[position]
        planned = frame_times(segment, batch.start_time, batch.end_time)
        tiles = frames_at(segment, {planned[offset] for offset in preview_offsets(batch, info.frame_count, samples)}, size)
        # The segment stands in for the styled one too: keyframes only where the source has them.
        rows.append(draw_rows(tiles, segment, tmp_path / rows_name(segment.name)))
    preview = write_preview(rows, tmp_path / "preview.png")
    indices = sample_indices(info.frame_count, samples)
    tiles = preview_tiles(preview, len(indices))
    assert tiles[0][0].shape[:2] == size[::-1]
    for row, ((left, right), expected) in enumerate(zip(tiles, decoded_in_order(source, indices, *size), strict=True)):
        assert (left == expected).all() and (right == expected).all(), f"row {row}: not frame {indices[row]}"


def test_no_rows_no_preview(tmp_path):
    assert draw_rows({}, tmp_path / "styled.mp4", tmp_path / "rows.png") is None and not (tmp_path / "rows.png").exists()
    with pytest.raises(PipelineError, match="no frame sampled for the preview decodes"):
        write_preview([], tmp_path / "preview.png")
    assert not (tmp_path / "preview.png").exists()
