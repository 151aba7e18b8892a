"""The scorer's command line, built in one place for every launcher.

The local runner and the Functions ``local`` backend start the scorer as ``python -m gpu_job ...``
with these arguments (the Azure ML component, gpu_job/azureml/component.yml, spells out the same
flags). This module imports no torch, so launchers that never score (the Function app) can use it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from shared.plan import Batch


@dataclass(frozen=True)
class ScorerOptions:
    model: str
    device: str = "auto"
    batch_size: int = 0
    crf: int = 18
    preset: str = "medium"
    threads: int | None = None
    keep_10bit: bool = False


def scorer_args(input_path: str, output_path: str, batch: Batch, options: ScorerOptions, progress: bool = False) -> list[str]:
    args = [
        "--input", input_path,
        "--output", output_path,
        "--model", options.model,
        "--start-pts", str(batch.start_pts),
        "--time-base", batch.time_base,
        "--frames", str(batch.frame_count),
        "--device", options.device,
        "--batch-size", str(options.batch_size),
        "--crf", str(options.crf),
        "--preset", options.preset,
    ]
    if batch.end_pts is not None:
        args += ["--end-pts", str(batch.end_pts)]
    if options.threads:
        args += ["--threads", str(options.threads)]
    if options.keep_10bit:
        args.append("--keep-10bit")
    if progress:
        args.append("--progress")
    return args


def local_command(args: Sequence[str], python: str = sys.executable) -> list[str]:
    return [python, "-m", "gpu_job", *args]
