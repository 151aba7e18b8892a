"""score-models: real scikit-learn models, real worker processes, files on disk."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from isolated import run_module_without
from runner import score_models
from runner.pool import launch_worker
from runner.score_models import build_parser, main
from shared.config import Settings
from shared.many_models.generate import sensor_range
from shared.many_models.manifest import MANIFEST_NAME, Manifest
from shared.many_models.model_files import ModelRefusedError, load_model, model_bytes
from shared.many_models.report import run_status
from shared.many_models.run_state import FolderStore, RunState
from shared.many_models.schema import Window
from shared.many_models.scoring import score_shard
from shared.many_models.shards import ShardMessageError, ShardResult, ShardSpec, plan_shards

SCORED_HOURS_START = "2018-08-29T01:00:00"  # generated data: 4 hours from 2018-08-28 23:00, the first two for training


@pytest.fixture
def models(generated, tmp_path) -> Path:
    """A private copy of the generated models, free to break."""
    return Path(shutil.copytree(generated / "models", tmp_path / "models"))


def _run(data: Path, models: Path, out: Path, *extra: str, workers: int = 1) -> tuple[int, dict]:
    code = main(["run", "--data", str(data), "--models", str(models), "--out", str(out), "--workers", str(workers), *extra])
    return code, json.loads((out / "report.json").read_text())


def _rows(frame: pd.DataFrame, keys=("Device", "Sensor")) -> list[tuple]:
    return sorted(frame[["TS", *keys, "Value"]].astype(str).itertuples(index=False, name=None))


def _break_model(models: Path, device: str, sensor: str) -> None:
    """Replace one model by a real pipeline fitted on two features: scoring one-feature readings raises."""
    two_features = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.0001, gamma=0.01))])
    two_features.fit(np.random.default_rng(0).normal(size=(50, 2)))
    _replace_file(models, f"{device}/{sensor}", model_bytes(two_features))


def _replace_file(models: Path, model_id: str, data: bytes, vouch: bool = True) -> Path:
    """Overwrite a model's file; with ``vouch`` the manifest is updated to match (as a careless retrain would)."""
    manifest_path = models / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    path = models / manifest["models"][model_id]["file"]
    path.write_bytes(data)
    if vouch:
        manifest["models"][model_id]["sha256"] = hashlib.sha256(data).hexdigest()
        manifest_path.write_text(json.dumps(manifest))
    return path


def test_reference_shape_trains_15_models_and_scores_every_row_once(generated, tmp_path):
    data = pd.read_csv(generated / "sensor_data.csv", dtype=str)
    assert list(data.columns) == ["TS", "Device", "Sensor", "Value"]
    assert 15_000 < len(data) < 20_000  # the reference file has 17,768 rows
    values = data.assign(Value=data["Value"].astype(float), Sensor=data["Sensor"].astype(int))
    normal = values[values["TS"] < "2018-08-29 01:00"]
    for sensor, readings in normal.groupby("Sensor")["Value"]:
        low, high = sensor_range(sensor)
        assert low <= readings.min() and readings.max() <= high
    # The reference's own file names the sensor column Tag: train on that header, keys given.
    reference = tmp_path / "sensor_data.csv"
    data.rename(columns={"Sensor": "Tag"}).to_csv(reference, index=False)
    keys = ["--window-end", SCORED_HOURS_START]
    assert main(["train", "--data", str(reference), "--models", str(tmp_path / "models"), "--keys", "Device,Tag", *keys]) == 0
    assert len(Manifest.load(tmp_path / "models").models) == 15

    code, report = _run(reference, tmp_path / "models", tmp_path / "run", workers=2)
    assert code == 0 and report["status"] == "succeeded"
    assert (report["models_total"], report["models_succeeded"], report["models_failed"]) == (15, 15, 0)
    assert report["rows_scored"] == report["rows_total"] == len(data)
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype=str)
    assert list(predictions.columns) == ["TS", "Device", "Tag", "Value", "Prediction", "Score"]
    assert _rows(predictions, ("Device", "Tag")) == _rows(data.rename(columns={"Sensor": "Tag"}), ("Device", "Tag"))
    assert set(predictions["Prediction"]) <= {"0", "1"}


