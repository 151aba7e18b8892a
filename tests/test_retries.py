"""Batch retries of the local runner, with faults injected through its launcher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from media import frame_timestamps, make_clip
from runner.local import RunRequest, launch_scorer, run
from shared.config import Settings
from shared.errors import BatchFailedError, InvalidInputError


def _failing_launcher(fail_batch: str, times: int):
    failures = []

    def launch(command: list[str]) -> subprocess.Popen:
        if any(fail_batch in part for part in command) and len(failures) < times:
            failures.append(command)
            return launch_scorer([sys.executable, "-c", "import sys; sys.exit('error: injected fault')"])
        return launch_scorer(command)

    return launch, failures


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("retry") / "clip.mp4", seconds=2)


def test_failed_batch_is_retried_alone(clip, tmp_path):
    launcher, failures = _failing_launcher("batch-00001", times=1)
    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=20, workers=2)
    report = run(request, Settings(max_attempts=3), launcher=launcher)
    assert len(failures) == 1
    assert [b.attempts for b in report.batches] == [1, 2, 1]
    assert report.batches[1].errors == ["error: injected fault"]
    assert len(frame_timestamps(request.output)) == len(frame_timestamps(clip))
    assert json.loads(request.report_path.read_text())["retries"] == 1


def test_batch_failing_every_attempt_fails_the_run_without_output(clip, tmp_path):
    launcher, failures = _failing_launcher("batch-00000", times=99)
    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=20)
    with pytest.raises(BatchFailedError, match=r"batch-00000 .* failed 2 times; last error: error: injected fault"):
        run(request, Settings(max_attempts=2), launcher=launcher)
    assert len(failures) == 2
    assert not request.output.exists() and not request.preview_path.exists()


def test_scorer_error_that_will_repeat_is_not_retried(clip, tmp_path):
    """The scorer exits 2 for an error that will repeat (a segment that cannot be decoded): the run fails at once, as bad input."""
    calls = []

    def launch(command: list[str]) -> subprocess.Popen:
        calls.append(command)
        return launch_scorer([sys.executable, "-c", "import sys; sys.stderr.write('error: batch-00000.mp4: none of its 20 frames decodes\\n'); sys.exit(2)"])

    request = RunRequest(input=clip, output=tmp_path / "out.mp4", model="identity", batch_frames=20)
    with pytest.raises(InvalidInputError, match=r"^batch-00000: batch-00000.mp4: none of its 20 frames decodes$"):
        run(request, Settings(max_attempts=3), launcher=launch)
    assert sum("batch-00000" in " ".join(command) for command in calls) == 1, "retried an error that will repeat"
    assert not request.output.exists()
