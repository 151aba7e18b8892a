"""Preview image: a few input frames beside their styled versions, as one PNG."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np

from shared.atomic import atomic_path

TILE_WIDTH = 320


def _frames_at(path: Path, indices: Sequence[int], size: tuple[int, int]) -> Iterator[np.ndarray]:
    """RGB arrays of the frames at ``indices`` (ascending, display order), resized to ``size``; decodes no further than needed."""
    wanted = iter(indices)
    target = next(wanted, None)
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(container.streams.video[0])):
            if number == target:
                yield frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
                target = next(wanted, None)
                if target is None:
                    return


def write_preview(source: str | os.PathLike[str], styled: str | os.PathLike[str], frame_count: int, out: str | os.PathLike[str], samples: int = 3) -> Path:
    """Rows of [input | styled] for ``samples`` frames spread over the video."""
    with av.open(str(styled)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
    tile = (TILE_WIDTH, max(2, round(TILE_WIDTH * height / width / 2) * 2))
    count = max(1, min(samples, frame_count))
    indices = sorted({round(i * (frame_count - 1) / max(1, count - 1)) for i in range(count)})
    rows = [np.hstack([a, b]) for a, b in zip(_frames_at(Path(source), indices, tile), _frames_at(Path(styled), indices, tile))]
    image = np.vstack(rows)
    out = Path(out)
    with atomic_path(out) as tmp, av.open(str(tmp), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return out
