"""Opening media from outside, and decoding it as the ffmpeg command line does (a packet FFmpeg cannot decode is skipped).

FFmpeg picks a demuxer by the file's content, not its name: a file named ``clip.mp4`` holding a concat
script would open the files it names, a playlist would fetch its segments, an image would go to the
image2 family. :func:`open_input` names the demuxers a file may be read with and lets FFmpeg read only
the local file itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import av

from shared.errors import InvalidInputError

UPLOAD_DEMUXERS = "mov,matroska,avi,mpegts"
"""The containers an upload may be in: the MP4/MOV family (mp4, m4v, mov, 3gp), Matroska/WebM, AVI and MPEG-TS
(ts, mts, m2ts). Each reads its one file only (the MOV demuxer follows external references only when asked)."""
SEGMENT_DEMUXERS = "mov,nut"
"""What batch segments are written in (:data:`shared.containers.SEGMENT_MUXERS`) and styled segments are read back from."""
TRACKS_DEMUXERS = "mov,matroska"
"""The other tracks a split sets aside, in the output's container (MP4, QuickTime or Matroska)."""
PNG_DEMUXER = "png_pipe"
"""Preview rows: one PNG each."""
NO_CODEC = "none"
"""A codec allowlist that admits no decoder, so that opening a file decodes nothing."""
HEADER_PROBE_BYTES, HEADER_PROBE_US = 64 * 1024, 1_000_000
"""How far FFmpeg reads packets for what the headers do not say (MPEG-TS gives the size in the first keyframe's
parameter sets), when it cannot decode: with no decoder it would otherwise hold up to 5 MB or 5 s of packets
(280,000 packets of a tiny-frame file, 200 MB)."""


def open_input(path: str | os.PathLike[str], demuxers: str, *, max_pixels: int = 0, header_only: bool = False,
               **kwargs) -> av.container.InputContainer:
    """Open the local file ``path`` for reading with one of ``demuxers`` (FFmpeg names, comma-separated), or raise.

    ``max_pixels`` bounds the frames the decoders FFmpeg opens while opening the file may allocate (the bitstream
    may say a larger size than the container's header); a stream's own ``codec_context.options`` bound it when it is
    decoded. ``header_only``: what the headers and parsers say, nothing decoded (FFmpeg otherwise decodes a few
    frames while opening, to learn the pixel format).
    """
    container_options = {"format_whitelist": demuxers, "protocol_whitelist": "file"}
    if header_only:
        container_options.update(codec_whitelist=NO_CODEC, probesize=str(HEADER_PROBE_BYTES), analyzeduration=str(HEADER_PROBE_US))
    options = {"max_pixels": str(max_pixels)} if max_pixels else {}
    return av.open(os.fspath(path), container_options=container_options, options=options, **kwargs)


def tolerant_frames(container, stream, errors: list[str] | None = None, packets: Iterable[av.Packet] | None = None
                    ) -> Iterator[av.VideoFrame]:
    """The frames of ``stream`` in display order; each packet that fails to decode adds its error to ``errors``.
    ``packets``: those of ``stream`` to decode (default: all of them).

    Raises :class:`InvalidInputError` at a frame whose timestamp is not after the one before: its packets' timestamps
    are not when their frames are shown (B-frames in AVI, which has none), so no frame can be given its time."""
    last = None
    for packet in container.demux(stream) if packets is None else packets:
        try:
            frames = stream.decode(packet)
        except av.FFmpegError as exc:
            if errors is not None:
                errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        for frame in frames:
            if frame.pts is not None and last is not None and frame.pts <= last:
                raise InvalidInputError(f"{Path(container.name).name}: FFmpeg decodes its frames with timestamps out of display order "
                                        "(B-frames in a container without presentation times, as AVI): their times are unknown")
            last = frame.pts if frame.pts is not None else last
            yield frame
