"""`--device cuda` (the GPU cluster's worker command) refuses to start, in one line, when its engines would
quietly run on the CPU: a PyTorch without CUDA, no CUDA device, or an ONNX Runtime without its CUDA
provider (the CPU `onnxruntime` installed beside `onnxruntime-gpu` overwrites it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpu_job.worker import resolve_device
from shared.errors import InvalidInputError

PROVIDERS_OF_ONNXRUNTIME_GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture()
def cuda_torch(monkeypatch):
    """This machine's PyTorch as a CUDA build that sees a device."""
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_cuda_refused_when_onnxruntime_has_no_cuda_provider(cuda_torch, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(InvalidInputError) as refused:
        resolve_device("cuda")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--device cuda: ONNX Runtime") and "CUDA provider" in message
    assert "onnxruntime-gpu" in message, "says what to install"


def test_cuda_accepted_with_cuda_torch_and_the_cuda_provider(cuda_torch, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: PROVIDERS_OF_ONNXRUNTIME_GPU)
    assert resolve_device("cuda") == "cuda"


def test_cuda_refused_with_a_pytorch_built_without_cuda(monkeypatch):
    import onnxruntime
    import torch

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: PROVIDERS_OF_ONNXRUNTIME_GPU)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(InvalidInputError, match=r"^--device cuda: PyTorch \S+ is built without CUDA$"):
        resolve_device("cuda")


def test_auto_still_falls_back_to_the_cpu_without_a_gpu():
    assert resolve_device("cpu") == "cpu"
    if not Path("/proc/driver/nvidia/version").exists():
        assert resolve_device("auto") == "cpu"


def test_the_worker_refuses_to_start_in_one_line(tmp_path):
    """The real worker command, with this machine's ONNX Runtime showing only the CPU provider and PyTorch patched to
    look like a CUDA build: exit 2 and one line on stderr, before it touches any queue."""
    code = textwrap.dedent("""
        import sys, torch, onnxruntime
        torch.version.cuda = "12.8"
        torch.cuda.is_available = lambda: True
        onnxruntime.get_available_providers = lambda: ["CPUExecutionProvider"]
        from gpu_job.__main__ import main
        sys.exit(main(["worker", "--device", "cuda", "--idle-seconds", "1"]))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: ONNX Runtime"), run.stderr[-2000:]


def test_cuda_refused_when_the_cuda_provider_is_built_in_but_cannot_load(monkeypatch):
    """The provider list says what was compiled in; a session falls back to the CPU when CUDA's libraries cannot load.
    Here (no GPU, the CPU ONNX Runtime) a session asked for CUDA really runs on the CPU: the engine must refuse it."""
    import onnxruntime

    from gpu_job.engines import onnxruntime_engine

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: PROVIDERS_OF_ONNXRUNTIME_GPU)
    model = Path(onnxruntime.__file__).parent / "datasets" / "sigmoid.onnx"
    with pytest.raises(InvalidInputError, match="could not load its CUDA provider") as refused:
        onnxruntime_engine(model, "cuda", "fp32")
    assert "\n" not in str(refused.value)
    assert onnxruntime_engine(model, "cpu", "fp32").device == "cpu"
