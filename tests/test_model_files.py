"""Model files and manifests from outside (issue 20, findings 1 and 9): entries checked as the manifest is parsed,
archive members checked from their headers before any array is allocated, fitted attributes checked for the
shapes and types the scoring code relies on. Real scikit-learn, real numpy, real files."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from shared.errors import InvalidInputError
from shared.many_models.manifest import MANIFEST_NAME, Manifest
from shared.many_models.model_files import ModelRefusedError, load_model, model_bytes

VALID_ENTRY = {"key": ["1", "1"], "file": "1-1.253d950f11eb.npz", "sha256": "9b" * 32, "version": "20261204T074520.187887Z",
               "sklearn_version": "1.9.1", "training_window": {"start": "2018-08-28T23:00:00", "end": "2018-08-29T01:00:00"},
               "training_rows": 546}


def _manifest_bytes(**changes) -> bytes:
    entry = {**copy.deepcopy(VALID_ENTRY), **changes}
    return json.dumps({"format": 1, "key_columns": ["Device", "Sensor"], "models": {"1/1": entry}}).encode()


def test_a_valid_manifest_parses():
    assert Manifest.parse(_manifest_bytes(), "models/manifest.json").models["1/1"].file == VALID_ENTRY["file"]


@pytest.mark.parametrize("changes, reason", [
    ({"file": "a////////../../../../../../../../tmp/x/evil.py"}, "is not a plain file name"),
    ({"file": "../m.npz"}, "is not a plain file name"),
    ({"file": "sub/m.npz"}, "is not a plain file name"),
    ({"file": "/etc/m.npz"}, "is not a plain file name"),
    ({"file": "m.py"}, "does not end in .npz"),
    ({"file": 7}, "file must be a text"),
    ({"sha256": "not-a-digest"}, "is not 64 lowercase hex digits"),
    ({"sha256": "9B" * 32}, "is not 64 lowercase hex digits"),
    ({"key": "1/1"}, "key must be a list"),
    ({"key": [1, 1]}, "key must be a list of texts"),
    ({"version": "v" * 10_000}, "version must be a text of 1 to"),
    ({"training_rows": "many"}, "training_rows must be a whole number"),
    ({"training_rows": True}, "training_rows must be a whole number"),
    ({"training_window": {"start": 0}}, "training_window must be"),
    ({"extra": 1}, "must have exactly the fields"),
])
def test_malformed_entries_are_refused_in_one_line_as_the_manifest_is_parsed(changes, reason):
    with pytest.raises(InvalidInputError) as refused:
        Manifest.parse(_manifest_bytes(**changes), "models/manifest.json")
    message = str(refused.value)
    assert reason in message and message.startswith("models/manifest.json: ")
    assert "\n" not in message and len(message) < 300 and "Error(" not in message, "one line, no Python repr"


@pytest.mark.parametrize("document, reason", [
    ({"format": 1, "key_columns": ["Device", "Sensor"], "models": {"1/1": {k: v for k, v in VALID_ENTRY.items() if k != "file"}}},
     "must have exactly the fields"),
    ({"format": 1, "key_columns": "Device", "models": {}}, "key_columns must be a list"),
    ({"format": 1, "key_columns": ["Device"], "models": []}, "models must be an object"),
    ({"format": 1, "key_columns": ["Device", "Sensor"], "models": {"1/1": "x.npz"}}, "must have exactly the fields"),
])
def test_malformed_manifests_are_refused_in_one_line(document, reason):
    with pytest.raises(InvalidInputError) as refused:
        Manifest.parse(json.dumps(document).encode(), "models/manifest.json")
    assert reason in str(refused.value) and "Error(" not in str(refused.value)


def _fitted(support_vectors: int = 64) -> Pipeline:
    """A real pipeline with ``support_vectors`` support vectors (nu = 1/2 of twice as many readings)."""
    values = np.random.default_rng(3).uniform(30, 40, (2 * support_vectors, 1))
    pipeline = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.5, kernel="rbf", gamma=0.01))]).fit(values)
    assert len(pipeline[-1].support_vectors_) >= support_vectors
    return pipeline


def _vouched(tmp_path: Path, data: bytes):
    """A models folder whose manifest vouches for ``data`` (its sha256): only the file's content can refuse it."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / VALID_ENTRY["file"]).write_bytes(data)
    (models / MANIFEST_NAME).write_bytes(_manifest_bytes(sha256=hashlib.sha256(data).hexdigest()))
    return models, Manifest.load(models).models["1/1"]


def test_a_consistent_model_loads_and_scores(tmp_path):
    models, entry = _vouched(tmp_path, model_bytes(_fitted()))
    assert load_model(models, entry).decision_function(np.array([[35.0]])).shape == (1,)


