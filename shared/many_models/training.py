"""One anomaly model per key: StandardScaler + OneClassSVM, as in the reference architecture."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from shared.errors import InvalidInputError
from shared.many_models.manifest import Manifest
from shared.many_models.model_files import new_entry, save_model
from shared.many_models.readings import group_rows
from shared.many_models.schema import VALUE_COLUMN, ModelKey, Window, key_id

MIN_TRAINING_ROWS = 10
"""Fewer readings than this cannot describe a sensor's normal range: such keys get no model."""


def fit_pipeline(values: np.ndarray) -> Pipeline:
    """nu=0.0001 lets almost no training reading fall outside; gamma=0.01 keeps the boundary smooth."""
    pipeline = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.0001, kernel="rbf", gamma=0.01))])
    return pipeline.fit(np.asarray(values, dtype=np.float64).reshape(-1, 1))


@dataclass
class TrainingSummary:
    manifest: Manifest
    too_few_rows: list[ModelKey] = field(default_factory=list)


def train_models(readings: pd.DataFrame, key_columns: tuple[str, ...], window: Window, models_dir: Path) -> TrainingSummary:
    """Fit one model per key on ``readings`` (already cut to ``window``); write the files, then the manifest."""
    groups = group_rows(readings, key_columns)
    if not groups:
        raise InvalidInputError(f"no readings in the training window {window.to_dict()}")
    version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    values = readings[VALUE_COLUMN].to_numpy()
    summary = TrainingSummary(Manifest(key_columns=key_columns))
    for key in sorted(groups):
        rows = groups[key]
        if len(rows) < MIN_TRAINING_ROWS:
            summary.too_few_rows.append(key)
            continue
        file, sha256 = save_model(models_dir, key, fit_pipeline(values[rows]))
        summary.manifest.models[key_id(key)] = new_entry(key, file, sha256, version, window, len(rows))
    if not summary.manifest.models:
        raise InvalidInputError(f"no key has {MIN_TRAINING_ROWS} readings in the training window: nothing to train")
    summary.manifest.write(models_dir)
    return summary
