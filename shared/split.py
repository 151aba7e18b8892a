"""Split a video into batch segments by stream copy, and set its other tracks aside.

One pass over the input's packets; nothing is decoded or re-encoded. Segments keep the input's
exact timestamps, so the scorer can pick its frames by timestamp. The other tracks (audio,
subtitles, further video streams) go, by stream copy too, into one file of the output's own
container, which therefore holds their codecs.
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
from shared.containers import MUXERS, ContainerChoice, segment_muxer
from shared.decode import UPLOAD_DEMUXERS, open_input
from shared.errors import InvalidInputError
from shared.plan import Batch
from shared.probe import VideoInfo

SEGMENT_SUFFIX = ".mp4"
"""Segments are named .mp4 whatever their muxer (QuickTime or NUT for codecs MP4 does not hold): readers probe the content."""
ISO_MUXERS = frozenset({"mp4", "mov", "ipod"})
COPIED_METADATA = ("language", "title")


@dataclass(frozen=True)
class SplitResult:
    segments: list[Path]
    tracks: Path | None
    """The other tracks, in the output's container; None when the output carries none."""


def segment_path(directory: Path, batch: Batch) -> Path:
    return directory / f"{batch.name}{SEGMENT_SUFFIX}"


def muxer_options(muxer: str, time_base: Fraction) -> dict[str, str]:
    """Exact timestamps in MP4: its edit list (which places a segment that starts mid-video) is
    written in the movie timescale, 1000 by default, and would round the start by up to half a
    millisecond; use the track's own timescale instead."""
    if muxer in ISO_MUXERS:
        return {"movie_timescale": str(time_base.denominator)}
    return {}


def muxer_for(path: Path) -> str:
    return MUXERS[path.suffix.lower()]


def copy_stream(container, template):
    """Add a stream-copy of ``template`` to ``container``, with its time base, language, title and disposition.

    The codec comes from the template's parameters, not from the decoder FFmpeg chose for it
    (an AV1 stream's decoder is libdav1d, which is no codec a muxer knows).
    """
    stream = container.add_stream_from_template(template, opaque=True)
    stream.time_base = template.time_base
    stream.disposition = template.disposition
    stream.metadata.update({key: value for key, value in template.metadata.items() if key.lower() in COPIED_METADATA})
    return stream


@contextlib.contextmanager
def copy_muxer(final: Path, templates: Sequence, muxer: str, options: dict[str, str] | None = None) -> Iterator[tuple]:
    """Open ``final`` (atomically) for stream copy of ``templates``; yields (container, output streams in template order)."""
    options = {**muxer_options(muxer, Fraction(templates[0].time_base)), **(options or {})}
    with atomic_path(final) as tmp, av.open(str(tmp), "w", format=muxer, options=options) as container:
        yield container, [copy_stream(container, template) for template in templates]


def split_video(info: VideoInfo, batches: list[Batch], out_dir: str | os.PathLike[str], output: ContainerChoice) -> SplitResult:
    """Write ``batch-NNNNN.mp4`` for every batch and the tracks ``output`` carries to ``tracks<suffix>``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    segments = [segment_path(out_dir, batch) for batch in batches]
    segment_format = segment_muxer(info.codec)
    tracks_path = out_dir / f"tracks{output.suffix}" if output.tracks else None
    try:
        with open_input(info.path, UPLOAD_DEMUXERS, metadata_errors="ignore") as source, contextlib.ExitStack() as stack:
            video = source.streams[info.video_index]
            others = [source.streams[track.index] for track in output.tracks]
            if tracks_path:
                tracks_out, targets = stack.enter_context(copy_muxer(tracks_path, others, muxer_for(tracks_path)))
                track_map = {source_stream.index: target for source_stream, target in zip(others, targets)}
            open_segments: dict[int, tuple[contextlib.ExitStack, object, object]] = {}
            next_batch, gop = 0, -1
            for packet in source.demux([video, *others]):
                if packet.size == 0 or packet.dts is None and packet.pts is None:
                    continue
                if packet.stream.index != video.index:
                    packet.stream = track_map[packet.stream.index]
                    tracks_out.mux(packet)
                    continue
                if packet.is_keyframe:
                    gop += 1
                    for index in [i for i in open_segments if batches[i].last_gop < gop]:
                        open_segments.pop(index)[0].close()
                    while next_batch < len(batches) and batches[next_batch].first_gop <= gop:
                        segment_stack = stack.enter_context(contextlib.ExitStack())
                        container, (stream,) = segment_stack.enter_context(copy_muxer(segments[next_batch], [video], segment_format))
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
    return SplitResult(segments=segments, tracks=tracks_path)
