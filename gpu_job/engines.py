"""Compile a style network once for a device, with the engine measured fastest there (bench/engines.py).

- CPU: OpenVINO, at its default precision (bf16 where the CPU has it, else fp32), or fp32 when asked.
  The int8 arbitrary-style pair is the exception: it runs in ONNX Runtime, its reference engine,
  because OpenVINO's int8 kernels round differently and their output ends about 28 dB from the
  original's (bench/RESULTS.md), below the 40 dB we require.
- CUDA: PyTorch fp16 + channels_last for TransformerNet (fp32 when asked); ONNX Runtime's CUDA
  provider for the ONNX networks, as shipped (fp32 weights, or int8). Without onnxruntime-gpu the
  ONNX networks run on the CPU engines instead, and the styler's description says so.

Every engine is called with numpy arrays and returns the network's first output as a float32 array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import PipelineError

PRECISIONS = ("auto", "fp32")
_OPENVINO_PRECISION = {"bf16": "bf16", "f16": "fp16", "f32": "fp32"}


@dataclass(frozen=True)
class Engine:
    """A compiled network: ``run(*inputs)`` returns its first output."""

    name: str
    device: str
    precision: str
    run: Callable[..., np.ndarray]

    def describe(self) -> dict:
        return {"engine": self.name, "device": self.device, "precision": self.precision}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")


def openvino_engine(model, precision: str, threads: int | None = None) -> Engine:
    """Compile an OpenVINO model (an ``ov.Model`` or a model file path) for the CPU."""
    import openvino as ov

    check_precision(precision)
    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def run(*inputs: np.ndarray) -> np.ndarray:
        return request.infer(list(inputs), share_inputs=True)[0].copy()

    return Engine("openvino", "cpu", _OPENVINO_PRECISION.get(used, used), run)


def onnxruntime_engine(model: bytes | Path, device: str, precision_label: str, threads: int | None = None) -> Engine:
    """An ONNX Runtime session on ``device`` (CUDA provider when asked for and available)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)
    names = [node.name for node in session.get_inputs()]

    def run(*inputs: np.ndarray) -> np.ndarray:
        return session.run(None, dict(zip(names, inputs)))[0]

    return Engine("onnxruntime", device, precision_label, run)


def onnx_device(device: str) -> str:
    """Where ONNX networks run: CUDA only if this ONNX Runtime has its CUDA provider (onnxruntime-gpu), else the CPU."""
    import onnxruntime as ort

    return "cuda" if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def torch_engine(module, device: str, precision: str) -> Engine:
    """PyTorch eager on CUDA: fp16 + channels_last unless fp32 is asked for."""
    import torch

    check_precision(precision)
    half = precision == "auto"
    target = torch.device(device)
    module = module.eval().to(target)
    if half:
        module = module.half().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(x).to(target, non_blocking=True)
        tensor = tensor.half().contiguous(memory_format=torch.channels_last) if half else tensor
        return module(tensor).float().cpu().numpy()

    return Engine("pytorch", device, "fp16" if half else "fp32", run)


def dynamic_height_width(path: Path) -> bytes:
    """The ONNX file with the height and width of its NHWC inputs and outputs made free (the network is fully convolutional)."""
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[3].dim_value == 3:
            dims[1].dim_param, dims[2].dim_param = "height", "width"
    return model.SerializeToString()
