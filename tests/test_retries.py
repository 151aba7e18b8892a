"""Batch retries of the local runner, with faults injected by a proxy worker (tests/flaky_worker.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from gpu_job.command import WorkerOptions, worker_command
from media import frame_timestamps, make_clip
from runner.local import RunRequest, launch_worker, run
from runner.pool import WorkerPool
from shared.config import Settings
from shared.errors import BatchFailedError, InvalidInputError
from shared.messages import BatchMessage
from shared.plan import Batch

FLAKY = str(Path(__file__).with_name("flaky_worker.py"))
HOLDING = str(Path(__file__).with_name("holding_worker.py"))


def _flaky(mode: str, batch: int, times: int, state: Path):
    def launch(command: list[str]):
        return launch_worker([sys.executable, FLAKY, mode, str(batch), str(times), str(state), "--", *command])

    return launch


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("retry") / "clip.mp4", seconds=2)


def _injected(state: Path) -> int:
    return state.read_text().count("x") if state.exists() else 0


def test_failed_batch_is_retried_alone(clip, tmp_path):
    state = tmp_path / "faults"
    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=20, workers=2)
    report = run(request, Settings(max_attempts=3), launcher=_flaky("fail", 1, 1, state))
    assert _injected(state) == 1
    assert [b.attempts for b in report.batches] == [1, 2, 1]
    assert report.batches[1].errors == ["injected fault"]
    assert len(frame_timestamps(request.output)) == len(frame_timestamps(clip))
    assert json.loads(request.report_path.read_text())["retries"] == 1


def test_worker_dying_mid_batch_is_replaced_and_only_its_batch_retried(clip, tmp_path):
    """The last batch is never sent behind another (nothing waits after it): its worker dies holding it alone."""
    state = tmp_path / "faults"
    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=10, workers=2)
    launched = []
    flaky = _flaky("crash", 4, 1, state)
    report = run(request, Settings(max_attempts=2), launcher=lambda command: launched.append(command) or flaky(command))
    assert [b.attempts for b in report.batches] == [1, 1, 1, 1, 2]
    assert report.batches[4].errors == [report.batches[4].errors[0]] and report.batches[4].errors[0].endswith(
        "exited with code 3: worker: simulated crash")
    assert not any(b.errors for b in report.batches[:4])
    assert frame_timestamps(request.output) == frame_timestamps(clip)
    assert len(launched) == 3, "the dead worker was replaced"
    assert sum(w["batches"] for w in report.worker_stats) == 5
    assert all(w["model_loads"] == 1 for w in report.worker_stats)


def test_a_batch_that_kills_its_worker_is_retried_alone_and_costs_its_neighbour_no_attempt(clip, tmp_path):
    """One worker holds two batches at a time: when it dies, which one killed it is unknown, and neither attempt counts;
    both are retried alone, where the batch that kills its worker uses up its own attempts."""
    state = tmp_path / "faults"
    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=10, workers=1)
    report = run(request, Settings(max_attempts=2), launcher=_flaky("crash", 2, 2, state))
    assert _injected(state) == 2
    assert [b.attempts for b in report.batches] == [1, 1, 2, 1, 1]
    assert [len(b.errors) for b in report.batches] == [0, 0, 2, 1, 0]
    assert report.batches[3].errors[0].endswith("(holding batch-00002 and batch-00003: not counted)")
    assert report.batches[2].errors == [report.batches[3].errors[0], report.batches[2].errors[1]]
    assert report.batches[2].errors[1].endswith("exited with code 3: worker: simulated crash"), "alone, its death counts"
    assert frame_timestamps(request.output) == frame_timestamps(clip)


def _batch_messages(count: int) -> list[BatchMessage]:
    batches = [Batch(index=i, first_frame=i, frame_count=1, start_pts=i, end_pts=i + 1, time_base="1/25", first_gop=i, last_gop=i)
               for i in range(count)]
    return [BatchMessage(job_id="job", batch=b, attempt=1, model="identity", segment=f"{b.name}.mp4", styled=f"styled/{b.name}.mp4")
            for b in batches]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_busy_worker_is_sent_its_next_item_while_more_wait_than_there_are_workers(workers):
    outcomes = []
    with WorkerPool(max_attempts=1) as pool:
        pool.start([sys.executable, HOLDING], workers)
        pool.run(_batch_messages(6), outcomes.append)
    assert sorted(o.index for o in outcomes) == list(range(6)) and all(o.result.succeeded for o in outcomes)
    held = [o.result.worker for o in sorted(outcomes, key=lambda o: o.index)]
    if workers == 1:
        assert held == ["holding 2"] * 5 + ["holding 1"], "the next item was always there before the last was answered"
    else:
        assert held[0] == "holding 2" and held[-1] == "holding 1", "ahead while 2 or more wait, never the last one"


@dataclass(frozen=True)
class _Garbled(BatchMessage):
    """A batch message that reaches the worker unreadable."""

    def to_json(self) -> str:
        return '{"job_id": 1}'


def test_a_message_the_worker_cannot_read_fails_for_good_and_the_next_is_still_answered():
    garbled, fine = _batch_messages(2)
    outcomes = []
    with WorkerPool(max_attempts=3) as pool:
        pool.start(worker_command(WorkerOptions(threads=1), stdio=True), 1)
        pool.run([_Garbled(**{f.name: getattr(garbled, f.name) for f in fields(BatchMessage)}), fine], outcomes.append)
    rejected = next(o for o in outcomes if o.index == 0)
    assert rejected.final and not rejected.result.retryable and rejected.attempt == 1
    assert rejected.result.error.startswith("the worker rejected the message: batch message")
    answered = next(o for o in outcomes if o.index == 1)
    assert answered.final and answered.result.error.endswith("no such segment"), "the next item is answered, not mistaken"


def test_batch_failing_every_attempt_fails_the_run_without_output(clip, tmp_path):
    state = tmp_path / "faults"
    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=20)
    with pytest.raises(BatchFailedError, match=r"batch-00000 .* failed 2 times; last error: injected fault"):
        run(request, Settings(max_attempts=2), launcher=_flaky("fail", 0, 99, state))
    assert _injected(state) == 2
    assert not request.output.exists() and not request.preview_path.exists()


def test_error_that_will_repeat_is_not_retried(clip, tmp_path):
    state = tmp_path / "faults"
    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=20, workers=2)
    with pytest.raises(InvalidInputError, match=r"^batch-00001 \(frames 17-33\): injected fault$"):
        run(request, Settings(max_attempts=3), launcher=_flaky("fatal", 1, 99, state))
    assert _injected(state) == 1
    assert not request.output.exists()


LINGERING = """
import json, subprocess, sys
late = sys.argv[1]
for number, line in enumerate(sys.stdin):
    message = json.loads(line)
    # what it started for the item is still writing when the run fails
    subprocess.Popen([sys.executable, "-c", "import pathlib, sys, time; time.sleep(1.5); pathlib.Path(sys.argv[1]).write_text('late')", late])
    print(json.dumps({"event": "result", "item": number, "job_id": message["job_id"], "batch": message["batch"]["index"],
                      "attempt": message["attempt"], "succeeded": False, "error": "bad", "retryable": False, "worker": "w"}), flush=True)
