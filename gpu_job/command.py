"""The worker's options and command line, built in one place for every launcher.

The local runner and the Functions ``local`` backend start ``python -m gpu_job worker`` with these
arguments; the Azure ML component (gpu_job/azureml/component.yml) runs the same command. This module
imports no torch, so launchers that never score (the Function app, the runner's main process) can use it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from shared.config import Settings
from shared.messages import ModelSpec


@dataclass(frozen=True)
class WorkerOptions:
    device: str = "auto"
    batch_size: int = 0
    """Frames per forward pass; 0 picks by device."""
    crf: int = Settings.crf
    preset: str = Settings.preset
    threads: int | None = None
    """CPU threads for PyTorch; None keeps its default."""

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> WorkerOptions:
        return cls(**{"batch_size": settings.infer_batch, "crf": settings.crf, "preset": settings.preset, **overrides})

    def args(self) -> list[str]:
        args = ["--device", self.device, "--batch-size", str(self.batch_size), "--crf", str(self.crf), "--preset", self.preset]
        if self.threads:
            args += ["--threads", str(self.threads)]
        return args


def worker_command(options: WorkerOptions | None, *, work: str = "batches", stdio: bool = False, preload: ModelSpec | None = None,
                   python: str = sys.executable) -> list[str]:
    """``python -m gpu_job worker``: from the queue of its ``work``, or (``stdio``) from JSON lines on standard input.

    ``options`` are the styling options and ``preload`` a model to load before the first batch (batches); shards take none.
    """
    command = [python, "-m", "gpu_job", "worker", "--work", work, *(options.args() if options else [])]
    if stdio:
        command.append("--stdio")
    if preload:
        command += ["--preload", preload.model, "--precision", preload.precision, "--style-strength", str(preload.style_strength)]
        if preload.style_image:
            command += ["--style-image", preload.style_image]
    return command
