"""Real-world inputs through ``stylize run --model identity``: codecs, containers, audio and subtitle tracks,
several streams, edit lists, delayed starts, dropped frames, damaged and unreadable files."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from media import damage_packet, ffmpeg, frame_timestamps, packets_of, rgb_psnr, stream_md5, streams_of

PSNR_FLOOR = 28.0
SOURCE = ["-f", "lavfi", "-i", "testsrc2=size=128x72:rate=25:duration=1,gblur=sigma=1"]
"""A moving, detailed picture, softened as a camera softens it: testsrc2's one-pixel colour edges are
not what 4:2:0 video carries, and would measure chroma subsampling rather than the pipeline."""
VIDEO = {
    "h264": ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10", "-bf", "2"],
    "hevc": ["-c:v", "libx265", "-pix_fmt", "yuv420p", "-x265-params", "log-level=error:keyint=10:min-keyint=10"],
    "hevc10": ["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error:keyint=10:min-keyint=10"],
    "av1": ["-c:v", "libsvtav1", "-pix_fmt", "yuv420p", "-g", "10", "-preset", "12"],
    "vp9": ["-c:v", "libvpx-vp9", "-g", "10", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k"],
    "mpeg4": ["-c:v", "mpeg4", "-g", "10", "-bf", "2", "-q:v", "2"],
    "mpeg2": ["-c:v", "mpeg2video", "-g", "10", "-bf", "2", "-q:v", "2"],
    "prores": ["-c:v", "prores_ks", "-profile:v", "1"],
}
AUDIO = {"aac": "aac", "mp3": "libmp3lame", "opus": "libopus", "vorbis": "libvorbis", "flac": "flac", "ac3": "ac3", "pcm": "pcm_s16le"}
SUBTITLES = "1\n00:00:00,100 --> 00:00:00,400\nfirst line\n\n2\n00:00:00,500 --> 00:00:00,900\nsecond line\n"

# name: (video, container, audio codecs, subtitle codec, output asked for, output expected)
MATRIX = {
    "h264-mp4-aac-mov_text": ("h264", "mp4", ["aac"], "mov_text", ".mp4", ".mp4"),
    "hevc-mp4-ac3": ("hevc", "mp4", ["ac3"], None, ".mp4", ".mp4"),
    "hevc10-mkv-opus-srt": ("hevc10", "mkv", ["opus"], "srt", ".mp4", ".mkv"),
    "av1-mkv-opus-asked-mp4": ("av1", "mkv", ["opus"], None, ".mp4", ".mkv"),
    "h264-mp4-aac-asked-mkv": ("h264", "mp4", ["aac"], None, ".mkv", ".mp4"),
    "av1-webm-opus": ("av1", "webm", ["opus"], None, ".mkv", ".mkv"),
    "vp9-webm-vorbis-webvtt": ("vp9", "webm", ["vorbis"], "webvtt", ".webm", ".mkv"),
    "vp9-mp4-opus": ("vp9", "mp4", ["opus"], None, ".mp4", ".mp4"),
    "mpeg4-avi-mp3": ("mpeg4", "avi", ["mp3"], None, ".mp4", ".mp4"),
    "mpeg2-ts-ac3": ("mpeg2", "ts", ["ac3"], None, ".mp4", ".mp4"),
    "h264-ts-aac": ("h264", "ts", ["aac"], None, ".mkv", ".mkv"),
    "prores-mov-pcm": ("prores", "mov", ["pcm"], None, ".mov", ".mov"),
    "h264-mov-pcm-asked-mp4": ("h264", "mov", ["pcm"], None, ".mp4", ".mkv"),
    "h264-mkv-flac-opus-ass": ("h264", "mkv", ["flac", "opus"], "ass", ".mkv", ".mkv"),
}


def _stylize(stylize_bin: str, source: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([stylize_bin, "run", str(source), str(output), "--model", "identity", *extra],
                          capture_output=True, text=True, timeout=300)


def _make(folder: Path, name: str, video: str, container: str, audio: list[str], subtitles: str | None) -> Path:
    inputs, maps, codecs = list(SOURCE), ["-map", "0:v"], list(VIDEO[video])
    for number, codec in enumerate(audio, start=1):
        inputs += ["-f", "lavfi", "-i", f"sine=frequency={440 * number}:sample_rate=48000:duration=1"]
        maps += ["-map", f"{number}:a"]
        codecs += [f"-c:a:{number - 1}", AUDIO[codec], f"-metadata:s:a:{number - 1}", f"language={['eng', 'fra'][number - 1]}"]
    if subtitles:
        srt = folder / "subtitles.srt"
        srt.write_text(SUBTITLES)
        inputs += ["-i", str(srt)]
        maps += ["-map", f"{len(audio) + 1}:s"]
        codecs += ["-c:s", subtitles]
    path = folder / f"{name}.{container}"
    ffmpeg(*inputs, *maps, *codecs, str(path))
    return path


def _assert_tracks_kept(source: Path, output: Path) -> None:
    """Every audio and subtitle track is there, same codec and language, same packets, and audio decodes to the same samples."""
    kept = [s for s in streams_of(source) if s["codec_type"] in ("audio", "subtitle")]
    found = [s for s in streams_of(output) if s["codec_type"] in ("audio", "subtitle")]
    def described(streams):
        return [(s["codec_type"], s["codec_name"], s.get("tags", {}).get("language", "und")) for s in streams]

    assert described(found) == described(kept)
    for before, after in zip(kept, found):
        want, got = packets_of(source, before["index"]), packets_of(output, after["index"])
        if before["codec_type"] == "audio":
            assert stream_md5(output, after["index"]) == stream_md5(source, before["index"]), "audio samples changed"
        else:
            assert [payload for _, payload in got] == [payload for _, payload in want], "subtitles changed"
        assert len(got) == len(want)
        assert all(abs(a - b) <= 0.001 for (a, _), (b, _) in zip(got, want)), "track moved in time"


def _assert_frames_kept(source: Path, output: Path) -> None:
    want, got = frame_timestamps(source), frame_timestamps(output)
    assert len(got) == len(want)
    assert all(abs(a - b) <= 0.0005 for a, b in zip(got, want)), "frame timestamps moved"
    worst = min(rgb_psnr(output, source))
    assert worst >= PSNR_FLOOR, f"worst frame {worst:.2f} dB"


@pytest.mark.parametrize("name", list(MATRIX))
def test_identity_keeps_frames_colours_and_every_track(name, tmp_path, stylize_bin):
    video, container, audio, subtitles, asked, expected = MATRIX[name]
    source = _make(tmp_path, name, video, container, audio, subtitles)
    result = _stylize(stylize_bin, source, tmp_path / f"out{asked}", "--batch-frames", "13", "--workers", "2")
    assert result.returncode == 0, result.stderr
    output = tmp_path / f"out{expected}"
    assert f"output:  {output}" in result.stdout
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:") and "writing" in line]
    assert len(notes) == (asked != expected), result.stderr
    assert not (tmp_path / f"out{asked}").exists() or asked == expected
    _assert_frames_kept(source, output)
    _assert_tracks_kept(source, output)
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["output"] == str(output) and report["frames"] == 25 and all(b["attempts"] == 1 for b in report["batches"])


def test_several_video_streams_first_styled_others_copied(tmp_path, stylize_bin):
    srt = tmp_path / "subtitles.srt"
    srt.write_text(SUBTITLES)
    source = tmp_path / "multi.mkv"
    ffmpeg(*SOURCE, "-f", "lavfi", "-i", "testsrc=size=64x36:rate=10:duration=1",
           "-f", "lavfi", "-i", "sine=duration=1:sample_rate=48000", "-f", "lavfi", "-i", "sine=frequency=880:duration=1:sample_rate=48000",
           "-i", str(srt), "-i", str(srt),
           "-map", "0:v", "-map", "1:v", "-map", "2:a", "-map", "3:a", "-map", "4:s", "-map", "5:s",
           "-c:v:0", "libx264", "-g", "10", "-c:v:1", "mpeg4", "-c:a:0", "aac", "-c:a:1", "libopus", "-c:s:0", "srt", "-c:s:1", "ass",
           "-metadata:s:a:1", "language=fra", "-metadata:s:s:1", "language=deu", str(source))
    result = _stylize(stylize_bin, source, tmp_path / "out.mkv", "--batch-frames", "13")
    assert result.returncode == 0, result.stderr
    output = tmp_path / "out.mkv"
    _assert_frames_kept(source, output)
    _assert_tracks_kept(source, output)
    second = [s for s in streams_of(output) if s["codec_type"] == "video"][1]
    assert second["codec_name"] == "mpeg4" and packets_of(output, second["index"]) == packets_of(source, 1)
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert any("only the primary video stream (stream 0) is styled" in note and "stream 1 (mpeg4 video)" in note for note in report["notes"]), report["notes"]


def test_edit_list_delayed_audio_and_dropped_frames_keep_their_timing(tmp_path, stylize_bin):
    whole = tmp_path / "whole.mp4"
    ffmpeg(*SOURCE[:-1], "testsrc2=size=128x72:rate=25:duration=2,gblur=sigma=1", "-itsoffset", "0.3", "-f", "lavfi", "-i",
           "sine=duration=1.5:sample_rate=48000", "-map", "0:v", "-map", "1:a",
           "-vf", "select='not(eq(n\\,7)+eq(n\\,8)+eq(n\\,31))'", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-g", "12", "-bf", "2", "-c:a", "aac", str(whole))
    cut = tmp_path / "cut.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-ss", "0.5", "-i", str(whole), "-c", "copy", str(cut)], check=True)
    for source in (whole, cut):
        output = tmp_path / f"styled-{source.name}"
        result = _stylize(stylize_bin, source, output, "--batch-frames", "9", "--workers", "2")
        assert result.returncode == 0, result.stderr
        _assert_frames_kept(source, output)
        assert stream_md5(output, 1) == stream_md5(source, 1)
        assert abs(packets_of(output, 1)[0][0] - packets_of(source, 1)[0][0]) <= 0.001, "audio start moved"


def test_damaged_frames_are_left_out_and_listed_without_retries(tmp_path, stylize_bin):
    clean = tmp_path / "clean.mp4"
    ffmpeg(*SOURCE[:-1], "testsrc2=size=128x72:rate=25:duration=2,gblur=sigma=1", "-f", "lavfi", "-i", "sine=duration=2", "-c:v", "libx264", "-g", "25",
           "-bf", "0", "-c:a", "aac", str(clean))
    damaged = damage_packet(clean, tmp_path / "damaged.mp4", 30)
    decodable = subprocess.run(["ffmpeg", "-v", "quiet", "-i", str(damaged), "-map", "0:v", "-f", "framemd5", "-"],
                               capture_output=True, text=True).stdout
    assert sum(1 for line in decodable.splitlines() if not line.startswith("#")) == 49, "FFmpeg itself must decode 49 of 50 frames"
    output = tmp_path / "out.mp4"
    began = time.monotonic()
    result = _stylize(stylize_bin, damaged, output, "--batch-frames", "20")
    assert time.monotonic() - began < 120
    assert result.returncode == 0, result.stderr
    assert "damaged input: 1 of 50 frames" in result.stderr
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["frames"] == 49 and report["skipped_frames"] == [1.2]
    assert [b["attempts"] for b in report["batches"]] == [1, 1, 1], "a decode error that will repeat is not retried"
    assert any("1.200 s" in note for note in report["notes"])
    got = frame_timestamps(output)
    assert len(got) == 49 and 1.2 not in [float(t) for t in got]
    assert [t for t in frame_timestamps(clean) if float(t) != 1.2] == got
    assert stream_md5(output, 1) == stream_md5(damaged, 1)


def _unknown_video_codec(folder: Path) -> Path:
    clip = folder / "ffv1.mkv"
    ffmpeg(*SOURCE, "-c:v", "ffv1", str(clip))
    return _write(folder / "unknown-video.mkv", clip.read_bytes().replace(b"FFV1", b"ZZV9"))


def _packed_xvid(folder: Path) -> Path:
    clip = folder / "xvid.avi"
    ffmpeg(*SOURCE, "-c:v", "libxvid", "-bf", "2", "-g", "10", str(clip))
    return clip


def _cover_image_only(folder: Path) -> Path:
    png = folder / "cover.png"
    ffmpeg(*SOURCE, "-frames:v", "1", str(png))
    clip = folder / "song.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-i", str(png), "-map", "0:a", "-map", "1:v", "-c:a", "aac", "-c:v", "png",
           "-disposition:v", "attached_pic", str(clip))
    return clip


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


REFUSED = {
    "unknown-video-codec": (_unknown_video_codec, "codec the bundled FFmpeg cannot decode"),
    "packed-b-frames": (_packed_xvid, "packed B-frames"),
    "cover-image-only": (_cover_image_only, "has no video stream"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_unreadable_input_is_refused_at_probe_time_in_one_line(kind, tmp_path, stylize_bin):
    make, reason = REFUSED[kind]
    source = make(tmp_path)
    output = tmp_path / "out" / "styled.mp4"
    result = _stylize(stylize_bin, source, output)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stylize: error:") and reason in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_subtitles_in_a_format_ffmpeg_does_not_know_are_left_out_and_said(tmp_path, stylize_bin):
    srt = tmp_path / "subtitles.srt"
    srt.write_text(SUBTITLES)
    clip = tmp_path / "known.mkv"
    ffmpeg(*SOURCE, "-i", str(srt), "-i", str(srt), "-map", "0:v", "-map", "1:s", "-map", "2:s", "-c:v", "libx264", "-c:s:0", "srt",
           "-c:s:1", "ass", str(clip))
    data = clip.read_bytes()
    assert data.count(b"S_TEXT/UTF8") == 1
    source = _write(tmp_path / "odd.mkv", data.replace(b"S_TEXT/UTF8", b"S_TEXT/XXX8"))
    result = _stylize(stylize_bin, source, tmp_path / "out.mkv")
    assert result.returncode == 0, result.stderr
    assert [s["codec_name"] for s in streams_of(tmp_path / "out.mkv")] == ["h264", "ass"]
    assert "not carried: stream 1 (subtitles in a format the bundled FFmpeg does not know)" in result.stderr
