"""The orchestrator, stepped through the Durable SDK's replay engine."""

from __future__ import annotations


from durable_replay import CALL_ACTIVITY, CREATE_TIMER, Replay
from function_app.orchestrator import RESULT_EVENT, stylize_orchestrator

JOB = {"job_id": "job-1", "input_blob": "clip.mp4", "style": "identity",
       "limits": {"max_attempts": 2, "batch_timeout_s": 600, "worker_check_s": 60}}
WORKERS = {"running": [], "started": ["w1", "w2"]}
PLAN = {
    "batches": [
        {"index": i, "first_frame": 10 * i, "frame_count": 10, "start_pts": 10 * i, "end_pts": 10 * i + 10 if i < 2 else None,
         "time_base": "1/25", "first_gop": i, "last_gop": i}
        for i in range(3)
    ],
    "frames": 30, "tracks_blob": "jobs/job-1/tracks.mp4", "video": {},
}


def _replay() -> Replay:
    return Replay(stylize_orchestrator.build().get_user_function().orchestrator_function, JOB)


def _start(replay: Replay) -> tuple[dict, dict, dict]:
    """Run through split, the first enqueue and the first worker check; returns (enqueue, deadline timer, check timer)."""
    (split,) = replay.step()
    assert split["functionName"] == "split_job" and replay.custom_status["stage"] == "splitting"
    replay.complete(split, PLAN)
    enqueue, = replay.step()
    assert enqueue["functionName"] == "enqueue_batches"
    replay.complete(enqueue, 3)
    workers, = replay.step()
    assert workers["functionName"] == "ensure_workers" and workers["input"] == {"outstanding": 3}
    replay.complete(workers, WORKERS)
    deadline, check = replay.step()
    assert deadline["actionType"] == check["actionType"] == CREATE_TIMER and check["fireAt"] < deadline["fireAt"]
    assert replay.custom_status == {"stage": "scoring", "batches_done": 0, "batches_total": 3, "frames_done": 0, "frames_total": 30,
                                    "workers": 2}
    return enqueue, deadline, check


def _ok(replay: Replay, index: int, attempt: int = 1) -> None:
    replay.raise_event(RESULT_EVENT, {"batch": index, "attempt": attempt, "succeeded": True, "styled": f"s/{index}.a{attempt}.mp4",
                                     "job_id": "job-1", "worker": f"host:{index}", "model_loads": 1, "seconds": 1.5})


def _enqueued(action: dict) -> list[tuple[int, int]]:
    return [(item["batch"]["index"], item["attempt"]) for item in action["input"]["batches"]]


def test_all_batches_complete_then_stitch():
    replay = _replay()
    enqueue, _, _ = _start(replay)
    assert _enqueued(enqueue) == [(0, 1), (1, 1), (2, 1)]
    for index in (2, 0):
        _ok(replay, index)
        assert replay.step() == []
    assert replay.custom_status["batches_done"] == 2 and replay.custom_status["frames_done"] == 20
    _ok(replay, 1)
    stitch, = replay.step()
    assert stitch["functionName"] == "stitch_job"
    assert "styled" not in stitch["input"], "the stitch derives the styled segments' names; it takes none from a result"
    assert {int(index): attempt for index, attempt in stitch["input"]["attempts"].items()} == {0: 1, 1: 1, 2: 1}
    assert stitch["input"]["done_by"]["1"] == {"worker": "host:1", "model_loads": 1, "seconds": 1.5, "styler": None, "temporal": None}
    assert replay.custom_status["stage"] == "stitching"
    outputs = {"video": "clip.identity.mp4", "preview": "p.png", "report": "r.json"}
    replay.complete(stitch, outputs)
    replay.step()
    assert replay.done and replay.state["output"] == outputs
    assert replay.custom_status["stage"] == "done" and replay.custom_status["output"] == "clip.identity.mp4"


def test_failed_batch_is_resubmitted_alone_and_stale_results_ignored():
    replay = _replay()
    _start(replay)
    replay.raise_event(RESULT_EVENT, {"job_id": "job-1", "batch": 1, "attempt": 1, "succeeded": False, "error": "CUDA out of memory"})
    retry, = replay.step()
    assert _enqueued(retry) == [(1, 2)]
    replay.complete(retry, 1)
    workers, = replay.step()
    assert workers["functionName"] == "ensure_workers" and workers["input"] == {"outstanding": 3}
    replay.complete(workers, WORKERS)
    assert replay.step() == []
    assert "batch 1 attempt 1 failed: CUDA out of memory" in replay.custom_status["errors"]
    _ok(replay, 1, attempt=1)  # a late success of the superseded attempt does not count
    _ok(replay, 0)
    _ok(replay, 2)
    assert replay.step() == [] and replay.custom_status["batches_done"] == 2
    _ok(replay, 1, attempt=2)
    stitch, = replay.step()
    assert stitch["functionName"] == "stitch_job"


def test_batch_failing_every_attempt_fails_the_orchestration_with_a_report():
    replay = _replay()
    _start(replay)
    replay.raise_event(RESULT_EVENT, {"job_id": "job-1", "batch": 0, "attempt": 1, "succeeded": False, "error": "bad frame"})
    retry, = replay.step()
    replay.complete(retry, 1)
    workers, = replay.step()
    replay.complete(workers, WORKERS)
    replay.step()
    replay.raise_event(RESULT_EVENT, {"job_id": "job-1", "batch": 0, "attempt": 2, "succeeded": False, "error": "bad frame"})
    actions = replay.step()
    report = next(a for a in actions if a.get("functionName") == "report_failure")
    replay.complete(report, "clip.identity.error.json")
    replay.step()
    assert replay.done and "batch 0 failed 2 times" in replay.state["error"]
    assert replay.custom_status["stage"] == "failed" and replay.custom_status["error_report"] == "clip.identity.error.json"