def test_injected_anomalies_are_found_with_few_false_alarms(generated, tmp_path):
    code, report = _run(generated / "sensor_data.csv", generated / "models", tmp_path / "run",
                        "--window-start", SCORED_HOURS_START, workers=2)
    assert code == 0 and report["models_succeeded"] == 15
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    times = pd.to_datetime(predictions["TS"])
    truth = np.zeros(len(predictions), dtype=bool)
    labels = pd.read_csv(generated / "labels.csv")
    assert len(labels) == 30  # one per sensor per scored hour
    for label in labels.itertuples():
        truth |= ((predictions["Device"] == label.Device) & (predictions["Sensor"] == label.Sensor)
                  & (times >= pd.Timestamp(label.Start)) & (times < pd.Timestamp(label.End))).to_numpy()
    flagged = predictions["Prediction"].to_numpy() == 1
    recall = (flagged & truth).sum() / truth.sum()
    precision = (flagged & truth).sum() / flagged.sum()
    assert recall >= 0.9, recall
    assert precision >= 0.5, precision
    assert ((predictions["Score"] >= 0) == flagged).all()


def test_prediction_is_the_pipelines_own_verdict(generated, tmp_path):
    _, report = _run(generated / "sensor_data.csv", generated / "models", tmp_path / "run", "--window-start", SCORED_HOURS_START)
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    manifest = Manifest.load(generated / "models")
    for (device, sensor), rows in predictions.groupby(["Device", "Sensor"]):
        pipeline = load_model(generated / "models", manifest.models[f"{device}/{sensor}"])
        verdict = pipeline.predict(rows[["Value"]].to_numpy())
        assert (rows["Prediction"].to_numpy() == (verdict == -1)).all()


def test_a_window_scores_exactly_its_rows_once(generated, tmp_path):
    start, end = "2018-08-29T01:30:00", "2018-08-29T02:00:00"
    code, report = _run(generated / "sensor_data.csv", generated / "models", tmp_path / "run",
                        "--window-start", start, "--window-end", end, workers=2)
    data = pd.read_csv(generated / "sensor_data.csv", dtype=str)
    inside = data[(pd.to_datetime(data["TS"]) >= start) & (pd.to_datetime(data["TS"]) < end)]
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype=str)
    assert code == 0 and report["run_id"] == "20180829T013000--20180829T020000"
    assert _rows(predictions) == _rows(inside) and len(predictions) == report["rows_scored"] > 0


def test_a_failing_model_fails_alone_and_a_rerun_retries_only_it(generated, models, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLIZE_MODELS_PER_SHARD", "4")
    pristine = (models / Manifest.load(models).models["2/3"].file).read_bytes()
    manifest_text = (models / MANIFEST_NAME).read_text()
    _break_model(models, "2", "3")
    data, out = generated / "sensor_data.csv", tmp_path / "run"
    window = ["--window-start", SCORED_HOURS_START]

    code, first = _run(data, models, out, *window, workers=2)
    failed = [model for model in first["models"] if model["status"] == "failed"]
    assert [model["id"] for model in failed] == ["2/3"]
    assert "StandardScaler is expecting 2 features" in failed[0]["reason"]
    assert (first["status"], code) == ("partial", 3)  # 1 of 15 failed: within the default threshold of 0.1
    assert (first["models_succeeded"], first["models_failed"], first["shards"]) == (14, 1, 4)
    workers = {json.loads(path.read_text())["result"]["worker"] for path in (out / "shards").glob("*.json")}
    assert 1 <= len(workers) <= 2  # four shards, two warm worker processes

    monkeypatch.setenv("STYLIZE_MODELS_MAX_FAILED_FRACTION", "0")
    code, second = _run(data, models, out, *window, workers=2)
    assert (second["status"], code) == ("failed", 1)
    assert (second["models_skipped"], second["models_succeeded"], second["models_failed"], second["shards"]) == (14, 0, 1, 1)
    assert second["rows_scored"] == 0 and second["rows_total"] == first["rows_total"]

    _replace_file(models, "2/3", pristine, vouch=False)
    (models / MANIFEST_NAME).write_text(manifest_text)
    code, third = _run(data, models, out, *window)
    assert (third["status"], code) == ("succeeded", 0)
    assert (third["models_skipped"], third["models_succeeded"], third["models_failed"]) == (14, 1, 0)
    everything = pd.read_csv(data, dtype=str)
    everything = everything[pd.to_datetime(everything["TS"]) >= SCORED_HOURS_START]
    predictions = pd.read_csv(out / "predictions.csv", dtype=str)
    assert _rows(predictions) == _rows(everything) and third["rows_total"] == len(everything)

    code, fourth = _run(data, models, out, *window)
    assert (code, fourth["models_skipped"], fourth["shards"], fourth["rows_total"]) == (0, 15, 0, len(everything))


def test_tampered_or_wrong_version_models_are_refused(models, generated, tmp_path):
    manifest = Manifest.load(models)
    entry = manifest.models["1/1"]
    load_model(models, entry)  # pristine: accepted

    other_version = json.loads((models / MANIFEST_NAME).read_text())
    other_version["models"]["1/2"]["sklearn_version"] = "1.4.2"
    (models / MANIFEST_NAME).write_text(json.dumps(other_version))
    with pytest.raises(ModelRefusedError, match=rf"trained with scikit-learn 1\.4\.2; this worker has {sklearn.__version__}"):
        load_model(models, Manifest.load(models).models["1/2"])

    path = models / entry.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRefusedError, match="does not match its manifest sha256"):
        load_model(models, entry)

    code, report = _run(generated / "sensor_data.csv", models, tmp_path / "run")
    reasons = {model["id"]: model["reason"] for model in report["models"] if model["status"] == "failed"}
    assert set(reasons) == {"1/1", "1/2"} and report["models_succeeded"] == 13
    assert "sha256" in reasons["1/1"] and "scikit-learn 1.4.2" in reasons["1/2"]


