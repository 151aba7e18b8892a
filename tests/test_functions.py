"""The Function app against a real Azurite: bindings, upload handling, real worker processes on the
queues, results delivered back to the orchestration, a worker killed mid-batch, a poison batch, and the
Azure ML worker jobs (built offline and validated by the SDK)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
from dataclasses import replace
from pathlib import Path

import azure.functions as func
import numpy as np
import pytest
import yaml
from azure.storage.blob import BlobServiceClient

import durable_replay
from durable_replay import ReplayClient
from durable_replay import user_function as _user
from function_app.activities import ACTIVITIES
from function_app.batches import deliver_result, job_status, on_batch_result
from function_app.compute import AZUREML_ACTIVE_STATES, AzureMLWorkers, Fleet, LocalWorkers, ensure_workers
from function_app.upload import instance_id_for, start_job, style_for
from media import (audio_md5, damage_packet, ffmpeg, frame_timestamps, frames_at, keyframe_timestamps, make_clip, min_psnr, packets_of,
                   preview_tiles, streams_of)
from shared.config import Settings
from shared.messages import BatchMessage, BatchResult, MessageError
from shared.plan import Batch
from shared.preview import sample_indices

LIMITS = Settings(batch_frames=20, max_attempts=2, max_workers=2, worker_idle_s=20, visibility_timeout_s=4, max_deliveries=2,
                  worker_check_s=30, batch_timeout_s=3600)
AML_DIR = Path(__file__).resolve().parents[1] / "gpu_job" / "azureml"
COMPONENT_YAML = {"stylize_worker": AML_DIR / "component.yml", "stylize_shard_worker": AML_DIR / "component-shards.yml"}
STALL_S = 2.0
CLUSTER_CLIENT_ID = "00000000-0000-0000-0000-00000000c1d5"
CPU_CLUSTER_CLIENT_ID = "00000000-0000-0000-0000-0000000c9c1d"


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture()
def storage(on_azurite):
    """Fresh containers and queues on Azurite; every local worker started by a test is stopped after it."""
    service, queues = on_azurite(LIMITS, (LIMITS.input_container, LIMITS.output_container, LIMITS.work_container),
                                 (LIMITS.batch_queue, LIMITS.result_queue, LIMITS.poison_queue))
    service.get_container_client(LIMITS.work_container).delete_blobs(
        *[blob.name for blob in service.get_container_client(LIMITS.work_container).list_blobs(name_starts_with="workers/")])
    yield service, queues
    LocalWorkers.stop_all()


def test_binding_metadata(app_functions):
    bindings = {name: {b.type: b for b in f.get_bindings()} for name, f in app_functions.items()}
    upload = bindings["on_upload"]["blobTrigger"]
    assert upload.path == "videos-in/{name}" and upload.connection == "DataStorage"
    assert bindings["on_batch_result"]["queueTrigger"].queue_name == "batch-results"
    assert "orchestrationTrigger" in bindings["stylize_orchestrator"]
    assert {"split_job", "enqueue_batches", "ensure_workers", "stitch_job", "report_failure",
            "plan_model_run", "enqueue_shards", "finish_model_run", "fail_model_run", "publish_status"} == {
        n for n, b in bindings.items() if "activityTrigger" in b}
    assert bindings["job_status"]["httpTrigger"].route == "jobs/{job_id}"
    assert [bindings[name]["httpTrigger"].route for name in ("view_jobs", "view_job", "job_file")] == [
        "jobs/view", "jobs/{job_id}/view", "jobs/{job_id}/files/{kind}"]
    assert bindings["on_shard_result"]["queueTrigger"].queue_name == "shard-results"
    assert bindings["start_model_run"]["httpTrigger"].route == "models/runs" and [str(m.value) for m in bindings["start_model_run"]["httpTrigger"].methods] == ["POST"]
    assert "orchestrationTrigger" in bindings["score_models_orchestrator"]
    assert bindings["on_models_schedule"]["timerTrigger"].schedule == "%STYLIZE_MODELS_SCHEDULE%"
    assert not any("eventGridTrigger" in b for b in bindings.values()), "completion comes from the results queue only"
    assert not any(b.get("queueTrigger") and b["queueTrigger"].queue_name in ("batches", "shards") for b in bindings.values()), \
        "the work queues are drained by the workers, not by the Function app"
    assert not any(b.get("blobTrigger") and b["blobTrigger"].path.startswith((LIMITS.output_container, LIMITS.work_container))
                   for b in bindings.values()), "outputs and intermediate blobs must never trigger the pipeline"


def test_style_rules_and_instance_ids():
    assert style_for("clip.mp4", {"style": "mosaic"}, "candy") == "mosaic"
    assert style_for("udnie/clip.mp4", {}, "candy") == "udnie"
    assert style_for("holidays/clip.mp4", {}, "candy") == "candy"
    assert instance_id_for("a.mp4", '"0x1"') == instance_id_for("a.mp4", "0x1") != instance_id_for("a.mp4", "0x2")


def _upload(service: BlobServiceClient, name: str, data: bytes, style: str = "identity"):
    blob = service.get_blob_client(LIMITS.input_container, name)
    blob.upload_blob(data, overwrite=True, metadata={"style": style})
    return blob


def Host(client: ReplayClient, instance_id: str, queues: dict, limits: Settings = LIMITS) -> durable_replay.Host:
    """The Functions host for one video job: its activities, its results queue delivered to ``on_batch_result``."""
    def deliver(body: str) -> BatchResult:
        run(_user(on_batch_result)(func.QueueMessage(body=body.encode()), client))
        return BatchResult.from_json(body)

    return durable_replay.Host(client, instance_id, ACTIVITIES, queues[limits.result_queue], deliver, limits, STALL_S)


def _start(service, name: str, clip: Path, style: str = "identity", limits: Settings = LIMITS) -> tuple[ReplayClient, str]:
    client = ReplayClient()
    instance_id = run(start_job(_upload(service, name, clip.read_bytes(), style), client, limits))
    return client, instance_id


def _output(service, name: str, folder: Path) -> Path:
    path = folder / Path(name).name
    path.write_bytes(service.get_blob_client(LIMITS.output_container, name).download_blob().readall())
    return path


def test_end_to_end_on_azurite_with_warm_workers_is_frame_exact(storage, tmp_path):
    service, queues = storage
    clip = make_clip(tmp_path / "clip.mp4", seconds=4, rate="25")
    client, instance_id = _start(service, "trips/clip.mp4", clip)
    blob = service.get_blob_client(LIMITS.input_container, "trips/clip.mp4")
    assert run(start_job(blob, client, LIMITS)) == instance_id and len(client.started) == 1, "a repeated event starts nothing new"
    host = Host(client, instance_id, queues)
    host.until_done()

    video = _output(service, "trips/clip.mp4.identity.mp4", tmp_path)
    preview = _output(service, "trips/clip.mp4.identity.preview.png", tmp_path)
    report = json.loads(_output(service, "trips/clip.mp4.identity.report.json", tmp_path).read_text())
    assert frame_timestamps(video) == frame_timestamps(clip)
    worst, compared = min_psnr(video, clip)
    assert compared == 100 and worst >= 35
    assert audio_md5(video) == audio_md5(clip)
    assert report["frames"] == 100 and [b["attempts"] for b in report["batches"]] == [1] * 5
    assert len(LocalWorkers.processes) == LIMITS.max_workers, "five batches, at most two workers"
    assert sum(w["batches"] for w in report["worker_stats"]) == 5
    assert all(w["model_loads"] == 1 for w in report["worker_stats"]), "each worker loads the model once, not per batch"
    assert {b["worker"] for b in report["batches"]} == {w["worker"] for w in report["worker_stats"]}
    indices = sample_indices(100)
    assert {frame_timestamps(clip)[i] for i in indices} <= keyframe_timestamps(video), "each frame the preview samples starts a GOP"
    tiles = preview_tiles(preview, len(indices))
    height, width = tiles[0][0].shape[:2]
    assert [(np.array_equal(a, frame), np.array_equal(b, styled)) for (a, b), frame, styled
            in zip(tiles, frames_at(clip, indices, width, height), frames_at(video, indices, width, height), strict=True)] == [(True, True)] * 3

    response = run(_user(job_status)(func.HttpRequest("GET", f"/api/jobs/{instance_id}", body=b"", route_params={"job_id": instance_id}), client))
    status = json.loads(response.get_body())
    assert response.status_code == 200
    assert status["stage"] == "done" and status["runtime_status"] == "Completed"
    assert status["output"]["video"] == "trips/clip.mp4.identity.mp4" and status["frames_done"] == 100
    assert service.get_blob_client(LIMITS.input_container, "trips/clip.mp4").download_blob().readall() == clip.read_bytes()
    assert service.get_blob_client(LIMITS.work_container, f"jobs/{instance_id}/closed").exists()


def _kill_first_worker_mid_batch(queues: dict, killed: list[int]):
    """Once a worker has taken a batch message (it turns invisible), SIGKILL that worker."""
    batches = queues[LIMITS.batch_queue]

    def on_round() -> None:
        if killed:
            return
        total = batches.get_queue_properties().approximate_message_count
        visible = len(batches.peek_messages(max_messages=32))
        running = [p for p in LocalWorkers.processes.values() if p.poll() is None]
        if total and visible < total and len(running) == 1:
            os.kill(running[0].pid, signal.SIGKILL)
            killed.append(running[0].pid)

    return on_round


def test_worker_killed_mid_batch_its_message_reappears_and_the_video_is_complete(storage, tmp_path):
    service, queues = storage
    limits = replace(LIMITS, max_workers=1, batch_frames=25)
    clip = make_clip(tmp_path / "clip.mp4", size="160x90", seconds=3, rate="25")
    client, instance_id = _start(service, "kill/clip.mp4", clip, style="random", limits=limits)
    host, killed = Host(client, instance_id, queues, limits), []
    host.until_done(on_round=_kill_first_worker_mid_batch(queues, killed))

    assert killed, "no worker was killed"
    assert run(client.get_status(instance_id)).runtime_status.value == "Completed"
    video = _output(service, "kill/clip.mp4.random.mp4", tmp_path)
    assert frame_timestamps(video) == frame_timestamps(clip), "every frame once, none twice, none missing"
    first = next(r for r in host.delivered if r.succeeded and r.batch == 0)
    assert first.delivery == 2 and first.attempt == 1, "the killed worker's batch was redelivered, not resubmitted"
    assert len({r.worker for r in host.delivered}) == 1 and str(killed[0]) not in first.worker
    report = json.loads(_output(service, "kill/clip.mp4.random.report.json", tmp_path).read_text())
    assert [b["attempts"] for b in report["batches"]] == [1, 1, 1]


def test_batch_that_keeps_killing_its_workers_is_poisoned_and_fails_the_job(storage, tmp_path):
    service, queues = storage
    limits = replace(LIMITS, max_workers=1, batch_frames=25, max_deliveries=1)
    clip = make_clip(tmp_path / "clip.mp4", size="160x90", seconds=2, rate="25")
    client, instance_id = _start(service, "poison/clip.mp4", clip, style="random", limits=limits)
    host, killed = Host(client, instance_id, queues, limits), []
    host.until_done(on_round=_kill_first_worker_mid_batch(queues, killed))

    status = run(client.get_status(instance_id))
    assert status.runtime_status.value == "Failed"
    error = status.custom_status["error"]
    assert error.startswith("batch 0 failed: batch-00000 attempt 1 was delivered 1 times") and "batches-poison" in error
    assert len(queues[limits.poison_queue].peek_messages()) == 1
    report = json.loads(service.get_blob_client(LIMITS.output_container, "poison/clip.mp4.random.error.json").download_blob().readall())
    assert report["error"] == error
    assert not service.get_blob_client(LIMITS.output_container, "poison/clip.mp4.random.mp4").exists()


def test_corrupt_video_fails_its_job_only_with_a_report(storage, tmp_path):
    service, queues = storage
    junk = b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200
    client = ReplayClient()
    instance_id = run(start_job(_upload(service, "broken.mp4", junk), client, LIMITS))
    Host(client, instance_id, queues).until_done(timeout_s=30)
    status = run(client.get_status(instance_id))
    assert status.runtime_status.value == "Failed"
    assert status.custom_status["stage"] == "failed" and "not a readable video file" in status.custom_status["error"]
    report = json.loads(service.get_blob_client(LIMITS.output_container, "broken.mp4.identity.error.json").download_blob().readall())
    assert "not a readable video file" in report["error"]
    assert service.get_blob_client(LIMITS.input_container, "broken.mp4").download_blob().readall() == junk
    assert not LocalWorkers.processes, "no worker is started for a video that cannot be split"
    missing = run(_user(job_status)(func.HttpRequest("GET", "/api/jobs/nope", body=b"", route_params={"job_id": "nope"}), client))
    assert missing.status_code == 404


def test_refused_upload_starts_nothing(storage):
    service, _ = storage
    client = ReplayClient()
    assert run(start_job(_upload(service, "notes.txt", b"hello"), client, LIMITS)) is None
    assert run(start_job(_upload(service, "clip.mp4", b"x", style="picasso"), client, LIMITS)) is None
    assert client.started == []
    report = json.loads(service.get_blob_client(LIMITS.output_container, "notes.txt.identity.error.json").download_blob().readall())
    assert "extension .txt is not accepted" in report["error"]


@pytest.mark.parametrize("body,reason", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"job_id": "j"}), "lacks batch"),
    (json.dumps({"job_id": "j", "batch": 1, "attempt": "1", "succeeded": True}), "mistyped attempt"),
    (json.dumps({"job_id": "j", "batch": 1, "attempt": 1, "succeeded": True}), "names no styled segment"),
])
def test_malformed_results_raise_so_they_go_to_poison(body, reason):
    with pytest.raises(MessageError, match=reason):
        run(deliver_result(body, ReplayClient()))


def test_result_for_unknown_job_raises():
    result = BatchResult(job_id="stylize-" + "0" * 32, batch=0, attempt=1, succeeded=False, error="x")
    with pytest.raises(MessageError, match="unknown job"):
        run(deliver_result(result.to_json(), ReplayClient()))


def _message(job_id: str = "job-1", attempt: int = 1) -> BatchMessage:
    batch = Batch(index=3, first_frame=60, frame_count=20, start_pts=60, end_pts=80, time_base="1/25", first_gop=2, last_gop=3)
    return BatchMessage(job_id=job_id, batch=batch, attempt=attempt, model="candy",
                        segment=f"jobs/{job_id}/segments/batch-00003.mp4", styled=f"jobs/{job_id}/styled/batch-00003.a{attempt}.mp4")


def test_message_round_trip():
    message = _message()
    assert BatchMessage.from_json(message.to_json()) == message
    with_samples = replace(message, preview_frames=(0, 19))
    assert BatchMessage.from_json(with_samples.to_json()) == with_samples
    for offsets in ([20], [-1], ["3"], [1.0]):
        with pytest.raises(MessageError, match="preview frames outside its 20 frames"):
            BatchMessage.from_json(json.dumps({**json.loads(message.to_json()), "preview_frames": offsets}))
    result = BatchResult(job_id="j", batch=3, attempt=2, succeeded=True, styled="s.mp4", worker="w:1", model_loads=1, delivery=2)
    assert BatchResult.from_json(result.to_json()) == result


class _FakeJobs:
    """Stands in for the Azure ML job service: remembers submitted jobs by name, with a status each."""

    def __init__(self) -> None:
        self.created = {}

    def get(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.created:
            raise ResourceNotFoundError("no such job")
        return self.created[name]

    def create_or_update(self, job):
        job._status = "Queued"  # what the service reports for a new job (the entity exposes it read-only)
        self.created[job.name] = job
        return job


class _FakeComponents:
    """Stands in for the component registry: serves the component YAML the post-deploy hook registers."""

    def __init__(self) -> None:
        self.requests = []

    def get(self, name, label=None):
        from azure.ai.ml import load_component

        self.requests.append((name, label))
        return load_component(COMPONENT_YAML[name])


def _azureml(monkeypatch, work: str = "batches") -> AzureMLWorkers:
    monkeypatch.setenv("DataStorage__blobServiceUri", "https://stdata.blob.core.windows.net")
    monkeypatch.setenv("DataStorage__queueServiceUri", "https://stdata.queue.core.windows.net")
    client = type("Client", (), {"jobs": _FakeJobs(), "components": _FakeComponents()})()
    settings = replace(LIMITS, compute_backend="azureml", max_workers=4, azureml_compute_client_id=CLUSTER_CLIENT_ID,
                       azureml_cpu_compute_client_id=CPU_CLUSTER_CLIENT_ID)
    return AzureMLWorkers(settings, Fleet.of(settings, work), ml_client=client)


def test_azureml_worker_job_is_valid_for_the_sdk_and_the_worker_cli(tmp_path, monkeypatch):
    from azure.ai.ml import load_job

    from gpu_job.__main__ import parse_args

    backend = _azureml(monkeypatch)
    monkeypatch.setenv("DataStorage", "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=c2VjcmV0")
    job = backend.build_job("stylize-worker-abc")
    assert backend.ml_client.components.requests == [("stylize_worker", "latest")]
    body = job._to_rest_object().as_dict()["properties"]
    assert body["jobType"] == "Command" and body["identity"] == {"identityType": "Managed"} and body["computeId"] == "gpu-cluster"
    env = body["environmentVariables"]
    assert env["DataStorage__blobServiceUri"] == "https://stdata.blob.core.windows.net"
    assert env["DataStorage__queueServiceUri"] == "https://stdata.queue.core.windows.net"
    assert env["DataStorage__credential"] == "managedidentity"
    assert env["DataStorage__clientId"] == env["AZURE_CLIENT_ID"] == CLUSTER_CLIENT_ID, "the cluster's identity, not the app's"
    assert "DataStorage" not in env and not any("AccountKey" in value for value in env.values()), "a worker job never carries a key"
    assert Settings.from_env(env) == replace(backend.settings, model_cache_dir=Settings().model_cache_dir), \
        "the worker reads the app's settings from its environment"
    path = tmp_path / "job.yaml"
    job.dump(path)
    loaded = load_job(path)
    assert yaml.safe_load(path.read_text())["type"] == "command"
    assert loaded.compute == "gpu-cluster" and loaded.environment == "stylize-gpu@latest"
    assert loaded.identity.type == "managed_identity", "data access must use the cluster's identity, not a key"
    assert loaded.tags == {"stylize_role": "worker"} and not loaded.inputs and not loaded.outputs
    argv = shlex.split(body["command"])
    assert argv[:3] == ["python", "-m", "gpu_job"]
    args = parse_args(argv[3:], Settings.from_env(env))
    assert (args.command, args.stdio, args.device, args.idle_seconds) == ("worker", False, "cuda", LIMITS.worker_idle_s)


def test_azureml_keeps_at_most_the_maximum_of_worker_jobs(storage, monkeypatch):
    _, queues = storage
    backend = _azureml(monkeypatch)
    first = ensure_workers(backend.settings, outstanding=100, backend=backend)
    assert len(first["started"]) == 4 and len(backend.ml_client.jobs.created) == 4, "100 batches, at most 4 worker jobs"
    second = ensure_workers(backend.settings, outstanding=100, backend=backend)
    assert second == {"running": first["started"], "started": []} and len(backend.ml_client.jobs.created) == 4
    ended = first["started"][0]
    backend.ml_client.jobs.created[ended]._status = "Failed"
    third = ensure_workers(backend.settings, outstanding=100, backend=backend)
    assert len(third["started"]) == 1 and ended not in third["running"], "a worker job that ended is replaced"
    assert {job.status for job in backend.ml_client.jobs.created.values()} <= AZUREML_ACTIVE_STATES | {"Failed"}
    assert ensure_workers(backend.settings, outstanding=2, backend=backend)["started"] == []
    for message in range(6):
        queues[LIMITS.batch_queue].send_message(f"other video's batch {message}")
    wider = replace(backend.settings, max_workers=6)
    assert len(ensure_workers(wider, outstanding=1, backend=backend)["started"]) == 2, \
        "batches of other videos waiting in the queue count as outstanding work"


def test_cloud_run_keeps_every_track_and_lists_damaged_frames(storage, tmp_path):
    """Opus audio and SRT subtitles come back by stream copy in a Matroska output (MP4 holds neither exactly); a frame
    FFmpeg cannot decode is left out and listed, and no batch is retried for it."""
    service, queues = storage
    srt = tmp_path / "subtitles.srt"
    srt.write_text("1\n00:00:00,200 --> 00:00:01,000\nhello\n")
    clean = tmp_path / "clean.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x72:rate=25:duration=2", "-f", "lavfi", "-i", "sine=duration=2:sample_rate=48000",
           "-i", str(srt), "-map", "0:v", "-map", "1:a", "-map", "2:s", "-c:v", "libx264", "-g", "25", "-bf", "0", "-c:a", "libopus",
           "-c:s", "srt", str(clean))
    clip = damage_packet(clean, tmp_path / "clip.mkv", 30)
    blob = _upload(service, "web/clip.mkv", clip.read_bytes())
    client = ReplayClient()
    instance_id = run(start_job(blob, client, LIMITS))
    Host(client, instance_id, queues).until_done()

    names = ["web/clip.mkv.identity.mkv", "web/clip.mkv.identity.report.json"]
    video, report_path = (tmp_path / Path(name).name for name in names)
    for name, path in zip(names, (video, report_path)):
        path.write_bytes(service.get_blob_client(LIMITS.output_container, name).download_blob().readall())
    shown = frame_timestamps(clean)
    assert frame_timestamps(video) == shown[:30] + shown[31:]
    assert audio_md5(video) == audio_md5(clip)
    assert [s["codec_name"] for s in streams_of(video)] == ["h264", "opus", "subrip"]
    assert packets_of(video, 2) == packets_of(clip, 2)
    report = json.loads(report_path.read_text())
    assert report["frames"] == 49 and report["skipped_frames"] == [float(shown[30])] and [b["attempts"] for b in report["batches"]] == [1, 1, 1]
    assert any(note.startswith("damaged input: 1 of 50 frames") for note in report["notes"])


def test_cloud_refuses_an_unreadable_codec_with_a_report_and_keeps_the_input(storage, tmp_path):
    service, queues = storage
    clip = tmp_path / "ffv1.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x36:duration=0.4", "-c:v", "ffv1", str(clip))
    unknown = clip.read_bytes().replace(b"FFV1", b"ZZV9")
    blob = _upload(service, "odd.mkv", unknown)
    client = ReplayClient()
    instance_id = run(start_job(blob, client, LIMITS))
    Host(client, instance_id, queues).until_done()
    assert run(client.get_status(instance_id)).runtime_status.value == "Failed"
    report = json.loads(service.get_blob_client(LIMITS.output_container, "odd.mkv.identity.error.json").download_blob().readall())
    assert "uses a codec the bundled FFmpeg cannot decode" in report["error"] and len(report["error"].splitlines()) == 1
    assert service.get_blob_client(LIMITS.input_container, "odd.mkv").download_blob().readall() == unknown


def test_azureml_shard_worker_jobs_run_on_the_cpu_cluster_as_its_identity(monkeypatch):
    from gpu_job.__main__ import parse_args

    backend = _azureml(monkeypatch, "shards")
    job = backend.build_job("stylize-shard-worker-abc")
    assert backend.ml_client.components.requests == [("stylize_shard_worker", "latest")]
    body = job._to_rest_object().as_dict()["properties"]
    assert body["computeId"] == "cpu-cluster" and body["identity"] == {"identityType": "Managed"}
    assert body["experimentName"] == "score-models" and body["tags"] == {"stylize_role": "shard-worker"}
    env = body["environmentVariables"]
    assert env["DataStorage__clientId"] == env["AZURE_CLIENT_ID"] == CPU_CLUSTER_CLIENT_ID, "the CPU cluster's identity"
    assert not any("AccountKey" in value for value in env.values())
    args = parse_args(shlex.split(body["command"])[3:], Settings.from_env(env))
    assert (args.command, args.work, args.idle_seconds) == ("worker", "shards", LIMITS.worker_idle_s)
    assert backend.start().startswith("stylize-shard-worker-")
