"""Whether a VP9 packet shows a frame, from its frame headers' first byte: nothing is decoded.

VP9 encoders code alt-ref frames that are decoded for reference and never shown. Most pack each with
the frame shown after it into one packet (a superframe); some store it in a packet of its own, with the
timestamp of the frame after it. FFmpeg's decoder shows no frame for such a packet, so it is no frame
of the video: it is counted with neither the frames nor their timestamps, though it is cut with its GOP.
"""

from __future__ import annotations

FRAME_MARKER = 0b10
"""The two bits every VP9 frame header starts with."""
SUPERFRAME_MARKER = 0b110
"""The top three bits of the byte that opens and closes a superframe's index, at the packet's end."""


def frames(data: bytes | memoryview) -> list[memoryview]:
    """The frames of a VP9 packet: those its superframe index lists, or the packet itself."""
    data = memoryview(data)
    last = data[-1] if len(data) else 0
    if last >> 5 == SUPERFRAME_MARKER:
        count, width = (last & 0b111) + 1, ((last >> 3) & 0b11) + 1
        index_size = 2 + count * width
        if len(data) >= index_size and data[-index_size] == last:
            index = data[len(data) - index_size + 1:len(data) - 1]
            sizes = [int.from_bytes(index[i * width:(i + 1) * width], "little") for i in range(count)]
            if sum(sizes) <= len(data) - index_size:
                starts = [sum(sizes[:i]) for i in range(count)]
                return [data[start:start + size] for start, size in zip(starts, sizes)]
    return [data]


def is_shown(frame: memoryview) -> bool:
    """Whether one VP9 frame is shown: its header's show_existing_frame or show_frame bit. A frame that is not VP9
    (damaged) counts as shown: the decoder says what it makes of it."""
    if not len(frame) or frame[0] >> 6 != FRAME_MARKER:
        return True
    header = frame[0]
    profile = (header >> 5 & 1) | (header >> 4 & 1) << 1
    bit = 3 if profile < 3 else 2  # profile 3 has a reserved bit before show_existing_frame
    show_existing_frame, show_frame = header >> bit & 1, header >> (bit - 2) & 1
    return bool(show_existing_frame or show_frame)


def shows_frame(data: bytes | memoryview) -> bool:
    """Whether a VP9 packet shows a frame: not when every frame it holds is hidden."""
    return any(is_shown(frame) for frame in frames(data))
