"""Stitch styled segments into one video and put the original audio back, both by stream copy."""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import av

from shared.errors import PipelineError
from shared.split import MP4_AUDIO_CODECS, MP4_FAMILY, copy_muxer


def _timed_packets(paths: Sequence[Path], kind: str) -> Iterator[tuple[float, int, object]]:
    """(decode time in seconds, stream index, packet) for every ``kind`` packet of ``paths``, in file order."""
    for path in paths:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = [s for s in container.streams if s.type == kind]
            for packet in container.demux(streams):
                if packet.size == 0:
                    continue
                when = packet.dts if packet.dts is not None else packet.pts
                yield float(when * packet.time_base), packet.stream.index, packet


def _check_segments(segments: Sequence[Path]) -> None:
    """Stream copy keeps one set of codec headers, so every segment must share them."""
    headers = set()
    for path in segments:
        with av.open(str(path)) as container:
            headers.add(bytes(container.streams.video[0].codec_context.extradata or b""))
    if len(headers) > 1:
        raise PipelineError("styled segments were encoded with different settings; cannot join them by stream copy")


def _check_audio_fits(codecs: Sequence[str], output: Path) -> None:
    unfit = sorted({codec for codec in codecs if codec not in MP4_AUDIO_CODECS})
    if unfit and output.suffix.lower() in MP4_FAMILY:
        raise PipelineError(f"audio codec {', '.join(unfit)} cannot be stored in {output.suffix}; choose a .mkv output")


def stitch(
    segments: Sequence[str | os.PathLike[str]],
    audio_source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    rotation: int = 0,
) -> Path:
    """Join ``segments`` (in order) and every audio stream of ``audio_source`` into ``output``, atomically.

    Packets of both kinds are merged by decode time, so the output is interleaved as a player
    expects and no muxer buffer grows with the video's length.
    """
    segments = [Path(p) for p in segments]
    output = Path(output)
    if not segments:
        raise PipelineError("nothing to stitch: no segments")
    _check_segments(segments)
    options = {"movflags": "+faststart"} if output.suffix.lower() in MP4_FAMILY else {}
    with contextlib.ExitStack() as stack:
        video_template = stack.enter_context(av.open(str(segments[0]))).streams.video[0]
        audio_templates = []
        if audio_source is not None:
            audio_templates = list(stack.enter_context(av.open(str(audio_source), metadata_errors="ignore")).streams.audio)
        _check_audio_fits([s.codec_context.name for s in audio_templates], output)
        container, streams = stack.enter_context(copy_muxer(output, [video_template, *audio_templates], options))
        video_out, *audio_outs = streams
        targets = {("video", video_template.index): video_out}
        targets.update({("audio", s.index): out for s, out in zip(audio_templates, audio_outs)})
        if rotation:
            video_out.set_display_rotation(rotation)
        video = _timed_packets(segments, "video")
        audio = _timed_packets([Path(audio_source)], "audio") if audio_templates else iter(())
        for _, _, packet in heapq.merge(video, audio, key=lambda item: item[0]):
            packet.stream = targets[packet.stream.type, packet.stream.index]
            container.mux(packet)
    return output
