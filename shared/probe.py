"""Probe a video: its frames' exact timestamps, its GOP structure, its other tracks, chapters and tags, colour
and display matrix.

Probing reads packets only (no decoding, except one frame to prove the stream decodes and to
read its display matrix), so it costs a small fraction of a decode even for long videos. Whatever the
bundled FFmpeg cannot read is refused here, with a one-line reason, before any work is done.

The limits come first, each as soon as it can be known: attachments from their element headers before
FFmpeg opens the file, width, height and the indexed frame count from the container's headers before
anything is decoded, and frame count and duration while the packets are read, which stops as soon as
either passes its limit.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import struct
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
from av.sidedata.sidedata import Type as SideDataType

from shared import vp9
from shared.attachments import attachment_bytes
from shared.colour import CHROMA_420, CHROMA_422, CHROMA_444, RANGE_FULL, Colour
from shared.config import Settings
from shared.decode import SEGMENT_DEMUXERS, UPLOAD_DEMUXERS, open_input, tolerant_frames
from shared.errors import InvalidInputError

COPIED_KINDS = ("audio", "subtitle", "video")
"""Streams besides the styled one that travel to the output by stream copy."""
VOP_START = b"\x00\x00\x01\xb6"
PACKED_CHECK = 64
"""Packets searched for a packed B-frame (two MPEG-4 pictures in one packet); encoders pack from the first GOP."""
ORDER_CHECK = 16
"""Packets of an AVI decoded to see whether its frames come out in time order: B-frames reorder within a few frames."""
CODED_MARGIN = 128
"""Decoders allocate a frame at its coded size: the shown size rounded up to whole macroblocks, coding tree units or
superblocks (up to 128 pixels), and its rows to the stride alignment."""
AUXILIARY = av.stream.Disposition.dependent | av.stream.Disposition.still_image
"""Dispositions of a video stream that is not the picture a player shows."""
CARRIED_TAGS = frozenset({
    "title", "language", "creation_time", "date", "year", "date_released", "date_recorded", "artist", "album_artist", "album",
    "author", "composer", "performer", "publisher", "comment", "description", "synopsis", "copyright", "genre", "keywords",
    "location", "show", "episode_id", "episode_sort", "season_number", "network", "grouping", "lyrics",
})
"""Descriptive tags of the whole file carried to the output (compared case-insensitively); not the encoder's,
the brands' or the handlers', which would describe the input's making, not the output's."""
STREAM_TAGS = ("language", "title")
"""Tags of the styled video stream carried to its styled version."""
MAX_CHAPTERS = 500
MAX_TAG_CHARS = 1000
MAX_DESCRIPTION_BYTES = 32 * 1024
"""Bounds on what is carried from a file's tags and chapters: they travel in the job's plan, which the orchestration's
history holds and reloads at every replay on Azure; more is left out and said."""
NOT_ACCEPTED = "not in a container accepted here: MP4/MOV, Matroska/WebM, AVI or MPEG-TS"
"""What FFmpeg's "Invalid argument" on opening means under the demuxer allowlist: it found another format."""


@dataclass(frozen=True)
class TrackInfo:
    """A stream carried to the output unchanged: an audio or subtitle track, or a further video stream."""

    index: int
    kind: str
    codec: str
    language: str = ""
    sample_rate: int = 0
    channels: int = 0
    duration_s: float = 0.0
    trimmed: bool = False
    """Audio whose container says to skip samples at its start (encoder priming) or end (padding): only a
    container of the source's own family carries that exactly."""


@dataclass(frozen=True)
class Chapter:
    """A chapter, in the video's own timeline (``start`` and ``end`` in ``time_base`` units, a fraction such as "1/1000")."""

    start: int
    end: int
    time_base: str
    title: str = ""


