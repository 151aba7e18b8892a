"""Plan batches: contiguous runs of frames, every frame in exactly one batch.

A batch is defined by frame indices (display order) and the matching timestamp range. The packets
cut for it are whole GOPs, so a batch may start mid-GOP: its segment then carries a few lead-in
frames, which the scorer decodes and drops by timestamp. Batch sizes therefore need not follow
the keyframe spacing, and no frame is ever dropped or scored twice.

With temporal stabilisation, a batch but the first also starts with up to K *context* frames, the
frames just before its own: its segment carries their GOPs too, and its worker styles them to prime
the stabiliser, but outputs only the batch's own frames (which stay in exactly one batch).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # probing needs PyAV, which a shard worker (that reads batch messages' types only) does not have
    from shared.probe import VideoInfo

MAX_FRAME_RATE = 1000
"""Fastest average frame rate a plan gives the encoder (a phone's super slow motion is 960 frames/s)."""


def batch_name(index: int) -> str:
    return f"batch-{index:05d}"


TIME_BASE = re.compile(r"[0-9]{1,12}(?:/[1-9][0-9]{0,11})?")
"""A time base as str(Fraction) writes it: "1/30000", or "1" for a whole number."""


@dataclass(frozen=True)
class Batch:
    index: int
    first_frame: int
    frame_count: int
    start_pts: int
    end_pts: int | None
    """Timestamp of the next batch's first frame; for the last batch, just past its last frame (frames an edit list
    hides after it are in its segment, as references, but not in its range); None in batches planned before that."""
    time_base: str
    """Unit of the timestamps above ("1/30000"). Segments may use another unit: compare instants, not ticks."""
    first_gop: int
    last_gop: int
    context_pts: int | None = None
    """Timestamp of the first context frame (styled to prime the stabiliser, not output), before ``start_pts``; None
    when the batch has none. ``first_gop`` covers the context frames."""
    frame_rate: str | None = None
    """The video's average frame rate ("30000/1001"), the same in every batch: each styled segment tells the encoder
    this one, so all declare the same level and headers and join by stream copy. None: the segment's own."""

    @property
    def context_time(self) -> Fraction | None:
        return None if self.context_pts is None else self.context_pts * Fraction(self.time_base)

    @property
    def start_time(self) -> Fraction:
        return self.start_pts * Fraction(self.time_base)

    @property
    def end_time(self) -> Fraction | None:
        return None if self.end_pts is None else self.end_pts * Fraction(self.time_base)

    @property
    def name(self) -> str:
        return batch_name(self.index)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Batch:
        """A batch from its JSON object, every field checked (it may come from a queue message): raises ValueError
        with a one-line reason."""
        if not isinstance(data, dict):
            raise ValueError("batch is not a JSON object")
        data = {"context_pts": None, "frame_rate": None, **data}  # a plan of a job started before these existed (still running)
        missing = [name for name in cls.__dataclass_fields__ if name not in data]
        if missing:
            raise ValueError(f"batch lacks {', '.join(missing)}")
        counts = {"index": 0, "first_frame": 0, "frame_count": 1, "first_gop": 0, "last_gop": 0}
        wrong = [name for name, least in counts.items() if type(data[name]) is not int or data[name] < least]
        wrong += [name for name in ("start_pts", "end_pts") if type(data[name]) is not int and not (name == "end_pts" and data[name] is None)]
        if wrong:
            raise ValueError(f"batch has mistyped or out-of-range {', '.join(wrong)}")
        if data["last_gop"] < data["first_gop"] or (data["end_pts"] is not None and data["end_pts"] <= data["start_pts"]):
            raise ValueError("batch has an empty GOP or timestamp range")
        context = data["context_pts"]
        if context is not None and (type(context) is not int or not -(1 << 63) <= context < data["start_pts"]):
            raise ValueError("batch has a context_pts that is not a timestamp before its start_pts")
        time_base = data["time_base"]
        if not isinstance(time_base, str) or not TIME_BASE.fullmatch(time_base) or int(time_base.partition("/")[0]) == 0:
            raise ValueError("batch time_base is not a positive fraction like 1/30000")
        rate = data["frame_rate"]
        if rate is not None and (not isinstance(rate, str) or not TIME_BASE.fullmatch(rate) or not 0 < Fraction(rate) <= MAX_FRAME_RATE):
            raise ValueError(f"batch frame_rate is not a fraction like 30000/1001 from 0 to {MAX_FRAME_RATE}")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


PASS_THROUGH_MODEL = "identity"
"""The model whose frames pass through unchanged: it checks the pipeline frame for frame, so it is never stabilised."""


@dataclass(frozen=True)
class TemporalPlan:
    """What a job's frames get of temporal stabilisation: its strength (0: off), the context frames before each batch,
    and, when off, why."""

    strength: float = 0.0
    context_frames: int = 0
    off_because: str | None = None

    def describe(self) -> dict:
        """For the report and the status: off and why, or on with its strength and context frames."""
        if not self.strength:
            return {"used": "off", "reason": self.off_because}
        return {"used": "on", "strength": self.strength, "context_frames": self.context_frames}


def plan_temporal(model: str, on: bool, strength: float, context_frames: int) -> TemporalPlan:
    """The one decision, for ``stylize run`` and the Function app alike: stabilise ``model``'s frames at ``strength``
    (checked 0..1 by the caller) with ``context_frames`` before each batch, unless it is off or the model is identity."""
    if model == PASS_THROUGH_MODEL:
        return TemporalPlan(off_because="model identity passes frames through unchanged, so they are not stabilised")
    if not on:
        return TemporalPlan(off_because="turned off (--temporal off, upload metadata temporal=off, or STYLIZE_TEMPORAL)")
    if not strength:
        return TemporalPlan(off_because="strength 0")
    return TemporalPlan(strength, context_frames)


def encoder_rate(fps: float) -> Fraction:
    """The rate every styled segment of a video tells its encoder: its average, as the fraction it most likely is
    (30000/1001, not 29.97002997...), within what x264 takes."""
    return min(max(Fraction(fps).limit_denominator(1001), Fraction(1, 1001)), Fraction(MAX_FRAME_RATE))


def batch_sizes(frame_count: int, batch_frames: int) -> list[int]:
    """Split ``frame_count`` into the fewest batches of at most ``batch_frames``, sizes within one of each other."""
    if frame_count <= 0:
        return []
    if batch_frames <= 0:
        raise ValueError("batch_frames must be positive")
    count = math.ceil(frame_count / batch_frames)
    base, extra = divmod(frame_count, count)
    return [base + 1 if i < extra else base for i in range(count)]


def plan_batches(info: VideoInfo, batch_frames: int, context_frames: int = 0) -> list[Batch]:
    """Batches of at most ``batch_frames``; each but the first with up to ``context_frames`` context frames before it."""
    if context_frames < 0:
        raise ValueError("context_frames must not be negative")
    open_gops = set(info.open_gops)
    rate = str(encoder_rate(info.fps))
    batches: list[Batch] = []
    first = 0
    for index, size in enumerate(batch_sizes(info.frame_count, batch_frames)):
        last = first + size - 1
        context = max(0, first - context_frames)
        frames_gops = info.frame_gop[context : last + 1]
        first_gop, last_gop = min(frames_gops), max(frames_gops)
        if first_gop in open_gops and first_gop > 0:
            first_gop -= 1
        end_pts = info.frame_pts[last + 1] if last + 1 < info.frame_count else info.frame_pts[last] + 1
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
                context_pts=info.frame_pts[context] if context < first else None,
                frame_rate=rate,
            )
        )
        first = last + 1
    return batches
