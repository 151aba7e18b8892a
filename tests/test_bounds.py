"""Limits before the work they bound, and formats by allowlist (issue 20, findings 4 and 11).

Hostile media made here: a frame of 8000x8000 (one frame, small compressed), a Matroska file of 200,000
tiny frames, a Matroska attachment of 50 MB, a 13000x13000 one-colour PNG of under a megabyte, files
whose content is a concat script, an image or a playlist under a video's name. What is refused must be
refused before the expensive work: the probes that measure it run in a subprocess, which reports the
peak memory the call added (``ru_maxrss``) and its one-line error.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image

from media import ffmpeg, make_clip
from shared.config import Settings
from shared.errors import InvalidInputError
from test_style_upload import one_colour_png

PROBE_MEMORY_MB = 25
"""Peak memory a refused probe may add: a probe of a small clip adds about 12 MB; decoding one 8000x8000
H.264 frame adds 104-158 MB, reading 200,000 packets about 60 MB, a 50 MB attachment 345 MB."""


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


HOSTILE_BODIES = {
    "concat-script": b"ffconcat version 1.0\nfile other.mp4\n",
    "png-image": _png_bytes(),
    "hls-playlist": b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nother.mp4\n#EXT-X-ENDLIST\n",
}


def _measured(code: str, env: dict[str, str] | None = None) -> dict:
    """Run the statement ``code`` in a fresh interpreter: the message of the InvalidInputError it raised (None if none), and
    the peak memory it added (MB)."""
    script = textwrap.dedent("""
        import json, resource, sys
        from shared.config import Settings
        from shared.errors import InvalidInputError
        from shared.probe import probe
        from gpu_job.styles import check_style_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        error = None
        try:
        {code}
        except InvalidInputError as exc:
            error = str(exc)
        added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({{"error": error, "added_mb": added}}))
    """).format(code=textwrap.indent(code, "    "))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _probed(path: Path, **limits: str) -> dict:
    env = {f"STYLIZE_{name.upper()}": value for name, value in limits.items()}
    return _measured(f"probe({str(path)!r}, Settings.from_env())", env)


@pytest.fixture(scope="module")
def huge_frames(tmp_path_factory) -> dict[str, Path]:
    """One 8000x8000 frame: H.264 in MP4 and MPEG-TS (FFmpeg decodes H.264 frames while opening), MJPEG in Matroska."""
    folder = tmp_path_factory.mktemp("huge")
    source = ["-f", "lavfi", "-i", "color=c=red:size=8000x8000:rate=1", "-frames:v", "1"]
    ffmpeg(*source, "-c:v", "libx264", "-preset", "ultrafast", str(folder / "huge.mp4"))
    ffmpeg("-i", str(folder / "huge.mp4"), "-c", "copy", str(folder / "huge.ts"))
    ffmpeg(*source, "-c:v", "mjpeg", str(folder / "huge.mkv"))
    return {path.suffix[1:]: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def many_frames(tmp_path_factory) -> Path:
    """200,000 frames of 16x16 at 1000 frames/s in 3.5 MB: a GOP of 250 tiny frames, looped by stream copy."""
    folder = tmp_path_factory.mktemp("many")
    gop = folder / "gop.mkv"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=16x16:rate=1000", "-frames:v", "250", "-c:v", "libx264", "-g", "250", "-bf", "0",
           "-preset", "ultrafast", str(gop))
    ffmpeg("-stream_loop", "799", "-i", str(gop), "-c", "copy", str(folder / "many.mkv"))
    return folder / "many.mkv"


def _attached(folder: Path, megabytes: int) -> Path:
    font = folder / f"font{megabytes}.ttf"
    font.write_bytes(bytes(megabytes * 10**6))
    clip = make_clip(folder / f"clip{megabytes}.mp4", seconds=1, audio=False)
    out = folder / f"attached{megabytes}.mkv"
    ffmpeg("-i", str(clip), "-c", "copy", "-attach", str(font), "-metadata:s:t", "mimetype=application/x-truetype-font", str(out))
    return out


@pytest.mark.parametrize("container", ["mp4", "ts", "mkv"])
def test_a_huge_frame_is_refused_from_the_headers_without_decoding(container, huge_frames):
    result = _probed(huge_frames[container])
    assert result["error"] == f"huge.{container}: resolution 8000x8000 over the limit of 3840x2160"
    assert result["added_mb"] < PROBE_MEMORY_MB, "refused before FFmpeg decoded the frame"


def test_a_bitstream_larger_than_its_header_says_is_not_decoded(huge_frames, tmp_path):
    """The Matroska header says 64x48, the H.264 parameter sets 8000x8000: the decoders FFmpeg opens are bounded too."""
    liar = tmp_path / "liar.mkv"
    ffmpeg("-i", str(huge_frames["mp4"]), "-c", "copy", str(liar))
    data = liar.read_bytes()
    width, height = b"\xb0\x82" + (8000).to_bytes(2, "big"), b"\xba\x82" + (8000).to_bytes(2, "big")  # PixelWidth, PixelHeight
    assert data.count(width) == data.count(height) == 1
    liar.write_bytes(data.replace(width, b"\xb0\x82\x00\x40").replace(height, b"\xba\x82\x00\x30"))
    result = _probed(liar)
    assert result["error"] == "liar.mkv: resolution 8000x8000 over the limit of 3840x2160"
    assert result["added_mb"] < 2 * PROBE_MEMORY_MB, "the decoder's tables for the parameter sets (28 MB), but no frame (158 MB)"


@pytest.mark.parametrize("codec, suffix", [("libx264", ".mkv"), ("libx264", ".ts"), ("mpeg2video", ".mkv"), ("libx265", ".mkv"),
                                           ("libvpx-vp9", ".mkv"), ("libsvtav1", ".mkv"), ("mjpeg", ".mkv")])
def test_a_video_exactly_at_the_size_limit_decodes(codec, suffix, tmp_path):
    """Decoders are bounded too (the bitstream may say a size the headers do not), with room for the coded size
    (macroblocks, superblocks, stride alignment) of a frame within the limits: 130x74 is coded as 144x80 or 192x128."""
    from shared.probe import probe

    clip = tmp_path / f"edge{suffix}"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=130x74:rate=25", "-frames:v", "3", "-pix_fmt", "yuv420p", "-c:v", codec,
           *(["-x265-params", "log-level=error"] if codec == "libx265" else []), str(clip))
    info = probe(clip, Settings(max_width=130, max_height=74))
    assert (info.width, info.height, info.frame_count) == (130, 74, 3)
    with pytest.raises(InvalidInputError, match=r"resolution 130x74 over the limit of 130x73$"):
        probe(clip, Settings(max_width=130, max_height=73))


def test_packet_reading_stops_at_the_frame_limit(many_frames):
    result = _probed(many_frames, max_frames="1000")
    assert result["error"] == "many.mkv: more than the limit of 1000 frames"
    assert result["added_mb"] < PROBE_MEMORY_MB, "stopped reading at the limit, not after all 200,000 packets"


def test_packet_reading_stops_at_the_duration_limit(many_frames):
    result = _probed(many_frames, max_duration_s="10")
    assert result["error"] == "many.mkv: longer than the limit of 10 s"
    assert result["added_mb"] < PROBE_MEMORY_MB


def test_an_attachment_over_the_limit_is_refused_before_ffmpeg_reads_it(tmp_path):
    result = _probed(_attached(tmp_path, 50))
    assert result["error"] == "attached50.mkv: attachments of 50.0 MB over the limit of 33.6 MB"
    assert result["added_mb"] < PROBE_MEMORY_MB, "FFmpeg reads a 50 MB attachment into 345 MB"


def test_an_attachment_under_the_limit_is_left_out_and_said(tmp_path):
    from shared.probe import probe

    info = probe(_attached(tmp_path, 1))
    assert info.frame_count == 25 and info.ignored == ["stream 1 (attachment)"]


def _element(element_id: int, payload: bytes, unknown_size: bool = False) -> bytes:
    size = b"\x01\xff\xff\xff\xff\xff\xff\xff" if unknown_size else b"\x01" + len(payload).to_bytes(7, "big")
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + size + payload


@pytest.mark.parametrize("cluster_size_known", [True, False])
def test_attachments_after_the_clusters_are_found_through_the_seek_head(cluster_size_known, tmp_path):
    """FFmpeg's demuxer follows the SeekHead to attachments written after the clusters (as mkvmerge may)."""
    from shared.attachments import attachment_bytes

    attachments = _element(0x1941A469, _element(0x61A7, _element(0x465C, bytes(5000))))
    cluster = _element(0x1F43B675, _element(0xE7, b"\x00") + _element(0xA3, bytes(100)), unknown_size=not cluster_size_known)

    def seek_head(position: int) -> bytes:
        entry = _element(0x53AB, (0x1941A469).to_bytes(4, "big")) + _element(0x53AC, position.to_bytes(8, "big"))
        return _element(0x114D9B74, _element(0x4DBB, entry))

    position = len(seek_head(0)) + len(cluster)
    segment = _element(0x18538067, seek_head(position) + cluster + attachments)
    path = tmp_path / "late.mkv"
    path.write_bytes(_element(0x1A45DFA3, _element(0x4282, b"matroska")) + segment)
    assert attachment_bytes(path) == len(attachments) - 12


