"""The Function app against a real Azurite: bindings, upload handling, queue messages, the end-to-end run."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
from fractions import Fraction
from pathlib import Path

import azure.functions as func
import numpy as np
import pytest
import yaml
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from durable_replay import CALL_ACTIVITY, ReplayClient
from function_app.activities import ACTIVITIES
from function_app.batches import job_status, on_batch_message, on_styled_segment, report_azureml_status, submit_batch
from function_app.compute import AzureMLBackend, job_name
from function_app.orchestrator import RESULT_EVENT
from function_app.upload import instance_id_for, start_job, style_for
from media import audio_md5, damage_packet, ffmpeg, frame_timestamps, frames_at, make_clip, min_psnr, packets_of, preview_tiles, streams_of
from shared.config import Settings
from shared.messages import BatchMessage, MessageError
from shared.plan import Batch
from shared.preview import sample_indices

LIMITS = Settings(batch_frames=20, max_attempts=2)
COMPONENT_YAML = Path(__file__).resolve().parents[1] / "gpu_job" / "azureml" / "component.yml"


def _user(function):
    """The function as written, unwrapped from the Durable client binding (as the SDK's samples-v2 tests do)."""
    user = function.build().get_user_function()
    return getattr(user, "client_function", user)


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture()
def storage(azurite, monkeypatch):
    monkeypatch.setenv(LIMITS.storage_connection, azurite)
    service = BlobServiceClient.from_connection_string(azurite)
    for container in (LIMITS.input_container, LIMITS.output_container, LIMITS.work_container):
        if not service.get_container_client(container).exists():
            service.create_container(container)
    queue = QueueClient.from_connection_string(azurite, LIMITS.batch_queue)
    from azure.core.exceptions import ResourceExistsError

    try:
        queue.create_queue()
    except ResourceExistsError:
        queue.clear_messages()
    return service, queue


def test_binding_metadata(app_functions):
    bindings = {name: {b.type: b for b in f.get_bindings()} for name, f in app_functions.items()}
    upload = bindings["on_upload"]["blobTrigger"]
    assert upload.path == "videos-in/{name}" and upload.connection == "DataStorage"
    assert bindings["on_batch_message"]["queueTrigger"].queue_name == "batches"
    assert bindings["on_styled_segment"]["blobTrigger"].path == "stylize-work/jobs/{job}/styled/{file}"
    assert "orchestrationTrigger" in bindings["stylize_orchestrator"]
    assert {"split_job", "enqueue_batches", "stitch_job", "report_failure"} <= {n for n, b in bindings.items() if "activityTrigger" in b}
    assert bindings["job_status"]["httpTrigger"].route == "jobs/{job_id}"
    assert "eventGridTrigger" in bindings["on_azureml_run_status"]
    assert not any(b.get("blobTrigger") and b["blobTrigger"].path.startswith(LIMITS.output_container) for b in bindings.values()), \
        "outputs must never trigger the pipeline"


def test_style_rules_and_instance_ids():
    assert style_for("clip.mp4", {"style": "mosaic"}, "candy") == "mosaic"
    assert style_for("udnie/clip.mp4", {}, "candy") == "udnie"
    assert style_for("holidays/clip.mp4", {}, "candy") == "candy"
    assert instance_id_for("a.mp4", '"0x1"') == instance_id_for("a.mp4", "0x1") != instance_id_for("a.mp4", "0x2")


def _upload(service: BlobServiceClient, name: str, data: bytes, style: str = "identity"):
    blob = service.get_blob_client(LIMITS.input_container, name)
    blob.upload_blob(data, overwrite=True, metadata={"style": style})
    return blob


def _drive(client: ReplayClient, instance_id: str, service: BlobServiceClient, queue: QueueClient, rounds: int = 50) -> None:
    """Play the Functions host: run activities, deliver queue messages (Base64, as the host decodes them) and styled-blob events."""
    replay = client.replays[instance_id]
    reported: set[str] = set()
    for _ in range(rounds):
        for action in replay.step():
            if action["actionType"] == CALL_ACTIVITY:
                try:
                    replay.complete(action, ACTIVITIES[action["functionName"]](action["input"], LIMITS))
                except Exception as exc:  # an activity failure reaches the orchestrator as the host reports it
                    replay.fail(action, str(exc))
        if replay.done:
            return
        for raw in queue.receive_messages():
            body = base64.b64decode(raw.content)
            run(_user(on_batch_message)(func.QueueMessage(id=raw.id, body=body), client))
            queue.delete_message(raw)
        for blob in service.get_container_client(LIMITS.work_container).list_blobs(name_starts_with=f"jobs/{instance_id}/styled/"):
            if blob.name not in reported:
                reported.add(blob.name)
                stream = func.blob.InputStream(name=f"{LIMITS.work_container}/{blob.name}", data=b"", length=blob.size, uri="")
                run(_user(on_styled_segment)(stream, client))
    pytest.fail("orchestration did not finish")


def test_end_to_end_on_azurite_is_frame_exact(storage, tmp_path):
    service, queue = storage
    clip = make_clip(tmp_path / "clip.mp4", seconds=2, rate="25")
    blob = _upload(service, "trips/clip.mp4", clip.read_bytes())
    client = ReplayClient()
    instance_id = run(start_job(blob, client, LIMITS))
    assert run(start_job(blob, client, LIMITS)) == instance_id and len(client.started) == 1, "a repeated event starts nothing new"
    _drive(client, instance_id, service, queue)

    names = ["trips/clip.identity.mp4", "trips/clip.identity.preview.png", "trips/clip.identity.report.json"]
    outputs = {name: tmp_path / Path(name).name for name in names}
    for name, path in outputs.items():
        path.write_bytes(service.get_blob_client(LIMITS.output_container, name).download_blob().readall())
    video = outputs["trips/clip.identity.mp4"]
    assert frame_timestamps(video) == frame_timestamps(clip)
    worst, compared = min_psnr(video, clip)
    assert compared == 50 and worst >= 35
    assert audio_md5(video) == audio_md5(clip)
    report = json.loads(outputs["trips/clip.identity.report.json"].read_text())
    assert report["frames"] == 50 and [b["attempts"] for b in report["batches"]] == [1, 1, 1]
    indices = sample_indices(50)
    tiles = preview_tiles(outputs["trips/clip.identity.preview.png"], len(indices))
    height, width = tiles[0][0].shape[:2]
    assert [(np.array_equal(a, frame), np.array_equal(b, styled)) for (a, b), frame, styled
            in zip(tiles, frames_at(clip, indices, width, height), frames_at(video, indices, width, height), strict=True)] == [(True, True)] * 3

    response = run(_user(job_status)(func.HttpRequest("GET", f"/api/jobs/{instance_id}", body=b"", route_params={"job_id": instance_id}), client))
    status = json.loads(response.get_body())
    assert response.status_code == 200
    assert status["stage"] == "done" and status["runtime_status"] == "Completed"
    assert status["output"]["video"] == "trips/clip.identity.mp4" and status["frames_done"] == 50
    assert service.get_blob_client(LIMITS.input_container, "trips/clip.mp4").download_blob().readall() == clip.read_bytes()


def test_corrupt_video_fails_its_job_only_with_a_report(storage, tmp_path):
    service, queue = storage
    junk = b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200
    blob = _upload(service, "broken.mp4", junk)
    client = ReplayClient()
    instance_id = run(start_job(blob, client, LIMITS))
    _drive(client, instance_id, service, queue)
    status = run(client.get_status(instance_id))
    assert status.runtime_status.value == "Failed"
    assert status.custom_status["stage"] == "failed" and "not a readable video file" in status.custom_status["error"]
    report = json.loads(service.get_blob_client(LIMITS.output_container, "broken.identity.error.json").download_blob().readall())
    assert "not a readable video file" in report["error"]
    assert service.get_blob_client(LIMITS.input_container, "broken.mp4").download_blob().readall() == junk
    missing = run(_user(job_status)(func.HttpRequest("GET", "/api/jobs/nope", body=b"", route_params={"job_id": "nope"}), client))
    assert missing.status_code == 404


def test_refused_upload_starts_nothing(storage):
    service, _ = storage
    client = ReplayClient()
    assert run(start_job(_upload(service, "notes.txt", b"hello"), client, LIMITS)) is None
    assert run(start_job(_upload(service, "clip.mp4", b"x", style="picasso"), client, LIMITS)) is None
    assert client.started == []
    report = json.loads(service.get_blob_client(LIMITS.output_container, "notes.identity.error.json").download_blob().readall())
    assert "extension .txt is not accepted" in report["error"]


def _message(job_id: str = "job-1", attempt: int = 1) -> BatchMessage:
    batch = Batch(index=3, first_frame=60, frame_count=20, start_pts=60, end_pts=80, time_base="1/25", first_gop=2, last_gop=3)
    return BatchMessage(job_id=job_id, batch=batch, attempt=attempt, model="candy",
                        segment_blob=f"jobs/{job_id}/segments/batch-00003.mp4", styled_blob=f"jobs/{job_id}/styled/batch-00003.a{attempt}.mp4")


@pytest.mark.parametrize("body,reason", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"job_id": "j"}), "lacks batch"),
    (json.dumps({**json.loads(_message().to_json()), "attempt": "1"}), "mistyped attempt"),
])
def test_malformed_messages_raise_so_they_go_to_poison(body, reason):
    with pytest.raises(MessageError, match=reason):
        run(submit_batch(body, ReplayClient()))


