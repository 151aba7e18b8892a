"""Test helpers for what a styled video carries over: display matrices, chapters and tags, as FFmpeg reads them."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import av
from av.sidedata.sidedata import Type as SideDataType


def with_display(source: Path, target: Path, degrees: int, hflip: bool = False, vflip: bool = False) -> Path:
    """Copy ``source`` (its streams, chapters and tags) with a display matrix: a rotation, then mirrors (Debian's
    FFmpeg 5.1 CLI has no -display_hflip)."""
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        out.metadata.update(src.metadata)
        out.set_chapters(src.chapters())
        streams = {}
        copied = [*src.streams.video, *src.streams.audio]  # not QuickTime's chapter track: the chapters are written anew
        for stream in copied:
            streams[stream.index] = out.add_stream_from_template(stream)
            streams[stream.index].time_base = stream.time_base
        streams[src.streams.video[0].index].set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for packet in src.demux(copied):
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return target


def decoded_display_matrix(path: Path) -> tuple[int, ...] | None:
    """The display matrix the first decoded frame carries (nine int32s), as a player reads it."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    side_data = frame.side_data.get(SideDataType.DISPLAYMATRIX)
    return struct.unpack("=9i", bytes(side_data)) if side_data is not None else None


def ffprobe_display(path: Path) -> list[dict]:
    """ffprobe's display-matrix side data of the first video stream (its matrix text and rotation)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    (stream,) = json.loads(out)["streams"]
    return [item for item in stream.get("side_data_list", []) if item.get("side_data_type") == "Display Matrix"]


def chapters_and_tags(path: Path) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """(start, end, title) of every chapter and the file's tags, as ffprobe reports them."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-show_format", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    chapters = [(c["start_time"], c["end_time"], c.get("tags", {}).get("title", "")) for c in data["chapters"]]
    return chapters, {key.lower(): value for key, value in data["format"].get("tags", {}).items()}
