"""Preview image: a few input frames beside their styled versions, as one PNG.

It reads only the batches holding the sampled frames (their input segments and styled segments),
so its cost does not grow with the video's length, and the Function app never downloads the
whole input again to draw it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from shared.atomic import atomic_path
from shared.decode import tolerant_frames
from shared.errors import PipelineError
from shared.plan import Batch
from shared.probe import frame_times

TILE_WIDTH = 320
SAMPLES = 3
PNG_COMPRESSION = 1
"""zlib level: 1 writes the preview in a sixth of the default's (6) time, for a file a few percent larger."""


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


def _frames_at(path: Path, times: set[Fraction], size: tuple[int, int]) -> dict[Fraction, np.ndarray]:
    """RGB arrays, resized to ``size``, of the frames of ``path`` shown at ``times`` (those that decode)."""
    found = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in tolerant_frames(container, stream):
            shown_at = frame.pts * stream.time_base
            if shown_at in times:
                found[shown_at] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
                if len(found) == len(times):
                    break
    return found


def write_preview(
    batches: Sequence[Batch],
    segments: Sequence[Path] | Mapping[int, Path],
    styled: Sequence[Path] | Mapping[int, Path],
    out: str | os.PathLike[str],
    samples: int = SAMPLES,
) -> Path:
    """Rows of [input | styled] for ``samples`` frames spread over the video (less any FFmpeg could not decode).

    ``segments`` and ``styled`` give, by batch position, the input segment and the styled segment;
    only the positions :func:`sampled_batches` names are read. Frames are paired by timestamp.
    """
    picks = sampled_batches(batches, samples)
    with av.open(str(styled[next(iter(picks))])) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
    tile = (TILE_WIDTH, max(2, round(TILE_WIDTH * height / width / 2) * 2))
    rows = []
    for position, offsets in picks.items():
        batch = batches[position]
        planned = frame_times(segments[position], batch.start_time, batch.end_time)
        times = {planned[offset] for offset in offsets}
        with ThreadPoolExecutor(2) as pool:  # FFmpeg decodes without the GIL: both files at once
            inputs, outputs = pool.map(lambda path: _frames_at(Path(path), times, tile), (segments[position], styled[position]))
        rows += [np.hstack((inputs[t], outputs[t])) for t in sorted(times) if t in inputs and t in outputs]
    if not rows:
        raise PipelineError("no frame sampled for the preview decodes")
    image = np.vstack(rows)
    out = Path(out)
    with atomic_path(out) as tmp, av.open(str(tmp), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.options = {"compression_level": str(PNG_COMPRESSION)}
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return out
