"""Pixels in and out of the style network: YUV to RGB and back with the source's matrix and range,
and HDR (PQ or HLG) tone-mapped to SDR BT.709 first, since the networks learnt from SDR pictures.

Tone mapping, in display light: decode the transfer to nits (PQ directly; HLG through its BT.2100
OOTF on a 1000-nit display), convert the primaries to BT.709, scale so that the BT.2408 reference
white (203 nits) is SDR white, compress luminance above a knee smoothly so that the assumed peak
(1000 nits) lands on white, keep hue by scaling the three channels alike, and encode for a BT.1886
display (gamma 2.4). SDR content carried in PQ or HLG at reference white comes back nearly as it was.
"""

from __future__ import annotations

import functools

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from shared.colour import HLG, PQ, REFERENCE_WHITE_NITS, Colour, ColourPlan

RESAMPLING = "LANCZOS"
"""Chroma is resampled going to RGB and back; Lanczos keeps about 4 dB more of it than swscale's default."""
PEAK_NITS = 1000.0
"""Assumed brightest HDR highlight: the BT.2100 HLG reference display, and what phones master PQ to."""
KNEE = 0.8
"""Relative SDR luminance below which tone mapping changes nothing."""
SDR_GAMMA = 2.4
SWS_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9}
"""swscale's number for each H.273 matrix in :data:`shared.colour.YUV_MATRICES` (BT.470BG and SMPTE 170M are both BT.601)."""

_TO_BT709 = {
    9: np.array([[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]], np.float32),
    12: np.array([[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0], [-0.0197, -0.0786, 1.0979]], np.float32),
}
"""Linear-light RGB to BT.709 RGB from BT.2020 (9) and Display P3 (12) primaries."""
_LUMA_BT2020 = np.array([0.2627, 0.6780, 0.0593], np.float32)
_LUMA_BT709 = np.array([0.2126, 0.7152, 0.0722], np.float32)


def to_rgb(frame: av.VideoFrame, plan: ColourPlan) -> np.ndarray:
    """(H, W, 3) uint8 RGB of ``frame``: the source's own matrix and range, HDR tone-mapped to SDR BT.709."""
    options = dict(src_colorspace=_sws_matrix(plan.source), src_color_range=plan.source.range, interpolation=RESAMPLING)
    if plan.tone_map:
        return tone_map(frame.to_ndarray(format="rgb48le", **options), plan.source)
    return frame.to_ndarray(format="rgb24", **options)


def from_rgb(rgb: np.ndarray, plan: ColourPlan, reformatter: VideoReformatter) -> av.VideoFrame:
    """A frame of ``plan.output_pix_fmt`` (for its size) holding ``rgb``, converted with the output's matrix and range and tagged with its colour.

    ``reformatter``: one per thread, used for every frame: it keeps swscale's context, whose set-up
    with Lanczos costs more than the conversion itself (0.5 ms against 0.2 ms a frame at 256x144).
    """
    out = plan.output
    frame = reformatter.reformat(
        av.VideoFrame.from_ndarray(rgb, format="rgb24"),
        format=plan.output_pix_fmt(rgb.shape[1], rgb.shape[0]), dst_colorspace=_sws_matrix(out), dst_color_range=out.range, interpolation=RESAMPLING,
    )
    frame.color_primaries, frame.color_trc = out.primaries, out.transfer
    return frame


def tag_encoder(codec_context, colour: Colour) -> None:
    """Signal ``colour`` in the encoded stream (and so in the container's colour box)."""
    codec_context.color_range = colour.range
    codec_context.color_primaries = colour.primaries
    codec_context.color_trc = colour.transfer
    codec_context.colorspace = colour.matrix


def _sws_matrix(colour: Colour) -> int:
    return SWS_MATRICES[colour.matrix]


def tone_map(rgb16: np.ndarray, source: Colour) -> np.ndarray:
    """(H, W, 3) uint16 non-linear RGB in PQ or HLG -> (H, W, 3) uint8 SDR BT.709 RGB."""
    if source.transfer == PQ:
        nits = np.take(_pq_nits(), rgb16)
    elif source.transfer == HLG:
        scene = np.take(_hlg_scene(), rgb16)
        nits = scene * (PEAK_NITS * np.power(np.maximum(scene @ _LUMA_BT2020, 1e-6), 0.2))[..., None]
    else:
        raise ValueError(f"transfer {source.transfer} is not HDR")
    to_relative = _TO_BT709.get(source.primaries, np.eye(3, dtype=np.float32)) / np.float32(REFERENCE_WHITE_NITS)
    relative = np.maximum(nits @ to_relative.T, 0.0)
    luminance = relative @ _LUMA_BT709
    gain = np.divide(_compress(luminance, PEAK_NITS / REFERENCE_WHITE_NITS), luminance, out=np.zeros_like(luminance), where=luminance > 0)
    relative *= gain[..., None]
    np.minimum(relative, 1.0, out=relative)
    return np.take(_sdr_codes(), (relative * 65535 + 0.5).astype(np.uint16))


def _compress(luminance: np.ndarray, peak: float) -> np.ndarray:
    """Identity below :data:`KNEE`; above it an extended Reinhard curve with slope 1 at the knee that maps ``peak`` to 1."""
    excess = np.maximum(luminance - KNEE, 0.0) / (1.0 - KNEE)
    white = (peak - KNEE) / (1.0 - KNEE)
    above = KNEE + (1.0 - KNEE) * excess * (1.0 + excess / white**2) / (1.0 + excess)
    return np.where(luminance > KNEE, above, luminance).astype(np.float32)


_SIGNAL = np.arange(65536, dtype=np.float64) / 65535.0
"""Every 16-bit code value, as a signal in [0, 1]: the transfer functions are tabulated over it."""


@functools.cache
def _pq_nits() -> np.ndarray:
    """SMPTE ST 2084 EOTF: 16-bit code -> nits."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    power = np.power(_SIGNAL, 1.0 / m2)
    return (10000.0 * np.power(np.maximum(power - c1, 0.0) / (c2 - c3 * power), 1.0 / m1)).astype(np.float32)


@functools.cache
def _hlg_scene() -> np.ndarray:
    """BT.2100 HLG inverse OETF: 16-bit code -> scene light in [0, 1] (the OOTF, which needs all three channels, follows)."""
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    with np.errstate(over="ignore"):
        high = (np.exp((_SIGNAL - c) / a) + b) / 12.0
    return np.where(_SIGNAL <= 0.5, _SIGNAL * _SIGNAL / 3.0, high).astype(np.float32)


@functools.cache
def _sdr_codes() -> np.ndarray:
    """Inverse BT.1886 EOTF (gamma 2.4): 16-bit linear light -> 8-bit code."""
    return np.rint(np.power(_SIGNAL, 1.0 / SDR_GAMMA) * 255.0).astype(np.uint8)
