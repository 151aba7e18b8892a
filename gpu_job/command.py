"""The scorer's command line, built in one place for every launcher.

The local runner, the Functions ``local`` backend and the Azure ML command job all start the scorer
as ``python -m gpu_job ...`` with these arguments. This module imports no torch, so launchers
that never score (the Function app) can use it.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from shared.plan import Batch

AML_PLACEHOLDER = re.compile(r"\$\{\{(inputs|outputs)\.[A-Za-z_][A-Za-z0-9_]*\}\}(/[A-Za-z0-9._/-]*)?")


@dataclass(frozen=True)
class ScorerOptions:
    model: str
    device: str = "auto"
    batch_size: int = 0
    crf: int = 18
    preset: str = "medium"
    threads: int | None = None


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
    if progress:
        args.append("--progress")
    return args


def local_command(args: Sequence[str], python: str = sys.executable) -> list[str]:
    return [python, "-m", "gpu_job", *args]


def shell_command(args: Sequence[str], python: str = "python") -> str:
    """One shell line, for job specs that take a command string (Azure ML).

    Azure ML ``${{inputs.x}}`` placeholders stay unquoted so the service can substitute them;
    every other argument is shell-quoted.
    """
    words = [python, "-m", "gpu_job", *args]
    return " ".join(word if AML_PLACEHOLDER.fullmatch(word) else shlex.quote(word) for word in words)
