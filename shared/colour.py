"""Colour description of a video and the colour plan of its styled version.

Codes are those of ITU-T H.273 (FFmpeg's AVCOL_* values); names are FFmpeg's. A source that leaves
a property unspecified gets the value players assume (BT.709 for HD, BT.601 for SD, limited
range), and the styled video is tagged with it, so no player has to guess again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

UNSPECIFIED = 2
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2
RANGES = {RANGE_LIMITED: "tv", RANGE_FULL: "pc"}
PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film", 9: "bt2020",
             10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "ebu3213"}
TRANSFERS = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "linear", 13: "iec61966-2-1",
             14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 18: "arib-std-b67"}
MATRICES = {0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "ycgco", 9: "bt2020nc", 10: "bt2020c"}
YUV_MATRICES = frozenset({1, 4, 5, 6, 7, 9})
"""Matrices swscale converts with; others (RGB-coded, YCgCo, constant-luminance BT.2020) are styled as the guess."""
PQ, HLG = 16, 18
BT709 = 1
SD_625_LINES = 576
CHROMA_420, CHROMA_422, CHROMA_444 = "420", "422", "444"
KEPT_CHROMA = frozenset({CHROMA_420, CHROMA_422, CHROMA_444})
"""Chroma formats x264 writes; others (4:1:1 DV, 4:4:0, 4:1:0) are written 4:2:0, and the report says so."""


@dataclass(frozen=True)
class Colour:
    """How pixel values of a video map to colours: H.273 codes plus the sample bit depth."""

    range: int
    primaries: int
    transfer: int
    matrix: int
    bits: int = 8
    chroma: str = CHROMA_420
    """Chroma subsampling of the samples, J:a:b digits: "420", "422", "444" (RGB-coded sources too), "411", "440", "410"."""

    @property
    def hdr(self) -> bool:
        return self.transfer in (PQ, HLG)

    def names(self) -> dict[str, str]:
        return {
            "range": RANGES.get(self.range, "unknown"),
            "primaries": PRIMARIES.get(self.primaries, "unknown"),
            "transfer": TRANSFERS.get(self.transfer, "unknown"),
            "matrix": MATRICES.get(self.matrix, "unknown"),
            "bits": str(self.bits),
            "chroma": self.chroma,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def resolved(colour: Colour, height: int) -> Colour:
    """``colour`` with every unspecified or unknown property replaced by what players assume for this height."""
    hd = height >= 720
    if hd:
        default_matrix = default_primaries = BT709
    elif height == SD_625_LINES:
        default_matrix = default_primaries = 5
    else:
        default_matrix = default_primaries = 6
    return Colour(
        range=colour.range if colour.range in RANGES else RANGE_LIMITED,
        primaries=colour.primaries if colour.primaries in PRIMARIES else default_primaries,
        transfer=colour.transfer if colour.transfer in TRANSFERS else BT709,
        matrix=colour.matrix if colour.matrix in YUV_MATRICES else default_matrix,
        bits=colour.bits,
        chroma=colour.chroma,
    )


@dataclass(frozen=True)
class ColourPlan:
    """How the scorer reads a source's pixels and tags the styled ones."""

    source: Colour
    """The source's colour, unspecified properties resolved."""
    output: Colour
    tone_map: bool

    def output_pix_fmt(self, width: int, height: int) -> str:
        """The styled frames' pixel format: the source's chroma format, 4:4:4 for an odd width or height."""
        chroma = CHROMA_444 if width % 2 or height % 2 else self.output.chroma
        return f"yuv{chroma}p" + ("10le" if self.output.bits > 8 else "")

    def note(self) -> str | None:
        """A line for the report when the styled video's colour or chroma format differs from the source's."""
        lines = []
        if self.tone_map:
            kind = "PQ" if self.source.transfer == PQ else "HLG"
            primaries = PRIMARIES.get(self.source.primaries, "unknown")
            lines.append(f"HDR input ({kind}, {primaries} primaries) tone-mapped to SDR BT.709 before styling "
                         f"(reference white {REFERENCE_WHITE_NITS:g} nits); output is SDR BT.709, {self.output.bits}-bit")
        elif self.source.bits > 8 and self.output.bits == 8:
            lines.append(f"{self.source.bits}-bit input styled and written as 8-bit (use --keep-10bit to keep 10-bit output)")
        if self.source.chroma != self.output.chroma:
            lines.append(f"{':'.join(self.source.chroma)} chroma written as {':'.join(self.output.chroma)} (H.264 has no "
                         f"{':'.join(self.source.chroma)})")
        return "; ".join(lines) or None


REFERENCE_WHITE_NITS = 203.0
"""HDR luminance shown as SDR white (ITU-R BT.2408 reference white)."""


def plan_colour(source: Colour, height: int, keep_10bit: bool = False) -> ColourPlan:
    """Same matrix, range, primaries and transfer as the source; HDR becomes SDR BT.709; 8-bit unless asked to keep more."""
    source = resolved(source, height)
    bits = 10 if keep_10bit and source.bits > 8 else 8
    chroma = source.chroma if source.chroma in KEPT_CHROMA else CHROMA_420
    if source.hdr:
        output = Colour(range=RANGE_LIMITED, primaries=BT709, transfer=BT709, matrix=BT709, bits=bits, chroma=chroma)
        return ColourPlan(source=source, output=output, tone_map=True)
    output = Colour(source.range, source.primaries, source.transfer, source.matrix, bits, chroma)
    return ColourPlan(source=source, output=output, tone_map=False)