@dataclass(frozen=True)
class VideoInfo:
    """What planning, splitting and stitching need to know about a video.

    ``frame_pts`` lists every shown frame's presentation timestamp (in ``time_base`` units) in
    display order (frames an edit list hides and VP9's hidden frames are not shown, though their packets
    are cut with the rest); ``frame_gop`` gives, for each of those frames, the GOP (run of packets from one keyframe
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
    video_index: int = 0
    colour: Colour = Colour(0, 2, 2, 2)
    tracks: list[TrackInfo] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    """Streams not carried to the output (data, attachments, cover images), frames before the first keyframe, and chapters
    or tags over the bounds, described for the report."""
    display_matrix: tuple[int, ...] = ()
    """The styled stream's display matrix (FFmpeg's nine 16.16 and 2.30 fixed-point numbers: rotation and mirroring); () for none."""
    chapters: list[Chapter] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    """The file's descriptive tags (:data:`CARRIED_TAGS`)."""
    video_tags: dict[str, str] = field(default_factory=dict)
    """The styled stream's language and title."""

    @property
    def audio(self) -> list[TrackInfo]:
        return [track for track in self.tracks if track.kind == "audio"]

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

    @property
    def end_pts(self) -> int:
        """Timestamp just after the last shown frame."""
        return self.frame_pts[-1] + self.last_frame_duration

    def summary(self) -> dict:
        """A small JSON-ready description (without the per-frame lists)."""
        data = asdict(self)
        for bulky in ("frame_pts", "frame_gop", "open_gops"):
            data.pop(bulky)
        data["time_base"] = str(self.time_base)
        data["colour"] = self.colour.names()
        data.update(frame_count=self.frame_count, duration_s=round(self.duration_s, 6), fps=round(self.fps, 4))
        return data


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a directory, not a video file")
    if not os.access(path, os.R_OK):
        raise InvalidInputError(f"{path}: not readable (permission denied)")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: empty file (0 bytes)")


def _open(path: Path, limits: Settings, header_only: bool = False) -> av.container.InputContainer:
    try:
        return open_input(path, UPLOAD_DEMUXERS, max_pixels=max_decoded_pixels(limits), header_only=header_only,
                          metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        reason = NOT_ACCEPTED if getattr(exc, "errno", None) == errno.EINVAL else _reason(exc)
        raise InvalidInputError(f"{path}: not a readable video file ({reason})") from None


def max_decoded_pixels(limits: Settings) -> int:
    """The most pixels a decoder may allocate a frame of, for frames within ``limits``."""
    return (limits.max_width + CODED_MARGIN) * (limits.max_height + CODED_MARGIN)


def _check_headers(path: Path, limits: Settings) -> None:
    """Refuse, from headers alone, attachments, a size or an indexed frame count over ``limits``."""
    attached = attachment_bytes(path)
    if attached > limits.max_attachment_bytes:
        raise InvalidInputError(f"{path.name}: attachments of {attached / 1e6:.1f} MB over the limit of "
                                f"{limits.max_attachment_bytes / 1e6:.1f} MB")
    with _open(path, limits, header_only=True) as container:
        stream = styled_stream(container)
        if stream is None or stream.codec_context is None:
            return  # refused with its reason once opened for probing
        _check_size(path, stream.codec_context.width, stream.codec_context.height, limits)
        indexed = _indexed_frames(container, stream)
        if indexed > limits.max_frames:
            raise InvalidInputError(f"{path.name}: {indexed} frames over the limit of {limits.max_frames}")


def _indexed_frames(container, stream) -> int:
    """The frame count the container's index gives (0: none). AVI's index lists dropped frames FFmpeg never returns."""
    return stream.frames if container.format.name != "avi" else 0


def _check_size(path: Path, width: int, height: int, limits: Settings) -> None:
    """Refuse frames wider or taller than ``limits`` (as coded: rotation does not count)."""
    if width > limits.max_width or height > limits.max_height:
        raise InvalidInputError(f"{path.name}: resolution {width}x{height} over the limit of {limits.max_width}x{limits.max_height}")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0].strip()


def codec_name(stream) -> str:
    """The codec's own name ("av1"), not the name of the decoder FFmpeg picked for it ("libdav1d")."""
    return stream.codec_context.codec.canonical_name


def styled_stream(container) -> av.video.stream.VideoStream | None:
    """The video stream to style: the one a player shows. Of the streams that are not cover images, the first that is
    not auxiliary (a depth map, alpha or second view marked as depending on another stream, or a still image),
    those with the default disposition before the others; an auxiliary one only where there is nothing else."""
    pictures = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    return min(pictures, key=lambda s: (bool(s.disposition & AUXILIARY), not s.disposition & av.stream.Disposition.default),
               default=None)


