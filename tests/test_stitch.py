"""Stitching joins styled segments by stream copy: it needs one set of codec headers, and says which frames each segment shows."""

from __future__ import annotations

import pytest

from media import frame_timestamps, make_clip
from shared.errors import PipelineError
from shared.stitch import stitch

X264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "0"]


def test_segments_with_other_codec_headers_are_refused_and_nothing_is_written(tmp_path):
    first = make_clip(tmp_path / "a.mp4", seconds=1, audio=False, codec=X264 + ["-profile:v", "high"])
    second = make_clip(tmp_path / "b.mp4", seconds=1, audio=False, codec=X264 + ["-profile:v", "baseline"])
    output = tmp_path / "joined.mp4"
    with pytest.raises(PipelineError, match="encoded with different settings"):
        stitch([first, second], None, output)
    assert sorted(tmp_path.iterdir()) == [first, second], "no output, no partial file left"


def test_stitch_returns_the_times_each_segment_shows(tmp_path):
    segment = make_clip(tmp_path / "a.mp4", seconds=1, audio=False, codec=X264)
    shown = stitch([segment], None, tmp_path / "joined.mp4")
    assert len(shown) == 1 and sorted(shown[0]) == frame_timestamps(segment) and len(shown[0]) == 25