"""


def test_a_failed_run_leaves_no_worker_nor_anything_it_started_writing(tmp_path):
    """When the run fails, its scratch folder is removed next: every worker, and every process a worker started, is
    gone by then (a batch still being written there made the removal fail with "Directory not empty", in place of the
    run's one-line error)."""
    late, launched = tmp_path / "late", []

    def launcher(command: list[str]):
        launched.append(launch_worker([sys.executable, "-c", LINGERING, str(late)]))
        return launched[-1]

    def outcome(done) -> None:
        raise InvalidInputError("the run fails")

    with pytest.raises(InvalidInputError, match="the run fails"), WorkerPool(max_attempts=1, launcher=launcher) as pool:
        pool.start(["unused"], 2)
        pool.run(_batch_messages(4), outcome)
    assert launched and all(process.returncode is not None for process in launched), "every worker waited for"
    time.sleep(2.5)
    assert not late.exists(), "a process a worker started outlived the run"


def _recording(events: list, processes: list):
    def launch(command: list[str]):
        events.append(("launch", int(command[command.index("--threads") + 1])))
        processes.append(launch_worker(command))
        return processes[-1]

    return launch


@pytest.mark.parametrize("workers, batch_frames, launched_first", [(1, 20, True), (2, 20, False), (3, 1000, False)])
def test_one_worker_starts_before_the_probe_and_more_once_the_plan_is_known(workers, batch_frames, launched_first, clip, tmp_path,
                                                                            monkeypatch):
    import shared.probe

    events: list = []
    probe = shared.probe.probe
    monkeypatch.setattr(shared.probe, "probe", lambda path, limits: events.append("probe") or probe(path, limits))
    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=batch_frames, workers=workers)
    report = run(request, Settings(), launcher=_recording(events, []))
    started = min(workers, len(report.batches))
    launches = [("launch", max(1, (os.cpu_count() or 1) // started))] * started
    assert events == (launches + ["probe"] if launched_first else ["probe"] + launches)
    assert report.workers == started


def test_a_worker_started_early_is_stopped_when_the_input_is_refused(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    processes: list = []
    request = RunRequest(input=text, output=tmp_path / "out.mp4", model="identity", batch_frames=20)
    with pytest.raises(InvalidInputError):
        run(request, Settings(), launcher=_recording([], processes))
    assert len(processes) == 1 and processes[0].wait(timeout=10) != 0
    assert not request.output.exists()