def _layers_not_styled(stream) -> list[str]:
    """What styling the base layer of ``stream`` (the one the decoder shows) leaves out: MV-HEVC's second view
    (Apple's spatial video) or an HEVC alpha layer, which the container declares (an lhvC box)."""
    if stream.disposition & av.stream.Disposition.multilayer:
        return [f"the second view or alpha layer of stream {stream.index} (multi-layer HEVC: its base view, "
                "the one 2D players show, is styled)"]
    return []


def probe(path: str | os.PathLike[str], limits: Settings = Settings()) -> VideoInfo:
    """Describe ``path`` or raise :class:`InvalidInputError` with a one-line reason; over ``limits``, before the work they bound."""
    path = Path(path)
    _check_file(path)
    _check_headers(path, limits)
    with _open(path, limits) as container:
        stream = styled_stream(container)
        if stream is None:
            kinds = sorted({s.type for s in container.streams} | ({"cover image"} if container.streams.video else set())) or ["no streams"]
            raise InvalidInputError(f"{path}: has no video stream (found: {', '.join(kinds)})")
        if stream.codec_context is None:
            raise InvalidInputError(f"{path}: video stream {stream.index} uses a codec the bundled FFmpeg cannot decode")
        if stream.time_base is None:
            raise InvalidInputError(f"{path}: video stream has no timing information")
        _check_size(path, stream.codec_context.width, stream.codec_context.height, limits)  # what decoding the first frames said
        tracks, ignored = _other_streams(path, container, stream)
        ignored = [*_layers_not_styled(stream), *ignored]
        chapters, metadata, video_tags = _descriptions(container, stream, ignored)
        audio = [container.streams[t.index] for t in tracks if t.kind == "audio"]
        packets, empty, trimmed = _read_packets(path, container, stream, audio, limits)
        tracks = [replace(t, trimmed=t.index in trimmed) for t in tracks]
        if not any(not discard for *_, discard in packets):
            raise InvalidInputError(f"{path}: video stream has zero frames")
        indexed = _indexed_frames(container, stream)
        if indexed and len(packets) + empty < indexed and _ends_early(stream, packets):
            raise InvalidInputError(f"{path}: truncated: index lists {indexed} frames but only {len(packets) + empty} are present")
        rotation, display = _first_frame(path, stream.index, [t.index for t in tracks], limits)
        ctx = stream.codec_context
        info = _describe(
            path, container.format.name, codec_name(stream), ctx.width, ctx.height, stream.time_base, packets, rotation,
            video_index=stream.index, colour=stream_colour(ctx), tracks=tracks, ignored=ignored, display_matrix=display,
            chapters=chapters, metadata=metadata, video_tags=video_tags, limits=limits,
        )
    if info.duration_s > limits.max_duration_s:  # with its last frame's duration, which reading the packets did not count
        raise InvalidInputError(f"{path.name}: duration {info.duration_s:.1f} s over the limit of {limits.max_duration_s:.0f} s")
    return info


def _other_streams(path: Path, container, video) -> tuple[list[TrackInfo], list[str]]:
    tracks, ignored = [], []
    has_chapters = None
    for s in container.streams:
        if s.discard == av.stream.Discard.all and has_chapters is None:
            has_chapters = bool(container.chapters())
        if s.index == video.index or s.discard == av.stream.Discard.all and has_chapters:
            continue  # the styled stream, or QuickTime's chapter track, which the demuxer reads as the chapters
        cover = s.type == "video" and bool(s.disposition & av.stream.Disposition.attached_pic)
        if s.type not in COPIED_KINDS or cover:
            ignored.append(f"stream {s.index} ({'cover image' if cover else s.type})")
            continue
        if s.codec_context is None and s.type == "subtitle":
            ignored.append(f"stream {s.index} (subtitles in a format the bundled FFmpeg does not know)")
            continue
        if s.codec_context is None and s.type == "audio":
            ignored.append(f"stream {s.index} (audio in a codec the bundled FFmpeg does not know)")
            continue
        if s.codec_context is None:
            raise InvalidInputError(f"{path}: {s.type} stream {s.index} uses a codec the bundled FFmpeg does not know")
        ctx = s.codec_context
        tracks.append(TrackInfo(
            index=s.index,
            kind=s.type,
            codec=codec_name(s),
            language=s.metadata.get("language", ""),
            sample_rate=getattr(ctx, "sample_rate", 0) or 0,
            channels=getattr(ctx, "channels", 0) or 0,
            duration_s=float(s.duration * s.time_base) if s.duration and s.time_base else 0.0,
        ))
    return tracks, ignored


