"""Plan batches: contiguous runs of frames, every frame in exactly one batch.

A batch is defined by frame indices (display order) and the matching timestamp range. The packets
cut for it are whole GOPs, so a batch may start mid-GOP: its segment then carries a few lead-in
frames, which the scorer decodes and drops by timestamp. Batch sizes therefore need not follow
the keyframe spacing, and no frame is ever dropped or scored twice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # probing needs PyAV, which a shard worker (that reads batch messages' types only) does not have
    from shared.probe import VideoInfo


@dataclass(frozen=True)
class Batch:
    index: int
    first_frame: int
    frame_count: int
    start_pts: int
    end_pts: int | None
    """Timestamp of the next batch's first frame; None for the last batch."""
    time_base: str
    """Unit of the timestamps above ("1/30000"). Segments may use another unit: compare instants, not ticks."""
    first_gop: int
    last_gop: int

    @property
    def start_time(self) -> Fraction:
        return self.start_pts * Fraction(self.time_base)

    @property
    def end_time(self) -> Fraction | None:
        return None if self.end_pts is None else self.end_pts * Fraction(self.time_base)

    @property
    def name(self) -> str:
        return f"batch-{self.index:05d}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Batch:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def batch_sizes(frame_count: int, batch_frames: int) -> list[int]:
    """Split ``frame_count`` into the fewest batches of at most ``batch_frames``, sizes within one of each other."""
    if frame_count <= 0:
        return []
    if batch_frames <= 0:
        raise ValueError("batch_frames must be positive")
    count = math.ceil(frame_count / batch_frames)
    base, extra = divmod(frame_count, count)
    return [base + 1 if i < extra else base for i in range(count)]


def plan_batches(info: VideoInfo, batch_frames: int) -> list[Batch]:
    open_gops = set(info.open_gops)
    batches: list[Batch] = []
    first = 0
    for index, size in enumerate(batch_sizes(info.frame_count, batch_frames)):
        last = first + size - 1
        frames_gops = info.frame_gop[first : last + 1]
        first_gop, last_gop = min(frames_gops), max(frames_gops)
        if first_gop in open_gops and first_gop > 0:
            first_gop -= 1
        end_pts = info.frame_pts[last + 1] if last + 1 < info.frame_count else None
        batches.append(
            Batch(
                index=index,
                first_frame=first,
                frame_count=size,
                start_pts=info.frame_pts[first],
                end_pts=end_pts,
                time_base=str(info.time_base),
                first_gop=first_gop,
                last_gop=last_gop,
            )
        )
        first = last + 1
    return batches