def test_deadline_resubmits_only_the_batches_still_out():
    replay = _replay()
    _, timer, _ = _start(replay)
    _ok(replay, 0)
    replay.step()
    replay.fire_timer(timer)
    retry, = replay.step()
    assert _enqueued(retry) == [(1, 2), (2, 2)]
    replay.complete(retry, 2)
    workers, = replay.step()
    assert workers["input"] == {"outstanding": 2}
    replay.complete(workers, WORKERS)
    new_timer, = replay.step()
    assert new_timer["actionType"] == CREATE_TIMER and new_timer["fireAt"] > timer["fireAt"]
    assert sum("timed out" in error for error in replay.custom_status["errors"]) == 2
    _ok(replay, 1, 2)
    _ok(replay, 2, 2)
    actions = replay.step()
    assert [a.get("functionName") for a in actions if a["actionType"] == CALL_ACTIVITY] == ["stitch_job"]


def test_invalid_video_fails_at_split_with_its_reason():
    replay = _replay()
    (split,) = replay.step()
    replay.fail(split, "clip.mp4: not a readable video file (Invalid data found when processing input)")
    report, = replay.step()
    assert report["functionName"] == "report_failure"
    replay.complete(report, "clip.identity.error.json")
    replay.step()
    assert replay.done and replay.state["error"].count("not a readable video file") >= 1
    assert replay.custom_status["stage"] == "failed"
    assert replay.custom_status["error"].startswith("split failed: clip.mp4: not a readable video file")


def test_worker_check_replaces_workers_for_the_batches_still_out():
    replay = _replay()
    _, deadline, check = _start(replay)
    _ok(replay, 2)
    replay.step()
    replay.fire_timer(check)
    workers, = replay.step()
    assert workers["functionName"] == "ensure_workers" and workers["input"] == {"outstanding": 2}
    replay.complete(workers, {"running": ["w2"], "started": ["w3"]})
    next_check, = replay.step()
    assert next_check["actionType"] == CREATE_TIMER and check["fireAt"] < next_check["fireAt"] < deadline["fireAt"]
    assert replay.custom_status["workers"] == 2 and replay.custom_status["batches_done"] == 1
    _ok(replay, 0)
    _ok(replay, 1)
    actions = replay.step()
    assert [a.get("functionName") for a in actions if a["actionType"] == CALL_ACTIVITY] == ["stitch_job"], "no resubmission"


def test_error_that_will_repeat_fails_the_orchestration_at_once():
    replay = _replay()
    _start(replay)
    replay.raise_event(RESULT_EVENT, {"job_id": "job-1", "batch": 1, "attempt": 1, "succeeded": False, "retryable": False,
                                      "error": "batch-00001 attempt 1 was delivered 3 times and its worker stopped each time"})
    report, = replay.step()
    assert report["functionName"] == "report_failure", "nothing is resubmitted"
    replay.complete(report, "clip.identity.error.json")
    replay.step()
    assert replay.done and replay.custom_status["stage"] == "failed"
    assert replay.custom_status["error"] == "batch 1 failed: batch-00001 attempt 1 was delivered 3 times and its worker stopped each time"


def test_workers_that_cannot_be_started_fail_the_job_with_the_reason():
    replay = _replay()
    (split,) = replay.step()
    replay.complete(split, PLAN)
    enqueue, = replay.step()
    replay.complete(enqueue, 3)
    workers, = replay.step()
    replay.fail(workers, "(AuthorizationFailed) the client does not have authorization to perform action jobs/write")
    report, = replay.step()
    assert report["functionName"] == "report_failure"
    replay.complete(report, "clip.identity.error.json")
    replay.step()
    assert replay.done and replay.custom_status["stage"] == "failed"
    assert replay.custom_status["error"] == ("could not start workers: (AuthorizationFailed) the client does not have "
                                             "authorization to perform action jobs/write")


def test_results_that_arrive_while_a_retry_is_queued_are_each_taken_once():
    """Results can reach the orchestration while it runs an activity; each counts once, none is lost
    (the Durable Python SDK would replay an event that found no open waiter to every later one: issue 507)."""
    replay = _replay()
    _start(replay)
    replay.raise_event(RESULT_EVENT, {"job_id": "job-1", "batch": 1, "attempt": 1, "succeeded": False, "error": "CUDA out of memory"})
    retry, = replay.step()
    _ok(replay, 0)
    _ok(replay, 2)
    assert replay.step() == [], "taken while the retry is being queued"
    replay.complete(retry, 1)
    workers, = replay.step()
    assert workers["functionName"] == "ensure_workers"
    replay.complete(workers, WORKERS)
    assert replay.step() == [] and replay.custom_status["batches_done"] == 2
    _ok(replay, 1, attempt=2)
    stitch, = replay.step()
    assert stitch["functionName"] == "stitch_job"
    assert {int(index): attempt for index, attempt in stitch["input"]["attempts"].items()} == {0: 1, 1: 2, 2: 1}
