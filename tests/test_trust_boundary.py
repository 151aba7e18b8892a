"""The trust boundary: queue messages, results, upload names and metadata are outside input.

Each test here reproduces a finding of the review in issue 20 (and the oversized-result one of issue 21): forged or
malformed messages are poisoned at once with a one-line reason, never acted on, never retried; workers and the
fan-in derive every blob name from the job's layout. Queue cases run real worker processes on Azurite.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from function_app.batches import deliver_result
from function_app.fan_in import reason
from function_app.storage import error_report_name, output_names
from function_app.upload import check_style_image_blob, check_upload
from gpu_job.styles import is_known_style
from media import make_clip
from shared.config import Settings
from shared.containers import output_container
from shared.many_models.manifest import Manifest
from shared.many_models.run_state import SHARDS_DIR
from shared.many_models.schema import Window
from shared.many_models.shards import (KEY_JSON_MAX, KEY_VALUES_MAX, QUEUED_MODELS_MAX, REASON_CHARS, ModelResult, ShardMessageError,
                                       ShardResult, ShardSpec, plan_shards)
from shared.errors import InvalidInputError
from shared.messages import BatchMessage, BatchResult, MessageError
from shared.names import check_run_id
from shared.plan import plan_batches
from shared.probe import probe
from shared.split import split_video
from shared.storage import JobLayout, queue_client, run_prefix, upload_file

QUEUE_MESSAGE_BYTES = 64 * 1024


def _job(name: str) -> str:
    return "stylize-" + hashlib.sha256(name.encode()).hexdigest()[:32]


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trust")
    info = probe(make_clip(folder / "clip.mp4", seconds=1, audio=False, size="96x64"))
    batches = plan_batches(info, 13)
    return batches, split_video(info, batches, folder / "segments", output_container(info)).segments


@pytest.fixture()
def queues(on_azurite):
    settings = Settings(visibility_timeout_s=3, max_deliveries=2)
    service, clients = on_azurite(settings, (settings.work_container, settings.styles_container, settings.output_container),
                                  (settings.batch_queue, settings.result_queue, settings.poison_queue))
    return settings, service, clients


def _serve(settings: Settings, tmp_path: Path, timeout: float = 60, work: str = "batches") -> subprocess.CompletedProcess:
    """A real queue worker process, until the queue has been idle for a second (or ``timeout``: a message that keeps
    coming back never lets it go idle)."""
    env = {**os.environ, **settings.to_env(), "STYLIZE_MODEL_CACHE_DIR": str(tmp_path / "cache" / "models")}
    command = [sys.executable, "-m", "gpu_job", "worker", "--work", work, "--idle-seconds", "1", "--threads", "1"]
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the worker never went idle: a message kept coming back ({(exc.stderr or b'')[-300:]!r})")


def _contents(queue) -> list[str]:
    return [message.content for message in queue.receive_messages(messages_per_page=32, visibility_timeout=1)]


def _message(layout: JobLayout, batch, **changes) -> BatchMessage:
    fields = dict(job_id=layout.job_id, batch=batch, attempt=1, model="identity", segment=layout.segment(batch),
                  styled=layout.styled(f"{batch.name}.a1.mp4"))
    return BatchMessage(**{**fields, **changes})


def test_a_message_naming_another_jobs_blobs_is_poisoned_and_writes_nothing(queues, segments, tmp_path):
    settings, service, clients = queues
    batches, sources = segments
    mine, theirs = JobLayout(_job("a")), JobLayout(_job("b"))
    upload_file(service, settings.work_container, mine.segment(batches[0]), sources[0])
    forged = [_message(mine, batches[0], styled=theirs.styled("batch-00000.a1.mp4")),
              _message(mine, batches[0], styled=theirs.closed_marker),
              _message(mine, batches[0], styled=run_prefix("20240101T000000--20240101T010000") + "closed"),
              _message(mine, batches[0], segment=theirs.segment(batches[0]))]
    for message in forged:
        clients[settings.batch_queue].send_message(message.to_json())
    _serve(settings, tmp_path)
    work = service.get_container_client(settings.work_container)
    assert [blob.name for blob in work.list_blobs(name_starts_with=mine.root)] == [mine.segment(batches[0])], "nothing written"
    assert list(work.list_blobs(name_starts_with=theirs.root)) == [], "no other job's blob written, no job closed"
    assert not work.get_blob_client(run_prefix("20240101T000000--20240101T010000") + "closed").exists(), "no run closed"
    assert _contents(clients[settings.result_queue]) == [], "a forged message answers no job"
    assert sorted(_contents(clients[settings.poison_queue])) == sorted(message.to_json() for message in forged)


def test_a_model_path_is_refused_without_reading_or_revealing_the_file(queues, segments, tmp_path):
    settings, service, clients = queues
    batches, sources = segments
    layout = JobLayout(_job("paths"))
    upload_file(service, settings.work_container, layout.segment(batches[0]), sources[0])
    planted = tmp_path / "cache" / "style-images" / "evil.pth"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"not a checkpoint")
    for model in ("/etc/passwd", "/no/such/file.pth", str(planted), "../models/candy.pth"):
        clients[settings.batch_queue].send_message(_message(layout, batches[0], model=model).to_json())
    done = _serve(settings, tmp_path)
    assert _contents(clients[settings.result_queue]) == [], "no answer tells which local files exist"
    assert len(_contents(clients[settings.poison_queue])) == 4
    assert "cannot be read" not in done.stderr and "no such file" not in done.stderr.lower()


def test_a_worker_reads_only_its_jobs_checked_style_picture_and_caches_it_outside_the_model_cache(queues, segments, tmp_path):
    settings, service, clients = queues
    batches, sources = segments
    layout = JobLayout(_job("picture"))
    upload_file(service, settings.work_container, layout.segment(batches[0]), sources[0])
    pictures = {}
    for name, colour in (("job", (200, 30, 30)), ("other", (30, 200, 30))):
        data = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(data, "PNG")
        pictures[name] = data.getvalue()
    service.get_blob_client(settings.work_container, layout.style_picture).upload_blob(pictures["job"], overwrite=True)
    service.get_blob_client(settings.styles_container, "evil.pth").upload_blob(pictures["other"], overwrite=True)
    clients[settings.batch_queue].send_message(_message(layout, batches[0], model="arbitrary", style_image="evil.pth").to_json())
    _serve(settings, tmp_path, timeout=240)
    result, = [BatchResult.from_json(text) for text in _contents(clients[settings.result_queue])]
    assert result.succeeded, result.error
    cached = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert [path.read_bytes() for path in cached] == [pictures["job"]], "the job's own copy, never the blob the message names"
    assert all(path.suffix == ".picture" and "models" not in path.parts for path in cached), cached


@pytest.mark.parametrize("change", [
    lambda m: {**m, "batch": {**m["batch"], "index": "x"}},
    lambda m: {**m, "batch": {**m["batch"], "frame_count": "6"}, "preview_frames": [0]},
    lambda m: {**m, "batch": {**m["batch"], "time_base": "1/0"}},
    lambda m: {**m, "batch": {**m["batch"], "start_pts": "abc"}},
    lambda m: {**m, "style_strength": float("nan")},
], ids=["index", "frame_count", "time_base", "start_pts", "strength"])
def test_a_malformed_message_is_poisoned_at_once_and_the_next_is_served(queues, segments, tmp_path, change):
    settings, service, clients = queues
    batches, sources = segments
    layout = JobLayout(_job("malformed"))
    upload_file(service, settings.work_container, layout.segment(batches[0]), sources[0])
    bad = json.dumps(change(json.loads(_message(layout, batches[0]).to_json())))
    clients[settings.batch_queue].send_message(bad)
    clients[settings.batch_queue].send_message(_message(layout, batches[0]).to_json())
    done = _serve(settings, tmp_path)
    results = [BatchResult.from_json(text) for text in _contents(clients[settings.result_queue])]
    assert [(r.batch, r.succeeded) for r in results] == [(0, True)], done.stderr[-2000:]
    assert _contents(clients[settings.poison_queue]) == [bad]
    assert "Traceback" not in done.stderr and "Fraction(" not in done.stderr


def test_a_body_that_is_not_base64_is_poisoned_not_received_forever(queues, tmp_path):
    from azure.storage.queue import QueueClient

    settings, _, clients = queues
    plain = QueueClient.from_connection_string(os.environ[settings.storage_connection], settings.batch_queue)
    plain.send_message("%%% not base64 %%%")  # as a hostile writer would, without the Functions encoding
    _serve(settings, tmp_path)
    assert _contents(clients[settings.batch_queue]) == []
    assert _contents(clients[settings.poison_queue]) == ["%%% not base64 %%%"], "kept as it came"


def test_a_stdio_line_that_is_not_utf8_gets_an_error_and_the_next_is_answered(segments, tmp_path):
    batches, sources = segments
    good = BatchMessage(job_id="local", batch=batches[0], attempt=1, model="identity", segment=str(sources[0]),
                        styled=str(tmp_path / "styled.mp4"))
    command = [sys.executable, "-m", "gpu_job", "worker", "--stdio", "--threads", "1"]
    done = subprocess.run(command, input=b'{"job_id": "\xff\xfe"}\n' + good.to_json().encode() + b"\n", capture_output=True, timeout=120)
    events = [json.loads(text) for text in done.stdout.decode().splitlines()]
    assert [(e["event"], e.get("item")) for e in events if e["event"] in ("error", "result")] == [("error", 0), ("result", 1)]
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("parse", [BatchMessage.from_json, BatchResult.from_json, ShardSpec.from_json, ShardResult.from_json])
def test_deeply_nested_json_is_a_one_line_message_error(parse):
    with pytest.raises(MessageError) as caught:
        parse("[" * 200_000)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_a_key_over_the_bounds_refuses_the_run_when_planned_not_shard_by_shard():
    window = Window.parse("2024-01-01T00:00:00", "2024-01-01T01:00:00")
    with pytest.raises(InvalidInputError, match="key"):
        plan_shards(window.run_id, [tuple(str(i) for i in range(KEY_VALUES_MAX + 1))], 4, models_dir="", data="", window=window, out_dir="")
    with pytest.raises(InvalidInputError):
        check_run_id("\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661T\u0660\u0660\u0660\u0660\u0660\u0660--end")


def test_a_poisoned_message_too_large_to_keep_whole_is_kept_cut_and_never_comes_back(queues):
    from azure.storage.queue import QueueClient

    from gpu_job.batch_work import BatchWork
    from gpu_job.queue_worker import QueueWorker

    settings, _, clients = queues
    body = base64.b64encode(bytes([0xff, 0xfe]) * (24 * 1024)).decode()  # Base64, but not of UTF-8 text: 65,536 characters
    QueueClient.from_connection_string(os.environ[settings.storage_connection], settings.batch_queue).send_message(body)
    worker = QueueWorker(BatchWork(SimpleNamespace(name="test"), settings), settings)
    assert worker.take() is True
    assert _contents(clients[settings.batch_queue]) == []
    kept, = _contents(clients[settings.poison_queue])
    assert kept.startswith(body[:1000]) and kept.endswith("characters, cut)")


@pytest.mark.parametrize("line, kept", [
    ('{"batch": {"frame_count": "6"}, "preview_frames": [0]}', "malformed"),
    ("TIME_BASE", "time_base"),
    ("START_PTS", "start_pts"),
])
def test_a_stdio_line_that_is_not_a_message_gets_an_error_and_the_next_is_answered(segments, tmp_path, line, kept):
    batches, sources = segments
    good = BatchMessage(job_id="local", batch=batches[0], attempt=1, model="identity", segment=str(sources[0]),
                        styled=str(tmp_path / "styled.mp4"))
    data = json.loads(good.to_json())
    if line == "TIME_BASE":
        line = json.dumps({**data, "batch": {**data["batch"], "time_base": "1/0"}})
    elif line == "START_PTS":
        line = json.dumps({**data, "batch": {**data["batch"], "start_pts": "abc"}})
    else:
        line = json.dumps({**data, "batch": {**data["batch"], "frame_count": "6"}, "preview_frames": [0]})
    command = [sys.executable, "-m", "gpu_job", "worker", "--stdio", "--threads", "1"]
    done = subprocess.run(command, input=line + "\n" + good.to_json() + "\n", capture_output=True, text=True, timeout=120)
    events = [json.loads(text) for text in done.stdout.splitlines()]
    errors = [event for event in events if event["event"] == "error"]
    results = [event for event in events if event["event"] == "result"]
    assert [(e["item"], "\n" in e["error"], "Fraction(" in e["error"]) for e in errors] == [(0, False, False)], done.stdout
    assert kept in errors[0]["error"] or "malformed" in errors[0]["error"]
    assert [(r["item"], r["succeeded"]) for r in results] == [(1, True)], done.stderr[-2000:]


def test_a_shard_message_naming_other_folders_or_ids_is_poisoned_and_writes_nothing(on_azurite, generated, tmp_path):
    settings = Settings(visibility_timeout_s=3, max_deliveries=2)
    service, clients = on_azurite(settings, (settings.sensor_data_container, settings.models_container, settings.work_container),
                                  (settings.shard_queue, settings.shard_result_queue, settings.shard_poison_queue))
    service.get_blob_client(settings.sensor_data_container, settings.sensor_data_blob).upload_blob(
        (generated / "sensor_data.csv").read_bytes(), overwrite=True)
    for path in (generated / "models").iterdir():
        service.get_blob_client(settings.models_container, path.name).upload_blob(path.read_bytes(), overwrite=True)
    window = Window.parse("2018-08-29T01:00:00", "2018-08-29T02:00:00")
    keys = [entry.key for entry in Manifest.load(generated / "models").models.values()][:3]
    good, = plan_shards(window.run_id, keys, 4, models_dir="", data=settings.sensor_data_blob, window=window,
                        out_dir=run_prefix(window.run_id) + SHARDS_DIR)
    other = Window.parse("2031-01-01T00:00:00", "2031-01-01T01:00:00")
    forged = [replace(good, out_dir=JobLayout(_job("b")).root + "/styled"), replace(good, models_dir="../videos-in"),
              replace(good, data="../videos-in/private.csv"), replace(good, shard_id="shard-0000000000000000"),
              replace(good, run_id=other.run_id), replace(good, out_dir=run_prefix(other.run_id) + SHARDS_DIR)]
    for spec in [*forged, good]:
        clients[settings.shard_queue].send_message(spec.to_json())
    _serve(settings, tmp_path, work="shards")
    results = [ShardResult.from_json(text) for text in _contents(clients[settings.shard_result_queue])]
    assert [(r.shard_id, r.succeeded) for r in results] == [(good.shard_id, True)]
    assert sorted(_contents(clients[settings.shard_poison_queue])) == sorted(spec.to_json() for spec in forged)
    work = service.get_container_client(settings.work_container)
    for prefix in (JobLayout(_job("b")).root, run_prefix(other.run_id)):
        assert list(work.list_blobs(name_starts_with=prefix)) == [], prefix
    assert [blob.name for blob in work.list_blobs(name_starts_with=good.out_dir)] == [f"{good.out_dir}/{good.predictions_name}"]


def test_a_shard_result_naming_other_predictions_is_refused():
    window = Window.parse("2018-08-29T01:00:00", "2018-08-29T02:00:00")
    result = ShardResult(run_id=window.run_id, shard_id="shard-0123456789abcdef", models=[], predictions="../../jobs/x/closed")
    with pytest.raises(ShardMessageError, match="predictions"):
        ShardResult.from_json(result.to_json())
    with pytest.raises(ShardMessageError, match="run id"):
        ShardResult.from_json(json.dumps({**result.to_dict(), "predictions": None, "run_id": "../x"}))


def test_a_result_naming_a_styled_segment_that_is_not_its_own_is_refused():
    theirs = JobLayout(_job("b")).styled("batch-00000.a1.mp4")
    forged = BatchResult(job_id=_job("a"), batch=0, attempt=1, succeeded=True, styled=theirs)
    with pytest.raises(MessageError, match="not its own"):
        asyncio.run(deliver_result(forged.to_json(), None))
    with pytest.raises(MessageError, match="job id"):
        asyncio.run(deliver_result(BatchResult(job_id="local", batch=0, attempt=1, succeeded=False).to_json(), None))


def test_style_image_metadata_cannot_leave_the_styles_container(queues):
    settings, service, _ = queues
    picture = io.BytesIO()
    Image.new("RGB", (8, 8)).save(picture, "PNG")
    service.get_blob_client(settings.output_container, "alice/private.starry.preview.png").upload_blob(picture.getvalue(), overwrite=True)
    for name in ("../videos-out/alice/private.starry.preview.png", "a/../../videos-out/alice/private.starry.preview.png",
                 "/videos-out/x.png", "a\\b.png"):
        problem = check_style_image_blob("arbitrary", name, settings)
        assert problem is not None and "style_image" in problem and "no such blob" not in problem, problem


def test_upload_names_and_styles_are_bounded_and_outputs_distinct():
    limits = Settings()
    assert check_upload("a" * 1000 + ".mp4", 10, "starry", limits) is not None
    assert check_upload("clip.mp4", 10, "+".join(["starry"] * 150), limits) is not None
    assert check_upload("clip\n.mp4", 10, "starry", limits) is not None
    assert check_upload("holiday/clip.mp4", 10, "starry:0.7+ember:0.3", limits) is None
    assert not is_known_style("starry\t") and not is_known_style("starry + ember") and not is_known_style("starry\u200b")
    assert not is_known_style("starry:inf") and not is_known_style("starry:nan") and not is_known_style("starry:1e308+ember:1e308")
    assert output_names("clip.mp4", "starry")["video"] != output_names("clip.mkv", "starry")["video"]
    longest = output_names("a" * 396 + ".mp4", "s" * 100, ".mkv")
    assert max(len(name) for name in longest.values()) <= 1024
    refused = error_report_name("a" * 5000 + ".mp4", "starry")
    assert refused.startswith("refused/") and len(refused) < 100
    assert error_report_name("clip.mkv", "starry") == "clip.mkv.starry.error.json"
    steered = error_report_name("clip.mp4", "x/../../../stylize-work/jobs/stylize-" + "0" * 32 + "/closed")
    assert steered.startswith("refused/") and "/" not in steered[len("refused/"):], "an unknown style cannot steer the report"


def test_errors_shown_to_callers_carry_no_local_paths():
    shown = reason(RuntimeError("damaged video, cannot split (Invalid argument: '/tmp/split-k2j4/input.mp4')\nTraceback ..."))
    assert shown == "damaged video, cannot split (Invalid argument: 'input.mp4')"
    assert "/root" not in reason(RuntimeError("/root/.cache/stylize/style-pictures/0a1b.picture: cannot be read"))


def test_the_worst_shard_result_fits_one_queue_message():
    """Built from the bounds the code enforces: the most models a queued shard holds, the longest keys, the longest
    reasons, each of characters JSON escapes the most."""
    value = "\U0001F600" * ((KEY_JSON_MAX - 2 - 4 * (KEY_VALUES_MAX - 1)) // (12 * KEY_VALUES_MAX))
    key = tuple([value] * KEY_VALUES_MAX)
    assert len(json.dumps(list(key))) <= KEY_JSON_MAX
    models = [ModelResult(key=key, status="failed", reason="\U0001F600" * REASON_CHARS) for _ in range(QUEUED_MODELS_MAX)]
    window = Window.parse("2024-01-01T00:00:00", "2024-01-01T01:00:00")
    result = ShardResult(run_id=window.run_id, shard_id="shard-0123456789abcdef", models=models, worker="w" * 255,
                         error="\U0001F600" * REASON_CHARS, retryable=False, timings={name: 1.0 for name in ("read", "score", "write")})
    text = result.to_json()
    assert len(base64.b64encode(text.encode())) <= QUEUE_MESSAGE_BYTES
    back = ShardResult.from_json(text)
    assert [(m.key, m.status) for m in back.models] == [(key, "failed")] * QUEUED_MODELS_MAX and back.error


def test_the_worst_batch_result_fits_one_queue_message():
    result = BatchResult(job_id=_job("x"), batch=99999, attempt=99, succeeded=False, error="\U0001F600" * 10_000, worker="w" * 255,
                         styler={"model": "m" * 300, "style": "s" * 100})
    assert len(base64.b64encode(result.to_json().encode())) <= QUEUE_MESSAGE_BYTES


def test_the_poison_path_settles_the_message_when_its_result_cannot_be_sent(queues, segments, monkeypatch):
    from gpu_job.batch_work import BatchWork
    from gpu_job.queue_worker import QueueWorker

    settings, _, clients = queues
    batches, _ = segments
    message = _message(JobLayout(_job("poison")), batches[0])
    clients[settings.batch_queue].send_message(message.to_json())
    for _ in range(settings.max_deliveries):  # workers that died holding it
        taken = clients[settings.batch_queue].receive_message(visibility_timeout=1)
        clients[settings.batch_queue].update_message(taken, visibility_timeout=0)
    handler = BatchWork(SimpleNamespace(name="test"), settings)
    worker = QueueWorker(handler, settings)

    def refuse(*args, **kwargs):
        raise ValueError("message too large")

    monkeypatch.setattr(worker.results, "send_message", refuse)
    assert worker.take() is True
    assert _contents(clients[settings.batch_queue]) == [] and len(_contents(clients[settings.poison_queue])) == 1
