"""Issue 22, streams: the video stream a player shows is the one styled (not an auxiliary one beside it), every other
stream is carried or listed, VP9 with hidden frames (10-bit too) is styled frame-exact, and of MV-HEVC spatial video the
base view is styled and its second view said; through ``stylize run --model identity``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from media import frame_timestamps, packets_of, rgb_psnr, stream_md5, streams_of, video_stream
from media_tracks import VP9_PROFILES, decoded_frames, single_stream, video_packets, vp9_with_hidden_frames, with_auxiliary
from shared.probe import probe

PSNR_FLOOR = 35.0


def _stylize(stylize_bin: str, source: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([stylize_bin, "run", str(source), str(output), "--model", "identity", *extra],
                          capture_output=True, text=True, timeout=300)


def _assert_frame_exact(reference: Path, output: Path) -> None:
    """Each output frame is its reference frame: same count, same timestamps, RGB PSNR at least the floor."""
    want, got = frame_timestamps(reference), frame_timestamps(output)
    assert len(got) == len(want) == decoded_frames(reference, 0)
    assert all(abs(a - b) <= 0.0005 for a, b in zip(got, want)), "frame timestamps moved"
    worst = min(rgb_psnr(output, reference))
    assert worst >= PSNR_FLOOR, f"worst frame {worst:.2f} dB"


@pytest.mark.parametrize("auxiliary_first", [True, False], ids=["auxiliary-first", "auxiliary-second"])
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_the_default_video_stream_is_styled_and_the_auxiliary_one_carried(auxiliary_first, suffix, tmp_path, stylize_bin):
    source = with_auxiliary(tmp_path / f"depth{suffix}", auxiliary_first=auxiliary_first)
    primary, auxiliary = (1, 0) if auxiliary_first else (0, 1)
    reference = single_stream(source, primary, tmp_path / "primary.mkv")
    output = tmp_path / f"out{suffix}"
    result = _stylize(stylize_bin, source, output, "--batch-frames", "9", "--workers", "2")
    assert result.returncode == 0, result.stderr
    _assert_frame_exact(reference, output)
    videos = [s for s in streams_of(output) if s["codec_type"] == "video"]
    assert len(videos) == 2 and videos[0]["disposition"]["default"] == 1
    assert packets_of(output, videos[1]["index"]) == packets_of(source, auxiliary), "auxiliary stream changed"
    audio = next(s["index"] for s in streams_of(output) if s["codec_type"] == "audio")
    assert stream_md5(output, audio) == stream_md5(source, 2)
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["frames"] == 25
    assert any(f"stream {auxiliary} (h264 video) copied unchanged" in note and f"stream {primary}" in note for note in report["notes"]), \
        report["notes"]


@pytest.mark.parametrize("pix_fmt,separate", [("yuv420p10le", True), ("yuv420p", True), ("yuv420p10le", False)],
                         ids=["10bit-hidden-blocks", "8bit-hidden-blocks", "10bit-superframes"])
def test_vp9_with_hidden_frames_is_styled_frame_exact(pix_fmt, separate, tmp_path, stylize_bin):
    source = vp9_with_hidden_frames(tmp_path, pix_fmt, separate)
    hidden = video_packets(source, 0) - decoded_frames(source, 0)
    assert hidden > 0 if separate else hidden == 0, "the clip must hold hidden frames in blocks of their own, or none"
    output = tmp_path / "out.mp4"
    result = _stylize(stylize_bin, source, output, "--batch-frames", "7", "--workers", "2", "--keep-10bit")
    assert result.returncode == 0, result.stderr
    _assert_frame_exact(source, output)
    assert video_stream(output)["pix_fmt"] == pix_fmt
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["frames"] == 25 and all(b["attempts"] == 1 for b in report["batches"])


@pytest.mark.parametrize("pix_fmt", list(VP9_PROFILES))
def test_the_probe_counts_the_vp9_frames_ffmpeg_shows_in_every_profile(pix_fmt, tmp_path):
    source = vp9_with_hidden_frames(tmp_path, pix_fmt, separate=True)
    assert video_packets(source, 0) > decoded_frames(source, 0), "the clip must hold hidden frames in blocks of their own"
    info = probe(source)
    assert info.frame_count == decoded_frames(source, 0) == 25
    assert [pts * info.time_base for pts in info.frame_pts] == frame_timestamps(source)


MV_HEVC = Path(__file__).parent / "data" / "mv-hevc.mov"
"""MV-HEVC spatial video as Apple writes it (hvc1 with hvcC and lhvC, vexu and hfov boxes), 128x72, 25 frames of two
views, with AAC. FFmpeg cannot encode MV-HEVC, so it is made once and kept (21 kB): x265 4.1 built with
ENABLE_MULTIVIEW encoded two views of the test picture 8 pixels apart (``--multiview-config``, B-frames), the bundled
FFmpeg muxed them (multilayer disposition: it writes lhvC), and the vexu (both eyes, left the hero) and hfov boxes
were added to the sample entry."""


def test_mv_hevc_base_view_is_styled_and_the_second_view_said(tmp_path, stylize_bin):
    assert decoded_frames(MV_HEVC, 0) == 25
    output = tmp_path / "out.mov"
    result = _stylize(stylize_bin, MV_HEVC, output, "--batch-frames", "9", "--workers", "2")
    assert result.returncode == 0, result.stderr
    _assert_frame_exact(MV_HEVC, output)
    assert stream_md5(output, 1) == stream_md5(MV_HEVC, 1)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert any("stream 0" in line and "second view" in line for line in notes), result.stderr
