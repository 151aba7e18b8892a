"""Many models in Azure, against a real Azurite: the timer and HTTP triggers, the orchestration stepped
through the Durable replay engine, shard messages drained by real worker processes
(``python -m gpu_job worker --work shards``, real scikit-learn), results fanned back in, merged
predictions and report in the output container."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import azure.functions as func
import pandas as pd
import pytest
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

import durable_replay
from durable_replay import ReplayClient
from durable_replay import user_function as _user
from function_app import many_models
from function_app.activities import ACTIVITIES as VIDEO_ACTIVITIES
from function_app.batches import job_status
from function_app.compute import LocalWorkers
from function_app.many_models import ACTIVITIES, deliver_shard_result, on_models_schedule, on_shard_result, start_model_run
from gpu_job.blob_cache import BlobCache
from gpu_job.shard_work import ShardWork
from shared.config import Settings
from shared.errors import InvalidInputError
from shared.many_models.manifest import Manifest, ModelEntry
from shared.many_models.schema import Window
from shared.many_models.shards import ShardMessageError, ShardResult, plan_shards
from shared.messages import MessageError
from shared.storage import run_prefix

LIMITS = Settings(models_per_shard=4, max_shard_workers=2, max_attempts=2, worker_idle_s=20, visibility_timeout_s=4, max_deliveries=2,
                  worker_check_s=30, shard_timeout_s=3600)
HOUR = Window.parse("2018-08-29T01:00:00", "2018-08-29T02:00:00")
FIRED_AT = datetime(2018, 8, 29, 2, 0, 7, tzinfo=timezone.utc)  # the hourly firing for 01:00-02:00, a few seconds late


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture()
def storage(models_on_azurite, generated, monkeypatch):
    """Azurite with the readings and models uploaded, empty queues, and no run left from another test."""
    service, queues = models_on_azurite(LIMITS)
    service.get_blob_client(LIMITS.sensor_data_container, LIMITS.sensor_data_blob).upload_blob(
        (generated / "sensor_data.csv").read_bytes(), overwrite=True)
    monkeypatch.setattr(many_models, "utc_now", lambda: FIRED_AT)
    return service, queues


def _host(client: ReplayClient, instance_id: str, queues: dict) -> durable_replay.Host:
    def deliver(body: str) -> ShardResult:
        run(_user(on_shard_result)(func.QueueMessage(body=body.encode()), client))
        return ShardResult.from_json(body)

    return durable_replay.Host(client, instance_id, {**VIDEO_ACTIVITIES, **ACTIVITIES}, queues[LIMITS.shard_result_queue], deliver, LIMITS)


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return sorted(frame[["TS", "Device", "Sensor", "Value"]].astype(str).itertuples(index=False, name=None))


def _readings(generated: Path, window: Window) -> pd.DataFrame:
    data = pd.read_csv(generated / "sensor_data.csv", dtype=str)
    times = pd.to_datetime(data["TS"])
    return data[(times >= window.start) & (times < window.end)]


def _outputs(service, run_id: str) -> tuple[pd.DataFrame, dict]:
    container = service.get_container_client(LIMITS.output_container)
    predictions = pd.read_csv(io.BytesIO(container.download_blob(f"predictions/{run_id}/predictions.csv").readall()), dtype=str)
    report = json.loads(container.download_blob(f"predictions/{run_id}/report.json").readall())
    return predictions, report


def _status(client: ReplayClient, instance_id: str) -> dict:
    request = func.HttpRequest("GET", f"/api/jobs/{instance_id}", body=b"", route_params={"job_id": instance_id})
    response = run(_user(job_status)(request, client))
    assert response.status_code == 200
    return json.loads(response.get_body())


def _enqueued(host: durable_replay.Host) -> list[list[tuple[str, int]]]:
    return [[(item["shard"]["shard_id"], item["attempt"]) for item in action["input"]["shards"]]
            for action in host.called if action["functionName"] == "enqueue_shards"]


def test_timer_scores_the_window_that_ended_once_end_to_end(storage, generated):
    service, queues = storage
    client = ReplayClient()
    run(_user(on_models_schedule)(TimerRequest(), client))
    run(_user(on_models_schedule)(TimerRequest(past_due=True), client))
    assert [(name, instance_id) for name, instance_id, _ in client.started] == [
        ("score_models_orchestrator", "score-models-20180829T010000--20180829T020000")], "the same window fired twice starts one run"
    instance_id = client.started[0][1]
    host = _host(client, instance_id, queues)
    host.until_done()

    assert _enqueued(host) == [[(shard.shard_id, 1) for shard in _plan(generated, HOUR)]], "15 models, 4 per shard: 4 messages"
    assert len(LocalWorkers.processes) == LIMITS.max_shard_workers, "four shards, at most two workers"
    predictions, report = _outputs(service, HOUR.run_id)
    inside = _readings(generated, HOUR)
    assert _rows(predictions) == _rows(inside) and len(inside) > 0, "every reading of the window scored exactly once"
    assert list(predictions.columns) == ["TS", "Device", "Sensor", "Value", "Prediction", "Score"]
    assert (report["status"], report["models_total"], report["models_succeeded"], report["models_failed"]) == ("succeeded", 15, 15, 0)
    assert report["rows_scored"] == report["rows_total"] == len(inside) and report["shards"] == 4
    assert report["predictions"] == f"{LIMITS.output_container}/predictions/{HOUR.run_id}/predictions.csv"
    assert {model["status"] for model in report["models"]} == {"ok"}
    assert len({result.worker for result in host.delivered}) <= 2

    status = _status(client, instance_id)
    assert (status["runtime_status"], status["stage"], status["status"]) == ("Completed", "done", "succeeded")
    assert status["shards_done"] == status["shards_total"] == 4 and status["models_done"] == 15
    work = service.get_container_client(LIMITS.work_container)
    assert work.get_blob_client(run_prefix(HOUR.run_id) + "closed").exists(), "workers drop the run's leftover messages"
    assert queues[LIMITS.shard_queue].get_queue_properties().approximate_message_count == 0


def _plan(generated: Path, window: Window):
    keys = [entry.key for entry in Manifest.load(generated / "models").models.values()]
    return plan_shards(window.run_id, keys, LIMITS.models_per_shard, models_dir="", data="", window=window, out_dir="")


def _post(client: ReplayClient, body) -> func.HttpResponse:
    request = func.HttpRequest("POST", "http://localhost:7071/api/models/runs", body=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"})
    return run(_user(start_model_run)(request, client))


def test_http_backfill_starts_a_window_and_a_second_pass_skips_what_is_done(storage, generated):
    service, queues = storage
    client = ReplayClient()
    window = Window.parse("2018-08-29T01:00:00", "2018-08-29T03:00:00")
    response = _post(client, {"start": "2018-08-29T01:00:00Z", "end": "2018-08-29T03:00:00Z"})
    answer = json.loads(response.get_body())
    instance_id = f"score-models-{window.run_id}"
    assert response.status_code == 202 and answer["id"] == instance_id and answer["started"] is True
    assert answer["status"] == response.headers["Location"] == f"http://localhost:7071/api/jobs/{instance_id}"
    again = _post(client, {"start": "2018-08-29T01:00:00", "end": "2018-08-29T03:00:00"})
    assert again.status_code == 200 and json.loads(again.get_body())["started"] is False, "a running window is not started twice"
    assert len(client.started) == 1
    _host(client, instance_id, queues).until_done()
    first_predictions, first = _outputs(service, window.run_id)
    assert _rows(first_predictions) == _rows(_readings(generated, window)) and first["models_succeeded"] == 15

    rerun = _post(client, {"start": "2018-08-29T01:00:00", "end": "2018-08-29T03:00:00"})
    assert rerun.status_code == 202, "a window whose run ended is run again (a backfill after a partial run)"
    host = _host(client, instance_id, queues)
    host.until_done()
    predictions, second = _outputs(service, window.run_id)
    assert (second["pass"], second["models_skipped"], second["models_succeeded"], second["shards"]) == (2, 15, 0, 0)
    assert _enqueued(host) == [] and _rows(predictions) == _rows(first_predictions), "nothing scored again, nothing duplicated"
    assert _status(client, instance_id)["status"] == "succeeded"

    for body, reason in [({"start": "yesterday", "end": "2018-08-29T02:00:00"}, "start 'yesterday' is not an ISO 8601 time"),
                         ({"start": "2018-08-29T02:00:00"}, "end is required"),
                         ({"start": "2018-08-29T02:00:00", "end": "2018-08-29T01:00:00"}, "is not before its end")]:
        refused = _post(client, body)
        assert refused.status_code == 400 and reason in json.loads(refused.get_body())["error"]
    assert len(client.started) == 2


@pytest.mark.parametrize("body, reason", [
    ({"start": "", "end": ""}, "start is required"),  # issue 20: ran an open window
    ({"start": "2018-08-29T01:00:00", "end": ""}, "end is required"),
    ({"start": "2018-08-29T01:00:00", "end": None}, "end is required"),
    ({"start": "0001-01-01T00:00:00", "end": "9999-12-31T00:00:00"}, "is before 1970-01-01"),  # issue 20: year 1 to 9999
    ({"start": "2018-08-29T00:00:00", "end": "9999-12-31T00:00:00"}, "at most 24 at once"),
    ({"start": "0001-01-01T00:00:00+01:00", "end": "2018-08-29T02:00:00"}, "is not a time UTC can hold"),
    ({"start": "2018-08-29T01:00:01", "end": "2018-08-29T02:00:01"}, "is not on a boundary of the schedule's 3600 s periods"),
    ({"start": "2018-08-29T01:00:00.5", "end": "2018-08-29T02:00:00"}, "is not on a boundary"),
    ({"start": "2018-08-29T01:00:00", "end": "2018-08-29T02:00:00+00:30"}, "is not on a boundary"),
    ({"start": "9999-12-31T00:00:00", "end": "9999-12-31T23:59:59"}, "the one before it is 9999-12-31T23:00:00"),
    (["2018-08-29T01:00:00", "2018-08-29T02:00:00"], "the body must be a JSON object"),
])
def test_a_backfill_window_needs_both_ends_on_the_schedule_and_a_bounded_span(body, reason):
    """Issue 20: empty and unbounded windows were run, and each one-second shift started a full run of its own. A
    backfill runs windows a scheduler would: both ends on the schedule's period boundaries, at most
    STYLIZE_MODELS_BACKFILL_MAX_WINDOWS periods; anything else is a one-line 400 and starts nothing."""
    client = ReplayClient()
    refused = _post(client, body)
    error = json.loads(refused.get_body())["error"]
    assert (refused.status_code, client.started) == (400, []) and reason in error, error
    assert "\n" not in error and len(error) < 300 and "Error(" not in error


def test_a_backfill_is_refused_with_429_while_the_most_runs_are_running(monkeypatch):
    monkeypatch.setattr(many_models, "settings", replace(many_models.settings, models_max_running=2))
    client = ReplayClient()
    client.replays["stylize-" + "0" * 32] = durable_replay.Replay(lambda context: None, {}, "stylize-" + "0" * 32)  # a video: not counted
    hours = [{"start": f"2018-08-29T0{hour}:00:00", "end": f"2018-08-29T0{hour + 1}:00:00"} for hour in range(3)]
    assert [_post(client, hour).status_code for hour in hours[:2]] == [202, 202]
    refused = _post(client, hours[2])
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    error = json.loads(refused.get_body())["error"]
    assert "2 many-models runs are running" in error and "\n" not in error
    assert _post(client, hours[0]).status_code == 200, "a window whose run is running is answered as before, not refused"
    assert len(client.started) == 2


def test_a_shard_whose_attempt_fails_is_retried_alone(storage, generated):
    """Storage refuses one shard's predictions (another holds a lease on the blob): that attempt fails, and only
    that shard is queued again, as attempt 2 (which writes its own file)."""
    service, queues = storage
    shards = _plan(generated, HOUR)
    victim = shards[2].shard_id
    held = service.get_blob_client(LIMITS.work_container, f"{run_prefix(HOUR.run_id)}shards/{victim}.a1.csv")

    def hold_once_planned() -> None:  # after the plan (a run's folder holds nothing else before), before any worker starts
        if not held.exists():
            held.upload_blob(b"", overwrite=True)
            held.acquire_lease(lease_duration=-1)

    client = ReplayClient()
    run(_user(on_models_schedule)(TimerRequest(), client))
    host = _host(client, client.started[0][1], queues)
    host.until_done(on_round=hold_once_planned)
    status = _status(client, client.started[0][1])
    assert status["stage"] == "done", host.replay.state.get("error")

    assert _enqueued(host) == [[(shard.shard_id, 1) for shard in shards], [(victim, 2)]]
    failed = [result for result in host.delivered if not result.succeeded]
    assert [(result.shard_id, result.attempt, result.retryable) for result in failed] == [(victim, 1, True)]
    assert "lease" in failed[0].error.lower()
    predictions, report = _outputs(service, HOUR.run_id)
    assert (report["status"], report["models_succeeded"]) == ("succeeded", 15)
    assert _rows(predictions) == _rows(_readings(generated, HOUR)), "the retried shard's rows once, the others' not again"
    assert any(f"{victim} attempt 1 failed" in error for error in report["errors"])


def test_a_run_without_models_fails_with_the_reason_and_keeps_nothing_half_done(storage):
    service, queues = storage
    service.get_blob_client(LIMITS.models_container, "manifest.json").delete_blob()
    client = ReplayClient()
    run(_user(on_models_schedule)(TimerRequest(), client))
    instance_id = client.started[0][1]
    _host(client, instance_id, queues).until_done(timeout_s=30)
    status = _status(client, instance_id)
    assert status["runtime_status"] == "Failed" and status["stage"] == "failed"
    assert status["error"].startswith("plan failed: models/manifest.json: no manifest")
    error = json.loads(service.get_blob_client(LIMITS.output_container, f"predictions/{HOUR.run_id}/error.json").download_blob().readall())
    assert error["error"] == status["error"]
    assert not LocalWorkers.processes, "no worker is started for a run that cannot be planned"


def test_the_worker_keeps_what_it_downloaded_until_the_blob_changes(storage, generated, tmp_path):
    service, _ = storage
    work = ShardWork(LIMITS)
    out_dir = run_prefix(HOUR.run_id) + "shards"
    first, second = [replace(shard, data=LIMITS.sensor_data_blob, out_dir=out_dir) for shard in _plan(generated, HOUR)[1:3]]
    assert [model.status for model in work.queued(first, 1).models] == ["ok"] * 4
    assert work.cache.downloads == 1 + 1 + 4, "the readings, the manifest and the shard's four model files"
    assert [model.status for model in work.queued(second, 1).models] == ["ok"] * 4
    assert work.cache.downloads == 6 + 4, "only the second shard's model files"
    assert work.queued(first, 2).succeeded and work.cache.downloads == 10, "a redelivered shard downloads nothing"
    service.get_blob_client(LIMITS.sensor_data_container, LIMITS.sensor_data_blob).upload_blob(
        (generated / "sensor_data.csv").read_bytes(), overwrite=True)
    assert work.queued(second, 1).succeeded and work.cache.downloads == 11, "a replaced readings blob is read anew"
    written = {blob.name for blob in service.get_container_client(LIMITS.work_container).list_blobs(name_starts_with=out_dir)}
    assert written == {f"{out_dir}/{first.shard_id}.a1.csv", f"{out_dir}/{second.shard_id}.a1.csv"}

    service.get_blob_client(LIMITS.sensor_data_container, LIMITS.sensor_data_blob).delete_blob()
    gone = work.queued(second, 1)
    assert (gone.succeeded, gone.retryable) == (False, False) and "readings sensor-data/sensor_data.csv are gone" in gone.error


def test_a_model_file_over_its_bound_fails_that_model_alone_unread(storage, generated, monkeypatch):
    """A model file larger than a model may be is refused from the size storage states, without reading it, and
    only its own model fails with that reason; the shard's other models are scored."""
    import gpu_job.blob_cache as blob_cache

    service, _ = storage
    shard = replace(_plan(generated, HOUR)[1], data=LIMITS.sensor_data_blob, out_dir=run_prefix(HOUR.run_id) + "shards")
    manifest = Manifest.load(generated / "models")
    victim = manifest.models["/".join(shard.keys[0])]
    bound = max((generated / "models" / entry.file).stat().st_size for entry in manifest.models.values())
    monkeypatch.setattr(blob_cache, "MODEL_FILE_MAX_BYTES", bound)
    service.get_blob_client(LIMITS.models_container, victim.file).upload_blob(b"\0" * (bound + 1), overwrite=True)
    from azure.storage.blob import BlobClient

    work, read = ShardWork(LIMITS), []
    download = BlobClient.download_blob
    monkeypatch.setattr(BlobClient, "download_blob", lambda self, *args, **kwargs: read.append(self.blob_name) or download(self, *args, **kwargs))
    result = work.queued(shard, 1)
    assert victim.file not in read, "refused from its properties: its content never requested"
    statuses = [(model.status, model.reason) for model in result.models]
    assert statuses[0] == ("failed", f"model {'/'.join(shard.keys[0])}: {LIMITS.models_container}/{victim.file} is {bound + 1} bytes, "
                                     f"more than the {bound} it may be")
    assert [status for status, _ in statuses[1:]] == ["ok"] * (len(shard.keys) - 1)
    assert work.cache.downloads == 1 + 1 + len(shard.keys) - 1, "the readings, the manifest and the other model files"
    assert result.succeeded, "a model that fails alone does not fail its shard"


