"""Preview image: a few input frames beside their styled versions, as one PNG.

It reads only the batches holding the sampled frames (their input segments and styled segments),
so its cost does not grow with the video's length, and the Function app never downloads the
whole input again to draw it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from shared.atomic import atomic_path
from shared.plan import Batch

TILE_WIDTH = 320
SAMPLES = 3


def sample_indices(frame_count: int, samples: int = SAMPLES) -> list[int]:
    """Frame indices spread evenly from the first frame to the last."""
    count = max(1, min(samples, frame_count))
    return sorted({round(i * (frame_count - 1) / max(1, count - 1)) for i in range(count)})


def sampled_batches(batches: Sequence[Batch], samples: int = SAMPLES) -> dict[int, list[int]]:
    """Position of each batch holding a sampled frame -> offsets of those frames within the batch."""
    starts = [batch.first_frame for batch in batches]
    picks: dict[int, list[int]] = {}
    for index in sample_indices(sum(batch.frame_count for batch in batches), samples):
        position = bisect.bisect_right(starts, index) - 1
        picks.setdefault(position, []).append(index - starts[position])
    return picks


def _frames_at(path: Path, offsets: Sequence[int], size: tuple[int, int], start: Fraction) -> Iterator[np.ndarray]:
    """RGB arrays, resized to ``size``, of the frames at ``offsets`` (ascending) counted from the first frame shown at ``start``."""
    wanted = iter(offsets)
    target = next(wanted, None)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        shown = (frame for frame in container.decode(stream) if frame.pts * stream.time_base >= start)
        for number, frame in enumerate(shown):
            if number == target:
                yield frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
                target = next(wanted, None)
                if target is None:
                    return


def write_preview(
    batches: Sequence[Batch],
    segments: Sequence[Path] | Mapping[int, Path],
    styled: Sequence[Path] | Mapping[int, Path],
    out: str | os.PathLike[str],
    samples: int = SAMPLES,
) -> Path:
    """Rows of [input | styled] for ``samples`` frames spread over the video.

    ``segments`` and ``styled`` give, by batch position, the input segment and the styled segment;
    only the positions :func:`sampled_batches` names are read.
    """
    picks = sampled_batches(batches, samples)
    with av.open(str(styled[next(iter(picks))])) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
    tile = (TILE_WIDTH, max(2, round(TILE_WIDTH * height / width / 2) * 2))
    rows = []
    for position, offsets in picks.items():
        start = batches[position].start_time
        pairs = zip(_frames_at(Path(segments[position]), offsets, tile, start), _frames_at(Path(styled[position]), offsets, tile, start))
        rows += [np.hstack(pair) for pair in pairs]
    image = np.vstack(rows)
    out = Path(out)
    with atomic_path(out) as tmp, av.open(str(tmp), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return out
