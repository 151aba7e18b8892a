"""Preview image: a few input frames beside their styled versions, as one PNG.

It reads only the batches holding the sampled frames (their input segments and styled segments),
so its cost does not grow with the video's length, and the Function app never downloads the
whole input again to draw it. Within them it seeks: the worker starts a GOP of the styled segment
at each sampled frame, so drawing one costs a single decode there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
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
"""zlib level: 1 writes the preview in about half the time of the default (6), for a file 1-9% larger."""


def sample_indices(frame_count: int, samples: int = SAMPLES) -> list[int]:
    """Frame indices spread evenly from the first frame to the last."""
    count = max(1, min(samples, frame_count))
    return sorted({round(i * (frame_count - 1) / max(1, count - 1)) for i in range(count)})


def preview_offsets(batch: Batch, frame_count: int, samples: int = SAMPLES) -> tuple[int, ...]:
    """Offsets within ``batch`` of the frames the preview of a video of ``frame_count`` frames samples."""
    end = batch.first_frame + batch.frame_count
    return tuple(index - batch.first_frame for index in sample_indices(frame_count, samples) if batch.first_frame <= index < end)


def sampled_batches(batches: Sequence[Batch], samples: int = SAMPLES) -> dict[int, list[int]]:
    """Position of each batch holding a sampled frame -> offsets of those frames within the batch."""
    total = sum(batch.frame_count for batch in batches)
    return {position: list(offsets) for position, batch in enumerate(batches) if (offsets := preview_offsets(batch, total, samples))}


def _frames_at(path: Path, times: set[Fraction], size: tuple[int, int]) -> dict[Fraction, np.ndarray]:
    """RGB arrays, resized to ``size``, of the frames of ``path`` shown at ``times`` (those that decode).

    Each is reached by seeking to the keyframe at or before it, and decoding from there: one frame in
    a styled segment, which starts a GOP at each sampled frame (``BatchMessage.keyframes``). Should a
    seek land past a frame (an index without it, an open GOP), the file is decoded from its start.
    """
    found: dict[Fraction, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for target in sorted(times):
            if target not in found:
                container.seek(round(target / stream.time_base), stream=stream, backward=True)
                _collect(tolerant_frames(container, stream), stream, times, size, found, until=target, from_keyframe=True)
    if len(found) < len(times):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            _collect(tolerant_frames(container, stream), stream, times, size, found, until=max(times), from_keyframe=False)
    return found


def _collect(frames: Iterator[av.VideoFrame], stream, times: set[Fraction], size: tuple[int, int], found: dict[Fraction, np.ndarray],
             until: Fraction, from_keyframe: bool) -> None:
    """Add the frames shown at ``times`` to ``found``, up to the one shown at ``until``. ``from_keyframe``
    (after a seek): only frames from a keyframe shown at or before ``until`` on, which decode whole."""
    anchored = not from_keyframe
    for frame in frames:
        shown_at = frame.pts * stream.time_base
        if shown_at > until:
            return
        anchored = anchored or frame.key_frame
        if anchored and shown_at in times and shown_at not in found:
            found[shown_at] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
        if shown_at == until:
            return


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
