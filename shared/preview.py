"""Preview image: a few input frames beside their styled versions, as one PNG.

The worker that styles a batch holding sampled frames draws their rows (:func:`draw_rows`): it has
just decoded those input frames, and the styled segment it wrote starts a GOP at each of them, so a
row costs a resize and a single decode. The rows go beside the styled segment (:func:`rows_name`),
and the preview is those few small images stacked (:func:`write_preview`): drawing it reads neither
the input nor the styled video again, in a local run or in the Function app.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av

from shared.atomic import atomic_path
from shared.decode import PNG_DEMUXER, SEGMENT_DEMUXERS, open_input, tolerant_frames
from shared.errors import PipelineError
from shared.plan import Batch

if TYPE_CHECKING:  # NumPy only where rows are drawn or stacked: a local run's own process needs neither
    import numpy as np

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


def sampled_batches(batches: Sequence[Batch], samples: int = SAMPLES) -> list[int]:
    """Positions of the batches holding a sampled frame, in order."""
    total = sum(batch.frame_count for batch in batches)
    return [position for position, batch in enumerate(batches) if preview_offsets(batch, total, samples)]


def rows_name(styled: str) -> str:
    """Where the preview rows of a styled segment go (a path or a blob name): beside it."""
    return f"{posixpath.splitext(styled)[0]}.preview.png"


def tile_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of a tile showing a styled frame of ``width`` x ``height``: :data:`TILE_WIDTH` wide, even height."""
    return TILE_WIDTH, max(2, round(TILE_WIDTH * height / width / 2) * 2)


def tile(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """A decoded frame as an RGB tile of ``size``."""
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")


def frames_at(path: Path, times: set[Fraction], size: tuple[int, int]) -> dict[Fraction, np.ndarray]:
    """Tiles of ``size`` of the frames of ``path`` shown at ``times`` (those that decode).

    Each is reached by seeking to the keyframe at or before it, and decoding from there: one frame in
    a styled segment, which starts a GOP at each sampled frame (``BatchMessage.preview_frames``). Should
    a seek land past a frame (an index without it, an open GOP), the file is decoded from its start.
    """
    found: dict[Fraction, np.ndarray] = {}
    with open_input(path, SEGMENT_DEMUXERS) as container:
        stream = container.streams.video[0]
        for target in sorted(times):
            if target not in found:
                container.seek(round(target / stream.time_base), stream=stream, backward=True)
                _collect(tolerant_frames(container, stream), stream, times, size, found, until=target, from_keyframe=True)
    if len(found) < len(times):
        with open_input(path, SEGMENT_DEMUXERS) as container:
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
            found[shown_at] = tile(frame, size)
        if shown_at == until:
            return


def draw_rows(input_tiles: Mapping[Fraction, np.ndarray], styled: Path, out: Path) -> Path | None:
    """Write the rows [input | styled] of the frames shown at the times ``input_tiles`` holds, their styled
    tiles decoded from ``styled``, as one PNG at ``out``; None (and nothing written) when none decodes."""
    import numpy as np

    if not input_tiles:
        return None
    height, width = next(iter(input_tiles.values())).shape[:2]
    outputs = frames_at(styled, set(input_tiles), (width, height))
    rows = [np.hstack((input_tiles[t], outputs[t])) for t in sorted(input_tiles) if t in outputs]
    return _write_png(np.vstack(rows), out) if rows else None


def write_preview(rows: Sequence[Path], out: str | os.PathLike[str]) -> Path:
    """Stack the row images of the sampled batches, in order, into the preview at ``out``."""
    if len(rows) == 1:  # one batch holds every sampled frame: its rows are the preview
        with atomic_path(Path(out)) as tmp:
            shutil.copyfile(rows[0], tmp)
        return Path(out)
    import numpy as np

    images = []
    for path in rows:
        with open_input(path, PNG_DEMUXER, format=PNG_DEMUXER) as container:
            images.append(next(container.decode(video=0)).to_ndarray(format="rgb24"))
    if not images:
        raise PipelineError("no frame sampled for the preview decodes")
    return _write_png(np.vstack(images), Path(out))


def _write_png(image: np.ndarray, out: Path) -> Path:
    with atomic_path(out) as tmp, av.open(str(tmp), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.options = {"compression_level": str(PNG_COMPRESSION)}
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return out
