"""Model files that are safe to load.

A model file is an ``.npz`` archive of plain numeric arrays plus one JSON text: the hyperparameters
and fitted attributes of the two pipeline steps. Loading runs no code from the file (``np.load``
with ``allow_pickle=False``), rebuilds only the two trusted classes, and sets only the fitted
attributes on an explicit list. Before a file is even opened, its manifest entry must match: same
scikit-learn version as this process, a plain ``.npz`` name, a size within ``MODEL_FILE_MAX_BYTES``,
and the file's sha256. Before an array is allocated, the archive's members must be exactly a model
file's, each ``.npy`` header must describe a plain array of exactly the member's size, and all of them
together must fit the bound; once rebuilt, the fitted attributes must have the shapes and types
libsvm relies on (it takes the support vectors' count from one array and reads the others that far).
Anything else is refused with the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import sklearn
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from shared.atomic import write_bytes_atomic
from shared.errors import InvalidInputError
from shared.many_models.manifest import MODEL_FILE_MAX_BYTES, MODEL_FILE_SUFFIX, ModelEntry, model_file_name
from shared.many_models.schema import ModelKey, Window, key_id
from shared.names import check_file_name

MODEL_FORMAT = "stylize-ocsvm-npz/1"
_META = "__meta__"
KERNELS = frozenset({"rbf", "linear", "poly", "sigmoid"})
"""Kernels whose decision function reads only the fitted arrays (not ``precomputed``: it reads the readings as a kernel)."""

TRUSTED_STEPS: dict[str, tuple[type, frozenset[str]]] = {
    "scaler": (StandardScaler, frozenset({"n_features_in_", "n_samples_seen_", "mean_", "var_", "scale_"})),
    "svm": (OneClassSVM, frozenset({
        "_sparse", "n_features_in_", "_effective_probability", "_gamma", "support_", "support_vectors_", "_n_support",
        "dual_coef_", "intercept_", "_probA", "_probB", "fit_status_", "_num_iter", "shape_fit_", "_intercept_",
        "_dual_coef_", "n_iter_", "offset_",
    })),
}
"""The only classes a model file may name, each with the only fitted attributes it may set (scikit-learn as pinned)."""
_MEMBERS = frozenset({f"{_META}.npy", *(f"{step}.{name}.npy" for step, (_, allowed) in TRUSTED_STEPS.items() for name in allowed)})
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


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
    check_file_name(entry.file, f"{where}: file", (MODEL_FILE_SUFFIX,))
    path = Path(models_dir) / entry.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelRefusedError(f"{where}: file {entry.file} is missing") from None
    if size > MODEL_FILE_MAX_BYTES:
        raise ModelRefusedError(f"{where}: file {entry.file} is {size} bytes, more than the {MODEL_FILE_MAX_BYTES} a model file may be")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ModelRefusedError(f"{where}: file {entry.file} does not match its manifest sha256 (changed since training)")
    try:
        return _rebuild(data)
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ModelRefusedError(f"{where}: file {entry.file} is not a valid model ({reason})") from None


def _check_members(data: bytes) -> None:
    """Exactly a model file's members, each a plain array of exactly its member's size, within the bound together:
    read from the zip directory and the ``.npy`` headers, so ``np.load`` then allocates no more than that."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(names) != len(set(names)) or set(names) != _MEMBERS:
            raise ValueError(f"its {len(names)} members are not those of a model file")
        total = sum(info.file_size for info in infos)
        if total > MODEL_FILE_MAX_BYTES:
            raise ValueError(f"its arrays take {total} bytes, larger than the {MODEL_FILE_MAX_BYTES} a model may hold")
        for info in infos:
            with archive.open(info) as member:
                _check_npy_header(member, info.filename.removesuffix(".npy"), info.file_size)


def _check_npy_header(member, name: str, size: int) -> None:
    read_header = _NPY_HEADER_READERS.get(np.lib.format.read_magic(member))
    if read_header is None:
        raise ValueError(f"{name} is not in .npy format 1.0 or 2.0")
    shape, _, dtype = read_header(member)
    if dtype.hasobject or dtype.kind not in ("U" if name == _META else "biuf") or (name == _META and shape != ()):
        raise ValueError(f"{name} holds {dtype} values of shape {shape}")
    if member.tell() + math.prod(shape) * dtype.itemsize != size:
        raise ValueError(f"{name}: its header says {shape} of {dtype}, which is not what the member holds")


def _check_fitted(scaler: StandardScaler, svm: OneClassSVM) -> None:
    """The shapes and types scoring relies on. libsvm takes the support vectors' count from ``support_vectors_`` and
    reads the coefficients that far: a one-element ``dual_coef_`` with 64 support vectors was read past, and scored."""
    if svm.kernel not in KERNELS:
        raise ValueError(f"svm kernel {svm.kernel!r} is not one of {', '.join(sorted(KERNELS))}")
    if svm._sparse is not False:
        raise ValueError("svm._sparse is set: a model file holds a dense model")
    features, vectors = scaler.n_features_in_, svm.support_vectors_
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        raise ValueError("svm.support_vectors_ is not a table of support vectors")
    if not isinstance(features, int) or features < 1 or svm.n_features_in_ != features:
        raise ValueError(f"scaler and svm disagree on the number of features ({features!r}, {svm.n_features_in_!r})")
    count = len(vectors)
    expected = {
        "scaler.mean_": ((features,), np.float64), "scaler.var_": ((features,), np.float64), "scaler.scale_": ((features,), np.float64),
        "svm.support_vectors_": ((count, features), np.float64), "svm.support_": ((count,), np.int32),
        "svm.dual_coef_": ((1, count), np.float64), "svm._dual_coef_": ((1, count), np.float64),
        "svm.intercept_": ((1,), np.float64), "svm._intercept_": ((1,), np.float64), "svm.offset_": ((1,), np.float64),
        "svm._n_support": ((2,), np.int32), "svm._probA": ((0,), np.float64), "svm._probB": ((0,), np.float64),
    }
    steps = {"scaler": scaler, "svm": svm}
    for name, (shape, dtype) in expected.items():
        step, attribute = name.split(".")
        array = getattr(steps[step], attribute)
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{name} is not an array")
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, not {shape}")
        if array.dtype != dtype:
            raise ValueError(f"{name} is {array.dtype}, not {np.dtype(dtype)}")
        if dtype is np.float64 and not np.isfinite(array).all():
            raise ValueError(f"{name} holds values that are not finite")
    if svm._n_support[0] != count or len(svm.shape_fit_) != 2 or svm.shape_fit_[1] != features:
        raise ValueError(f"svm._n_support {svm._n_support.tolist()} or shape_fit_ {svm.shape_fit_} does not match "
                         f"{count} support vectors of {features} features")
    if not math.isfinite(svm._gamma) or svm._gamma <= 0:
        raise ValueError(f"svm._gamma {svm._gamma} is not a positive number")


def _rebuild(data: bytes) -> Pipeline:
    _check_members(data)
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
    _check_fitted(*(estimator for _, estimator in steps))
    return Pipeline(steps)
