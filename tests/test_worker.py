"""The warm worker on its own: one model load for many batches, over stdio and from the batch queue."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from gpu_job.batch_work import PROGRESS_INTERVAL_S, _Progress
from gpu_job.command import WorkerOptions, worker_command
from gpu_job.worker import ModelCache, StyleJob, Worker
from isolated import run_module_without
from media import frame_timestamps, make_clip
from shared.config import Settings
from shared.messages import BatchMessage, BatchResult, ModelSpec
from shared.containers import output_container
from shared.plan import plan_batches
from shared.preview import rows_name, tile_size
from shared.probe import probe
from shared.split import split_video
from shared.storage import JobLayout, close_job, upload_file


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    """A clip cut into four batch segments, with the batch plan."""
    folder = tmp_path_factory.mktemp("worker")
    info = probe(make_clip(folder / "clip.mp4", seconds=2, audio=False))
    batches = plan_batches(info, 13)
    return batches, split_video(info, batches, folder / "segments", output_container(info)).segments


def _messages(batches, sources, folder: Path, model: str) -> list[BatchMessage]:
    return [BatchMessage(job_id="job", batch=b, attempt=1, model=model, segment=str(s), styled=str(folder / f"{b.name}.mp4"))
            for b, s in zip(batches, sources)]


def test_model_cache_loads_each_model_once_and_drops_the_least_recent():
    loaded = []
    cache = ModelCache(lambda spec: loaded.append(spec.model) or spec.model.upper(), capacity=2)
    specs = [ModelSpec(name) for name in ("a", "a", "b", "a", "c", "a", "b")]
    assert [cache.get(spec) for spec in specs] == ["A", "A", "B", "A", "C", "A", "B"]
    assert loaded == ["a", "b", "c", "b"] and cache.loads == 4
    assert cache.get(ModelSpec("b", precision="fp32")) == "B" and cache.loads == 5, "another precision is another model"


def test_progress_is_sent_in_a_few_events_that_add_up(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("gpu_job.batch_work.time.monotonic", lambda: clock[0])
    sent: list[int] = []
    progress = _Progress(sent.append)
    for _ in range(10):
        progress.add(1)
    assert sent == [], "not one event per frame"
    clock[0] += PROGRESS_INTERVAL_S
    progress.add(2)
    assert sent == [12]
    progress.add(1)
    progress.flush()
    progress.flush()
    assert sent == [12, 1], "the rest goes out when flushed, once"


def test_stdio_worker_styles_many_batches_with_one_model_load(segments, tmp_path):
    batches, sources = segments
    messages = _messages(batches, sources, tmp_path, "random")
    messages.append(replace(messages[0], model="identity", styled=str(tmp_path / "identity.mp4")))
    messages[1] = replace(messages[1], preview_frames=(0, batches[1].frame_count - 1))
    lines = "".join(message.to_json() + "\n" for message in messages) + "not json\n"
    command = worker_command(WorkerOptions(threads=1), stdio=True, preload=ModelSpec("random"))
    done = subprocess.run(command, input=lines, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "ready" and events[0]["model_loads"] == 1
    results = [BatchResult.from_dict({k: v for k, v in e.items() if k != "event"}) for e in events if e["event"] == "result"]
    assert [r.succeeded for r in results] == [True] * 5
    assert [r.model_loads for r in results] == [1, 1, 1, 1, 2], "the model is loaded once, not once per batch"
    assert len({r.worker for r in results}) == 1
    frames = {}
    for event in events:
        if event["event"] == "frames":
            frames[event["batch"]] = frames.get(event["batch"], 0) + event["frames"]
    assert frames == {b.index: b.frame_count for b in batches} | {0: batches[0].frame_count * 2}
    for batch, result in zip(batches, results):
        assert len(frame_timestamps(Path(result.styled))) == batch.frame_count
    rows = [Path(rows_name(result.styled)) for result in results]
    assert [path.exists() for path in rows] == [False, True, False, False, False], "preview rows only where the message asks"
    with av.open(results[1].styled) as styled, av.open(str(rows[1])) as image:
        tile = tile_size(styled.streams.video[0].width, styled.streams.video[0].height)
        frame = next(image.decode(video=0))
    assert (frame.width, frame.height) == (2 * tile[0], 2 * tile[1]), "two rows of two tiles"
    assert [e for e in events if e["event"] == "error"] == [
        {"event": "error", "item": 5, "error": "batch message is not JSON (Expecting value: line 1 column 1 (char 0))"}]
    assert [e["item"] for e in events if e["event"] == "result"] == [0, 1, 2, 3, 4], "results in the order read, numbered"
    assert {e["item"] for e in events if e["event"] == "frames" and e["batch"] == 1} == {1}, "events name their item"


class _CountingNetwork:
    """Inverts frames, reading two batches ahead as the engines do; counts its streams and fails at batch ``fail_at``."""

    def __init__(self, fail_at: int | None = None, seconds_per_batch: float = 0.0) -> None:
        self.streams, self.batches, self.fail_at, self.seconds_per_batch = 0, 0, fail_at, seconds_per_batch

    def __call__(self, batches):
        self.streams += 1
        ahead = deque()
        for frames in batches:
            self.batches += 1
            if self.batches == self.fail_at:
                raise RuntimeError("engine failed")
            ahead.append(frames)
            time.sleep(self.seconds_per_batch)
            if len(ahead) > 2:
                yield 255.0 - ahead.popleft()
        while ahead:
            yield 255.0 - ahead.popleft()


def _style_all(worker, jobs) -> list:
    """Every job offered at once; the results, in the order given."""
    waiting, results = deque(jobs), []
    worker.style_all(lambda wait: waiting.popleft() if waiting else None, lambda job, result: results.append((job, result)))
    assert [job for job, _ in results] == list(jobs), "results in the order of the jobs"
    return [result for _, result in results]


def _worker_with(network) -> Worker:
    from gpu_job.styler import FrameStyler

    worker = Worker(WorkerOptions(threads=1), Settings().model_cache_dir)
    worker.models = ModelCache(lambda spec: FrameStyler(network, {"model": spec.model}))
    return worker


def _jobs(messages) -> list[StyleJob]:
    return [StyleJob(m, Path(m.segment), Path(m.styled)) for m in messages]


def test_batches_offered_together_stream_through_the_model_once_and_a_bad_one_fails_alone(segments, tmp_path):
    batches, sources = segments
    messages = _messages(batches, sources, tmp_path, "inverse")
    messages[1] = replace(messages[1], segment=str(tmp_path / "missing.mp4"))
    messages[2] = replace(messages[2], batch=replace(batches[2], frame_count=batches[2].frame_count + 1))
    network = _CountingNetwork()
    results = _style_all(_worker_with(network), _jobs(messages))
    assert [r.succeeded for r in results] == [True, False, False, True]
    assert results[1].error.endswith("missing.mp4: no such segment") and not results[1].retryable
    assert "the plan says" in results[2].error and not Path(messages[2].styled).exists()
    assert network.streams == 1, "one stream through the model for every batch offered together"
    for index in (0, 3):
        with av.open(sources[index]) as source, av.open(messages[index].styled) as styled:
            first_in, first_out = next(source.decode(video=0)).to_ndarray(format="rgb24"), next(styled.decode(video=0)).to_ndarray(format="rgb24")
        assert np.median(abs(first_out.astype(int) + first_in.astype(int) - 255)) < 6, "the styled frame is the inverted input"
        assert len(frame_timestamps(Path(messages[index].styled))) == batches[index].frame_count


def test_a_model_failing_mid_stream_fails_only_the_batch_in_it_and_the_next_stream_goes_on(segments, tmp_path):
    batches, sources = segments
    messages = _messages(batches, sources, tmp_path, "inverse")
    network = _CountingNetwork(fail_at=batches[0].frame_count + 3)
    results = _style_all(_worker_with(network), _jobs(messages))
    assert [r.succeeded for r in results] == [True, False, True, True], "the first batch was styled whole before the failure"
    assert results[1].error == "engine failed" and results[1].retryable
    assert not Path(messages[1].styled).exists(), "no styled segment written in part"
    assert network.streams == 2, "the batches not yet opened go through a new stream"


def test_a_model_that_gives_back_fewer_batches_than_it_took_fails_the_batch_instead_of_hanging(segments, tmp_path):
    batches, sources = segments
    messages = _messages(batches[:2], sources, tmp_path, "short")
    results: list = []
    worker = _worker_with(lambda frames: (255.0 - batch for batch in list(frames)[:-1]))
    thread = threading.Thread(target=lambda: results.extend(_style_all(worker, _jobs(messages))), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the worker waits for frames that never come"
    assert [r.succeeded for r in results] == [True, False]
    assert results[1].error == "short returned fewer batches than it was given" and not Path(messages[1].styled).exists()


def test_an_encoder_failing_as_it_closes_fails_its_batch_instead_of_hanging(segments, tmp_path, monkeypatch):
    """The encoder fails after it has read the end of its frames (flushing or closing the file): it must not wait for
    another end that never comes."""
    from gpu_job import scorer

    class FailingClose:
        def __init__(self, container) -> None:
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def close(self) -> None:
            self._container.close()
            raise OSError(28, "No space left on device")

    real_open = scorer._Encoder._open
    monkeypatch.setattr(scorer._Encoder, "_open", lambda self, *args: (lambda c, s: (FailingClose(c), s))(*real_open(self, *args)))
    batches, sources = segments
    messages = _messages(batches[:2], sources, tmp_path, "inverse")
    results: list = []
    worker = _worker_with(lambda frames: (255.0 - batch for batch in frames))
    thread = threading.Thread(target=lambda: results.extend(_style_all(worker, _jobs(messages))), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the encoder waits for a second end of its frames"
    assert [r.succeeded for r in results] == [False, False]
    assert all("No space left on device" in r.error for r in results)


def test_a_batch_for_another_model_starts_another_stream(segments, tmp_path):
    batches, sources = segments
    messages = _messages(batches, sources, tmp_path, "inverse")
    messages[2:] = [replace(m, model="inverse-too") for m in messages[2:]]
    network = _CountingNetwork()
    worker = _worker_with(network)
    assert all(r.succeeded for r in _style_all(worker, _jobs(messages)))
    assert network.streams == 2 and worker.models.loads == 2


def test_a_local_worker_starts_without_the_azure_sdk(segments, tmp_path):
    """The storage clients cost 0.3 s to import; a worker fed over stdio (``stylize run``) styles without them."""
    batches, sources = segments
    [message] = _messages(batches[:1], sources, tmp_path, "random")
    done = run_module_without(("azure",), "gpu_job", ["worker", "--stdio", "--threads", "1", "--preload", "random"], message.to_json() + "\n")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    result = BatchResult.from_dict({k: v for k, v in events[-1].items() if k != "event"})
    assert events[0]["event"] == "ready" and result.succeeded, done.stdout
    assert len(frame_timestamps(Path(result.styled))) == batches[0].frame_count


def test_single_batch_debug_mode_exits_2_for_an_error_that_will_repeat(tmp_path):
    junk = tmp_path / "junk.mp4"
    command = [sys.executable, "-m", "gpu_job", "batch", "--input", str(tmp_path / "missing.mp4"), "--output", str(junk),
               "--model", "identity", "--start-pts", "0", "--time-base", "1/25", "--frames", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().endswith("missing.mp4: no such segment")
    assert not junk.exists()


@pytest.fixture()
def queues(on_azurite):
    settings = Settings(visibility_timeout_s=5, max_deliveries=2)
    service, clients = on_azurite(settings, (settings.work_container,), (settings.batch_queue, settings.result_queue, settings.poison_queue))
    return settings, service, clients


def _job(name: str) -> str:
    """A video job's id, as the upload trigger makes one."""
    return "stylize-" + hashlib.sha256(name.encode()).hexdigest()[:32]