def _noise_png(path: Path, size: tuple[int, int]) -> Path:
    import numpy as np

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, compress_level=0)
    return path


def test_cover_art_over_the_limit_is_refused_before_ffmpeg_reads_it(tmp_path):
    from shared.probe import probe

    clip = make_clip(tmp_path / "clip.mp4", seconds=1, audio=False)
    cover = _noise_png(tmp_path / "cover.png", (1000, 700))
    song = tmp_path / "covered.mp4"
    ffmpeg("-i", str(clip), "-i", str(cover), "-map", "0", "-map", "1", "-c", "copy", "-disposition:v:1", "attached_pic", str(song))
    with pytest.raises(InvalidInputError) as refused:
        probe(song, Settings(max_attachment_bytes=10**6))
    assert str(refused.value) == f"covered.mp4: attachments of {cover.stat().st_size / 1e6:.1f} MB over the limit of 1.0 MB"
    assert probe(song).ignored == ["stream 1 (cover image)"]


def _box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def test_quicktime_cover_art_is_found_in_its_own_metadata(tmp_path):
    """QuickTime keeps metadata in moov/meta, whose children start at once (MP4's meta starts with version and flags)."""
    from shared.attachments import attachment_bytes

    ilst = _box(b"ilst", _box(b"covr", _box(b"data", bytes(8) + bytes(3000))))
    movie = _box(b"moov", _box(b"mvhd", bytes(100)) + _box(b"meta", _box(b"hdlr", bytes(25)) + ilst))
    path = tmp_path / "covered.mov"
    path.write_bytes(_box(b"ftyp", b"qt  " + bytes(4)) + _box(b"mdat", bytes(500)) + movie)
    assert attachment_bytes(path) == 8 + 8 + 3000


