"""What a styled video carries over from its input (issue 22), through ``stylize run --model identity``: chapters and
the file's tags, display matrices with a mirror, odd sizes, the chroma format; and the inputs refused or trimmed:
encrypted tracks, audio in a codec FFmpeg does not know."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from durable_replay import ReplayClient
from media import ffmpeg, frame_timestamps, packets_of, rgb_psnr, stream_md5, streams_of, video_stream
from media_carry import chapters_and_tags, decoded_display_matrix, ffprobe_display, with_display
from function_app.upload import start_job
from shared.errors import InvalidInputError
from shared.probe import _rotation_matrix, probe
from test_functions import LIMITS, Host, _upload, run, storage  # noqa: F401 (storage: the fixture the cloud path's test uses)

PSNR_FLOOR = 35.0
SOURCE = ["-f", "lavfi", "-i", "testsrc2=size=128x72:rate=25:duration=1,gblur=sigma=1"]
SINE = ["-f", "lavfi", "-i", "sine=duration=1:sample_rate=48000"]
H264 = ["-c:v", "libx264", "-g", "10", "-bf", "2"]
FFMETADATA = """;FFMETADATA1
title=A walk in the park
comment=filmed on a phone
artist=Somebody
[CHAPTER]
TIMEBASE=1/1000
START=0
END=400
title=Opening
[CHAPTER]
TIMEBASE=1/1000
START=400
END=1000
title=The rest
"""
SOFTER = "gblur=sigma=2"
"""For 4:4:4 output, softer than :data:`SOURCE`: x264 at the styled segments' CRF alone takes testsrc2's full-resolution
chroma edges to 33.8 dB (re-encoding the 4:4:4 source with ffmpeg); and 4:2:0 styled as 4:4:4 (odd sizes) holds the
scorer's Lanczos-upsampled chroma, which the reference's bilinear upsampling measures as 34.0 dB (36.1 dB both ways Lanczos)."""
CHANGED_CHROMA_PSNR_FLOOR = 30.0
"""4:1:1 written as 4:2:0 (said in a note): a quarter of the horizontal chroma resolution becomes half the vertical.
Measured on :data:`SOFTER`'s picture: 33.1 dB; the ffmpeg command converting to 4:2:0 at the styled segments' x264
settings (veryfast, CRF 14) gives 34.1 dB, losslessly (FFV1) 42.0 dB."""
CARRIED = ("title", "comment", "artist", "creation_time")
CREATED = "2024-05-01T10:00:00.000000Z"


def _stylize(stylize_bin: str, source: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([stylize_bin, "run", str(source), str(output), "--model", "identity", "--batch-frames", "9", "--workers", "2", *extra],
                          capture_output=True, text=True, timeout=300)


def _assert_frames_kept(source: Path, output: Path, floor: float = PSNR_FLOOR) -> None:
    want, got = frame_timestamps(source), frame_timestamps(output)
    assert len(got) == len(want) and all(abs(a - b) <= 0.0005 for a, b in zip(got, want)), "frames moved or lost"
    worst = min(rgb_psnr(output, source))
    assert worst >= floor, f"worst frame {worst:.2f} dB"


def _ran(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("container", ["mkv", "mp4"])
def test_chapters_and_the_files_tags_are_carried(container, tmp_path, stylize_bin):
    metadata = tmp_path / "metadata.txt"
    metadata.write_text(FFMETADATA)
    source = tmp_path / f"chapters.{container}"
    ffmpeg(*SOURCE, *SINE, "-i", str(metadata), "-map", "0:v", "-map", "1:a", "-map_metadata", "2", "-map_chapters", "2",
           "-metadata", f"creation_time={CREATED}", "-metadata:s:v:0", "language=fra", *H264, "-c:a", "aac", str(source))
    chapters, tags = chapters_and_tags(source)
    assert [title for *_, title in chapters] == ["Opening", "The rest"] and all(key in tags for key in CARRIED), tags
    output = tmp_path / f"out.{container}"
    _ran(_stylize(stylize_bin, source, output))
    _assert_frames_kept(source, output)
    assert stream_md5(output, 1) == stream_md5(source, 1)
    got_chapters, got_tags = chapters_and_tags(output)
    assert got_chapters == chapters
    assert {key: got_tags.get(key) for key in CARRIED} == {key: tags[key] for key in CARRIED}
    assert "lavf58" not in got_tags.get("encoder", "").lower(), "the input's encoder tag is not the output's"
    assert video_stream(output).get("tags", {}).get("language") == "fra"
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert not any("stream" in note and "data" in note for note in report["notes"]), report["notes"]


def test_chapters_and_tags_survive_the_plan_the_cloud_path_stores(tmp_path):
    """The cloud path's stitch gets them from the job's plan, a JSON document holding the video's summary."""
    from shared.stitch import descriptions

    metadata = tmp_path / "metadata.txt"
    metadata.write_text(FFMETADATA)
    source = tmp_path / "chapters.mkv"
    ffmpeg(*SOURCE, "-i", str(metadata), "-map_metadata", "1", "-map_chapters", "1", *H264, str(source))
    summary = probe(source).summary()
    carried = descriptions(json.loads(json.dumps(summary)))
    assert carried == descriptions(summary)
    assert [c.title for c in carried["chapters"]] == ["Opening", "The rest"] and carried["metadata"]["title"] == "A walk in the park"