def _queue_worker(settings: Settings):
    from gpu_job.batch_work import BatchWork
    from gpu_job.queue_worker import QueueWorker
    from gpu_job.worker import Worker

    return QueueWorker(BatchWork(Worker(WorkerOptions(threads=1), settings.model_cache_dir), settings), settings)


def _results(clients, settings) -> list[BatchResult]:
    return [BatchResult.from_json(m.content) for m in clients[settings.result_queue].receive_messages(messages_per_page=32)]


def _enqueue(queues, segments, job_id: str, model: str, count: int | None = None) -> JobLayout:
    """The first ``count`` batches' segments uploaded and their messages queued; the job's layout."""
    settings, service, clients = queues
    batches, sources = segments
    layout = JobLayout(job_id)
    for batch, source in list(zip(batches, sources))[:count]:
        upload_file(service, settings.work_container, layout.segment(batch), source)
        message = BatchMessage(job_id=job_id, batch=batch, attempt=1, model=model, segment=layout.segment(batch),
                               styled=layout.styled(f"{batch.name}.a1.mp4"))
        clients[settings.batch_queue].send_message(message.to_json())
    return layout


def test_queue_worker_does_each_batch_once_and_deletes_it_after_reporting(queues, segments):
    settings, service, clients = queues
    batches, _ = segments
    layout = _enqueue(queues, segments, _job("job-q"), "identity")
    worker = _queue_worker(settings)
    assert worker.serve(idle_s=1) == len(batches)
    results = _results(clients, settings)
    assert sorted(r.batch for r in results) == [b.index for b in batches] and all(r.succeeded for r in results)
    assert {r.model_loads for r in results} == {1}
    assert clients[settings.batch_queue].get_queue_properties().approximate_message_count == 0
    for batch in batches:
        assert service.get_blob_client(settings.work_container, layout.styled(f"{batch.name}.a1.mp4")).exists()


