"""Colour: the styled video is tagged as its pixels are, its colours match the input's, and HDR comes back as SDR."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from gpu_job.colour import tone_map
from media import colour_tags, ffmpeg, rgb_frames, rgb_psnr
from shared.colour import Colour, plan_colour

PSNR_FLOOR = 28.0
PICTURE = "testsrc2=size=128x72:rate=25:duration=1,gblur=sigma=1"
TAGS = ("color_range", "color_space", "color_primaries", "color_transfer")
CLI_TRANSFERS = {"bt470bg": "gamma28"}
"""Debian's ffmpeg 5.1 takes this transfer by another name than the one ffprobe reports."""

# name: (range, matrix, primaries, transfer, encoder arguments, extra stylize arguments, expected pixel format)
# FFmpeg's H.264 decoder reports 8-bit full range as yuvj420p.
SDR = {
    "limited-bt709": ("tv", "bt709", "bt709", "bt709", ["-c:v", "libx264", "-pix_fmt", "yuv420p"], [], "yuv420p"),
    "full-bt709": ("pc", "bt709", "bt709", "bt709", ["-c:v", "libx264", "-pix_fmt", "yuv420p"], [], "yuvj420p"),
    "limited-bt601": ("tv", "smpte170m", "smpte170m", "smpte170m", ["-c:v", "libx264", "-pix_fmt", "yuv420p"], [], "yuv420p"),
    "full-bt601-pal": ("pc", "bt470bg", "bt470bg", "bt470bg", ["-c:v", "libx264", "-pix_fmt", "yuv420p"], [], "yuvj420p"),
    "10bit-limited-bt709": ("tv", "bt709", "bt709", "bt709", ["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error"], [],
                            "yuv420p"),
    "10bit-full-bt601-kept": ("pc", "smpte170m", "smpte170m", "bt709", ["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params",
                              "log-level=error"], ["--keep-10bit"], "yuv420p10le"),
}


def _stylize(stylize_bin: str, source: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([stylize_bin, "run", str(source), str(output), "--model", "identity", "--batch-frames", "13", *extra],
                          capture_output=True, text=True, timeout=300)


def _tagged_clip(path: Path, colour_range: str, matrix: str, primaries: str, transfer: str, codec: list[str]) -> Path:
    ffmpeg("-f", "lavfi", "-i", PICTURE, "-vf", f"scale=out_color_matrix={matrix}:out_range={colour_range}", *codec,
           "-color_range", colour_range, "-colorspace", matrix, "-color_primaries", primaries, "-color_trc", CLI_TRANSFERS.get(transfer, transfer),
           str(path))
    return path


def test_the_reference_conversion_follows_the_bt601_and_bt709_equations(tmp_path):
    """rgb_frames, which the PSNR checks rely on, honours matrix and range as the standards define them."""
    for matrix, (kr, kb) in {"bt709": (0.2126, 0.0722), "smpte170m": (0.299, 0.114)}.items():
        for colour_range in ("tv", "pc"):
            clip = _tagged_clip(tmp_path / f"{matrix}-{colour_range}.mkv", colour_range, matrix, "bt709", "bt709",
                                ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-frames:v", "1"])
            with av.open(str(clip)) as container:
                planes = next(container.decode(video=0)).planes
                y, u, v = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width].astype(np.float64) for p in planes)
            if colour_range == "tv":
                y, u, v = (y - 16) / 219, (u - 128) / 224, (v - 128) / 224
            else:
                y, u, v = y / 255, (u - 128) / 255, (v - 128) / 255
            red, blue = y + 2 * (1 - kr) * v, y + 2 * (1 - kb) * u
            green = (y - kr * red - kb * blue) / (1 - kr - kb)
            expected = np.clip(np.stack([red, green, blue], axis=-1) * 255, 0, 255)
            assert np.abs(rgb_frames(clip)[0] - expected).max() <= 1.0, (matrix, colour_range)


@pytest.mark.parametrize("name", list(SDR))
def test_colours_and_tags_follow_the_input(name, tmp_path, stylize_bin):
    colour_range, matrix, primaries, transfer, codec, extra, pix_fmt = SDR[name]
    source = _tagged_clip(tmp_path / "in.mkv", colour_range, matrix, primaries, transfer, codec)
    output = tmp_path / "out.mp4"
    result = _stylize(stylize_bin, source, output, *extra)
    assert result.returncode == 0, result.stderr
    want, got = colour_tags(source), colour_tags(output)
    assert [got[tag] for tag in TAGS] == [want[tag] for tag in TAGS] == [colour_range, matrix, primaries, transfer]
    assert got["pix_fmt"] == pix_fmt
    worst = min(rgb_psnr(output, source))
    assert worst >= PSNR_FLOOR, f"worst frame {worst:.2f} dB"


