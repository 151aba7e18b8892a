"""Split a video into batch segments by stream copy, and keep its audio aside.

One pass over the input's packets; nothing is decoded or re-encoded. Segments are MP4 files that
keep the input's exact timestamps, so the scorer can pick its frames by timestamp.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from shared.atomic import atomic_path
from shared.errors import InvalidInputError
from shared.plan import Batch
from shared.probe import VideoInfo

SEGMENT_SUFFIX = ".mp4"
MP4_FAMILY = frozenset({".mp4", ".m4v", ".mov", ".m4a"})
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "flac", "opus"})


@dataclass(frozen=True)
class SplitResult:
    segments: list[Path]
    audio: Path | None


def segment_path(directory: Path, batch: Batch) -> Path:
    return directory / f"{batch.name}{SEGMENT_SUFFIX}"


def audio_suffix(codecs: Sequence[str]) -> str:
    """MP4 where every audio codec fits in it, Matroska otherwise."""
    return ".m4a" if all(codec in MP4_AUDIO_CODECS for codec in codecs) else ".mka"


def muxer_options(path: Path, time_base: Fraction) -> dict[str, str]:
    """Exact timestamps in MP4: its edit list (which places a segment that starts mid-video) is
    written in the movie timescale, 1000 by default, and would round the start by up to half a
    millisecond; use the track's own timescale instead."""
    if path.suffix.lower() in MP4_FAMILY:
        return {"movie_timescale": str(time_base.denominator)}
    return {}


@contextlib.contextmanager
def copy_muxer(final: Path, templates: Sequence, options: dict[str, str] | None = None) -> Iterator[tuple]:
    """Open ``final`` (atomically) for stream copy of ``templates``; yields (container, output streams in template order)."""
    options = {**muxer_options(final, Fraction(templates[0].time_base)), **(options or {})}
    with atomic_path(final) as tmp, av.open(str(tmp), "w", options=options) as container:
        streams = []
        for template in templates:
            stream = container.add_stream_from_template(template)
            stream.time_base = template.time_base
            streams.append(stream)
        yield container, streams


def split_video(info: VideoInfo, batches: list[Batch], out_dir: str | os.PathLike[str]) -> SplitResult:
    """Write ``batch-NNNNN.mp4`` for every batch and the audio streams to ``audio.m4a``/``.mka``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    segments = [segment_path(out_dir, batch) for batch in batches]
    audio_path = out_dir / f"audio{audio_suffix([a.codec for a in info.audio])}" if info.audio else None
    try:
        with av.open(info.path, metadata_errors="ignore") as source, contextlib.ExitStack() as stack:
            video = source.streams.video[0]
            audio_streams = list(source.streams.audio)
            if audio_path:
                audio_out, audio_targets = stack.enter_context(copy_muxer(audio_path, audio_streams))
                audio_map = {source_stream.index: target for source_stream, target in zip(audio_streams, audio_targets)}
            open_segments: dict[int, tuple[contextlib.ExitStack, object, object]] = {}
            next_batch, gop = 0, -1
            for packet in source.demux([video, *audio_streams]):
                if packet.size == 0:
                    continue
                if packet.stream.type == "audio":
                    packet.stream = audio_map[packet.stream.index]
                    audio_out.mux(packet)
                    continue
                if packet.is_keyframe:
                    gop += 1
                    for index in [i for i in open_segments if batches[i].last_gop < gop]:
                        open_segments.pop(index)[0].close()
                    while next_batch < len(batches) and batches[next_batch].first_gop <= gop:
                        segment_stack = stack.enter_context(contextlib.ExitStack())
                        container, (stream,) = segment_stack.enter_context(copy_muxer(segments[next_batch], [video]))
                        open_segments[next_batch] = (segment_stack, container, stream)
                        next_batch += 1
                for _, container, stream in open_segments.values():
                    packet.stream = stream
                    container.mux(packet)
            for segment_stack, _, _ in open_segments.values():
                segment_stack.close()
    except av.FFmpegError as exc:
        raise InvalidInputError(f"{info.path}: damaged video, cannot split ({exc})") from None
    missing = [path.name for path in segments if not path.exists()]
    if missing:
        raise InvalidInputError(f"{info.path}: no packets found for {', '.join(missing)}")
    return SplitResult(segments=segments, audio=audio_path)