@pytest.mark.parametrize("degrees, hflip, vflip", [(90, True, False), (270, False, True), (0, True, False), (180, False, False)])
def test_display_matrix_is_kept_exactly_with_its_mirror(degrees, hflip, vflip, tmp_path, stylize_bin):
    plain = tmp_path / "plain.mp4"
    ffmpeg(*SOURCE, *SINE, *H264, "-c:a", "aac", str(plain))
    source = with_display(plain, tmp_path / "shown.mp4", degrees, hflip, vflip)
    matrix = decoded_display_matrix(source)
    assert matrix is not None
    output = tmp_path / "out.mp4"
    _ran(_stylize(stylize_bin, source, output))
    _assert_frames_kept(source, output)
    assert decoded_display_matrix(output) == matrix
    assert ffprobe_display(output) == ffprobe_display(source)


ODD = {
    "vp9-420-webm": ["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-g", "10", "-deadline", "realtime", "-cpu-used", "8", "-crf", "10", "-b:v", "0"],
    "h264-444-mp4": ["-c:v", "libx264", "-pix_fmt", "yuv444p", "-g", "10", "-bf", "2"],
}


@pytest.mark.parametrize("kind", list(ODD))
def test_odd_size_is_kept(kind, tmp_path, stylize_bin):
    source = tmp_path / f"odd.{kind.rsplit('-', 1)[1]}"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=162x122:rate=25:duration=1,format=rgb24,crop=161:121:0:0,{SOFTER}", *ODD[kind], str(source))
    assert (video_stream(source)["width"], video_stream(source)["height"]) == (161, 121)
    output = tmp_path / "out.mkv"
    _ran(_stylize(stylize_bin, source, output))
    stream = video_stream(output)
    assert (stream["width"], stream["height"]) == (161, 121), stream
    assert frame_timestamps(output) and all(shape == (121, 161) for shape in _decoded_sizes(output))
    _assert_frames_kept(source, output)


def _decoded_sizes(path: Path) -> set[tuple[int, int]]:
    with av.open(str(path)) as container:
        return {(frame.height, frame.width) for frame in container.decode(video=0)}


@pytest.mark.parametrize("pix_fmt, profile", [("yuv444p", "High 4:4:4 Predictive"), ("yuv422p", "High 4:2:2"), ("yuv420p", "High")])
def test_chroma_format_is_kept(pix_fmt, profile, tmp_path, stylize_bin):
    source = tmp_path / "chroma.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=128x72:rate=25:duration=1,{SOFTER}", "-c:v", "libx264", "-pix_fmt", pix_fmt,
           "-g", "10", str(source))
    output = tmp_path / "out.mp4"
    _ran(_stylize(stylize_bin, source, output))
    stream = video_stream(output)
    assert (stream["pix_fmt"], stream["profile"]) == (pix_fmt, profile)
    _assert_frames_kept(source, output)


