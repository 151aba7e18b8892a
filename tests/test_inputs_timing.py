"""Issue 22's timing rows through ``stylize run --model identity``: every frame FFmpeg shows is styled once, in
order, with its timestamp, and the audio stays in sync; an error that will repeat is not retried."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from media import ffmpeg, packets_of, rgb_psnr, stream_md5
from media_exact import (HEVC_OPEN_GOP, SOFT, avi_length, captioned_frames, clip, from_packet, patch_edit, shown_frames, slow_motion, ts_segments,
                         with_captions)

PSNR_FLOOR = 35.0
"""Identity through 8-bit RGB and x264 at the default CRF, on a softened testsrc2."""
SLOW_MOTION_FLOOR = 33.0
"""x264's macroblock tree gives frames shown for 1/240 s fewer bits than frames of the 30 fps sections (34.3 dB at worst
here, whatever rate x264 is told). Neighbours there are alike (about 40 dB): each frame is also checked to be nearer
its own input frame than theirs."""


def _stylize(stylize_bin: str, source: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([stylize_bin, "run", str(source), str(output), "--model", "identity", "--batch-frames", "7", *extra],
                          capture_output=True, text=True, timeout=300)


def _assert_styled_as_shown(source: Path, output: Path, floor: float = PSNR_FLOOR) -> None:
    """Each output frame is the frame FFmpeg shows of the input at the same time, and audio is kept sample for sample."""
    want, got = shown_frames(source), shown_frames(output)
    assert len(got) == len(want), f"{len(got)} frames styled, FFmpeg shows {len(want)}"
    moved = [(float(a), float(b)) for (a, _), (b, _) in zip(got, want) if abs(a - b) > 0.0005]
    assert not moved, f"frame timestamps moved: {moved[:3]}"
    worst = min(rgb_psnr(output, source))
    assert worst >= floor, f"worst frame {worst:.2f} dB"
    for number, (_, frame) in enumerate(got):  # each is its own input frame, not a neighbour (alike in slow motion)
        nearest = max(range(max(number - 2, 0), min(number + 3, len(want))), key=lambda other: _psnr(frame, want[other][1]))
        assert nearest == number, f"output frame {number} is input frame {nearest}"
    assert stream_md5(output, 1) == stream_md5(source, 1), "audio samples changed"
    assert abs(packets_of(output, 1)[0][0] - packets_of(source, 1)[0][0]) <= 0.001, "audio start moved"


def _psnr(styled: np.ndarray, reference: np.ndarray) -> float:
    height, width = reference.shape[:2]
    error = ((styled[:height, :width].astype(np.float64) - reference) ** 2).mean()
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


def _run(stylize_bin: str, source: Path, folder: Path) -> tuple[Path, dict, str]:
    result = _stylize(stylize_bin, source, folder / "out.mkv")
    assert result.returncode == 0, result.stderr
    output = Path(next(line.split(None, 1)[1] for line in result.stdout.splitlines() if line.startswith("output:")))
    report = json.loads((folder / "out.report.json").read_text())
    assert all(b["attempts"] == 1 for b in report["batches"])
    return output, report, result.stderr


def _assert_segment_styled_as_shown(stylize_bin: str, source: Path, folder: Path) -> None:
    """A segment cut mid-GOP: every frame FFmpeg shows is styled, and the frames before its first keyframe are named."""
    folder.mkdir()
    output, report, stderr = _run(stylize_bin, source, folder)
    assert report["frames"] == len(shown_frames(source))
    assert "video frames before the first keyframe" in stderr
    _assert_styled_as_shown(source, output)


TRIMS = {  # name: (first shown frame, frames shown) of a 4 s, 25 fps clip; x264's edit starts at 1024 (two frames)
    "start-mid-gop": (7, 93),
    "end-trim": (0, 60),
    "start-and-end": (30, 40),
}


@pytest.mark.parametrize("name", list(TRIMS))
def test_edit_list_trimming_start_or_end_keeps_what_ffmpeg_shows(name, tmp_path, stylize_bin):
    first, count = TRIMS[name]
    whole = clip(tmp_path / "whole.mp4")
    source = patch_edit(whole, tmp_path / f"{name}.mp4", media_time=1024 + 512 * first, duration_ms=40 * count)
    assert len(shown_frames(source)) == count
    output, report, _ = _run(stylize_bin, source, tmp_path)
    assert report["frames"] == count
    _assert_styled_as_shown(source, output)


@pytest.mark.parametrize("delay", [0, 0.5])
def test_pre_roll_before_the_first_keyframe_is_left_out_as_ffmpeg_leaves_it(delay, tmp_path, stylize_bin):
    """Pre-roll: the track's first samples are not sync samples; with a delay, an empty edit starts the video late too."""
    whole = clip(tmp_path / "whole.mp4")
    if delay:
        delayed = tmp_path / "delayed.mp4"
        ffmpeg("-itsoffset", str(delay), "-i", str(whole), "-i", str(whole), "-map", "0:v", "-map", "1:a", "-c", "copy", str(delayed))
        whole = delayed
    source = from_packet(whole, tmp_path / "pre-roll.mp4", 10)
    times = [t for t, _ in shown_frames(source)]
    assert len(times) == 75 and float(times[0]) == 1 + delay, "FFmpeg shows the frames from the first keyframe (1 s) on"
    output, report, stderr = _run(stylize_bin, source, tmp_path)
    assert report["frames"] == 75
    assert "note: not carried: 15 video frames before the first keyframe" in stderr
    _assert_styled_as_shown(source, output)