def test_message_for_unknown_job_raises():
    with pytest.raises(MessageError, match="unknown job"):
        run(submit_batch(_message("ghost").to_json(), ReplayClient()))


def test_message_round_trip():
    message = _message()
    assert BatchMessage.from_json(message.to_json()) == message


class _FakeJobs:
    """Stands in for the Azure ML job service: remembers submitted jobs by name."""

    def __init__(self) -> None:
        self.created = {}

    def get(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.created:
            raise ResourceNotFoundError("no such job")
        return self.created[name]

    def create_or_update(self, job):
        self.created[job.name] = job
        return job


class _FakeComponents:
    """Stands in for the component registry: serves the component YAML the post-deploy hook registers."""

    def __init__(self) -> None:
        self.requests = []

    def get(self, name, label=None):
        from azure.ai.ml import load_component

        self.requests.append((name, label))
        return load_component(COMPONENT_YAML)


def _expand(body: dict, mounts: dict[str, str]) -> list[str]:
    """Substitute the inputs of a job request into its command the way Azure ML does, optional ``$[[...]]`` groups included."""
    def value(kind: str, key: str):
        if kind == "outputs":
            return mounts[key]
        found = body["inputs"].get(key)
        return None if found is None else found.get("uri", found.get("value"))

    def optional(match):
        keys = re.findall(r"\$\{\{(inputs|outputs)\.(\w+)\}\}", match.group(1))
        return match.group(1) if all(value(*key) is not None for key in keys) else ""

    command = re.sub(r"\$\[\[(.*?)\]\]", optional, body["command"])
    return shlex.split(re.sub(r"\$\{\{(inputs|outputs)\.(\w+)\}\}", lambda m: str(value(m.group(1), m.group(2))), command))


@pytest.mark.parametrize("end_pts", [80, None], ids=["middle batch", "last batch"])
def test_azureml_job_is_valid_for_the_sdk_and_the_scorer_cli(tmp_path, end_pts):
    from azure.ai.ml import load_job

    from gpu_job.__main__ import parse_args

    message = _message()
    message = BatchMessage(**{**message.__dict__, "batch": Batch(**{**message.batch.__dict__, "end_pts": end_pts})})
    backend = AzureMLBackend(Settings(), ml_client=type("Client", (), {"jobs": _FakeJobs(), "components": _FakeComponents()})())
    job = backend.build_job(message)
    assert backend.ml_client.components.requests == [("stylize_batch", "latest")]
    body = job._to_rest_object().as_dict()["properties"]
    assert body["jobType"] == "Command" and body["identity"] == {"identityType": "Managed"} and body["computeId"] == "gpu-cluster"
    path = tmp_path / "job.yaml"
    job.dump(path)
    loaded = load_job(path)
    assert yaml.safe_load(path.read_text())["type"] == "command"
    assert loaded.name == job_name(message) == "job-1-b00003-a1"
    assert loaded.compute == "gpu-cluster" and loaded.environment == "stylize-gpu@latest"
    assert loaded.identity.type == "managed_identity", "data access must use the cluster's identity, not a key"
    assert loaded.inputs["segment"].path == "azureml://datastores/stylize_work/paths/jobs/job-1/segments/batch-00003.mp4"
    assert loaded.outputs["styled"].path == "azureml://datastores/stylize_work/paths/jobs/job-1/styled/"
    assert loaded.tags == {"orchestration_id": "job-1", "batch": "3", "attempt": "1"}
    argv = _expand(body, {"styled": "/mnt/styled"})
    assert argv[:3] == ["python", "-m", "gpu_job"]
    args = parse_args(argv[3:])
    assert (args.input, args.output) == (Path(loaded.inputs["segment"].path), Path("/mnt/styled/batch-00003.a1.mp4"))
    assert (args.model, args.start_pts, args.end_pts, args.time_base, args.frames) == ("candy", 60, end_pts, Fraction(1, 25), 20)
    assert (args.device, args.batch_size, args.crf, args.preset) == ("cuda", 0, 18, "medium")


def test_azureml_submits_a_redelivered_message_once():
    jobs = _FakeJobs()
    backend = AzureMLBackend(Settings(), ml_client=type("Client", (), {"jobs": jobs, "components": _FakeComponents()})())
    message = _message()
    assert backend.submit(message) == backend.submit(message) == "job-1-b00003-a1"
    assert len(jobs.created) == 1, "a redelivered message must not submit twice"


def test_azureml_failure_event_reaches_the_orchestration():
    class Recorder:
        events = []

        async def raise_event(self, instance_id, name, data):
            self.events.append((instance_id, name, data))

    event = {"data": {"runStatus": "Failed", "runId": "job-1-b00003-a1", "runTags": {"orchestration_id": "job-1", "batch": "3", "attempt": "1"}}}
    result = run(report_azureml_status(event, Recorder()))
    assert result.succeeded is False and Recorder.events == [("job-1", RESULT_EVENT, result.to_dict())]
    assert run(report_azureml_status({"data": {"runStatus": "Completed", "runTags": {}}}, Recorder())) is None


def test_cloud_run_keeps_every_track_and_lists_damaged_frames(storage, tmp_path):
    """Opus audio and SRT subtitles come back by stream copy in a Matroska output (MP4 holds neither exactly); a frame
    FFmpeg cannot decode is left out and listed, and no batch is retried for it."""
    service, queue = storage
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
    _drive(client, instance_id, service, queue)

    names = ["web/clip.identity.mkv", "web/clip.identity.report.json"]
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
    service, queue = storage
    clip = tmp_path / "ffv1.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x36:duration=0.4", "-c:v", "ffv1", str(clip))
    unknown = clip.read_bytes().replace(b"FFV1", b"ZZV9")
    blob = _upload(service, "odd.mkv", unknown)
    client = ReplayClient()
    instance_id = run(start_job(blob, client, LIMITS))
    _drive(client, instance_id, service, queue)
    assert run(client.get_status(instance_id)).runtime_status.value == "Failed"
    report = json.loads(service.get_blob_client(LIMITS.output_container, "odd.identity.error.json").download_blob().readall())
    assert "uses a codec the bundled FFmpeg cannot decode" in report["error"] and len(report["error"].splitlines()) == 1
    assert service.get_blob_client(LIMITS.input_container, "odd.mkv").download_blob().readall() == unknown
