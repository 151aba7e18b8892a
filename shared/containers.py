"""Which container the styled video goes in, and which containers hold which codecs.

The styled video is H.264. Every audio and subtitle track of the input is stream-copied, so the
output container must hold their codecs: the user's choice is kept where it does, otherwise the
first container that does is used, and the reason is given in one line. Should no container hold
every subtitle track along with the audio, the subtitles it cannot hold are left out, and said so;
audio no container holds is refused. Further video streams are kept where the container holds them.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import av

from shared.errors import InvalidInputError
from shared.probe import TrackInfo, VideoInfo

STYLED_CODEC = "h264"
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
"""Containers written, by file suffix."""
NOT_WRITTEN = frozenset({".webm", ".avi", ".ts", ".m2ts", ".mts", ".mpg", ".mpeg", ".flv", ".ogv", ".wmv", ".3gp"})
"""Video containers that cannot hold the styled H.264 video with its tracks; asking for one picks another."""
PREFERENCE = (".mp4", ".mkv", ".mov")
"""Where the user did not choose: MP4 plays almost everywhere; Matroska holds almost every codec; QuickTime holds PCM with mov_text."""
FALLBACK = (".mkv", ".mp4", ".mov")
"""Where the user's choice does not fit."""
ISO_CODECS = {
    "mp4": frozenset({"h264", "hevc", "av1", "vp9", "mpeg4", "mpeg2video", "mjpeg",
                      "aac", "mp3", "mp2", "ac3", "eac3", "alac", "flac", "opus", "mov_text"}),
    "mov": frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "mjpeg", "prores", "dnxhd",
                      "aac", "mp3", "mp2", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be",
                      "pcm_s32le", "pcm_s32be", "pcm_f32le", "pcm_f32be", "pcm_u8", "mov_text"}),
}
"""Codecs MP4 and QuickTime players expect (FFmpeg writes a few more, such as PCM in MP4, that players reject)."""


KIND_NAMES = {"audio": "audio", "subtitle": "subtitles", "video": "video"}


@functools.lru_cache(maxsize=None)
def ffmpeg_muxes(muxer: str, codec: str) -> bool:
    """Whether the bundled FFmpeg's ``muxer`` accepts a stream of ``codec``."""
    with av.open(io.BytesIO(), "w", format=muxer) as container:
        try:
            container.add_mux_stream(codec)
        except ValueError:
            return False
    return True


SEGMENT_MUXERS = ("mp4", "mov", "nut")
"""Batch segments keep exact timestamps: ISO BMFF where it holds the codec, else NUT (FFmpeg's own container)."""


def segment_muxer(codec: str) -> str | None:
    """The muxer for batch segments of a ``codec`` video stream (None if none holds it)."""
    for muxer in SEGMENT_MUXERS:
        if codec in ISO_CODECS.get(muxer, ()) or (muxer != "mov" and ffmpeg_muxes(muxer, codec)):
            return muxer
    return None


def holds(suffix: str, codec: str) -> bool:
    muxer = MUXERS[suffix]
    return codec in ISO_CODECS[muxer] if muxer in ISO_CODECS else ffmpeg_muxes(muxer, codec)


def family(muxer: str) -> str:
    """ISO BMFF (MP4, QuickTime) or Matroska (and WebM): each says "skip these samples" its own way."""
    return "iso" if muxer in ISO_CODECS or muxer.startswith("mov") else "matroska" if "matroska" in muxer else muxer


def carries(suffix: str, track: TrackInfo, source_format: str) -> bool:
    """Whether ``suffix`` holds ``track`` exactly: its codec, and for trimmed audio its skipped samples (FFmpeg
    writes those exactly only into the family the track came from)."""
    return holds(suffix, track.codec) and (not track.trimmed or family(MUXERS[suffix]) == family(source_format))


@dataclass(frozen=True)
class ContainerChoice:
    suffix: str
    tracks: list[TrackInfo]
    """The tracks the output carries: every audio track, and the subtitle tracks and further video streams it can hold with them."""
    notes: list[str] = field(default_factory=list)
    """One line each: why the container differs from the one asked for, which streams are dropped."""


def output_container(info: VideoInfo, requested: str | None = None) -> ContainerChoice:
    """The container for the styled video of ``info``; ``requested`` is the suffix the user asked for, if any."""
    if segment_muxer(info.codec) is None:
        raise InvalidInputError(f"{info.path}: {info.codec} video cannot be cut into batches (no container here holds it)")
    audio = [track for track in info.tracks if track.kind == "audio"]
    wanted = [track for track in info.tracks if track.kind != "video"]
    requested = requested.lower() if requested else None
    candidates = [suffix for suffix in ((requested, *FALLBACK) if requested else PREFERENCE) if suffix in MUXERS]

    def fitting(tracks: list[TrackInfo]) -> list[str]:
        return [suffix for suffix in candidates if all(carries(suffix, t, info.format) for t in tracks)]

    choices = fitting(wanted) or fitting(audio)
    if not choices:
        raise InvalidInputError(f"{info.path}: no output container holds all of its audio tracks ({_codecs(audio)})")
    suffix = choices[0]
    notes = []
    if requested and suffix != requested:
        unfit = [f"{STYLED_CODEC} video"] if requested not in MUXERS else [t for t in wanted if not carries(requested, t, info.format)]
        notes.append(f"{requested} cannot hold {_codecs(unfit)}; writing {suffix} instead")
    kept = [t for t in info.tracks if t.kind == "audio" or carries(suffix, t, info.format)]
    dropped = [t for t in info.tracks if t not in kept]
    if dropped:
        notes.append(f"{suffix} cannot hold {_streams(dropped)}; left out")
    extra_video = [t for t in kept if t.kind == "video"]
    if extra_video:
        notes.append(f"only the primary video stream (stream {info.video_index}) is styled; {_streams(extra_video)} copied unchanged")
    if info.ignored:
        notes.append(f"not carried: {', '.join(info.ignored)}")
    return ContainerChoice(suffix=suffix, tracks=kept, notes=notes)


def _codecs(items: Sequence) -> str:
    names = [item if isinstance(item, str) else f"{item.codec} {KIND_NAMES[item.kind]}{' with skipped samples' if item.trimmed else ''}"
             for item in items]
    return ", ".join(dict.fromkeys(names)) or "no tracks"


def _streams(tracks: Sequence[TrackInfo]) -> str:
    return ", ".join(f"stream {t.index} ({t.codec} {KIND_NAMES[t.kind]})" for t in tracks)