def test_encrypted_tracks_are_refused_at_probe_time_in_one_line(tmp_path, stylize_bin):
    source = tmp_path / "drm.mp4"
    ffmpeg(*SOURCE, *SINE, *H264, "-c:a", "aac", "-encryption_scheme", "cenc-aes-ctr",
           "-encryption_key", "76a6c65c5ea762046bd749a2e632ccbb", "-encryption_kid", "a7e61c373e219033c21091fa607bf3b8", str(source))
    output = tmp_path / "out" / "styled.mp4"
    result = _stylize(stylize_bin, source, output)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stylize: error:") and "encrypted (CENC/DRM)" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_encrypted_packets_after_the_first_frame_are_refused_too(tmp_path, monkeypatch):
    """A file may start in the clear (a packager's "clear lead") or interleave an encrypted track late: every packet the
    probe reads is checked, not only those before the first frame decodes (stood in for by a first-frame check that
    sees nothing)."""
    import shared.probe

    source = tmp_path / "drm.mp4"
    ffmpeg(*SOURCE, *SINE, *H264, "-c:a", "aac", "-encryption_scheme", "cenc-aes-ctr",
           "-encryption_key", "76a6c65c5ea762046bd749a2e632ccbb", "-encryption_kid", "a7e61c373e219033c21091fa607bf3b8", str(source))
    monkeypatch.setattr(shared.probe, "_first_frame", lambda *args: (0, ()))
    with pytest.raises(InvalidInputError, match=r"stream \d is encrypted \(CENC/DRM\)"):
        probe(source)


def test_audio_in_a_codec_ffmpeg_does_not_know_is_left_out_and_said(tmp_path, stylize_bin):
    clip = tmp_path / "known.mkv"
    ffmpeg(*SOURCE, *SINE, *SINE, "-map", "0:v", "-map", "1:a", "-map", "2:a", *H264, "-c:a:0", "flac", "-c:a:1", "libopus", str(clip))
    data = clip.read_bytes()
    assert data.count(b"A_OPUS") == 1
    source = tmp_path / "odd-audio.mkv"
    source.write_bytes(data.replace(b"A_OPUS", b"A_OPUX"))
    output = tmp_path / "out.mkv"
    result = _stylize(stylize_bin, source, output)
    _ran(result)
    assert [s["codec_name"] for s in streams_of(output)] == ["h264", "flac"]
    assert "not carried: stream 2 (audio in a codec the bundled FFmpeg does not know)" in result.stderr
    _assert_frames_kept(source, output)
    assert stream_md5(output, 1) == stream_md5(source, 1) and len(packets_of(output, 1)) == len(packets_of(source, 1))


def test_chapters_and_tags_over_the_bounds_are_left_out_and_said(tmp_path, monkeypatch):
    """They travel in the job's plan: a file with thousands of chapters or megabytes of tags must not swell it."""
    import shared.probe

    monkeypatch.setattr(shared.probe, "MAX_CHAPTERS", 1)
    monkeypatch.setattr(shared.probe, "MAX_TAG_CHARS", 12)
    metadata = tmp_path / "metadata.txt"
    metadata.write_text(FFMETADATA)
    source = tmp_path / "chapters.mkv"
    ffmpeg(*SOURCE, "-i", str(metadata), "-map_metadata", "1", "-map_chapters", "1", "-metadata", "copyright=short", *H264, str(source))
    info = probe(source)
    assert [c.title for c in info.chapters] == ["Opening"]
    assert {key.lower(): value for key, value in info.metadata.items()} == {"copyright": "short", "artist": "Somebody"}
    assert any(note.startswith("1 chapters past the first 1 ") for note in info.ignored), info.ignored
    assert any(note.startswith("the file's tags over 12 characters") and "title" in note.lower() for note in info.ignored), info.ignored


def test_chapters_and_tags_take_at_most_their_bytes_in_the_plan(tmp_path):
    """600 chapters of 999 emoji each (within the count and each title's length) made a 6 MB plan; all the descriptions
    together are bounded in bytes as the plan stores them (JSON, ASCII-escaped)."""
    from shared.probe import MAX_DESCRIPTION_BYTES

    title = "\N{GRINNING FACE}" * 999
    chapters = "".join(f"[CHAPTER]\nTIMEBASE=1/1000\nSTART={n}\nEND={n + 1}\ntitle={title}\n" for n in range(600))
    metadata = tmp_path / "metadata.txt"
    metadata.write_text(f";FFMETADATA1\ntitle={'T' * 900}\n{chapters}", encoding="utf-8")
    source = tmp_path / "chapters.mkv"
    ffmpeg(*SOURCE, "-i", str(metadata), "-map_metadata", "1", "-map_chapters", "1", *H264, str(source))
    info = probe(source)
    assert 0 < len(info.chapters) < 600 and info.metadata["title"] == "T" * 900
    assert len(json.dumps(info.summary())) < MAX_DESCRIPTION_BYTES + 4096
    assert any(note.startswith(f"{600 - len(info.chapters)} chapters past the first {len(info.chapters)} ") for note in info.ignored)