def test_files_without_attachments_hold_none(huge_frames, tmp_path):
    from shared.attachments import attachment_bytes

    assert attachment_bytes(huge_frames["mp4"]) == 0 and attachment_bytes(huge_frames["mkv"]) == 0
    (tmp_path / "short.mkv").write_bytes(b"\x1a\x45\xdf\xa3\x81")
    assert attachment_bytes(tmp_path / "short.mkv") == 0


def _stylize(stylize_bin: str, source: Path, output: Path, **limits: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **{f"STYLIZE_{name.upper()}": value for name, value in limits.items()}}
    return subprocess.run([stylize_bin, "run", str(source), str(output), "--model", "identity"], capture_output=True, text=True,
                          timeout=120, env=env)


def _refused_in_one_line(result: subprocess.CompletedProcess, reason: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stylize: error:") and reason in lines[0], result.stderr


@pytest.mark.parametrize("limits, reason", [
    ({"max_width": "64"}, "clip.mp4: resolution 128x72 over the limit of 64x2160"),
    ({"max_height": "48"}, "clip.mp4: resolution 128x72 over the limit of 3840x48"),
    ({"max_frames": "10"}, "clip.mp4: 50 frames over the limit of 10"),  # from the MP4 index, before reading packets
    ({"max_duration_s": "1"}, "clip.mp4: longer than the limit of 1 s"),
])
def test_stylize_run_refuses_a_video_over_a_limit_in_one_line(limits, reason, tmp_path, stylize_bin):
    clip = make_clip(tmp_path / "clip.mp4", seconds=2, audio=False)
    result = _stylize(stylize_bin, clip, tmp_path / "out" / "styled.mp4", **limits)
    _refused_in_one_line(result, reason)
    assert not (tmp_path / "out").exists()


def test_stylize_run_refuses_attachments_over_the_limit_in_one_line(tmp_path, stylize_bin):
    result = _stylize(stylize_bin, _attached(tmp_path, 2), tmp_path / "styled.mkv", max_attachment_bytes="1000000")
    _refused_in_one_line(result, "attached2.mkv: attachments of 2.0 MB over the limit of 1.0 MB")
    assert not (tmp_path / "styled.mkv").exists()


@pytest.mark.parametrize("body", list(HOSTILE_BODIES))
def test_an_upload_that_is_not_a_video_container_is_refused_not_followed(body, tmp_path, stylize_bin):
    """FFmpeg picks the demuxer by content: a concat script named clip.mp4 opened the video beside it."""
    make_clip(tmp_path / "other.mp4", seconds=1, audio=False)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(HOSTILE_BODIES[body])
    result = _stylize(stylize_bin, clip, tmp_path / "out" / "styled.mp4")
    _refused_in_one_line(result, "not a readable video file")
    assert not (tmp_path / "out").exists()


def test_accepted_containers_still_open(tmp_path):
    from shared.probe import probe

    clip = make_clip(tmp_path / "clip.mp4", seconds=1, audio=False)
    for suffix in (".mov", ".mkv", ".webm", ".avi", ".ts", ".m2ts"):
        codec = {".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime"], ".avi": ["-c:v", "libx264", "-bf", "0"]}.get(suffix, ["-c", "copy"])
        ffmpeg("-i", str(clip), *codec, *(["-f", "mpegts", "-mpegts_m2ts_mode", "1"] if suffix == ".m2ts" else []),
               str(tmp_path / f"clip{suffix}"))
        assert probe(tmp_path / f"clip{suffix}").frame_count == 25, suffix  # AVI without B-frames: it holds no presentation times