def test_untagged_input_is_tagged_as_players_would_guess():
    untagged = Colour(range=0, primaries=2, transfer=2, matrix=2)
    assert plan_colour(untagged, 1080).output == Colour(range=1, primaries=1, transfer=1, matrix=1)
    assert plan_colour(untagged, 480).output == Colour(range=1, primaries=6, transfer=1, matrix=6)
    assert plan_colour(untagged, 576).output == Colour(range=1, primaries=5, transfer=1, matrix=5)


def _pq_code(nits: float) -> int:
    """16-bit PQ code value of a luminance (SMPTE ST 2084 inverse EOTF)."""
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = (nits / 10000) ** m1
    return round(((c1 + c2 * y) / (1 + c3 * y)) ** m2 * 65535)


def test_tone_map_keeps_sdr_levels_and_compresses_highlights():
    pq, hlg = Colour(1, 9, 16, 9, 10), Colour(1, 9, 18, 9, 10)
    grey = {nits: tone_map(np.full((1, 1, 3), _pq_code(nits), np.uint16), pq)[0, 0] for nits in (0, 20.3, 101.5, 203, 1000, 4000)}
    assert all(len(set(value)) == 1 for value in grey.values()), "greys stay grey"
    assert grey[0][0] == 0
    assert grey[20.3][0] == round(255 * 0.1 ** (1 / 2.4)) and grey[101.5][0] == round(255 * 0.5 ** (1 / 2.4)), "below the knee: BT.1886 of nits / 203"
    assert 235 <= grey[203][0] < 250 and grey[1000][0] == 255 == grey[4000][0], "reference white just under white; the 1000-nit peak on white"
    three_quarters = round(0.75 * 65535)
    assert abs(int(tone_map(np.full((1, 1, 3), three_quarters, np.uint16), hlg)[0, 0, 0]) - int(grey[203][0])) <= 1, \
        "HLG at 75% is reference white (BT.2408)"
    red = np.array([[[40000, 0, 0]]], np.uint16)
    assert tuple(tone_map(red, pq)[0, 0, 1:]) == (0, 0) and tone_map(red, pq)[0, 0, 0] > 200, "a BT.2020 red stays red (clipped into BT.709)"


def _hdr_clip(folder: Path, transfer: str, picture: str) -> tuple[Path, Path]:
    """An SDR BT.709 clip and its HDR version (BT.2020, PQ or HLG, SDR white at the BT.2408 reference white, 203 nits)."""
    sdr = folder / f"sdr-{transfer}.mkv"
    ffmpeg("-f", "lavfi", "-i", picture, "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv444p", "-c:v", "libx264", "-qp", "0",
           "-color_range", "tv", "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", str(sdr))
    hdr = folder / f"hdr-{transfer}.mkv"
    ffmpeg("-i", str(sdr), "-vf", f"zscale=t={transfer}:m=bt2020nc:p=bt2020:r=tv:npl=203,format=yuv420p10le",
           "-c:v", "libx265", "-x265-params", "log-level=error:keyint=10", "-crf", "10",
           "-color_range", "tv", "-colorspace", "bt2020nc", "-color_primaries", "bt2020", "-color_trc", transfer, str(hdr))
    return sdr, hdr


HDR = {
    "pq": ("smpte2084", PICTURE, []),
    # zscale applies HLG's system gamma per channel, BT.2100 (and the scorer) to luminance: they agree on greys.
    "hlg-10bit-kept": ("arib-std-b67", f"{PICTURE},hue=s=0", ["--keep-10bit"]),
}


@pytest.mark.parametrize("name", list(HDR))
def test_hdr_is_tone_mapped_to_sdr_bt709(name, tmp_path, stylize_bin):
    transfer, picture, extra = HDR[name]
    sdr, hdr = _hdr_clip(tmp_path, transfer, picture)
    output = tmp_path / "out.mp4"
    result = _stylize(stylize_bin, hdr, output, *extra)
    assert result.returncode == 0, result.stderr
    assert "tone-mapped to SDR BT.709" in result.stderr
    tags = colour_tags(output)
    assert [tags[tag] for tag in TAGS] == ["tv", "bt709", "bt709", "bt709"]
    assert tags["pix_fmt"] == ("yuv420p10le" if extra else "yuv420p")
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert any("tone-mapped" in note for note in report["notes"]) and report["input"]["colour"]["transfer"] == transfer
    tone_mapped = rgb_psnr(output, sdr)
    read_as_sdr = rgb_psnr(_relabelled_sdr(hdr, tmp_path / "as-sdr.mkv"), sdr)
    assert min(tone_mapped) >= 22, f"worst frame {min(tone_mapped):.2f} dB from the SDR picture"
    assert min(tone_mapped) >= max(read_as_sdr) + 8, "no better than showing the HDR signal as SDR"


def _relabelled_sdr(hdr: Path, target: Path) -> Path:
    """The HDR stream's pixels tagged as SDR BT.709, as a player that ignores HDR shows them."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(hdr), "-c", "copy", "-bsf:v",
                    "hevc_metadata=colour_primaries=1:transfer_characteristics=1:matrix_coefficients=1", str(target)], check=True)
    return target