def _descriptions(container, video, ignored: list[str]) -> tuple[list[Chapter], dict[str, str], dict[str, str]]:
    """The file's descriptive tags, the styled stream's tags and the chapters (those with a usable time span), within
    :data:`MAX_TAG_CHARS` each, :data:`MAX_CHAPTERS` and :data:`MAX_DESCRIPTION_BYTES` in all (tags first); what is
    over them is added to ``ignored``."""
    video_tags = _short_tags(video.metadata, STREAM_TAGS, "the video stream's", ignored)
    room = MAX_DESCRIPTION_BYTES - _json_bytes(video_tags)
    metadata: dict[str, str] = {}
    sized = [(_json_bytes({key: value}), key, value)
             for key, value in _short_tags(container.metadata, CARRIED_TAGS, "the file's", ignored).items()]
    for size, key, value in sorted(sized):  # the shortest first: most kept
        if size > room:
            ignored.append(f"the file's tag {key} (over {MAX_DESCRIPTION_BYTES // 1024} KB of tags)")
            continue
        room -= size
        metadata[key] = value
    found = [c for c in container.chapters() if c["time_base"] > 0 and 0 <= c["start"] <= c["end"]]
    chapters: list[Chapter] = []
    for c in found[:MAX_CHAPTERS]:
        chapter = Chapter(c["start"], c["end"], str(c["time_base"]), _bounded(c["metadata"].get("title", "")))
        room -= _json_bytes(asdict(chapter))
        if room < 0:
            break
        chapters.append(chapter)
    if len(chapters) < len(found):
        ignored.append(f"{len(found) - len(chapters)} chapters past the first {len(chapters)} (at most {MAX_CHAPTERS}, and "
                       f"{MAX_DESCRIPTION_BYTES // 1024} KB of chapters and tags)")
    return chapters, metadata, video_tags


def _json_bytes(value) -> int:
    """Bytes ``value`` takes as JSON (ASCII-escaped, as the job's plan is stored)."""
    return len(json.dumps(value))


def _short_tags(tags: dict[str, str], carried: Collection[str], whose: str, ignored: list[str]) -> dict[str, str]:
    """The ``carried`` tags of ``tags`` (names compared case-insensitively) within :data:`MAX_TAG_CHARS`; the longer ones are said in ``ignored``."""
    wanted = {key: value for key, value in tags.items() if key.lower() in carried}
    long = sorted(key for key, value in wanted.items() if len(value) > MAX_TAG_CHARS)
    if long:
        ignored.append(f"{whose} tags over {MAX_TAG_CHARS} characters ({', '.join(long)})")
    return {key: value for key, value in wanted.items() if key not in long}


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TAG_CHARS else text[: MAX_TAG_CHARS - 3] + "..."


def stream_colour(ctx) -> Colour:
    """The colour a decoder context reports (yuvj pixel formats imply full range)."""
    pix_fmt = ctx.format
    bits = max((component.bits for component in pix_fmt.components), default=8) if pix_fmt else 8
    full = pix_fmt is not None and pix_fmt.name.startswith("yuvj")
    return Colour(range=RANGE_FULL if full else ctx.color_range, primaries=ctx.color_primaries, transfer=ctx.color_trc,
                  matrix=ctx.colorspace, bits=bits, chroma=_chroma(pix_fmt.name) if pix_fmt else CHROMA_420)