def _with_member(data: bytes, name: str, write) -> bytes:
    """The archive ``data`` with member ``name`` replaced, written by ``write(member_file)``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            if info.filename == f"{name}.npy":
                with target.open(info.filename, "w", force_zip64=True) as member:
                    write(member)
            else:
                target.writestr(info.filename, source.read(info))
    return out.getvalue()


def test_a_small_file_declaring_a_huge_array_is_refused_before_allocating_it(tmp_path):
    """Issue 20: a 395 KB .npz made np.load allocate 400 MB. Its member's header says 50 million float64 (and the
    zeros it holds compress to almost nothing): refused from the header, with next to nothing allocated."""
    count = 50_000_000

    def huge(member) -> None:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (count, 1)})
        block = bytes(8 * 1000 * 1000)
        for _ in range(count * 8 // len(block)):
            member.write(block)

    data = _with_member(model_bytes(_fitted()), "svm.support_vectors_", huge)
    assert len(data) < 1024 * 1024, "a small file"
    models, entry = _vouched(tmp_path, data)
    tracemalloc.start()
    try:
        with pytest.raises(ModelRefusedError, match="larger than"):
            load_model(models, entry)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024, f"{peak} bytes allocated to refuse it"


def test_a_header_that_promises_more_than_the_member_holds_is_refused(tmp_path):
    def short(member) -> None:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (1000, 1)})
        member.write(bytes(8))

    models, entry = _vouched(tmp_path, _with_member(model_bytes(_fitted()), "svm.support_vectors_", short))
    with pytest.raises(ModelRefusedError, match="svm.support_vectors_"):
        load_model(models, entry)


def test_a_file_larger_than_the_bound_is_refused_unread(tmp_path, monkeypatch):
    from shared.many_models import model_files

    data = model_bytes(_fitted())
    models, entry = _vouched(tmp_path, data)
    monkeypatch.setattr(model_files, "MODEL_FILE_MAX_BYTES", len(data) - 1)
    with pytest.raises(ModelRefusedError, match=rf"is {len(data)} bytes, more than"):
        load_model(models, entry)


@pytest.mark.parametrize("attribute, value, reason", [
    ("svm._dual_coef_", lambda n: np.ones((1, 1)), "svm._dual_coef_ has shape (1, 1)"),  # issue 20: libsvm read past it
    ("svm.dual_coef_", lambda n: np.ones((1, 1)), "svm.dual_coef_ has shape (1, 1)"),
    ("svm.support_", lambda n: np.zeros(3, dtype=np.int32), "svm.support_ has shape (3,)"),
    ("svm.support_vectors_", lambda n: np.ones((n, 2)), "svm.support_vectors_ has shape"),
    ("svm._intercept_", lambda n: np.ones(0), "svm._intercept_ has shape (0,)"),
    ("svm._n_support", lambda n: np.array([5, 0], dtype=np.int32), "svm._n_support"),
    ("svm._dual_coef_", lambda n: np.ones((1, n), dtype=np.float32), "svm._dual_coef_ is float32"),
    ("scaler.scale_", lambda n: np.ones(3), "scaler.scale_ has shape (3,)"),
    ("scaler.mean_", lambda n: np.array([np.nan]), "not finite"),
    ("svm._sparse", lambda n: True, "svm._sparse"),
    ("svm.support_vectors_", lambda n: 7, "svm.support_vectors_ is not a table"),
    ("svm.dual_coef_", lambda n: 0.5, "svm.dual_coef_ is not an array"),
    ("scaler.n_features_in_", lambda n: 2, "disagree on the number of features"),
])
def test_fitted_attributes_that_do_not_fit_together_are_refused(tmp_path, attribute, value, reason):
    pipeline = _fitted()
    step, name = attribute.split(".")
    setattr(pipeline.named_steps[step], name, value(len(pipeline[-1].support_vectors_)))
    models, entry = _vouched(tmp_path, model_bytes(pipeline))
    with pytest.raises(ModelRefusedError) as refused:
        load_model(models, entry)
    assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_a_one_element_dual_coef_no_longer_gives_scores(tmp_path):
    """Issue 20: with 64 support vectors and a one-element dual_coef_, libsvm read past the array and returned
    scores. Such a file is refused as it is loaded, so it never reaches libsvm."""
    pipeline = _fitted()
    pipeline[-1]._dual_coef_ = pipeline[-1].dual_coef_ = np.ones((1, 1))
    models, entry = _vouched(tmp_path, model_bytes(pipeline))
    with pytest.raises(ModelRefusedError):
        load_model(models, entry).decision_function(np.array([[35.0]]))


def test_an_archive_with_members_of_its_own_is_refused(tmp_path):
    data = _with_member(model_bytes(_fitted()), "scaler.mean_", lambda member: np.lib.format.write_array(member, np.zeros(1)))
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("extra.npy", b"")
    models, entry = _vouched(tmp_path, buffer.getvalue())
    with pytest.raises(ModelRefusedError, match="members"):
        load_model(models, entry)