def test_slow_motion_phone_recording_with_a_trailer(tmp_path, stylize_bin):
    source = slow_motion(tmp_path)
    times = [t for t, _ in shown_frames(source)]
    assert len({round(float(b - a), 4) for a, b in zip(times, times[1:])}) >= 2, "frame rate changes mid-file"
    output, report, _ = _run(stylize_bin, source, tmp_path)
    assert report["frames"] == len(times)
    _assert_styled_as_shown(source, output, SLOW_MOTION_FLOOR)


def test_ts_segments_cut_mid_gop_with_captions(tmp_path, stylize_bin):
    segments = ts_segments(tmp_path)
    assert len(segments) >= 3
    for number, cut in enumerate(segments[1:3], start=1):
        source = with_captions(cut, tmp_path / f"captioned-{number}.ts")
        assert captioned_frames(source) == len(shown_frames(source)) > 0, "FFmpeg decodes captions with every frame it shows"
        _assert_segment_styled_as_shown(stylize_bin, source, tmp_path / f"run-{number}")


def test_hevc_ts_segments_cut_mid_gop_leave_out_the_leading_pictures_ffmpeg_leaves_out(tmp_path, stylize_bin):
    """Open-GOP HEVC: the first keyframe of a segment is a CRA whose leading (RASL) pictures reference the GOP before, which
    the segment lacks; FFmpeg does not show them, and they are not planned."""
    segments = ts_segments(tmp_path, HEVC_OPEN_GOP)
    assert len(segments) >= 3
    for number, source in enumerate(segments[1:3], start=1):
        _assert_segment_styled_as_shown(stylize_bin, source, tmp_path / f"run-{number}")


@pytest.mark.parametrize("frames", [0, 1, 100, 0xFFFFFFFF])
def test_avi_with_a_wrong_stream_length(frames, tmp_path, stylize_bin):
    avi = tmp_path / "real.avi"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=128x72:rate=25:duration=1,{SOFT}", "-f", "lavfi", "-i",
           "sine=duration=1:sample_rate=48000", "-c:v", "mpeg4", "-g", "10", "-q:v", "2", "-c:a", "libmp3lame", str(avi))
    source = avi_length(avi, tmp_path / "wrong-length.avi", frames)
    output, report, _ = _run(stylize_bin, source, tmp_path)
    assert report["frames"] == 25
    _assert_styled_as_shown(source, output)


def _avi_with_b_frames(folder: Path) -> Path:
    avi = folder / "b-frames.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x72:rate=25:duration=1", "-c:v", "libx264", "-g", "10", "-bf", "2", str(avi))
    return avi_length(avi, folder / "wrong-length.avi", 100)


def test_avi_with_b_frames_is_refused_at_probe_time_in_one_line(tmp_path, stylize_bin):
    """H.264 with B-frames in AVI: FFmpeg decodes its frames with their packets' decode-order times (before: EINVAL
    writing the styled segment, retried, then a hung worker). One line that says why, exit 2, before any work."""
    source = _avi_with_b_frames(tmp_path)
    began = time.monotonic()
    result = subprocess.run([stylize_bin, "run", str(source), str(tmp_path / "out" / "styled.mp4"), "--model", "identity",
                             "--batch-frames", "13", "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert time.monotonic() - began < 60
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "B-frames in AVI" in lines[0] and "Errno" not in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_a_segment_decoding_out_of_display_order_fails_in_words(tmp_path):
    """The decoder's own check, for any segment: a frame whose time is not after the one before fails the batch with
    an error that will repeat (never retried), not with the muxer's EINVAL."""
    from shared.decode import UPLOAD_DEMUXERS, open_input, tolerant_frames
    from shared.errors import InvalidInputError

    with open_input(_avi_with_b_frames(tmp_path), UPLOAD_DEMUXERS) as container:
        with pytest.raises(InvalidInputError, match="out of display order"):
            list(tolerant_frames(container, container.streams.video[0]))


def test_ffmpeg_refusing_an_argument_writing_a_segment_is_not_retried(tmp_path):
    """EINVAL from FFmpeg while writing a styled segment (here x264 refusing its preset) answers the same every time:
    the worker's result says so in words, not the errno, and is not retryable."""
    from gpu_job.command import WorkerOptions
    from gpu_job.worker import Worker
    from shared.config import Settings
    from shared.containers import output_container
    from shared.messages import BatchMessage
    from shared.plan import plan_batches
    from shared.probe import probe
    from shared.split import split_video

    info = probe(clip(tmp_path / "clip.mp4", seconds=1))
    (batch,) = plan_batches(info, 50)
    (segment,) = split_video(info, [batch], tmp_path / "segments", output_container(info)).segments
    styled = tmp_path / "styled.mp4"
    message = BatchMessage(job_id="job", batch=batch, attempt=1, model="identity", segment=str(segment), styled=str(styled))
    result = Worker(WorkerOptions(threads=1, preset="no-such-preset"), Settings().model_cache_dir).style(message, segment, styled)
    assert not result.succeeded and not result.retryable
    assert "invalid argument" in result.error.lower() and "returned 22" not in result.error and "Errno" not in result.error, result.error
    assert not styled.exists()


def test_styled_segments_tell_the_encoder_the_videos_own_rate(tmp_path, stylize_bin):
    """Every segment is told one rate, so that they join, and it is the video's average: a 1080p 24 frames/s video keeps
    H.264 level 4.0 (a fixed 60 frames/s declared level 4.2, which devices capped at 4.1 refuse)."""
    source = tmp_path / "film.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=24:duration=0.5", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", "-g", "6", str(source))
    result = _stylize(stylize_bin, source, tmp_path / "out.mp4")
    assert result.returncode == 0, result.stderr
    level = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=level", "-of", "csv=p=0",
                            str(tmp_path / "out.mp4")], capture_output=True, text=True, check=True).stdout.strip()
    assert level == "40"