SUBSAMPLING = {(1, 1): CHROMA_444, (2, 1): CHROMA_422, (2, 2): CHROMA_420, (4, 1): "411", (1, 2): "440", (4, 4): "410"}
"""Chroma format (J:a:b digits) by the chroma planes' horizontal and vertical subsampling."""


def _chroma(pix_fmt: str) -> str:
    """The chroma format of ``pix_fmt``, from its planes' sizes; grey (no chroma planes) counts as 4:2:0."""
    luma, *chroma = av.VideoFormat(pix_fmt, 64, 64).components
    if not chroma:
        return CHROMA_420
    return SUBSAMPLING.get((luma.width // chroma[0].width, luma.height // chroma[0].height), CHROMA_420)


def _read_packets(path: Path, container, stream, audio: list, limits: Settings) -> tuple[list[tuple[int, int, bool, bool]], int, set[int]]:
    """(pts, duration, keyframe, hidden: by an edit list, or a frame only referenced) of every video packet, in decode order; how many
    packets were empty (AVI's dropped-frame markers: no frame, the previous one stays on screen); and
    the indices of the ``audio`` streams whose packets say to skip samples. Stops, refusing the video, at
    the first shown frame past ``limits.max_frames`` or ``limits.max_duration_s`` from the earliest one."""
    packets: list[tuple[int, int, bool, bool]] = []
    empty = shown = 0
    trimmed: set[int] = set()
    longest = int(limits.max_duration_s / stream.time_base)
    earliest = latest = None
    try:
        for packet in container.demux([stream, *audio]):
            _refuse_encrypted(path, packet)  # every packet: a file may start in the clear (a DRM packager's "clear lead")
            if packet.stream.index != stream.index:
                if packet.size and packet.has_sidedata("skip_samples"):
                    trimmed.add(packet.stream.index)
                continue
            if packet.size == 0:
                empty += packet.dts is not None
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                raise InvalidInputError(f"{path}: video packets carry no timestamps")
            if len(packets) < PACKED_CHECK and stream.codec_context.codec.canonical_name == "mpeg4" and bytes(packet).count(VOP_START) > 1:
                raise InvalidInputError(f"{path}: MPEG-4 video with packed B-frames (DivX/Xvid style) has no usable timestamps; "
                                        "unpack it first: ffmpeg -i IN -c copy -bsf:v mpeg4_unpack_bframes OUT.avi")
            hidden = bool(packet.is_discard) or hides_frame(packet)
            packets.append((pts, packet.duration or 0, bool(packet.is_keyframe), hidden))
            if hidden:
                continue
            shown += 1
            earliest, latest = (pts, pts) if earliest is None else (min(earliest, pts), max(latest, pts))
            if shown > limits.max_frames:
                raise InvalidInputError(f"{path.name}: more than the limit of {limits.max_frames} frames")
            if latest - earliest > longest:
                raise InvalidInputError(f"{path.name}: longer than the limit of {limits.max_duration_s:.0f} s")
    except av.FFmpegError as exc:
        raise InvalidInputError(f"{path}: damaged or truncated video ({_reason(exc)})") from None
    return packets, empty, trimmed


def _ends_early(stream, packets: list[tuple[int, int, bool, bool]]) -> bool:
    """Whether the shown frames end over a frame before the stream's duration says: the index names samples that
    are not there. An edit list leaves out of the packets the samples before its start's keyframe and after its end,
    which the index counts too; the duration is the edit's."""
    if not stream.duration:
        return True
    shown = [(pts, duration) for pts, duration, _, discard in packets if not discard]
    last, duration = max(shown) if shown else (0, 0)
    step = duration or max((d for _, d in shown), default=0)
    return last + 2 * step < (stream.start_time or 0) + stream.duration


def _refuse_encrypted(path: Path, packet: av.Packet) -> None:
    """Refuse a packet that carries encryption (CENC) data: without the key it decodes to noise."""
    if packet.has_sidedata("encryption_info"):
        raise InvalidInputError(f"{path}: {packet.stream.type} stream {packet.stream.index} is encrypted (CENC/DRM); "
                                "only unencrypted video can be styled")


def _first_frame(path: Path, index: int, carried: list[int], limits: Settings) -> tuple[int, tuple[int, ...]]:
    """Decode the first frame of stream ``index``: proves it decodes, and gives its rotation and display matrix. A frame
    larger than the limits allow (the bitstream may say a size the headers do not) is not decoded. The packets read up
    to it, of that stream and of the ``carried`` ones, must not be encrypted: without the key they decode to noise."""
    try:
        with _open(path, limits) as container:
            stream = container.streams[index]
            stream.codec_context.options = {"max_pixels": str(max_decoded_pixels(limits))}
            for packet in container.demux([stream, *(container.streams[i] for i in carried)]):
                _refuse_encrypted(path, packet)
                if packet.stream.index != index:
                    continue
                for frame in stream.decode(packet):
                    return int(frame.rotation) % 360, display_matrix(frame) or ()
            for frame in stream.decode(None):  # a stream of fewer frames than the decoder holds back
                return int(frame.rotation) % 360, display_matrix(frame) or ()
    except av.FFmpegError as exc:
        raise InvalidInputError(f"{path}: video does not decode ({_reason(exc)})") from None
    raise InvalidInputError(f"{path}: video stream has no decodable frame")


def display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The display matrix a decoded frame carries (rotation and mirroring), as FFmpeg's nine int32s; None for none.

    PyAV cannot list a frame's side data when it holds a kind PyAV does not know (MV-HEVC's view id): the matrix is
    then rebuilt from the rotation, which PyAV reads directly (a mirror, which no such file was seen with, is lost)."""
    try:
        side_data = frame.side_data.get(SideDataType.DISPLAYMATRIX)
    except ValueError:
        return _rotation_matrix(frame.rotation) if frame.rotation else None
    return struct.unpack("=9i", bytes(side_data)) if side_data is not None else None


def _rotation_matrix(degrees: float) -> tuple[int, ...]:
    """FFmpeg's display matrix of a counter-clockwise rotation by ``degrees`` (as av_display_rotation_set writes it)."""
    radians = math.radians(degrees)
    cos, sin = (int(value * (1 << 16)) for value in (math.cos(radians), math.sin(radians)))
    return (cos, -sin, 0, sin, cos, 0, 0, 0, 1 << 30)


def _first_gop(container, stream) -> Iterator[av.Packet]:
    """The packets of ``stream`` up to its second keyframe (its first GOP, with what comes before the first keyframe)."""
    keyframes = 0
    for packet in container.demux(stream):
        keyframes += packet.is_keyframe
        if keyframes > 1:
            return
        yield packet


def _shown_leading(path: Path, index: int, limits: Settings, key_pts: int) -> set[int]:
    """Timestamps of the frames FFmpeg shows before the one at ``key_pts`` (the first keyframe's), decoding from the start
    to the end of the first GOP at most: leading pictures that reference frames before the stream's start (HEVC's RASL)
    are not shown, others may be."""
    shown: set[int] = set()
    with _open(path, limits) as container:
        stream = container.streams[index]
        stream.codec_context.options = {"max_pixels": str(max_decoded_pixels(limits))}
        for packet in _first_gop(container, stream):
            try:
                frames = stream.decode(packet)
            except av.FFmpegError:
                continue
            for frame in frames:
                if frame.pts is None or frame.pts >= key_pts:
                    return shown
                shown.add(frame.pts)
    return shown


def _check_display_order(path: Path, index: int, limits: Settings) -> None:
    """AVI holds no presentation times: FFmpeg gives each packet its decode-order time, and a stream with B-frames then
    decodes into frames whose times go back. Decoding its first frames (the first GOP, at most :data:`ORDER_CHECK`
    packets) tells, before any work is done."""
    with _open(path, limits) as container:
        stream = container.streams[index]
        stream.codec_context.options = {"max_pixels": str(max_decoded_pixels(limits))}
        try:
            for _ in tolerant_frames(container, stream, packets=itertools.islice(_first_gop(container, stream), ORDER_CHECK)):
                pass
        except InvalidInputError:
            raise InvalidInputError(f"{path.name}: B-frames in AVI, which holds no presentation times: FFmpeg decodes its "
                                    "frames with times out of display order, so they cannot keep their timing") from None


def _without_unshown_start(path: Path, packets: list, limits: Settings, index: int) -> tuple[list, int]:
    """``packets`` from the first keyframe on (FFmpeg shows no frame before it: a stream cut mid-GOP, pre-roll), its
    leading pictures that FFmpeg does not show marked hidden; and how many frames that leaves out."""
    first = next((i for i, (_, _, key, _) in enumerate(packets) if key), len(packets))
    if first == len(packets):
        raise InvalidInputError(f"{path}: video has no keyframe")
    unshown = sum(not discard for *_, discard in packets[:first])
    packets = packets[first:]
    key_pts = packets[0][0]
    gop_end = next((i for i, (_, _, key, _) in enumerate(packets) if key and i), len(packets))
    leading = [i for i, (pts, _, _, discard) in enumerate(packets[:gop_end]) if pts < key_pts and not discard]
    if leading:
        shown = _shown_leading(path, index, limits, key_pts)
        hidden = [i for i in leading if packets[i][0] not in shown]
        packets = [(pts, duration, key, discard or i in hidden) for i, (pts, duration, key, discard) in enumerate(packets)]
        unshown += len(hidden)
    return packets, unshown


def _describe(path, fmt, codec, width, height, time_base, packets, rotation, ignored=(), limits: Settings = Settings(),
              **details) -> VideoInfo:
    if fmt == "avi":
        _check_display_order(path, details.get("video_index", 0), limits)
    packets, unshown = _without_unshown_start(path, packets, limits, details.get("video_index", 0))
    if unshown:
        ignored = [*ignored, f"{unshown} video frames before the first keyframe (FFmpeg does not show them either)"]
    if not any(not discard for *_, discard in packets):
        raise InvalidInputError(f"{path}: video stream has zero frames")
    gop_of_packet: list[int] = []
    keyframe_pts: list[int] = []
    for pts, _, key, _ in packets:
        if key:
            keyframe_pts.append(pts)
        gop_of_packet.append(len(keyframe_pts) - 1)
    shown = sorted((i for i, packet in enumerate(packets) if not packet[3]), key=lambda i: packets[i][0])
    frame_pts = [packets[i][0] for i in shown]
    if len(set(frame_pts)) != len(frame_pts):
        raise InvalidInputError(f"{path}: video has frames with duplicate timestamps")
    frame_gop = [gop_of_packet[i] for i in shown]
    open_gops = sorted({gop_of_packet[i] for i, (pts, *_) in enumerate(packets) if pts < keyframe_pts[gop_of_packet[i]]})
    last_duration = packets[shown[-1]][1] or (frame_pts[-1] - frame_pts[-2] if len(frame_pts) > 1 else 1)
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
        ignored=list(ignored),
        **details,
    )


