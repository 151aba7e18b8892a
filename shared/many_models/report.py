"""The run report: counts, per-model status with reasons, rows, timings, and the run's verdict."""

from __future__ import annotations

from shared.errors import InvalidInputError
from shared.many_models.manifest import Manifest
from shared.many_models.run_state import RunState

RUN_STATUSES = ("succeeded", "partial", "failed")
SHARD_TIMINGS = ("read", "load", "score", "write")


def check_threshold(max_failed_fraction: float) -> float:
    if not 0.0 <= max_failed_fraction <= 1.0:
        raise InvalidInputError(f"the failure threshold must be a fraction from 0 to 1, got {max_failed_fraction}")
    return max_failed_fraction


def run_status(failed: int, ok: int, total: int, max_failed_fraction: float) -> str:
    """``succeeded`` with no failure; ``failed`` past the threshold or when every model that had data failed; else ``partial``."""
    if failed == 0:
        return "succeeded"
    if ok == 0 or failed > max_failed_fraction * total:
        return "failed"
    return "partial"


def build_report(state: RunState, manifest: Manifest, max_failed_fraction: float, rows_total: int,
                 timings: dict[str, float], context: dict) -> dict:
    """Every manifest model with its standing status. Models finished by an earlier pass are ``skipped``;
    rows, shards and shard timings are this pass's."""
    standing = state.models()
    pass_results = state.pass_results()
    models = []
    counts = dict.fromkeys(("ok", "failed", "no_data"), 0)
    for name, entry in manifest.models.items():
        recorded = standing.get(name)
        if recorded is None:
            model = {"id": name, "key": list(entry.key), "status": "failed", "rows": 0, "seconds": 0.0,
                     "reason": "not scored: no result came back for its shard", "shard": None, "skipped": False}
        else:
            result = recorded.result
            model = {"id": name, "key": list(entry.key), "status": result.status, "rows": result.rows,
                     "seconds": result.seconds, "reason": result.reason, "shard": recorded.shard_id,
                     "skipped": result.status == "ok" and recorded.run_pass < state.run_pass}
        counts[model["status"]] += 1
        models.append(model)
    skipped_count = sum(model["skipped"] for model in models)
    shard_timings = {name: round(sum(result.timings.get(name, 0.0) for result in pass_results), 4) for name in SHARD_TIMINGS}
    total_seconds = timings.get("total", 0.0)
    return {
        "run_id": state.run_id,
        "status": run_status(counts["failed"], counts["ok"], len(models), max_failed_fraction),
        "window": state.window.to_dict(),
        "pass": state.run_pass,
        **context,
        "max_failed_fraction": max_failed_fraction,
        "models_total": len(models),
        "models_succeeded": counts["ok"] - skipped_count,
        "models_failed": counts["failed"],
        "models_skipped": skipped_count,
        "models_no_data": counts["no_data"],
        "rows_scored": sum(result.rows for result in pass_results),
        "rows_total": rows_total,
        "events_rejected": max((result.events_rejected for result in pass_results), default=0),
        "shards": len(pass_results),
        "models_per_shard": max((len(result.models) for result in pass_results), default=0),
        "workers": len({result.worker for result in pass_results if result.worker}),
        "models_per_second": round((len(models) - skipped_count) / total_seconds, 2) if total_seconds else None,
        "timings": {**{name: round(seconds, 4) for name, seconds in timings.items()}, "shards": shard_timings},
        "models": models,
    }
