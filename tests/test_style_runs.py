"""Styles through the ``stylize`` command: listing, the sheet, any picture as a style, and the offline demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from media import audio_md5, audio_seconds, frame_timestamps, frames_at, make_clip, min_psnr
from gpu_job.styles import BUILTIN_STYLES, catalog


def _stylize(stylize_bin: str, *args: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([stylize_bin, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", size="160x90", seconds=2)


@pytest.fixture(scope="module")
def painting(tmp_path_factory) -> Path:
    """A picture with strong colour and texture: concentric hue rings, as a PNG."""
    y, x = np.mgrid[0:300, 0:400]
    rings = np.sin(np.hypot(x - 200, y - 150) / 6.0)
    rgb = np.stack([127 + 127 * rings, 127 + 127 * np.sin(x / 17.0), 127 - 127 * rings], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("styles") / "rings.png"
    Image.fromarray(rgb).save(path)
    return path


def test_styles_lists_every_name_first_on_its_line(stylize_bin):
    result = _stylize(stylize_bin, "styles")
    assert result.returncode == 0, result.stderr
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert names == [name for name, _ in catalog()]
    assert {"starry", "candy", "arbitrary", "identity", "random"} <= set(names)


def test_sheet_shows_every_builtin_style_on_a_video_frame(clip, tmp_path, stylize_bin):
    out = tmp_path / "sheet.png"
    result = _stylize(stylize_bin, "styles", "--sheet", str(clip), str(out))
    assert result.returncode == 0, result.stderr
    sheet = np.asarray(Image.open(out).convert("RGB"))
    from runner.sheet import COLUMNS, GAP, LABEL_HEIGHT, TILE_WIDTH

    tile_height = round(TILE_WIDTH * 90 / 160)
    rows = -(-(len(BUILTIN_STYLES) + 1) // COLUMNS)
    assert sheet.shape == (rows * (tile_height + LABEL_HEIGHT + GAP) + GAP, COLUMNS * (TILE_WIDTH + GAP) + GAP, 3)
    tiles = []
    for number in range(len(BUILTIN_STYLES) + 1):
        row, column = divmod(number, COLUMNS)
        x, y = GAP + column * (TILE_WIDTH + GAP), GAP + row * (tile_height + LABEL_HEIGHT + GAP)
        tiles.append(sheet[y : y + tile_height, x : x + TILE_WIDTH])
    assert len({tile.tobytes() for tile in tiles}) == len(tiles), "every tile is a different picture"
    bad = _stylize(stylize_bin, "styles", "--sheet", str(tmp_path / "missing.mp4"), str(tmp_path / "x.png"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("stylize: error:")


def test_style_image_run_is_frame_exact_and_styled(clip, painting, tmp_path, stylize_bin):
    output = tmp_path / "painted.mp4"
    result = _stylize(stylize_bin, "run", str(clip), str(output), "--style-image", str(painting), "--style-strength", "0.9",
                      "--batch-frames", "17", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert frame_timestamps(output) == frame_timestamps(clip)
    assert audio_md5(output) == audio_md5(clip)
    for before, after in zip(audio_seconds(clip), audio_seconds(output)):
        assert abs(after - before) < 0.001
    indices = list(range(len(frame_timestamps(clip))))
    for before, after in zip(frames_at(clip, indices, 160, 90), frames_at(output, indices, 160, 90), strict=True):
        mse = np.mean((before.astype(float) - after.astype(float)) ** 2)
        assert 10 * np.log10(255**2 / mse) < 20, "the painting's style should change every frame"
    report = json.loads((tmp_path / "painted.report.json").read_text())
    assert report["model"]["used"] == "arbitrary"
    assert report["model"]["styler"] == {"model": "arbitrary", "style": "rings.png", "engine": "onnxruntime", "device": "cpu",
                                         "precision": "int8", "streams": 1, "strength": 0.9}
    assert "engine onnxruntime" in result.stderr


def test_builtin_style_run_reports_openvino(clip, tmp_path, stylize_bin):
    output = tmp_path / "starry.mp4"
    result = _stylize(stylize_bin, "run", str(clip), str(output), "--model", "starry+ember", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    styler = json.loads((tmp_path / "starry.report.json").read_text())["model"]["styler"]
    assert 1 <= styler.pop("streams") <= (os.cpu_count() or 1), "OpenVINO runs a stream per share of the cores"
    assert styler == {"model": "multistyle26", "style": "starry:0.5+ember:0.5", "engine": "openvino", "device": "cpu",
                      "precision": "fp32", "strength": 1.0}
    assert min_psnr(output, clip)[0] < 20


@pytest.mark.parametrize("extra, message", [
    (["--style-image", "{junk}"], "not a picture Pillow can read"),
    (["--style-image", "{missing}"], "No such file"),
    (["--model", "starry", "--style-image", "{painting}"], "--style-image goes with --model arbitrary"),
    (["--model", "arbitrary"], "--style-image goes with --model arbitrary"),
    (["--model", "starry", "--style-strength", "2"], "--style-strength must be between 0 and 1"),
])
def test_bad_style_requests_fail_in_one_line_before_any_work(extra, message, clip, painting, tmp_path, stylize_bin):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg at all")
    args = [a.format(junk=junk, missing=tmp_path / "missing.png", painting=painting) for a in extra]
    output = tmp_path / "out.mp4"
    result = _stylize(stylize_bin, "run", str(clip), str(output), *args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not output.exists()


def test_offline_demo_styles_the_film_with_a_real_style(tmp_path, stylize_bin):
    out = tmp_path / "demo"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "STYLIZE": stylize_bin,
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    for label, name in (("output:", "demo-styled.mp4"), ("preview:", "demo-styled.preview.png"), ("report:", "demo-styled.report.json")):
        assert f"{label}" in result.stdout and str(out / name) in result.stdout
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "demo-styled.report.json").read_text())
    assert report["model"]["used"] == report["model"]["requested"] == "starry"
    assert "fallback_reason" not in report["model"]
    assert report["model"]["styler"]["model"] == "multistyle26" and report["model"]["styler"]["engine"] == "openvino"
    assert report["input"]["frame_count"] == report["frames"] == 132
    assert [track["kind"] for track in report["input"]["tracks"]] == ["audio"], "the film's sound is kept"
    assert "warning" not in result.stderr.lower()