def shown_at(packet: av.Packet) -> Fraction | None:
    """When the frame a video packet holds is shown (seconds); None for a packet that shows no frame."""
    if packet.size == 0 or packet.pts is None or packet.is_discard or hides_frame(packet):
        return None
    return packet.pts * packet.time_base


def hides_frame(packet: av.Packet) -> bool:
    """Whether ``packet`` holds only frames decoded for reference and never shown: FFmpeg shows no frame for it
    (VP9's hidden frames stored apart, :mod:`shared.vp9`)."""
    return codec_name(packet.stream) == "vp9" and not vp9.shows_frame(memoryview(packet))


def in_span(t: Fraction, start: Fraction, end: Fraction | None) -> bool:
    """Whether a frame shown at ``t`` belongs to the span ``start <= t < end`` (a batch's; ``end`` None: to the end)."""
    return t >= start and (end is None or t < end)


def frame_times(path: str | os.PathLike[str], start: Fraction, end: Fraction | None) -> list[Fraction]:
    """Times (seconds), in display order, of the frames of the first video stream of ``path`` shown at ``start <= t < end``, from packets alone."""
    with open_input(path, SEGMENT_DEMUXERS) as container:
        shown = (shown_at(packet) for packet in container.demux(container.streams.video[0]))
        return sorted(t for t in shown if t is not None and in_span(t, start, end))