def test_queue_worker_takes_the_next_batch_while_styling_and_streams_them_through_the_model(queues, segments):
    from gpu_job.batch_work import BatchWork
    from gpu_job.queue_worker import QueueWorker

    settings, service, clients = queues
    batches, _ = segments
    layout = _enqueue(queues, segments, _job("job-stream"), "random")
    network = _CountingNetwork(seconds_per_batch=0.05)  # long enough for the next batch to be taken and downloaded
    worker = QueueWorker(BatchWork(_worker_with(network), settings), settings)
    assert worker.serve(idle_s=1) == len(batches)
    results = _results(clients, settings)
    assert sorted(r.batch for r in results) == [b.index for b in batches] and all(r.succeeded for r in results)
    assert network.streams == 1, "each batch was there before the one ahead of it left the model"
    assert clients[settings.batch_queue].get_queue_properties().approximate_message_count == 0
    for batch in batches:
        blob = service.get_blob_client(settings.work_container, layout.styled(f"{batch.name}.a1.mp4"))
        assert blob.get_blob_properties().metadata == {"job_id": _job("job-stream")}


def test_queue_worker_takes_nothing_behind_a_redelivered_batch(queues, segments):
    """A batch delivered before may have killed its worker: it is styled alone, so that if it kills this one too,
    no other batch's message loses a delivery."""
    from gpu_job.batch_work import BatchWork
    from gpu_job.queue_worker import QueueWorker

    settings, _, clients = queues
    _enqueue(queues, segments, _job("job-again"), "random", count=2)
    batch_queue = clients[settings.batch_queue]
    for taken in list(batch_queue.receive_messages(max_messages=2, visibility_timeout=30)):  # a worker that died holding both
        batch_queue.update_message(taken, visibility_timeout=0)
    network = _CountingNetwork(seconds_per_batch=0.05)
    assert QueueWorker(BatchWork(_worker_with(network), settings), settings).serve(idle_s=1) == 2
    results = _results(clients, settings)
    assert sorted((r.batch, r.delivery, r.succeeded) for r in results) == [(0, 2, True), (1, 2, True)]
    assert network.streams == 2, "the second was taken only once the first was answered"


