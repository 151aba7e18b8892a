"""Score one shard: every model of it on its own readings in the window; predictions written atomically.

A worker process keeps the last data file it read (grouped by key) and the last manifest, so a warm
worker reads the data once per window however many shards it is given.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.atomic import atomic_path
from shared.errors import InvalidInputError, PipelineError
from shared.many_models.capture import capture_files_in
from shared.many_models.manifest import MANIFEST_NAME, Manifest
from shared.many_models.model_files import load_model
from shared.many_models.readings import EVENTS_REJECTED, group_rows, read_readings
from shared.many_models.schema import (
    PREDICTION_COLUMN, SCORE_COLUMN, TS_COLUMN, VALUE_COLUMN, ModelKey, Window, key_id, predictions_header,
)
from shared.many_models.shards import ModelResult, ShardResult, ShardSpec

@dataclass(frozen=True)
class GroupedReadings:
    frame: pd.DataFrame
    rows: dict[ModelKey, np.ndarray]


_cached: dict[str, tuple[tuple, object]] = {}


def _file_identity(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _cached_value(kind: str, identity: tuple, load):
    """The value last loaded for ``kind`` if its identity (path, mtime, size, ...) is unchanged; else load it."""
    held = _cached.get(kind)
    if held is None or held[0] != identity:
        _cached[kind] = (identity, load())
    return _cached[kind][1]


def cached_manifest(models_dir: str) -> Manifest:
    path = Path(models_dir) / MANIFEST_NAME
    identity = _file_identity(path) if path.exists() else (str(path),)
    return _cached_value("manifest", identity, lambda: Manifest.load(models_dir))


def _data_identity(path: Path) -> tuple:
    """A file's identity; a folder's is its Capture files' (a file added deep inside changes no folder's mtime)."""
    if path.is_dir():
        return (str(path.resolve()), *(_file_identity(file) for file in capture_files_in(path)))
    return _file_identity(path) if path.exists() else (str(path),)


def cached_readings(data: str, key_columns: tuple[str, ...], window: Window, shown_as: str | None = None) -> GroupedReadings:
    path = Path(data)
    identity = (*_data_identity(path), key_columns, window)

    def load() -> GroupedReadings:
        frame = read_readings(path, key_columns, window, shown_as)
        return GroupedReadings(frame, group_rows(frame, key_columns))

    return _cached_value("readings", identity, load)


def score_shard(spec: ShardSpec, data_shown_as: str | None = None, refused: Mapping[str, str] | None = None) -> ShardResult:
    """Score every model of the shard; a model that fails is reported with its reason, the others go on. ``data_shown_as``
    names the readings in errors (a queue worker's copy is in its scratch folder); ``refused`` holds the models whose
    files were refused before they were read, by key id, with the reason."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    result = ShardResult(run_id=spec.run_id, shard_id=spec.shard_id, attempt=spec.attempt, models=[], worker=worker)
    timings = dict.fromkeys(("read", "load", "score", "write"), 0.0)
    began = time.perf_counter()
    try:
        manifest = cached_manifest(spec.models_dir)
        readings = cached_readings(spec.data, manifest.key_columns, spec.window, data_shown_as)
    except InvalidInputError as exc:
        return ShardResult.all_failed(spec, str(exc), retryable=False, worker=worker)
    timings["read"] = time.perf_counter() - began
    result.events_rejected = readings.frame.attrs.get(EVENTS_REJECTED, 0)
    values = readings.frame[VALUE_COLUMN].to_numpy()
    scored_rows, scores = [], []
    for key in spec.keys:
        model_began = time.perf_counter()
        outcome = _score_model(spec, manifest, readings, values, key, timings, refused or {})
        if outcome.status == "ok":
            scored_rows.append(readings.rows[key])
            scores.append(outcome.scores)
        result.models.append(ModelResult(key=key, status=outcome.status, rows=outcome.rows, reason=outcome.reason,
                                         seconds=round(time.perf_counter() - model_began, 6)))
    if scored_rows:
        began = time.perf_counter()
        result.predictions = spec.predictions_name
        result.rows = write_predictions(Path(spec.out_dir) / spec.predictions_name, readings.frame, manifest.key_columns,
                                        np.concatenate(scored_rows), np.concatenate(scores))
        timings["write"] = time.perf_counter() - began
    result.timings = {name: round(seconds, 6) for name, seconds in timings.items()}
    return result


@dataclass
class _Outcome:
    status: str
    rows: int = 0
    scores: np.ndarray | None = None
    reason: str | None = None


def _score_model(spec: ShardSpec, manifest: Manifest, readings: GroupedReadings, values: np.ndarray, key: ModelKey,
                 timings: dict[str, float], refused: Mapping[str, str]) -> _Outcome:
    entry = manifest.models.get(key_id(key))
    if entry is None:
        return _Outcome("failed", reason=f"model {key_id(key)} is not in the manifest")
    rows = readings.rows.get(key)
    if rows is None:  # before its file is looked at, as where no file was refused
        return _Outcome("no_data", reason="no readings in the window")
    if key_id(key) in refused:
        return _Outcome("failed", reason=refused[key_id(key)])
    try:
        began = time.perf_counter()
        pipeline = load_model(spec.models_dir, entry)
        loaded = time.perf_counter()
        scores = -pipeline.decision_function(values[rows].reshape(-1, 1))
        timings["load"] += loaded - began
        timings["score"] += time.perf_counter() - loaded
    except PipelineError as exc:
        return _Outcome("failed", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - any error of one model is that model's failure, not the shard's
        return _Outcome("failed", reason=f"{type(exc).__name__}: {exc}")
    if scores.shape != rows.shape or not np.isfinite(scores).all():
        return _Outcome("failed", reason=f"model {key_id(key)} gave {scores.shape} scores for {len(rows)} readings, or non-finite ones")
    return _Outcome("ok", rows=len(rows), scores=scores)


def write_predictions(path: Path, frame: pd.DataFrame, key_columns: tuple[str, ...], rows: np.ndarray,
                      scores: np.ndarray) -> int:
    """``TS, keys..., Value, Prediction, Score`` for the given rows of ``frame`` and their scores."""
    table = frame.iloc[rows][[TS_COLUMN, *key_columns, VALUE_COLUMN]].copy()
    table[PREDICTION_COLUMN] = (scores >= 0).astype(np.int8)
    table[SCORE_COLUMN] = scores
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, columns=predictions_header(key_columns))
    return len(table)