CLIMBING_NAME = "a////////../../../../outside/evil.py"
"""Issue 20's file name, climbing from the cache's models folder (``<root>/models/<hash>/``) to the test's own folder."""


def _bearer_like(service: BlobServiceClient) -> BlobServiceClient:
    """The models container through a SAS, like a worker's managed identity a credential that signs no blob path: the
    storage client then sends a name with ``..`` parts (which it normalises away) and storage answers."""
    sas = generate_container_sas(service.account_name, LIMITS.models_container, account_key=service.credential.account_key,
                                 permission=ContainerSasPermissions(read=True, write=True), expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return BlobServiceClient(service.url, credential=sas)


def _files_outside(root: Path, cache: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and cache not in path.parents]


def test_a_manifest_file_name_that_climbs_out_of_the_cache_writes_nothing_outside_it(storage, generated, tmp_path):
    """A manifest naming a model file ``a////////../../../../outside/evil.py`` (the blob exists: the storage client
    reads it from the models container) is refused before anything is downloaded, and no file lands outside the cache."""
    service = _bearer_like(storage[0])
    manifest = json.loads((generated / "models" / "manifest.json").read_text())
    manifest["models"]["1/1"]["file"] = CLIMBING_NAME
    models = service.get_container_client(LIMITS.models_container)
    models.upload_blob(CLIMBING_NAME, b"import os  # planted\n", overwrite=True)
    models.upload_blob("manifest.json", json.dumps(manifest).encode(), overwrite=True)
    cache = BlobCache(service, tmp_path / "cache")
    shard = _plan(generated, HOUR)[0]
    assert ("1", "1") in shard.keys
    with pytest.raises(InvalidInputError, match=r"models/manifest\.json: model '1/1': file .* is not a plain file name"):
        cache.models(LIMITS.models_container, "", shard)
    assert _files_outside(tmp_path, tmp_path / "cache") == []
    assert not (tmp_path / "outside").exists()


def test_the_cache_checks_a_model_file_name_again_itself(storage, generated, tmp_path, monkeypatch):
    """Even with a manifest that skipped the parser's checks, the cache derives the local path from a checked plain
    name: the climbing name is refused and nothing is written outside the cache."""
    service = _bearer_like(storage[0])
    service.get_container_client(LIMITS.models_container).upload_blob(CLIMBING_NAME, b"planted", overwrite=True)
    cache = BlobCache(service, tmp_path / "cache")
    manifest = Manifest.load(generated / "models")
    entry = manifest.models["1/1"]
    manifest.models["1/1"] = ModelEntry(**{**entry.__dict__, "file": CLIMBING_NAME})
    monkeypatch.setattr(cache, "manifest", lambda container, prefix: (tmp_path / "cache" / "models" / "m", manifest))
    with pytest.raises(InvalidInputError, match="is not a plain file name"):
        cache.models(LIMITS.models_container, "", _plan(generated, HOUR)[0])
    assert _files_outside(tmp_path, tmp_path / "cache") == []


@pytest.mark.parametrize("body,reason", [
    ("{not json", "not JSON"),
    (json.dumps({"format": 1, "run_id": "r"}), "lacks shard_id"),
])
def test_malformed_shard_results_raise_so_they_go_to_poison(body, reason):
    with pytest.raises(ShardMessageError, match=reason):
        run(deliver_shard_result(body, ReplayClient()))


def test_shard_result_for_an_unknown_run_raises():
    result = ShardResult(run_id="20180829T010000--20180829T020000", shard_id="shard-0123456789abcdef", models=[])
    with pytest.raises(MessageError, match="unknown job score-models-20180829T010000--20180829T020000"):
        run(deliver_shard_result(result.to_json(), ReplayClient()))


def test_a_manifest_over_its_bound_refuses_the_run_from_its_properties_unread(storage, monkeypatch):
    from azure.storage.blob import BlobClient

    monkeypatch.setattr(many_models, "MANIFEST_MAX_BYTES", 100)
    reads = []
    monkeypatch.setattr(BlobClient, "download_blob", lambda self, *args, **kwargs: reads.append(self.blob_name))
    with pytest.raises(InvalidInputError, match=r"models/manifest.json: manifest: \d+ bytes is over the limit of 100"):
        many_models.plan_model_run({"run_id": HOUR.run_id, "window": HOUR.to_dict()}, LIMITS)
    assert reads == []