class _Planted:
    """Unpickling this would create a file: the proof that a loader ran code from a model file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_is_never_unpickled_even_when_the_manifest_vouches_for_it(models, tmp_path):
    marker = tmp_path / "code-ran"
    _replace_file(models, "3/5", pickle.dumps(_Planted(str(marker))))
    with pytest.raises(ModelRefusedError, match="is not a valid model"):
        load_model(models, Manifest.load(models).models["3/5"])
    assert not marker.exists()


def test_loaded_model_scores_like_the_fitted_one():
    values = np.random.default_rng(1).uniform(30, 40, (400, 1))
    fitted = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.0001, kernel="rbf", gamma=0.01))]).fit(values)
    from shared.many_models.model_files import _rebuild

    rebuilt = _rebuild(model_bytes(fitted))
    grid = np.linspace(0, 80, 801).reshape(-1, 1)
    assert np.array_equal(rebuilt.predict(grid), fitted.predict(grid))
    assert np.allclose(rebuilt.decision_function(grid), fitted.decision_function(grid))


def test_shard_messages_round_trip_and_bad_ones_are_refused():
    window = Window.parse("2018-08-29T00:00:00", "2018-08-29T01:00:00")
    keys = [(str(d), str(s)) for d in range(1, 4) for s in range(1, 6)]
    shards = plan_shards(window.run_id, keys, 4, models_dir="/m", data="/d.csv", window=window, out_dir="/o")
    assert [len(shard.keys) for shard in shards] == [3, 4, 4, 4]
    assert [key for shard in shards for key in shard.keys] == keys
    assert len({shard.shard_id for shard in shards}) == 4
    for shard in shards:
        assert ShardSpec.from_dict(json.loads(json.dumps(shard.to_dict()))) == shard
    again = plan_shards(window.run_id, keys, 4, models_dir="/m", data="/d.csv", window=window, out_dir="/o")
    assert [shard.shard_id for shard in again] == [shard.shard_id for shard in shards]

    good = shards[0].to_dict()
    for broken, message in [({**good, "keys": []}, "keys"), ({**good, "keys": [[1, 2]]}, "keys"),
                            ({**good, "format": 99}, "format"), ({**good, "window": {"start": 5}}, "ISO 8601 text"), ({**good, "shard_id": "../x"}, "shard id '../x' is not"),
                            ({k: v for k, v in good.items() if k != "data"}, "lacks data"), ([], "not a JSON object")]:
        with pytest.raises(ShardMessageError, match=message):
            ShardSpec.from_dict(broken)
    result = ShardResult.all_failed(shards[0], "worker died")
    assert ShardResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    with pytest.raises(ShardMessageError, match="status"):
        ShardResult.from_dict({**result.to_dict(), "models": [{"key": ["1", "1"], "status": "fine", "rows": 0, "seconds": 0}]})


def test_a_redelivered_shard_overwrites_its_own_output(generated, tmp_path):
    window = Window.parse(SCORED_HOURS_START, None)
    manifest = Manifest.load(generated / "models")
    store = FolderStore(tmp_path / "run")
    state = RunState.open(store, window, manifest.key_columns)
    keys = [entry.key for entry in manifest.models.values()]
    shards_dir = tmp_path / "run" / "shards"
    [shard] = plan_shards(state.run_id, keys, 100, models_dir=str(generated / "models"),
                          data=str(generated / "sensor_data.csv"), window=window, out_dir=str(shards_dir))
    first = score_shard(shard)
    second = score_shard(ShardSpec.from_json(shard.to_json()))
    assert [m.status for m in first.models] == ["ok"] * 15 and first.rows == second.rows > 0
    state.record(first)
    state.record(second)
    assert sorted(p.name for p in shards_dir.iterdir()) == [f"{shard.shard_id}.a1.csv", f"{shard.shard_id}.json"]
    rows = state.merge_predictions(store)
    assert rows == first.rows == len(pd.read_csv(tmp_path / "run" / "predictions.csv"))


def test_models_without_readings_in_the_window_are_no_data(generated, tmp_path):
    code, report = _run(generated / "sensor_data.csv", generated / "models", tmp_path / "run",
                        "--window-start", "2030-01-01T00:00:00")
    assert code == 0 and report["status"] == "succeeded"
    assert report["models_no_data"] == 15 and report["rows_total"] == 0
    assert {model["reason"] for model in report["models"]} == {"no readings in the window"}


def test_a_model_refused_unread_is_failed_with_its_reason_unless_it_had_no_readings(generated, tmp_path):
    """A queue worker's refusals (a file over its bound, left unread) fail those models alone; a model with no readings
    in the window is no_data whether or not its file was refused, as a local run reports it."""
    manifest = Manifest.load(generated / "models")
    keys = [entry.key for entry in manifest.models.values()][:2]
    refused = {"/".join(key): f"model {'/'.join(key)}: over its bound" for key in keys}

    def statuses(start: str) -> list[tuple[str, str | None]]:
        [shard] = plan_shards("r", keys, 100, models_dir=str(generated / "models"), data=str(generated / "sensor_data.csv"),
                              window=Window.parse(start, None), out_dir=str(tmp_path))
        return [(model.status, model.reason) for model in score_shard(shard, refused=refused).models]

    assert statuses(SCORED_HOURS_START) == [("failed", reason) for reason in refused.values()]
    assert statuses("2030-01-01T00:00:00") == [("no_data", "no readings in the window")] * 2


def test_run_status_by_failure_threshold():
    assert run_status(failed=0, ok=10, total=10, max_failed_fraction=0.0) == "succeeded"
    assert run_status(failed=1, ok=9, total=10, max_failed_fraction=0.1) == "partial"
    assert run_status(failed=2, ok=8, total=10, max_failed_fraction=0.1) == "failed"
    assert run_status(failed=1, ok=9, total=10, max_failed_fraction=0.0) == "failed"
    assert run_status(failed=3, ok=0, total=3, max_failed_fraction=1.0) == "failed"


@pytest.mark.parametrize("argv, message", [
    (["run", "--data", "{root}/missing.csv", "--models", "{root}/models", "--out", "{tmp}/o"], "no such file"),
    (["run", "--data", "{root}/sensor_data.csv", "--models", "{tmp}", "--out", "{tmp}/o"], "no manifest"),
    (["run", "--data", "{root}/labels.csv", "--models", "{root}/models", "--out", "{tmp}/o"], "no column TS, Value"),
    (["run", "--data", "{root}/sensor_data.csv", "--models", "{root}/models", "--out", "{tmp}/o",
      "--window-start", "2018-08-29T02:00", "--window-end", "2018-08-29T01:00"], "is not before its end"),
    (["run", "--data", "{root}/sensor_data.csv", "--models", "{root}/models", "--out", "{tmp}/o",
      "--window-start", "yesterday"], "not an ISO 8601 time"),
    (["train", "--data", "{root}/sensor_data.csv", "--models", "{tmp}/m", "--keys", "Device,Tag"], "no column Tag"),
    (["generate", "{root}"], "already exists"),
])
def test_bad_input_is_one_line_and_exit_2(generated, tmp_path, capsys, argv, message):
    argv = [arg.format(root=generated, tmp=tmp_path) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("score-models: error:") and message in err and "\n" not in err


def test_an_output_folder_belongs_to_one_window(generated, tmp_path, capsys):
    data, out = generated / "sensor_data.csv", tmp_path / "run"
    code, _ = _run(data, generated / "models", out, "--window-start", "2018-08-29T02:00:00")
    assert code == 0
    before = (out / "predictions.csv").read_bytes()
    assert main(["run", "--data", str(data), "--models", str(generated / "models"), "--out", str(out),
                 "--window-start", "2018-08-29T01:00:00"]) == 2
    assert "holds the run 20180829T020000--end" in capsys.readouterr().err
    assert (out / "predictions.csv").read_bytes() == before


def test_the_coordinator_side_needs_neither_scikit_learn_nor_pandas():
    """Planning, recording and reporting run where the workers' packages are absent (the Function app)."""
    code = ("import sys, shared.many_models.run, shared.many_models.shards, shared.many_models.run_state; "
            "print(sorted({'sklearn', 'pandas'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_a_shard_whose_worker_dies_is_retried_alone(generated, tmp_path, monkeypatch):
    """A worker process that dies on a shard is replaced; only that shard is scored again (its attempt 2).

    The victim is the last shard: nothing waits behind it, so its worker dies holding it alone and the death counts
    (a worker that dies holding two items uses up neither's attempt, and which it holds would be up to thread timing)."""
    monkeypatch.setenv("STYLIZE_MODELS_PER_SHARD", "4")
    window = Window.parse(SCORED_HOURS_START, None)
    keys = [entry.key for entry in Manifest.load(generated / "models").models.values()]
    shards = plan_shards(window.run_id, keys, 4, models_dir="", data="", window=window, out_dir="")
    victim, state = shards[-1].shard_id, tmp_path / "faults"

    def flaky(command: list[str]):
        return launch_worker([sys.executable, str(Path(__file__).with_name("flaky_worker.py")), "crash", victim, "1", str(state),
                              "--", *command])

    args = build_parser().parse_args(["run", "--data", str(generated / "sensor_data.csv"), "--models", str(generated / "models"),
                                      "--out", str(tmp_path / "run"), "--window-start", SCORED_HOURS_START, "--workers", "2"])
    assert score_models.run(args, Settings.from_env(), launcher=flaky) == 0
    assert state.read_text() == "x", "the fault was injected once"
    recorded = {path.stem: json.loads(path.read_text())["result"] for path in (tmp_path / "run" / "shards").glob("*.json")}
    assert {shard_id: result["attempt"] for shard_id, result in recorded.items()} == {
        shard.shard_id: 2 if shard.shard_id == victim else 1 for shard in shards}
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (report["status"], report["models_succeeded"], report["shards"]) == ("succeeded", 15, 4)
    data = pd.read_csv(generated / "sensor_data.csv", dtype=str)
    data = data[pd.to_datetime(data["TS"]) >= SCORED_HOURS_START]
    assert _rows(pd.read_csv(tmp_path / "run" / "predictions.csv", dtype=str)) == _rows(data)


def test_the_shard_worker_needs_neither_torch_nor_pyav(generated, tmp_path):
    """``python -m gpu_job worker --work shards`` runs on a CPU node whose image has neither; a local one needs no Azure SDK either."""
    window = Window.parse(SCORED_HOURS_START, None)
    keys = [entry.key for entry in Manifest.load(generated / "models").models.values()]
    [shard] = plan_shards(window.run_id, keys, 100, models_dir=str(generated / "models"), data=str(generated / "sensor_data.csv"),
                          window=window, out_dir=str(tmp_path))
    done = run_module_without(("torch", "torchvision", "av", "azure"), "gpu_job", ["worker", "--stdio", "--work", "shards"],
                              shard.to_json() + "\n")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [event["event"] for event in events] == ["ready", "result"]
    result = ShardResult.from_dict({name: value for name, value in events[1].items() if name != "event"})
    assert result.succeeded and [model.status for model in result.models] == ["ok"] * 15
    assert (tmp_path / result.predictions).exists()
