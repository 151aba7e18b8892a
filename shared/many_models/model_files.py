"""Model files that are safe to load.

A model file is an ``.npz`` archive of plain numeric arrays plus one JSON text: the hyperparameters
and fitted attributes of the two pipeline steps. Loading runs no code from the file (``np.load``
with ``allow_pickle=False``), rebuilds only the two trusted classes, and sets only the fitted
attributes on an explicit list. Before a file is even opened, its manifest entry must match: same
scikit-learn version as this process, and the file's sha256. Anything else is refused with the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import sklearn
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from shared.atomic import write_bytes_atomic
from shared.errors import InvalidInputError
from shared.many_models.manifest import ModelEntry, model_file_name
from shared.many_models.schema import ModelKey, Window, key_id

MODEL_FORMAT = "stylize-ocsvm-npz/1"
_META = "__meta__"
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+\.npz$")

TRUSTED_STEPS: dict[str, tuple[type, frozenset[str]]] = {
    "scaler": (StandardScaler, frozenset({"n_features_in_", "n_samples_seen_", "mean_", "var_", "scale_"})),
    "svm": (OneClassSVM, frozenset({
        "_sparse", "n_features_in_", "_effective_probability", "_gamma", "support_", "support_vectors_", "_n_support",
        "dual_coef_", "intercept_", "_probA", "_probB", "fit_status_", "_num_iter", "shape_fit_", "_intercept_",
        "_dual_coef_", "n_iter_", "offset_",
    })),
}
"""The only classes a model file may name, each with the only fitted attributes it may set (scikit-learn as pinned)."""


class ModelRefusedError(InvalidInputError):
    """A model file that must not be used: not vouched for by the manifest, changed, or from another scikit-learn."""


def _pack(value: object) -> tuple[str, np.ndarray]:
    if isinstance(value, bool):
        return "bool", np.asarray(value)
    if isinstance(value, (int, np.integer)):
        return "int", np.asarray(int(value))
    if isinstance(value, (float, np.floating)):
        return "float", np.asarray(float(value))
    if isinstance(value, tuple):
        return "tuple", np.asarray(value, dtype=np.int64)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return "array", value
    raise TypeError(f"cannot store a fitted attribute of type {type(value).__name__}")


def _unpack(kind: str, array: np.ndarray) -> object:
    if array.dtype.kind not in "biuf":
        raise ValueError(f"non-numeric array ({array.dtype})")
    if kind == "array":
        return array
    if kind == "tuple":
        return tuple(int(item) for item in array)
    if array.ndim != 0 or kind not in ("bool", "int", "float"):
        raise ValueError(f"bad scalar of kind {kind!r}")
    return {"bool": bool, "int": int, "float": float}[kind](array.item())


def model_bytes(pipeline: Pipeline) -> bytes:
    """The file content for a fitted StandardScaler + OneClassSVM pipeline."""
    arrays: dict[str, np.ndarray] = {}
    steps = []
    for name, estimator in pipeline.steps:
        cls, allowed = TRUSTED_STEPS[name]
        if type(estimator) is not cls:
            raise TypeError(f"step {name!r} is a {type(estimator).__name__}, not a {cls.__name__}")
        kinds = {}
        for attribute in sorted(allowed):
            kinds[attribute], arrays[f"{name}.{attribute}"] = _pack(getattr(estimator, attribute))
        steps.append({"name": name, "class": cls.__name__, "params": estimator.get_params(), "attributes": kinds})
    meta = {"format": MODEL_FORMAT, "sklearn_version": sklearn.__version__, "steps": steps}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_META: np.asarray(json.dumps(meta))})
    return buffer.getvalue()


def save_model(models_dir: Path, key: ModelKey, pipeline: Pipeline) -> tuple[str, str]:
    """Write the model file atomically; returns (file name, sha256)."""
    data = model_bytes(pipeline)
    name = model_file_name(key)
    write_bytes_atomic(Path(models_dir) / name, data)
    return name, hashlib.sha256(data).hexdigest()


def new_entry(key: ModelKey, file: str, sha256: str, version: str, window: Window, rows: int) -> ModelEntry:
    return ModelEntry(key=key, file=file, sha256=sha256, version=version, sklearn_version=sklearn.__version__,
                      training_window=window.to_dict(), training_rows=rows)


def load_model(models_dir: str | os.PathLike[str], entry: ModelEntry) -> Pipeline:
    """Check the entry against this process and the file against the entry, then rebuild the pipeline."""
    where = f"model {key_id(entry.key)}"
    if entry.sklearn_version != sklearn.__version__:
        raise ModelRefusedError(f"{where} was trained with scikit-learn {entry.sklearn_version}; this worker has "
                                f"{sklearn.__version__}: retrain it with score-models train")
    if not _SAFE_FILE_NAME.match(entry.file):
        raise ModelRefusedError(f"{where}: file name {entry.file!r} is not a plain .npz name in the models folder")
    try:
        data = (Path(models_dir) / entry.file).read_bytes()
    except FileNotFoundError:
        raise ModelRefusedError(f"{where}: file {entry.file} is missing") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ModelRefusedError(f"{where}: file {entry.file} does not match its manifest sha256 (changed since training)")
    try:
        return _rebuild(data)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ModelRefusedError(f"{where}: file {entry.file} is not a valid model ({exc})") from None


def _rebuild(data: bytes) -> Pipeline:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        meta = json.loads(str(archive[_META]))
        if meta.get("format") != MODEL_FORMAT or meta.get("sklearn_version") != sklearn.__version__:
            raise ValueError(f"format {meta.get('format')!r} from scikit-learn {meta.get('sklearn_version')!r}")
        if [step["name"] for step in meta["steps"]] != list(TRUSTED_STEPS):
            raise ValueError(f"steps {[step['name'] for step in meta['steps']]} are not {list(TRUSTED_STEPS)}")
        steps = []
        for step in meta["steps"]:
            cls, allowed = TRUSTED_STEPS[step["name"]]
            if step["class"] != cls.__name__ or set(step["attributes"]) != allowed:
                raise ValueError(f"step {step['name']!r} is not a {cls.__name__} with the expected attributes")
            estimator = cls()
            unknown = set(step["params"]) - set(estimator.get_params())
            if unknown:
                raise ValueError(f"unknown parameters {sorted(unknown)}")
            estimator.set_params(**step["params"])
            for attribute, kind in step["attributes"].items():
                setattr(estimator, attribute, _unpack(kind, archive[f"{step['name']}.{attribute}"]))
            steps.append((step["name"], estimator))
    return Pipeline(steps)
