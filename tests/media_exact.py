"""Test media for issue 22's timing rows: edit lists, pre-roll, slow motion, mid-GOP TS segments, AVI lengths.

Each maker starts from a small clip FFmpeg encodes and changes it as real-world files differ: boxes patched in
place, packets copied from mid-GOP, a trailer appended. The reference for every file is what FFmpeg shows: PyAV
decoding the whole stream, skipping what it cannot decode, as shared.decode.tolerant_frames does.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
from av.sidedata.sidedata import Type

from media import ffmpeg

SOFT = "gblur=sigma=2"


HEVC_OPEN_GOP = ("-c:v", "libx265", "-x265-params", "log-level=error:keyint=30:min-keyint=30:open-gop=1")
"""HEVC whose keyframes after the first are CRA pictures with leading (RASL) pictures that reference the GOP before."""


def clip(path: Path, *, rate: int = 25, seconds: float = 4, video_filter: str = "", extra: tuple[str, ...] = (),
         video: tuple[str, ...] = ()) -> Path:
    """testsrc2 at 128x72 with a sine track: H.264 with B-frames and 1 s GOPs (or ``video``'s codec options), AAC."""
    graph = f"testsrc2=size=128x72:rate={rate}:duration={seconds},{SOFT}"
    ffmpeg("-f", "lavfi", "-i", graph, "-f", "lavfi", "-i", f"sine=duration={seconds}:sample_rate=48000",
           *(["-vf", video_filter] if video_filter else []), *(video or ("-c:v", "libx264", "-g", str(rate), "-bf", "2")),
           "-c:a", "aac", *extra, str(path))
    return path


def patch_edit(source: Path, target: Path, *, media_time: int, duration_ms: int) -> Path:
    """``source`` (its one-entry edit lists in the movie timescale 1000) with the first track's edit starting at
    ``media_time`` (media timescale) and lasting ``duration_ms``: an editor's trim of the start and the end."""
    data = bytearray(source.read_bytes())
    at = data.find(b"elst")
    assert at > 0 and data[at + 4] == 0 and struct.unpack(">I", data[at + 8:at + 12]) == (1,)
    data[at + 12:at + 20] = struct.pack(">Ii", duration_ms, media_time)
    target.write_bytes(bytes(data))
    return target


def from_packet(source: Path, target: Path, first: int) -> Path:
    """``source`` remuxed from its video packet ``first`` (decode order, mid-GOP) on: the track starts with
    non-sync samples (pre-roll), as a stream recorded or cut mid-GOP does; audio whole."""
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for s in src.streams:
            streams[s.index].time_base = s.time_base
        number = 0
        for packet in src.demux():
            if packet.dts is None:
                continue
            if packet.stream.type == "video":
                number += 1
                if number <= first:
                    continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return target


def slow_motion(folder: Path) -> Path:
    """A Samsung-style slow-motion recording: 30 fps, then 240 fps for half a second, then 30 fps again, in a
    1/1000000 timescale, with an SEF trailer after the moov box."""
    source = folder / "slowmo-plain.mp4"
    keep = "lt(t\\,0.5)*not(mod(n\\,8))+gte(t\\,0.5)*lt(t\\,1)+gte(t\\,1)*not(mod(n\\,8))"
    clip(source, rate=240, seconds=1.5, video_filter=f"select='{keep}'",
         extra=("-fps_mode", "vfr", "-g", "30", "-video_track_timescale", "1000000"))
    trailer = b"SEFH" + struct.pack("<II", 107, 1) + bytes(64) + struct.pack("<I", 80) + b"SEFT"
    target = folder / "slowmo.mp4"
    target.write_bytes(source.read_bytes() + trailer)
    return target


def ts_segments(folder: Path, video: tuple[str, ...] = ()) -> list[Path]:
    """An HLS-style MPEG-TS stream cut every 1.3 s whatever the frame (30 fps, 1 s GOPs): segments after the
    first start with non-keyframes."""
    clip_args = ("-f", "segment", "-segment_time", "1.3", "-break_non_keyframes", "1", "-segment_format", "mpegts")
    clip(folder / "hls-%d.ts", rate=30, seconds=4, extra=clip_args, video=video)
    return sorted(folder.glob("hls-*.ts"))


CAPTION_SEI = bytes.fromhex("00000001" "06" "04" "0e" "b5003147413934" "03" "41" "ff" "fc" "c849" "ff" "80")
"""An H.264 SEI NAL unit of ATSC A/53 closed captions (ITU-T T.35, "GA94"): one CEA-608 field-1 pair, "HI" with odd parity."""


def with_captions(source: Path, target: Path) -> Path:
    """The MPEG-TS ``source`` with CEA-608 captions in every H.264 access unit, after its delimiter, as broadcast
    and HLS streams carry them (FFmpeg's CLI cannot write them from scratch)."""
    with av.open(str(source)) as src, av.open(str(target), "w", format="mpegts") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for s in src.streams:
            streams[s.index].time_base = s.time_base
        for packet in src.demux():
            if packet.dts is None and packet.pts is None:
                continue
            index = packet.stream.index
            if packet.stream.type == "video" and packet.size:
                data = bytes(packet)
                cut = data.find(b"\x00\x00\x01", 4)
                cut -= data[cut - 1] == 0
                captioned = av.Packet(data[:cut] + CAPTION_SEI + data[cut:])
                captioned.pts, captioned.dts, captioned.time_base = packet.pts, packet.dts, packet.time_base
                captioned.is_keyframe = packet.is_keyframe
                packet = captioned
            packet.stream = streams[index]
            out.mux(packet)
    return target


def captioned_frames(path: Path) -> int:
    """How many frames FFmpeg decodes with closed captions (A53 side data)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(frame.side_data.get(Type.A53_CC) is not None for frame in container.decode(stream))


def avi_length(source: Path, target: Path, frames: int) -> Path:
    """``source`` with the video stream's length (strh dwLength, avih dwTotalFrames) set to ``frames``."""
    data = bytearray(source.read_bytes())
    strh, avih = data.find(b"strh"), data.find(b"avih")
    assert data[strh + 8:strh + 12] == b"vids"
    data[strh + 40:strh + 44] = struct.pack("<I", frames)
    data[avih + 24:avih + 28] = struct.pack("<I", frames)
    target.write_bytes(bytes(data))
    return target


def shown_frames(path: Path) -> list[tuple[Fraction, object]]:
    """(time in seconds, RGB frame) of every frame FFmpeg shows of the first video stream, in order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = []
        for packet in container.demux(stream):
            try:
                frames += [(frame.pts * stream.time_base, frame.to_ndarray(format="rgb24")) for frame in packet.decode()]
            except av.FFmpegError:
                continue
        return sorted(frames, key=lambda item: item[0])
