"""Clips with several video streams or hidden frames, for tests/test_inputs_tracks.py, and the views of them FFmpeg gives."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av

from media import ffmpeg

PICTURE = "testsrc2=size=128x72:rate=25:duration=1,gblur=sigma=1"
"""The primary picture: moving and detailed, softened as a camera softens it."""
DEPTH = "testsrc=size=128x72:rate=25:duration=1,format=gray"
"""An auxiliary picture (a depth map's place): another picture entirely, so styling it instead shows at once."""
SINE = "sine=duration=1:sample_rate=48000"


def with_auxiliary(path: Path, *, auxiliary_first: bool, audio: bool = True) -> Path:
    """The primary picture and an auxiliary one, interleaved frame by frame with the same timestamps, the primary
    marked default and the auxiliary not (as phones mark a depth track); ``auxiliary_first``: the auxiliary is stream 0."""
    order = ["1:v", "0:v"] if auxiliary_first else ["0:v", "1:v"]
    primary = order.index("0:v")
    maps = [arg for stream in order for arg in ("-map", stream)] + (["-map", "2:a", "-c:a", "aac"] if audio else [])
    ffmpeg("-f", "lavfi", "-i", PICTURE, "-f", "lavfi", "-i", DEPTH, *(["-f", "lavfi", "-i", SINE] if audio else []), *maps,
           "-c:v", "libx264", "-g", "10", "-bf", "2",
           f"-disposition:v:{primary}", "default", f"-disposition:v:{1 - primary}", "0", str(path))
    return path


VP9_PROFILES = {"yuv420p": 0, "yuv444p": 1, "yuv420p10le": 2, "yuv444p10le": 3}
"""VP9's profile for each pixel format: 1 and 3 are 4:4:4 (their frame headers hold one more bit), 2 and 3 are 10-bit."""


def vp9_with_hidden_frames(folder: Path, pix_fmt: str, separate: bool) -> Path:
    """VP9 in WebM with alt-ref (hidden) frames, from libvpx's two passes; ``separate``: each hidden frame in a block of its
    own with the timestamp of the frame after it (as some encoders store them), not packed with it in a superframe.

    The chroma siting is stated (left, as H.264's default): the styled H.264 reads as left-sited, and an unstated
    siting, which swscale reads otherwise, would measure that (about 31 dB instead of 37), not which frames were styled."""
    packed = folder / f"vp9-{pix_fmt}-superframes.webm"
    encode = ["-f", "lavfi", "-i", PICTURE, "-c:v", "libvpx-vp9", "-pix_fmt", pix_fmt, "-profile:v", str(VP9_PROFILES[pix_fmt]),
              "-auto-alt-ref", "1", "-lag-in-frames", "16", "-b:v", "400k",
              "-chroma_sample_location", "left", "-passlogfile", str(folder / "vp9-pass")]
    ffmpeg(*encode, "-pass", "1", "-f", "null", "-")
    ffmpeg(*encode, "-pass", "2", str(packed))
    if not separate:
        return packed
    split = folder / f"vp9-{pix_fmt}-hidden-blocks.webm"
    ffmpeg("-i", str(packed), "-c", "copy", "-bsf:v", "vp9_superframe_split", "-fflags", "-autobsf", str(split))
    return split


def video_packets(path: Path, index: int) -> int:
    """How many non-empty packets video stream ``index`` holds."""
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(container.streams[index]) if packet.size)


def decoded_frames(path: Path, index: int) -> int:
    """How many frames the ffmpeg command line shows decoding stream ``index`` (every frame, as decoded)."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:{index}", "-fps_mode", "passthrough", "-f", "framemd5", "-"],
                         check=True, capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line and not line.startswith("#"))


def single_stream(source: Path, index: int, target: Path) -> Path:
    """Stream ``index`` of ``source`` alone, by stream copy (same packets, same timestamps): a reference to compare with."""
    ffmpeg("-i", str(source), "-map", f"0:{index}", "-c", "copy", str(target))
    return target
