"""Probe a video: its frames' exact timestamps, its GOP structure, audio streams and rotation.

Probing reads packets only (no decoding, except one frame to prove the stream decodes and to
read its rotation), so it costs a small fraction of a decode even for long videos.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from shared.errors import InvalidInputError


@dataclass(frozen=True)
class AudioInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    duration_s: float


@dataclass(frozen=True)
class VideoInfo:
    """What planning, splitting and stitching need to know about a video.

    ``frame_pts`` lists every frame's presentation timestamp (in ``time_base`` units) in display
    order; ``frame_gop`` gives, for each of those frames, the GOP (run of packets from one keyframe
    to the next, in decode order) that holds it; ``open_gops`` marks GOPs whose leading frames
    reference the GOP before.
    """

    path: str
    format: str
    size_bytes: int
    codec: str
    width: int
    height: int
    time_base: Fraction
    frame_pts: list[int]
    frame_gop: list[int]
    open_gops: list[int]
    last_frame_duration: int
    rotation: int
    audio: list[AudioInfo] = field(default_factory=list)

    @property
    def frame_count(self) -> int:
        return len(self.frame_pts)

    @property
    def duration_s(self) -> float:
        span = self.frame_pts[-1] - self.frame_pts[0] + self.last_frame_duration
        return float(span * self.time_base)

    @property
    def fps(self) -> float:
        """Average frame rate; exact for constant-rate video."""
        return self.frame_count / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict:
        """A small JSON-ready description (without the per-frame lists)."""
        data = asdict(self)
        for bulky in ("frame_pts", "frame_gop", "open_gops"):
            data.pop(bulky)
        data["time_base"] = str(self.time_base)
        data.update(frame_count=self.frame_count, duration_s=round(self.duration_s, 6), fps=round(self.fps, 4))
        return data


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a directory, not a video file")
    if not os.access(path, os.R_OK):
        raise InvalidInputError(f"{path}: not readable (permission denied)")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not a readable video file ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0].strip()


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Describe ``path`` or raise :class:`InvalidInputError` with a one-line reason."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise InvalidInputError(f"{path}: has no video stream (found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        if stream.time_base is None or stream.codec_context is None:
            raise InvalidInputError(f"{path}: video stream has no timing information")
        audio = [
            AudioInfo(
                index=s.index,
                codec=s.codec_context.name,
                sample_rate=s.codec_context.sample_rate or 0,
                channels=s.codec_context.channels or 0,
                duration_s=float(s.duration * s.time_base) if s.duration and s.time_base else 0.0,
            )
            for s in container.streams.audio
        ]
        packets = _read_packets(path, container, stream)
        if not packets:
            raise InvalidInputError(f"{path}: video stream has zero frames")
        indexed = stream.frames
        if indexed and len(packets) < indexed:
            raise InvalidInputError(f"{path}: truncated: index lists {indexed} frames but only {len(packets)} are present")
        rotation = _first_frame_rotation(path)
        ctx = stream.codec_context
        return _describe(path, container.format.name, ctx.name, ctx.width, ctx.height, stream.time_base, packets, rotation, audio)


def _read_packets(path: Path, container, stream) -> list[tuple[int, int, bool]]:
    """(pts, duration, keyframe) of every video packet, in decode order."""
    packets: list[tuple[int, int, bool]] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                raise InvalidInputError(f"{path}: video packets carry no timestamps")
            packets.append((pts, packet.duration or 0, bool(packet.is_keyframe)))
    except av.FFmpegError as exc:
        raise InvalidInputError(f"{path}: damaged or truncated video ({_reason(exc)})") from None
    return packets


def _first_frame_rotation(path: Path) -> int:
    """Decode the first frame: proves the stream decodes, and gives the display rotation."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            for frame in container.decode(container.streams.video[0]):
                return int(frame.rotation) % 360
    except av.FFmpegError as exc:
        raise InvalidInputError(f"{path}: video does not decode ({_reason(exc)})") from None
    raise InvalidInputError(f"{path}: video stream has no decodable frame")


def _describe(path, fmt, codec, width, height, time_base, packets, rotation, audio) -> VideoInfo:
    if packets[0][2] is False:
        raise InvalidInputError(f"{path}: video does not start with a keyframe")
    gop_of_packet: list[int] = []
    keyframe_pts: list[int] = []
    for pts, _, key in packets:
        if key:
            keyframe_pts.append(pts)
        gop_of_packet.append(len(keyframe_pts) - 1)
    order = sorted(range(len(packets)), key=lambda i: packets[i][0])
    frame_pts = [packets[i][0] for i in order]
    if len(set(frame_pts)) != len(frame_pts):
        raise InvalidInputError(f"{path}: video has frames with duplicate timestamps")
    frame_gop = [gop_of_packet[i] for i in order]
    open_gops = sorted({gop_of_packet[i] for i, (pts, _, _) in enumerate(packets) if pts < keyframe_pts[gop_of_packet[i]]})
    last_duration = packets[order[-1]][1] or (frame_pts[-1] - frame_pts[-2] if len(frame_pts) > 1 else 1)
    return VideoInfo(
        path=str(path),
        format=fmt,
        size_bytes=path.stat().st_size,
        codec=codec,
        width=width,
        height=height,
        time_base=Fraction(time_base),
        frame_pts=frame_pts,
        frame_gop=frame_gop,
        open_gops=open_gops,
        last_frame_duration=last_duration,
        rotation=rotation,
        audio=audio,
    )
