"""The whole local pipeline, through the installed ``stylize`` command, on clips made by FFmpeg."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from media import (audio_md5, audio_seconds, audio_streams, frame_timestamps, frames_at, keyframe_timestamps, make_clip, min_psnr,
                   preview_tiles, set_rotation, video_duration, video_stream)
from shared.preview import sample_indices

PSNR_FLOOR = 35.0

CLIPS = {
    "25fps-audio": dict(rate="25"),
    "24fps-no-audio": dict(rate="24", audio=False),
    "29.97fps": dict(rate="30000/1001"),
    "60fps": dict(rate="60", seconds=1),
    "odd-130x75": dict(size="130x75", codec=["-c:v", "ffv1"], suffix=".mkv"),
    "long-gop-bframes": dict(rate="25", seconds=3, codec=["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "300", "-bf", "3"]),
    "vfr": dict(
        rate="25",
        video_filter="settb=1/1000,setpts=N*40+mod(N\\,3)*15",
        extra=["-fps_mode", "passthrough", "-enc_time_base", "1/1000", "-video_track_timescale", "1000"],
    ),
}


def _run(stylize_bin: str, source: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([stylize_bin, "run", str(source), str(output), *extra], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for name, spec in CLIPS.items():
        spec = dict(spec)
        suffix = spec.pop("suffix", ".mp4")
        made[name] = make_clip(folder / f"{name}{suffix}", **spec)
    return made


@pytest.mark.parametrize("name", list(CLIPS))
def test_identity_run_is_frame_exact(name, clips, tmp_path, stylize_bin):
    source = clips[name]
    output = tmp_path / "styled.mp4"
    result = _run(stylize_bin, source, output, "--model", "identity", "--batch-frames", "17", "--workers", "2")
    assert result.returncode == 0, result.stderr

    want, got = frame_timestamps(source), frame_timestamps(output)
    assert len(got) == len(want)
    assert got == want, "frame timestamps moved"
    step = float(want[1] - want[0])
    assert abs(video_duration(output) - video_duration(source)) <= step + 1e-9

    styled = video_stream(output)
    original = video_stream(source)
    crop = None
    if (styled["width"], styled["height"]) != (original["width"], original["height"]):
        assert (styled["width"], styled["height"]) == (original["width"] + original["width"] % 2, original["height"] + original["height"] % 2)
        crop = f"crop={original['width']}:{original['height']}:0:0"
    worst, compared = min_psnr(output, source, crop=crop)
    assert compared == len(want)
    assert worst >= PSNR_FLOOR, f"frame mismatch: worst PSNR {worst:.2f} dB"

    assert len(audio_streams(output)) == len(audio_streams(source))
    for before, after in zip(audio_streams(source), audio_streams(output)):
        assert after["codec_name"] == before["codec_name"]
    for before, after in zip(audio_seconds(source), audio_seconds(output)):
        assert abs(after - before) < 0.001
    if audio_streams(source):
        assert audio_md5(output) == audio_md5(source), "audio samples changed; it must be a stream copy"

    report = json.loads((tmp_path / "styled.report.json").read_text())
    assert report["status"] == "succeeded" and report["frames"] == len(want)
    assert sum(b["frames"] for b in report["batches"]) == len(want)
    assert report["workers"] == min(2, len(report["batches"]))
    assert sum(w["batches"] for w in report["worker_stats"]) == len(report["batches"])
    assert [w["model_loads"] for w in report["worker_stats"]] == [1] * len(report["worker_stats"]), "one model load per worker"
    indices = sample_indices(len(want))
    assert {want[i] for i in indices} <= keyframe_timestamps(output), "each frame the preview samples starts a GOP"
    tiles = preview_tiles(tmp_path / "styled.preview.png", len(indices))
    height, width = tiles[0][0].shape[:2]
    for (input_tile, styled_tile), source_frame, output_frame in zip(
            tiles, frames_at(source, indices, width, height), frames_at(output, indices, width, height), strict=True):
        assert np.array_equal(input_tile, source_frame) and np.array_equal(styled_tile, output_frame), "preview shows other frames"


def test_rotation_is_kept(clips, tmp_path, stylize_bin):
    source = set_rotation(clips["25fps-audio"], tmp_path / "rotated.mp4", 90)
    output = tmp_path / "out.mp4"
    result = _run(stylize_bin, source, output, "--model", "identity", "--batch-frames", "20")
    assert result.returncode == 0, result.stderr
    side_data = video_stream(output).get("side_data_list", [])
    assert any(abs(int(item.get("rotation", 0))) == 90 for item in side_data), side_data
    assert len(frame_timestamps(output)) == len(frame_timestamps(source))


def test_real_network_run_with_report_and_preview(clips, tmp_path, stylize_bin):
    source = clips["odd-130x75"]
    output = tmp_path / "random.mkv"
    report_path = tmp_path / "custom-report.json"
    result = _run(stylize_bin, source, output, "--model", "random", "--batch-frames", "20", "--report", str(report_path))
    assert result.returncode == 0, result.stderr
    assert "output:" in result.stdout
    assert len(frame_timestamps(output)) == len(frame_timestamps(source))
    worst, _ = min_psnr(output, source, crop="crop=130:75:0:0")
    assert worst < 20, "the random network should change the frames"
    report = json.loads(report_path.read_text())
    assert set(report["stages"]) >= {"split", "score", "stitch", "preview"}
    assert report["model"]["used"] == "random"
    assert report["fps"] > 0
    assert all(b["attempts"] == 1 and b["seconds"] > 0 for b in report["batches"])


def test_offline_named_style_fails_in_one_line_without_fallback(clips, tmp_path, stylize_bin, monkeypatch):
    output = tmp_path / "candy.mp4"
    result = subprocess.run(
        [stylize_bin, "run", str(clips["25fps-audio"]), str(output), "--model", "candy"],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"},
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--model /path/to/candy.pth" in lines[0], result.stderr
    assert not output.exists()


BAD_INPUTS = {
    "not-a-video": lambda d: _write(d / "notes.mp4", b"this is not a video\n" * 50),
    "zero-byte": lambda d: _write(d / "empty.mp4", b""),
    "truncated": lambda d: _write(d / "cut.mp4", make_clip(d / "whole.mp4").read_bytes()[:4000]),
    "truncated-faststart": lambda d: _write(
        d / "cut-fs.mp4", make_clip(d / "fs.mp4", extra=["-movflags", "+faststart"]).read_bytes()[:9000]
    ),
    "audio-only": lambda d: _audio_only(d / "sound.m4a"),
    "zero-frames": lambda d: _zero_frames(d / "zero.mkv"),
    "missing-path": lambda d: d / "no-such-file.mp4",
    "directory": lambda d: d,
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _audio_only(path: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(path)], check=True)
    return path


def _zero_frames(path: Path) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x64:duration=1", "-frames:v", "0", "-c:v", "ffv1", str(path)],
        check=True,
    )
    return path


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_fails_fast_in_one_line(kind, tmp_path, stylize_bin):
    source = BAD_INPUTS[kind](tmp_path)
    output = tmp_path / "out" / "styled.mp4"
    began = time.monotonic()
    result = _run(stylize_bin, source, output, "--model", "identity")
    assert time.monotonic() - began < 30
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stylize: error:") and "Traceback" not in result.stderr
    assert not output.exists()
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_existing_output_survives_a_failed_run(tmp_path, stylize_bin):
    output = tmp_path / "keep.mp4"
    output.write_bytes(b"precious")
    result = _run(stylize_bin, _write(tmp_path / "bad.mp4", b"junk" * 100), output, "--model", "identity")
    assert result.returncode == 2
    assert output.read_bytes() == b"precious"