def test_queue_worker_reuses_a_styled_segment_and_drops_closed_jobs(queues, segments):
    settings, service, clients = queues
    batches, sources = segments
    done, closed = JobLayout(_job("job-done")), JobLayout(_job("job-closed"))
    styled = done.styled("batch-00000.a1.mp4")
    upload_file(service, settings.work_container, styled, sources[0])
    close_job(service, settings, _job("job-closed"))
    for layout in (done, closed):
        message = BatchMessage(job_id=layout.job_id, batch=batches[0], attempt=1, model="random", segment=layout.segment(batches[0]),
                               styled=layout.styled("batch-00000.a1.mp4"))
        clients[settings.batch_queue].send_message(message.to_json())
    worker = _queue_worker(settings)
    worker.serve(idle_s=1)
    results = _results(clients, settings)
    assert [(r.job_id, r.succeeded, r.styled) for r in results] == [(_job("job-done"), True, styled)], "a closed job gets no result"
    assert worker.handler.worker.models.loads == 0, "a batch whose styled segment exists is not styled again"
    assert clients[settings.batch_queue].get_queue_properties().approximate_message_count == 0


def test_queue_worker_reports_a_missing_segment_as_final_and_poisons_malformed_messages(queues, segments):
    settings, _, clients = queues
    batches, _ = segments
    layout = JobLayout(_job("job-gone"))
    gone = BatchMessage(job_id=layout.job_id, batch=batches[1], attempt=2, model="identity", segment=layout.segment(batches[1]),
                        styled=layout.styled("batch-00001.a2.mp4"))
    clients[settings.batch_queue].send_message(gone.to_json())
    clients[settings.batch_queue].send_message("{\"job_id\": 1}")
    _queue_worker(settings).serve(idle_s=1)
    result, = _results(clients, settings)
    assert (result.succeeded, result.retryable, result.batch, result.attempt) == (False, False, 1, 2)
    assert result.error == "segment of batch-00001 is gone (the job expired or was removed)"
    poisoned = clients[settings.poison_queue].receive_messages()
    assert [m.content for m in poisoned] == ["{\"job_id\": 1}"]
    assert clients[settings.batch_queue].get_queue_properties().approximate_message_count == 0


def test_workers_send_no_openvino_telemetry(tmp_path):
    """Unless a user opted out, importing OpenVINO records usage under ~/intel and sends it to Google Analytics;
    a worker never does."""
    home = tmp_path / "home"
    home.mkdir()
    env = {name: value for name, value in os.environ.items() if name != "CI"} | {
        "HOME": str(home), "XDG_CACHE_HOME": str(Settings.from_env().model_cache_dir.parents[1])}
    subprocess.run([sys.executable, "-c", "import openvino"], env=env, check=True, timeout=60)
    assert (home / "intel").is_dir(), "OpenVINO alone records its telemetry here"
    shutil.rmtree(home / "intel")
    command = worker_command(WorkerOptions(threads=1), stdio=True, preload=ModelSpec("random"))
    done = subprocess.run(command, input="", capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[0])["model_loads"] == 1, done.stderr
    assert not (home / "intel").exists()
