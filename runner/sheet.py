"""``stylize styles --sheet``: every built-in style on one frame, labelled, so a person can pick one."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from shared.atomic import atomic_path
from shared.errors import InvalidInputError

STYLED_WIDTH = 640
"""Frames are styled at this width (the strokes' scale in a typical video), then shrunk into tiles."""
TILE_WIDTH = 320
COLUMNS = 6
LABEL_HEIGHT = 24
GAP = 6


def read_frame(source: Path) -> np.ndarray:
    """An RGB frame from a picture, or from the middle of a video."""
    import av
    from PIL import Image, UnidentifiedImageError

    from gpu_job.styles import STYLE_IMAGE_FORMATS
    from shared.decode import UPLOAD_DEMUXERS, open_input

    if not source.is_file():
        raise InvalidInputError(f"{source}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=STYLE_IMAGE_FORMATS) as image:
                return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        pass
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidInputError(f"{source}: a picture too large to read") from None
    try:
        with open_input(source, UPLOAD_DEMUXERS) as container:
            stream = container.streams.video[0]
            if container.duration:
                container.seek(container.duration // 2)
            return next(container.decode(stream)).to_ndarray(format="rgb24")
    except (av.FFmpegError, IndexError, StopIteration):
        raise InvalidInputError(f"{source}: neither a picture nor a video with frames") from None


def render_sheet(frame: np.ndarray, device: str = "cpu") -> np.ndarray:
    """A grid of the frame and each built-in style applied to it, names under each tile."""
    from PIL import Image, ImageDraw, ImageFont

    from gpu_job.models import multistyle_engine, multistyle_frame, multistyle_inputs, per_frame
    from gpu_job.styler import FrameStyler
    from gpu_job.styles import BUILTIN_STYLES

    height, width = frame.shape[:2]
    scale = min(1.0, STYLED_WIDTH / width)
    source = Image.fromarray(frame).resize((max(2, round(width * scale)), max(2, round(height * scale))), Image.LANCZOS)
    styled_input = np.asarray(source)[None]
    styles = iter(np.eye(len(BUILTIN_STYLES), dtype=np.float32))  # the frame once per style, with that style's weights
    network = per_frame(multistyle_engine(device), lambda frame: multistyle_inputs(frame, next(styles)), multistyle_frame)
    styled = FrameStyler(network, {})(np.repeat(styled_input, len(BUILTIN_STYLES), axis=0))
    tiles = [("original", source), *((name, Image.fromarray(tile)) for (name, _), tile in zip(BUILTIN_STYLES, styled))]
    tile_height = round(TILE_WIDTH * source.height / source.width)
    rows = -(-len(tiles) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * (TILE_WIDTH + GAP) + GAP, rows * (tile_height + LABEL_HEIGHT + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for number, (name, image) in enumerate(tiles):
        row, column = divmod(number, COLUMNS)
        x, y = GAP + column * (TILE_WIDTH + GAP), GAP + row * (tile_height + LABEL_HEIGHT + GAP)
        sheet.paste(image.resize((TILE_WIDTH, tile_height), Image.LANCZOS), (x, y))
        draw.text((x + 2, y + tile_height + 3), name, fill="black", font=font)
    return np.asarray(sheet)


def write_sheet(source: Path, out: Path, device: str = "cpu") -> Path:
    from PIL import Image

    if out.suffix.lower() != ".png":
        raise InvalidInputError(f"{out}: the sheet is a PNG; name it .png")
    sheet = render_sheet(read_frame(source), device)
    with atomic_path(out) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return out