def test_segments_and_preview_rows_are_read_only_in_the_formats_written(tmp_path):
    """The worker's scorer, the stitcher's frame count and the preview read what the pipeline wrote, nothing else."""
    from gpu_job.scorer import Segment
    from shared.preview import write_preview
    from shared.probe import frame_times

    make_clip(tmp_path / "other.mp4", seconds=1, audio=False)
    script = tmp_path / "batch-00000.mp4"
    script.write_bytes(HOSTILE_BODIES["concat-script"])
    with pytest.raises(av.FFmpegError):
        frame_times(script, Fraction(0), None)
    with pytest.raises(av.FFmpegError):
        Segment(script, tmp_path / "styled.mp4", start=Fraction(0), end=None, expected_frames=25)
    row = tmp_path / "row.png"
    row.write_bytes(_png_bytes())
    (tmp_path / "pic.png").write_bytes(_png_bytes())
    listed = tmp_path / "listed.png"
    listed.write_bytes(b"ffconcat version 1.0\nfile pic.png\n")
    with pytest.raises(av.FFmpegError):
        write_preview([row, listed], tmp_path / "preview.png")
    assert write_preview([row, row], tmp_path / "preview.png").exists()


def test_a_huge_style_picture_is_refused_from_its_header(tmp_path):
    picture = tmp_path / "bomb.png"
    picture.write_bytes(one_colour_png(13000))
    assert picture.stat().st_size < 10**6
    result = _measured(f"check_style_image(open({str(picture)!r}, 'rb').read(), 'bomb.png')")
    assert result["error"] == "style image bomb.png: 13000x13000 is over the limit of 24 megapixels"
    assert result["added_mb"] < 20, "refused before Pillow decoded 507 MB of pixels"


