"""Compile a style network once for a device, with the engine measured fastest there (bench/engines.py).

- CPU: OpenVINO, at its default precision (bf16 where the CPU has it, else fp32), or fp32 when asked,
  compiled for throughput: several streams, each on its own share of the cores, each frame on one
  stream. A frame then never waits for a core that the decoder or encoder holds, as it does when one
  frame is split over every core (bench/RESULTS.md: the segment pass at 256x144 went from x1.13-x1.25
  of a bare loop to x1.05-x1.14). Each stream holds its own activations: a worker styling 1280x720
  on this 2-core machine peaks at 664 MiB instead of 391 MiB; ``threads`` bounds the streams.
  The int8 arbitrary-style pair is the exception: it runs in ONNX Runtime, its reference engine,
  because OpenVINO's int8 kernels round differently and their output ends about 28 dB from the
  original's (bench/RESULTS.md), below the 40 dB we require.
- CUDA: PyTorch fp16 + channels_last for TransformerNet (fp32 when asked); ONNX Runtime's CUDA
  provider for the ONNX networks, as shipped (fp32 weights, or int8). ``--device cuda`` refuses to
  start without CUDA PyTorch or onnxruntime-gpu (``check_cuda_engines``); with ``--device auto`` the
  ONNX networks then run on the CPU engines instead, and the styler's description says so.

Every engine is called with numpy arrays and returns the network's first output as a float32 array;
``stream`` keeps every stream of an engine busy and gives the outputs back in input order.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import InvalidInputError, PipelineError

PRECISIONS = ("auto", "fp32")
_OPENVINO_PRECISION = {"bf16": "bf16", "f16": "fp16", "f32": "fp32"}


Inputs = tuple[np.ndarray, ...]
"""The arrays of one call of a network, in the order of its inputs."""


@dataclass(frozen=True)
class Engine:
    """A compiled network: ``stream`` maps calls to first outputs, in order; ``run(*inputs)`` does one call."""

    name: str
    device: str
    precision: str
    stream: Callable[[Iterable[Inputs]], Iterator[np.ndarray]]
    streams: int = 1
    """Calls it runs at once."""

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        (output,) = self.stream([inputs])
        return output

    def describe(self) -> dict:
        return {"engine": self.name, "device": self.device, "precision": self.precision, "streams": self.streams}


def one_at_a_time(run: Callable[..., np.ndarray]) -> Callable[[Iterable[Inputs]], Iterator[np.ndarray]]:
    """``stream`` for an engine that runs one call at a time."""
    return lambda calls: (run(*inputs) for inputs in calls)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")


def import_openvino():
    """OpenVINO, without its usage telemetry.

    Unless a user has opted out (a consent file under ~/intel) or CI=true is set, importing OpenVINO sends
    a usage event to Google Analytics from a thread the interpreter waits for at exit: about 0.1 s of
    every worker's start and exit here, and traffic that no node running our workers should send. With
    its telemetry package unimportable, OpenVINO falls back to its own no-op stub.
    """
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def openvino_engine(model, precision: str, threads: int | None = None, streams: int = 0) -> Engine:
    """Compile an OpenVINO model (an ``ov.Model`` or a model file path) for the CPU, for throughput.

    ``threads``: cores to use (all if None); ``streams``: calls run at once, each on its share of
    them (0: OpenVINO's choice for the cores; each stream holds its own activations).
    """
    ov = import_openvino()
    check_precision(precision)
    config: dict = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if streams:
        config["NUM_STREAMS"] = streams
    compiled = ov.Core().compile_model(model, "CPU", config)
    requests = [compiled.create_infer_request() for _ in range(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))]
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def stream(calls: Iterable[Inputs]) -> Iterator[np.ndarray]:
        in_flight: deque = deque()  # (request, its inputs, kept alive until it is done), oldest first
        try:
            for inputs in calls:
                if len(in_flight) < len(requests):
                    request = requests[len(in_flight)]
                    output = None
                else:
                    request, _ = in_flight.popleft()
                    request.wait()
                    output = request.get_output_tensor(0).data.copy()
                request.start_async(list(inputs), share_inputs=True)
                in_flight.append((request, inputs))
                if output is not None:
                    yield output
            while in_flight:
                request, _ = in_flight.popleft()
                request.wait()
                yield request.get_output_tensor(0).data.copy()
        finally:
            for request, _ in in_flight:  # the caller stopped early, or a call failed: let the others finish
                request.wait()

    return Engine("openvino", "cpu", _OPENVINO_PRECISION.get(used, used), stream, len(requests))


def onnxruntime_engine(model: bytes | Path, device: str, precision_label: str, threads: int | None = None) -> Engine:
    """An ONNX Runtime session on ``device`` (CUDA provider when asked for and available)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # The provider is built in but could not load (CUDA or cuDNN libraries missing, an older driver): the
        # session would run on the CPU, quietly, while the report says cuda.
        raise InvalidInputError(f"--device cuda: ONNX Runtime {ort.__version__} could not load its CUDA provider "
                                "(its CUDA and cuDNN libraries, or a driver new enough for them)")
    names = [node.name for node in session.get_inputs()]

    def run(*inputs: np.ndarray) -> np.ndarray:
        return session.run(None, dict(zip(names, inputs)))[0]

    return Engine("onnxruntime", device, precision_label, one_at_a_time(run))


def check_cuda_engines() -> None:
    """Refuse, in one line, a CUDA device on which the engines would quietly run on the CPU: a PyTorch
    built without CUDA, no CUDA device, or an ONNX Runtime without its CUDA provider (the CPU
    ``onnxruntime`` installed beside ``onnxruntime-gpu`` overwrites the same package)."""
    import onnxruntime as ort
    import torch

    if torch.version.cuda is None:
        raise InvalidInputError(f"--device cuda: PyTorch {torch.__version__} is built without CUDA")
    if not torch.cuda.is_available():
        raise InvalidInputError("--device cuda: no CUDA device is available")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise InvalidInputError(f"--device cuda: ONNX Runtime {ort.__version__} has no CUDA provider "
                                "(install onnxruntime-gpu alone, without onnxruntime)")


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

    return Engine("pytorch", device, "fp16" if half else "fp32", one_at_a_time(run))


def dynamic_height_width(path: Path) -> bytes:
    """The ONNX file with the height and width of its NHWC inputs and outputs made free (the network is fully convolutional)."""
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[3].dim_value == 3:
            dims[1].dim_param, dims[2].dim_param = "height", "width"
    return model.SerializeToString()
