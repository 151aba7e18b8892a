"""Decoding as the ffmpeg command line does it: a packet FFmpeg cannot decode is skipped, not fatal."""

from __future__ import annotations

from collections.abc import Iterator

import av


def tolerant_frames(container, stream, errors: list[str] | None = None) -> Iterator[av.VideoFrame]:
    """The frames of ``stream`` in display order; each packet that fails to decode adds its error to ``errors``."""
    for packet in container.demux(stream):
        try:
            frames = stream.decode(packet)
        except av.FFmpegError as exc:
            if errors is not None:
                errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        yield from frames
