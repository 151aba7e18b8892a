"""Test helpers that make clips with FFmpeg's lavfi sources and measure results with FFmpeg itself."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def make_clip(
    path: Path,
    *,
    size: str = "128x72",
    rate: str = "25",
    seconds: float = 2,
    audio: bool = True,
    codec: list[str] | None = None,
    video_filter: str | None = None,
    extra: list[str] | None = None,
) -> Path:
    """A testsrc2 clip (moving, detailed: a good frame-identity probe) with an optional sine track."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    if video_filter:
        args += ["-vf", video_filter]
    args += codec or ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    ffmpeg(*args, *(extra or []), str(path))
    return path


def probe_json(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def video_stream(path: Path) -> dict:
    return next(s for s in probe_json(path)["streams"] if s["codec_type"] == "video")


def audio_streams(path: Path) -> list[dict]:
    return [s for s in probe_json(path)["streams"] if s["codec_type"] == "audio"]


def frame_timestamps(path: Path) -> list[Fraction]:
    """Every frame's presentation time, in display order, as FFmpeg decodes them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(frame.pts * stream.time_base for frame in container.decode(stream))


def keyframe_timestamps(path: Path) -> set[Fraction]:
    """Presentation times of the frames FFmpeg decodes as keyframes."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {frame.pts * stream.time_base for frame in container.decode(stream) if frame.key_frame}


def video_duration(path: Path) -> float:
    stamps = frame_timestamps(path)
    step = stamps[-1] - stamps[-2] if len(stamps) > 1 else 0
    return float(stamps[-1] - stamps[0] + step)


def min_psnr(styled: Path, reference: Path, crop: str | None = None) -> tuple[float, int]:
    """(lowest per-frame PSNR, frames compared), frames paired by timestamp by FFmpeg's psnr filter."""
    first = f"[0:v]{crop},setpts=PTS-STARTPTS[a]" if crop else "[0:v]setpts=PTS-STARTPTS[a]"
    graph = f"{first};[1:v]setpts=PTS-STARTPTS[b];[a][b]psnr=stats_file=-:shortest=1"
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(styled), "-i", str(reference), "-lavfi", graph, "-f", "null", "-"],
        check=True, capture_output=True, text=True,
    ).stdout
    values = [float(field.split(":")[1]) for line in out.splitlines() for field in line.split() if field.startswith("psnr_avg:")]
    return (min(values) if values else 0.0), len(values)


def audio_md5(path: Path) -> str:
    """MD5 of the decoded audio samples of every audio stream."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a", "-f", "md5", "-"], check=True, capture_output=True, text=True
    ).stdout
    return out.strip()


def audio_seconds(path: Path) -> list[float]:
    """Decoded length of each audio stream, from its samples (containers disagree on duration fields)."""
    lengths = []
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            samples = sum(frame.samples for frame in container.decode(stream))
            lengths.append(samples / stream.codec_context.sample_rate)
            container.seek(0)
    return lengths


def set_rotation(source: Path, target: Path, degrees: int) -> Path:
    """Copy ``source`` with a display-matrix rotation (Debian's FFmpeg 5.1 CLI cannot set one)."""
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        streams = {}
        for stream in src.streams:
            streams[stream.index] = out.add_stream_from_template(stream)
            streams[stream.index].time_base = stream.time_base
        streams[src.streams.video[0].index].set_display_rotation(degrees)
        for packet in src.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return target



def preview_tiles(png: Path, rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (input, styled) tiles of each row of a preview image."""
    with av.open(str(png)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    height, width = image.shape[0] // rows, image.shape[1] // 2
    assert image.shape[:2] == (height * rows, width * 2)
    return [(image[r * height:(r + 1) * height, :width], image[r * height:(r + 1) * height, width:]) for r in range(rows)]


def frames_at(path: Path, indices: list[int], width: int, height: int) -> list[np.ndarray]:
    """Frames at ``indices`` (display order), resized as the preview resizes them."""
    with av.open(str(path)) as container:
        frames = [frame for number, frame in enumerate(container.decode(video=0)) if number in indices]
    return [frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA") for frame in frames]


def rgb_frames(path: Path, crop: tuple[int, int] | None = None) -> np.ndarray:
    """Every frame of the first video stream as 8-bit RGB, converted honouring the file's colour tags.

    The conversion interpolates chroma bilinearly at its sited positions (swscale's full-chroma, accurate
    rounding mode), which test_colour checks against the BT.601/BT.709 equations computed here in NumPy.
    """
    from av.video.reformatter import Interpolation

    exact = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        width, height = crop or (stream.codec_context.width, stream.codec_context.height)
        return np.stack([frame.to_ndarray(format="rgb24", interpolation=exact)[:height, :width] for frame in container.decode(stream)])


def rgb_psnr(styled: Path, reference: Path) -> list[float]:
    """Per-frame PSNR (dB) of ``styled`` against ``reference``, both as 8-bit RGB, frames paired in order (even sizes cropped to the reference)."""
    ref = video_stream(reference)
    a, b = rgb_frames(styled, (ref["width"], ref["height"])), rgb_frames(reference)
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = ((a.astype(np.float64) - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return [float("inf") if m == 0 else 10 * np.log10(255**2 / m) for m in mse]


def colour_tags(path: Path) -> dict[str, str]:
    stream = video_stream(path)
    return {key: stream.get(key, "unknown") for key in ("color_range", "color_space", "color_primaries", "color_transfer", "pix_fmt")}


def stream_md5(path: Path, index: int) -> str:
    """MD5 of the decoded samples of stream ``index``."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:{index}", "-f", "md5", "-"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def packets_of(path: Path, index: int) -> list[tuple[float, bytes]]:
    """(presentation time in seconds, payload) of every packet of stream ``index``."""
    with av.open(str(path)) as container:
        stream = container.streams[index]
        return [(float(p.pts * p.time_base), bytes(p)) for p in container.demux(stream) if p.size and p.pts is not None]


def streams_of(path: Path) -> list[dict]:
    return probe_json(path)["streams"]


def damage_packet(source: Path, target: Path, number: int) -> Path:
    """Copy ``source`` with the first bytes of video packet ``number`` (decode order) zeroed: FFmpeg cannot decode that frame."""
    with av.open(str(source)) as container:
        payload = [bytes(p) for p in container.demux(container.streams.video[0]) if p.size][number]
    data = bytearray(source.read_bytes())
    position = data.find(payload)
    assert position >= 0 and data.count(payload) == 1
    data[position:position + 12] = bytes(12)
    target.write_bytes(bytes(data))
    return target
