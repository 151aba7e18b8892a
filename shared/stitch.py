"""Stitch styled segments into one video and put the other tracks back, both by stream copy, with the input's
chapters and descriptive tags."""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path


from shared.errors import PipelineError
from shared.decode import SEGMENT_DEMUXERS, TRACKS_DEMUXERS, open_input
from shared.plan import Batch
from shared.probe import Chapter, frame_times, in_span, shown_at
from shared.split import ISO_MUXERS, copy_muxer, muxer_for


def _timed_packets(path: Path, targets: Callable[[object], dict], demuxers: str) -> Iterator[tuple[float, object, object]]:
    """(decode time in seconds, packet, output stream) for every packet of the streams ``targets(container)`` maps."""
    with open_input(path, demuxers, metadata_errors="ignore") as container:
        mapping = targets(container)
        by_index = {source.index: target for source, target in mapping.items()}
        for packet in container.demux(list(mapping)):
            if packet.size == 0:
                continue
            when = packet.dts if packet.dts is not None else packet.pts
            yield float(when * packet.time_base), packet, by_index[packet.stream.index]


def _segment_packets(path: Path, target, headers: bytes, shown: list[Fraction]) -> Iterator[tuple[float, object, object]]:
    """The video packets of one styled segment, as :func:`_timed_packets` gives them, recording in ``shown``
    the times its frames are shown. Stream copy keeps one set of codec headers: the segment must have ``headers``."""
    def video(container) -> dict:
        stream = container.streams.video[0]
        if bytes(stream.codec_context.extradata or b"") != headers:
            raise PipelineError("styled segments were encoded with different settings; cannot join them by stream copy")
        return {stream: target}

    for item in _timed_packets(path, video, SEGMENT_DEMUXERS):
        if (when := shown_at(item[1])) is not None:
            shown.append(when)
        yield item


def descriptions(video: dict) -> dict:
    """:func:`stitch`'s ``chapters``, ``metadata`` and ``video_tags`` from a video's summary (:meth:`VideoInfo.summary`)."""
    return {"chapters": [Chapter(**chapter) for chapter in video.get("chapters", [])],
            "metadata": dict(video.get("metadata", {})), "video_tags": dict(video.get("video_tags", {}))}


def stitch(
    segments: Sequence[str | os.PathLike[str]],
    tracks: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    chapters: Sequence[Chapter] = (),
    metadata: Mapping[str, str] | None = None,
    video_tags: Mapping[str, str] | None = None,
) -> list[list[Fraction]]:
    """Join ``segments`` (in order) and every stream of ``tracks`` into ``output``, atomically; returns the
    times (seconds) each segment's frames are shown, for :func:`skipped_frames`.

    ``tracks`` is the file :func:`shared.split.split_video` set aside, in the output's container. The output
    gets the input's ``chapters`` and descriptive ``metadata``, and the styled stream the input's ``video_tags``
    (segments keep the input's timestamps, so chapters need no shift); the display matrix comes with the segments.
    Packets are merged by decode time, so the output is interleaved as a player expects and no
    muxer buffer grows with the video's length. Each segment is opened once.
    """
    segments = [Path(p) for p in segments]
    output = Path(output)
    if not segments:
        raise PipelineError("nothing to stitch: no segments")
    shown: list[list[Fraction]] = [[] for _ in segments]
    muxer = muxer_for(output)
    options = {"movflags": "+faststart"} if muxer in ISO_MUXERS else {}
    with contextlib.ExitStack() as stack:
        video_template = stack.enter_context(open_input(segments[0], SEGMENT_DEMUXERS)).streams.video[0]
        track_templates = list(stack.enter_context(open_input(tracks, TRACKS_DEMUXERS, metadata_errors="ignore")).streams) if tracks else []
        container, (video_out, *track_outs) = stack.enter_context(copy_muxer(output, [video_template, *track_templates], muxer, options))
        video_out.metadata.update(video_tags or {})
        container.metadata.update(metadata or {})
        container.set_chapters([{"id": number, "start": c.start, "end": c.end, "time_base": Fraction(c.time_base),
                                 "metadata": {"title": c.title} if c.title else {}} for number, c in enumerate(chapters, start=1)])
        headers = bytes(video_template.codec_context.extradata or b"")
        videos = (item for path, times in zip(segments, shown) for item in _segment_packets(path, video_out, headers, times))
        others = _timed_packets(Path(tracks), lambda c: dict(zip(c.streams, track_outs)), TRACKS_DEMUXERS) if tracks else iter(())
        for _, packet, target in heapq.merge(videos, others, key=lambda item: item[0]):
            packet.stream = target
            container.mux(packet)
    return shown


def skipped_frames(batches: Sequence[Batch], shown: Sequence[Sequence[Fraction]], segment: Callable[[int], Path]) -> list[Fraction]:
    """Times of the input frames that have no styled frame: damaged ones FFmpeg could not decode.

    ``shown``: the times of each batch's styled frames (what :func:`stitch` returns). Only a batch with
    fewer than planned needs its input segment (``segment(position)``), so the cloud path downloads
    nothing for an undamaged video.
    """
    skipped: list[Fraction] = []
    for position, (batch, times) in enumerate(zip(batches, shown, strict=True)):
        styled = {t for t in times if in_span(t, batch.start_time, batch.end_time)}
        if len(styled) < batch.frame_count:
            skipped += sorted(set(frame_times(segment(position), batch.start_time, batch.end_time)) - styled)
    return skipped


def skipped_note(skipped: Sequence[Fraction], planned: int, shown: int = 8) -> str:
    """The report's line on damaged frames."""
    times = ", ".join(f"{float(t):.3f}" for t in skipped[:shown]) + (", ..." if len(skipped) > shown else "")
    return (f"damaged input: {len(skipped)} of {planned} frames could not be decoded and are left out "
            f"(at {times} s); the other {planned - len(skipped)} were styled")