def test_pillows_bomb_warning_is_an_error(tmp_path, monkeypatch):
    from gpu_job.styles import check_style_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    with pytest.raises(InvalidInputError, match=r"^style image p\.png: too large to decode \(Image size \(3072 pixels\) exceeds limit"):
        check_style_image(_png_bytes(), "p.png", max_megapixels=1000)


@pytest.mark.parametrize("kind", ["TIFF", "GIF", "EPS", "PPM"])
def test_style_pictures_only_in_the_formats_accepted(kind, tmp_path):
    from gpu_job.models import read_style_image
    from gpu_job.styles import check_style_image

    buffer = tmp_path / f"painting.{kind.lower()}"
    Image.new("RGB", (64, 48), (200, 80, 20)).save(buffer, format=kind)
    reason = f"style image {buffer.name}: not a picture Pillow can read in the formats accepted (PNG, JPEG, WEBP)"
    with pytest.raises(InvalidInputError) as refused:
        check_style_image(buffer.read_bytes(), buffer.name)
    assert str(refused.value) == reason
    with pytest.raises(InvalidInputError, match="formats accepted"):
        read_style_image(buffer)


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_style_pictures_in_the_formats_accepted_are_read(kind, tmp_path):
    from gpu_job.models import read_style_image

    path = tmp_path / f"painting.{kind.lower()}"
    Image.new("RGB", (64, 48), (200, 80, 20)).save(path, format=kind)
    assert read_style_image(path).shape == (48, 64, 3)


def test_the_style_picture_limit_is_a_setting(monkeypatch):
    from gpu_job.styles import check_style_image

    assert Settings().max_style_megapixels == 24.0
    monkeypatch.setenv("STYLIZE_MAX_STYLE_MEGAPIXELS", "0.001")
    with pytest.raises(InvalidInputError, match=r"64x48 is over the limit of 0\.001 megapixels"):
        check_style_image(_png_bytes(), "p.png")


def test_split_job_refuses_over_the_limits_before_splitting(on_azurite, many_frames):
    """The Azure path: the split activity probes with its settings' limits, and uploads nothing when refused."""
    from function_app import activities

    limits = Settings(max_frames=1000)
    service, _ = on_azurite(limits, (limits.input_container, limits.work_container), ())
    service.get_blob_client(limits.input_container, "many.mkv").upload_blob(many_frames.read_bytes(), overwrite=True)
    job_id = "stylize-" + "b0" * 16
    with pytest.raises(InvalidInputError) as refused:
        activities.split_job({"job_id": job_id, "input_blob": "many.mkv", "style": "identity"}, limits)
    assert str(refused.value) == "input.mkv: more than the limit of 1000 frames"
    assert not list(service.get_container_client(limits.work_container).list_blobs(name_starts_with=f"jobs/{job_id}/"))


def test_the_style_sheet_reads_only_accepted_pictures_and_containers(tmp_path):
    """`stylize styles --sheet` reads a picture or a video the user names: by the same allowlists as everything else."""
    from PIL import Image

    from runner.sheet import read_frame

    make_clip(tmp_path / "other.mp4", seconds=1, audio=False)
    script = tmp_path / "frame.mp4"
    script.write_bytes(HOSTILE_BODIES["concat-script"])
    with pytest.raises(InvalidInputError, match="neither a picture nor a video"):
        read_frame(script)
    Image.new("RGB", (8, 8)).save(tmp_path / "frame.tiff")
    with pytest.raises(InvalidInputError, match="neither a picture nor a video"):
        read_frame(tmp_path / "frame.tiff")
    Image.new("RGB", (8, 6)).save(tmp_path / "frame.png")
    assert read_frame(tmp_path / "frame.png").shape == (6, 8, 3)
    assert read_frame(tmp_path / "other.mp4").ndim == 3
