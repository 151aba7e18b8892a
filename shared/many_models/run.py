"""A run's two coordinator steps around the scoring: plan a pass (what is left, in shards), then finish it.

Whoever scores the shards in between (local worker processes, queue workers) hands each result to
:meth:`RunState.record` as it arrives; a model that raised is one failed model in a result. The
same two steps serve a local run (files in a folder) and an Azure run (blobs, in activities).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.many_models.manifest import Manifest
from shared.many_models.report import build_report, check_threshold
from shared.many_models.run_state import PREDICTIONS_NAME, REPORT_NAME, SHARDS_DIR, FolderStore, RunState, Store, write_text
from shared.many_models.schema import Window, check_columns
from shared.many_models.shards import ShardSpec, plan_shards


@dataclass
class RunPlan:
    state: RunState
    manifest: Manifest
    shards: list[ShardSpec]


def plan_pass(state: RunState, manifest: Manifest, models_per_shard: int, *, models_dir: str, data: str, out_dir: str) -> RunPlan:
    """Shard the manifest's models that no earlier pass finished; ``out_dir`` is where the shards write (the run's ``shards/``)."""
    finished = state.finished()
    left = [entry.key for name, entry in manifest.models.items() if name not in finished]
    shards = plan_shards(state.run_id, left, models_per_shard, models_dir=models_dir, data=data, window=state.window,
                          out_dir=out_dir, inputs=state.inputs)
    return RunPlan(state=state, manifest=manifest, shards=shards)


def plan_run(data: Path, models_dir: Path, out_dir: Path, window: Window, models_per_shard: int) -> RunPlan:
    """Check the inputs, open the run's folder (refusing one that holds another window), shard what is left."""
    manifest = Manifest.load(models_dir)
    if not Path(data).is_dir():  # a folder of Capture files is checked event by event as it is read
        check_columns(data, manifest.key_columns)
    store = FolderStore(Path(out_dir))
    state = RunState.open(store, window, manifest.key_columns)
    return plan_pass(state, manifest, models_per_shard, models_dir=str(Path(models_dir).resolve()), data=str(Path(data).resolve()),
                     out_dir=str((Path(out_dir) / SHARDS_DIR).resolve()))


def finish_run(state: RunState, manifest: Manifest, outputs: Store, max_failed_fraction: float, timings: dict[str, float],
               context: dict, elapsed: Callable[[], float]) -> dict:
    """Merge every finished model's predictions and write the report, both into ``outputs``; returns the report.

    ``timings`` holds the caller's stages (seconds); ``elapsed()`` the seconds the run has taken so far.
    """
    check_threshold(max_failed_fraction)
    began = time.perf_counter()
    rows_total = state.merge_predictions(outputs)
    timings = {**timings, "merge": time.perf_counter() - began, "total": elapsed()}
    context = {**context, "predictions": outputs.where(PREDICTIONS_NAME)}
    report = build_report(state, manifest, max_failed_fraction, rows_total, timings, context)
    write_text(outputs, REPORT_NAME, json.dumps(report, indent=1) + "\n")
    return report