def test_a_chroma_format_h264_lacks_is_written_420_and_said(tmp_path, stylize_bin):
    source = tmp_path / "dv-like.mkv"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=128x72:rate=25:duration=1,{SOFTER}", "-c:v", "ffv1", "-pix_fmt", "yuv411p", str(source))
    output = tmp_path / "out.mkv"
    result = _stylize(stylize_bin, source, output)
    _ran(result)
    assert video_stream(output)["pix_fmt"] == "yuv420p"
    assert "note: 4:1:1 chroma written as 4:2:0 (H.264 has no 4:1:1)" in result.stderr
    _assert_frames_kept(source, output, floor=CHANGED_CHROMA_PSNR_FLOOR)


def test_the_cloud_path_carries_chapters_tags_and_the_mirrored_display(storage, tmp_path):
    """The same stitch on Azure, fed from the job's plan (stored by the orchestration as JSON)."""
    service, queues = storage
    metadata = tmp_path / "metadata.txt"
    metadata.write_text(FFMETADATA)
    plain = tmp_path / "plain.mp4"
    ffmpeg(*SOURCE, *SINE, "-i", str(metadata), "-map", "0:v", "-map", "1:a", "-map_metadata", "2", "-map_chapters", "2",
           "-metadata", f"creation_time={CREATED}", *H264, "-c:a", "aac", str(plain))
    source = with_display(plain, tmp_path / "clip.mp4", 90, hflip=True)
    chapters, tags = chapters_and_tags(source)
    assert len(chapters) == 2 and all(key in tags for key in CARRIED), tags
    client = ReplayClient()
    instance_id = run(start_job(_upload(service, "carry/clip.mp4", source.read_bytes()), client, LIMITS))
    Host(client, instance_id, queues).until_done()
    output = tmp_path / "out.mp4"
    output.write_bytes(service.get_blob_client(LIMITS.output_container, "carry/clip.mp4.identity.mp4").download_blob().readall())
    _assert_frames_kept(source, output)
    got_chapters, got_tags = chapters_and_tags(output)
    assert got_chapters == chapters
    assert {key: got_tags.get(key) for key in CARRIED} == {key: tags[key] for key in CARRIED}
    assert decoded_display_matrix(output) == decoded_display_matrix(source) is not None


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_matrix_is_ffmpegs(tmp_path: Path, degrees: int) -> None:
    """The matrix rebuilt from a rotation (for frames whose side data PyAV cannot list, MV-HEVC's) is the one FFmpeg writes."""
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        written = struct.unpack("=9i", bytes(frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)))
        assert _rotation_matrix(frame.rotation) == written


def test_long_tags_over_the_byte_budget_leave_the_others(tmp_path):
    """Six 1000-character CJK tags are over the budget as the plan stores them (escaped): they are left out one by one,
    not with the title."""
    from shared.probe import MAX_DESCRIPTION_BYTES

    long = "\N{CJK UNIFIED IDEOGRAPH-4E2D}" * 1000
    tags = ["-metadata", "title=Holiday"] + [arg for key in ("comment", "description", "synopsis", "lyrics", "artist", "album")
                                             for arg in ("-metadata", f"{key}={long}")]
    source = tmp_path / "tags.mkv"
    ffmpeg(*SOURCE, *tags, *H264, str(source))
    info = probe(source)
    kept = {key.lower(): value for key, value in info.metadata.items()}
    assert kept["title"] == "Holiday" and 1 <= len(kept) - 1 < 6
    assert len(json.dumps(info.metadata)) <= MAX_DESCRIPTION_BYTES
    assert sum(note.startswith("the file's tag ") for note in info.ignored) == 7 - len(kept)
