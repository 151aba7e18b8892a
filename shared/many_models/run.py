"""A run's two coordinator steps around the scoring: plan it (what is left, in shards), then finish it.

Whoever scores the shards in between (a local process pool, queue workers) records each result
with :meth:`RunState.record` as it arrives; a model that raised is one failed model in a result.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from shared.atomic import write_text_atomic
from shared.many_models.manifest import Manifest
from shared.many_models.report import build_report, check_threshold
from shared.many_models.run_state import REPORT_NAME, RunState
from shared.many_models.schema import Window, check_columns
from shared.many_models.shards import ShardResult, ShardSpec, plan_shards


@dataclass
class RunPlan:
    state: RunState
    manifest: Manifest
    shards: list[ShardSpec]
    skipped: set[str]
    """Model ids already finished by an earlier pass over this window."""
    data: Path
    models_dir: Path


def plan_run(data: Path, models_dir: Path, out_dir: Path, window: Window, models_per_shard: int) -> RunPlan:
    """Check the inputs, open the run's folder (refusing one that holds another window), shard what is left."""
    manifest = Manifest.load(models_dir)
    check_columns(data, manifest.key_columns)
    state = RunState.open(Path(out_dir), window, manifest.key_columns)
    finished = state.finished() & manifest.models.keys()
    left = [entry.key for name, entry in manifest.models.items() if name not in finished]
    shards = plan_shards(state.run_id, left, models_per_shard, models_dir=str(Path(models_dir).resolve()),
                         data=str(Path(data).resolve()), window=window, out_dir=str(state.shards_dir.resolve()))
    return RunPlan(state=state, manifest=manifest, shards=shards, skipped=finished, data=Path(data), models_dir=Path(models_dir))


def finish_run(plan: RunPlan, pass_results: list[ShardResult], max_failed_fraction: float, timings: dict[str, float],
               workers: int, started: float) -> dict:
    """Merge every finished model's predictions and write the report; returns the report.

    ``timings`` holds the caller's stages (seconds); ``started`` is the run's ``time.perf_counter()`` start.
    """
    check_threshold(max_failed_fraction)
    began = time.perf_counter()
    predictions, rows_total = plan.state.merge_predictions()
    timings = {**timings, "merge": time.perf_counter() - began, "total": time.perf_counter() - started}
    context = {"data": str(plan.data), "models_dir": str(plan.models_dir), "predictions": str(predictions),
               "workers": workers, "models_per_shard": max((len(shard.keys) for shard in plan.shards), default=0)}
    report = build_report(plan.state, plan.manifest, pass_results, plan.skipped, max_failed_fraction, rows_total, timings, context)
    write_text_atomic(plan.state.out_dir / REPORT_NAME, json.dumps(report, indent=1) + "\n")
    return report
