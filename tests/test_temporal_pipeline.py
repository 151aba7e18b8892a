"""Temporal stabilisation through the pipeline (issue 23): settings, context frames in the plan and the messages, the
scorer's stabiliser stage, the worker, ``stylize run`` / ``submit`` options and the upload metadata.

The stabiliser itself is tested in test_temporal.py; here a deterministic stateful double stands in for it, in process,
so that what the pipeline does with its frames can be seen exactly.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gpu_job.command import WorkerOptions
from gpu_job.scorer import score_segment
from gpu_job.styler import FrameStyler
from gpu_job.worker import StyleJob, Worker
from media import frame_timestamps, make_clip, rgb_frames
from runner.cli import build_parser, main
from runner.local import RunRequest, check_request
from shared.config import Settings
from shared.containers import output_container
from shared.errors import InvalidInputError, PipelineError
from shared.messages import BatchMessage, MessageError
from shared.plan import Batch, TemporalPlan, plan_batches, plan_temporal
from shared.probe import VideoInfo, probe
from shared.split import split_video

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "44d2270861496ff05dc1473f83c34d1d1e518df8"
"""A commit before temporal stabilisation (issue 23) and the media changes of issue 22: on a plain clip, `--temporal off`
must write exactly what it wrote. A later change that alters the output on purpose moves this to the commit before it."""


def _info(frames: int, gop: int, open_gops=(), pts=lambda i: i) -> VideoInfo:
    return VideoInfo(
        path="x.mp4", format="mp4", size_bytes=1, codec="h264", width=8, height=8, time_base=Fraction(1, 25),
        frame_pts=[pts(i) for i in range(frames)], frame_gop=[i // gop for i in range(frames)], open_gops=list(open_gops),
        last_frame_duration=1, rotation=0,
    )


# The plan

def test_no_context_frames_plan_what_was_planned_before():
    info = _info(100, gop=30, open_gops=[2])
    batches = plan_batches(info, 40, 0)
    assert batches == plan_batches(info, 40)
    assert [(b.first_frame, b.frame_count, b.first_gop, b.last_gop, b.context_pts) for b in batches] == [
        (0, 34, 0, 1, None), (34, 33, 1, 2, None), (67, 33, 1, 3, None)]


def test_each_batch_but_the_first_starts_with_its_context_frames_and_their_gops():
    info = _info(100, gop=30, pts=lambda i: 1000 + 3 * i)
    plain, batches = plan_batches(info, 20), plan_batches(info, 20, 8)
    own = lambda b: (b.index, b.first_frame, b.frame_count, b.start_pts, b.end_pts, b.last_gop)  # noqa: E731
    assert [own(b) for b in batches] == [own(b) for b in plain], "the batch's own frames do not change"
    assert batches[0].context_pts is None and batches[0].first_gop == 0, "the first batch has nothing before it"
    for batch in batches[1:]:
        context = batch.first_frame - 8
        assert batch.context_pts == info.frame_pts[context] < batch.start_pts
        assert batch.context_time == Fraction(info.frame_pts[context], 25)
        assert batch.first_gop == info.frame_gop[context]
    assert [b.first_gop for b in plain] == [0, 0, 1, 2, 2] and [b.first_gop for b in batches] == [0, 0, 1, 1, 2], \
        "a batch whose context frames begin in the GOP before carries that GOP too"


def test_context_may_reach_past_the_batch_before_but_not_before_the_first_frame():
    info = _info(30, gop=4)
    batches = plan_batches(info, 5, 12)
    assert [b.context_pts for b in batches] == [None, 0, 0, 3, 8, 13]
    assert [b.first_gop for b in batches] == [0, 0, 0, 0, 2, 3]


def test_context_starting_on_an_open_gop_carries_the_gop_before_it():
    batches = plan_batches(_info(90, gop=30, open_gops=[1, 2]), 30, 8)
    assert [(b.context_pts, b.first_gop, b.last_gop) for b in batches] == [(None, 0, 0), (22, 0, 1), (52, 0, 2)]


def test_a_batch_with_context_round_trips_and_its_context_is_checked():
    batch = plan_batches(_info(60, gop=10), 20, 8)[1]
    assert Batch.from_dict(json.loads(json.dumps(batch.to_dict()))) == batch
    for bad in (batch.start_pts, batch.start_pts + 5, "12", 12.0, True, [12]):
        with pytest.raises(ValueError, match="context_pts") as refused:
            Batch.from_dict({**batch.to_dict(), "context_pts": bad})
        assert "\n" not in str(refused.value)
    without = batch.to_dict()
    del without["context_pts"]
    assert Batch.from_dict(without) == replace(batch, context_pts=None), \
        "a plan in the history of a job started before context frames existed is read as having none"


def _message(**fields) -> BatchMessage:
    batch = plan_batches(_info(60, gop=10), 20, 8)[1]
    return BatchMessage(job_id="job", batch=batch, attempt=1, model="starry", segment="s.mp4", styled="o.mp4", **fields)


def test_a_batch_message_carries_the_stabilisers_strength():
    message = _message(temporal_strength=0.75)
    assert BatchMessage.from_json(message.to_json()) == message
    assert BatchMessage.from_json(message.to_json()).batch.context_pts == message.batch.context_pts
    data = json.loads(message.to_json())
    del data["temporal_strength"]
    assert BatchMessage.from_json(json.dumps(data)).temporal_strength == 0.0, "absent: off"


@pytest.mark.parametrize("value,reason", [
    (1.5, "temporal_strength outside 0..1"), (-0.1, "temporal_strength outside 0..1"), ("1", "mistyped temporal_strength"),
    (True, "mistyped temporal_strength"), (None, "mistyped temporal_strength"), (float("nan"), "temporal_strength outside 0..1")])
def test_a_bad_temporal_strength_is_refused_in_one_line(value, reason):
    data = json.loads(_message().to_json())
    data["temporal_strength"] = value
    with pytest.raises(MessageError, match=reason) as refused:
        BatchMessage.from_json(json.dumps(data))
    assert "\n" not in str(refused.value)


def test_a_message_of_the_version_before_context_frames_is_refused():
    data = json.loads(_message().to_json())
    data["version"] = 2
    with pytest.raises(MessageError, match="version is not supported"):
        BatchMessage.from_json(json.dumps(data))


# Settings and the one decision

def test_settings_read_temporal_options_and_refuse_bad_ones_in_one_line():
    assert (Settings().temporal, Settings().temporal_strength, Settings().temporal_context_frames) == (True, 1.0, 12)
    settings = Settings.from_env({"STYLIZE_TEMPORAL": "off", "STYLIZE_TEMPORAL_STRENGTH": "0.5", "STYLIZE_TEMPORAL_CONTEXT_FRAMES": "0"})
    assert (settings.temporal, settings.temporal_strength, settings.temporal_context_frames) == (False, 0.5, 0)
    assert Settings.from_env({"STYLIZE_TEMPORAL": "ON"}).temporal is True
    assert Settings.from_env(Settings(temporal=False).to_env()).temporal is False, "what to_env writes reads back"
    for name, raw, reason in [("TEMPORAL", "maybe", "is not on or off"), ("TEMPORAL_STRENGTH", "1.5", "must be from 0 to 1"),
                              ("TEMPORAL_STRENGTH", "nan", "must be from 0 to 1"), ("TEMPORAL_STRENGTH", "x", "is not a valid float"),
                              ("TEMPORAL_STRENGTH", "-0.5", "must be positive"), ("TEMPORAL_CONTEXT_FRAMES", "-1", "must be positive"),
                              ("TEMPORAL_CONTEXT_FRAMES", "2.5", "is not a valid int"),
                              ("TEMPORAL_CONTEXT_FRAMES", "65", "must be at most 64")]:
        with pytest.raises(PipelineError, match=reason) as refused:
            Settings.from_env({f"STYLIZE_{name}": raw})
        assert "\n" not in str(refused.value)


def test_identity_is_never_stabilised_and_off_says_why():
    assert plan_temporal("starry", True, 0.8, 8) == TemporalPlan(0.8, 8)
    assert plan_temporal("starry", True, 0.8, 8).describe() == {"used": "on", "strength": 0.8, "context_frames": 8}
    identity = plan_temporal("identity", True, 1.0, 8)
    assert (identity.strength, identity.context_frames) == (0.0, 0) and "identity" in identity.describe()["reason"]
    assert plan_temporal("starry", False, 1.0, 8).describe() == {
        "used": "off", "reason": "turned off (--temporal off, upload metadata temporal=off, or STYLIZE_TEMPORAL)"}
    assert plan_temporal("starry", True, 0.0, 8).context_frames == 0, "strength 0 is off: no context frames either"


# The scorer, in process, with a deterministic stateful double of the stabiliser

class AveragingStabiliser:
    """Averages each styled frame with the previous output frame: its output depends on every frame it has seen since
    its last reset. Records what it was given."""

    made: list[AveragingStabiliser] = []

    def __init__(self, strength: float = 1.0, *, device: str = "cpu") -> None:
        self.strength, self.device = strength, device
        self.previous: np.ndarray | None = None
        self.inputs: list[np.ndarray] = []
        self.resets = 0
        AveragingStabiliser.made.append(self)

    def reset(self) -> None:
        self.previous = None
        self.resets += 1

    def __call__(self, inputs: np.ndarray, styled: np.ndarray) -> np.ndarray:
        assert inputs.shape[0] == styled.shape[0] and inputs.shape[1] <= styled.shape[1] and inputs.dtype == np.uint8
        self.inputs.extend(inputs)
        out = np.empty_like(styled)
        for i, frame in enumerate(styled):
            out[i] = frame if self.previous is None else (frame.astype(np.uint16) + self.previous) // 2
            self.previous = out[i].copy()
        return out

    def describe(self) -> dict:
        return {"method": "average with the previous output", "strength": self.strength, "device": self.device}


class CountingStabiliser(AveragingStabiliser):
    """Outputs the n-th frame it sees as a flat grey of level 10 n: which frames were output, and in which order,
    survives the encoder exactly."""

    def __call__(self, inputs: np.ndarray, styled: np.ndarray) -> np.ndarray:
        seen = len(self.inputs)
        super().__call__(inputs, styled)
        return np.stack([np.full_like(frame, 10 * (seen + i + 1)) for i, frame in enumerate(styled)])


@pytest.fixture(scope="module")
def clip_batches(tmp_path_factory):
    """A moving clip cut into batches of 13 frames, each with 8 context frames, and its segments."""
    folder = tmp_path_factory.mktemp("temporal")
    clip = make_clip(folder / "clip.mp4", seconds=2, audio=False)
    info = probe(clip)
    batches = plan_batches(info, 13, 8)
    return clip, batches, split_video(info, batches, folder / "segments", output_container(info)).segments


def _pass_through() -> FrameStyler:
    return FrameStyler(None, {"model": "identity"})


def test_context_frames_are_styled_and_stabilised_but_not_output(clip_batches, tmp_path):
    clip, batches, segments = clip_batches
    batch, segment = batches[2], segments[2]
    options = dict(start=batch.start_time, end=batch.end_time, expected_frames=batch.frame_count, batch_size=3)
    plain = score_segment(segment, tmp_path / "plain.mp4", _pass_through(), **options)
    stabiliser = CountingStabiliser()
    stabilised = score_segment(segment, tmp_path / "stable.mp4", _pass_through(), **options, stabiliser=stabiliser,
                               context_start=batch.context_time)
    assert stabilised.frames == plain.frames == batch.frame_count
    assert frame_timestamps(tmp_path / "stable.mp4") == frame_timestamps(tmp_path / "plain.mp4"), "frame-exact: the batch's frames only"
    assert stabiliser.resets == 1 and stabilised.temporal == stabiliser.describe()
    assert len(stabiliser.inputs) == 8 + batch.frame_count, "the 8 context frames went through the stabiliser first"
    source = rgb_frames(clip)
    first = batch.first_frame
    for offset, frame in enumerate(stabiliser.inputs):
        nearest = int(np.argmin([np.abs(frame.astype(int) - other).mean() for other in source]))
        assert nearest == first - 8 + offset
    levels = [round(float(frame.mean()) / 10) for frame in rgb_frames(tmp_path / "stable.mp4")]
    assert levels == list(range(9, 9 + batch.frame_count)), "the stabiliser's output for the batch's own frames, in order"


def test_context_frames_leave_no_trace_in_the_output(clip_batches, tmp_path):
    """A stabiliser that changes nothing, fed 8 context frames first: the same bytes as no stabiliser at all."""
    _, batches, segments = clip_batches
    batch = batches[3]

    class Unchanged(AveragingStabiliser):
        def __call__(self, inputs, styled):
            super().__call__(inputs, styled)
            return styled

    options = dict(start=batch.start_time, end=batch.end_time, expected_frames=batch.frame_count, batch_size=2)
    score_segment(segments[3], tmp_path / "plain.mp4", _pass_through(), **options)
    unchanged = Unchanged()
    score_segment(segments[3], tmp_path / "context.mp4", _pass_through(), **options, stabiliser=unchanged, context_start=batch.context_time)
    assert len(unchanged.inputs) == 8 + batch.frame_count
    assert (tmp_path / "context.mp4").read_bytes() == (tmp_path / "plain.mp4").read_bytes()


def test_a_stabiliser_failing_fails_its_segment_in_one_line_and_writes_nothing(clip_batches, tmp_path):
    _, batches, segments = clip_batches
    batch = batches[1]

    class Failing(AveragingStabiliser):
        def __call__(self, inputs, styled):
            raise RuntimeError("flow failed")

    with pytest.raises(RuntimeError, match="flow failed"):
        score_segment(segments[1], tmp_path / "out.mp4", _pass_through(), start=batch.start_time, end=batch.end_time,
                      expected_frames=batch.frame_count, stabiliser=Failing(), context_start=batch.context_time)
    assert not (tmp_path / "out.mp4").exists()


@pytest.fixture()
def worker(monkeypatch, tmp_path):
    """An in-process worker with the real ``random`` model and the averaging double as its stabiliser."""
    monkeypatch.setattr("gpu_job.temporal.Stabiliser", AveragingStabiliser)
    AveragingStabiliser.made = []
    return Worker(WorkerOptions(device="cpu", threads=1), tmp_path / "models")


def _style(worker: Worker, messages: list[BatchMessage]) -> list:
    jobs = iter([StyleJob(m, Path(m.segment), Path(m.styled)) for m in messages])
    results: list = []
    worker.style_all(lambda wait: next(jobs, None), lambda job, result: results.append(result))
    return results


def _batch_message(batches, segments, index: int, styled: Path, **fields) -> BatchMessage:
    return BatchMessage(job_id="job", batch=batches[index], attempt=1, model="random", segment=str(segments[index]), styled=str(styled),
                        **fields)


def test_a_batchs_output_does_not_depend_on_the_batch_styled_before_it(clip_batches, worker, tmp_path):
    _, batches, segments = clip_batches
    alone, after = tmp_path / "alone.mp4", tmp_path / "after.mp4"
    (result,) = _style(worker, [_batch_message(batches, segments, 2, alone, temporal_strength=1.0)])
    results = _style(worker, [_batch_message(batches, segments, 1, tmp_path / "before.mp4", temporal_strength=1.0),
                              _batch_message(batches, segments, 2, after, temporal_strength=1.0)])
    assert result.succeeded and all(r.succeeded for r in results), [r.error for r in results]
    assert alone.read_bytes() == after.read_bytes(), "styled after another batch on the same worker, or alone: the same bytes"
    assert len(AveragingStabiliser.made) == 3 and all(s.device == "cpu" and s.resets == 1 for s in AveragingStabiliser.made)
    assert result.temporal == AveragingStabiliser.made[0].describe()
    (off,) = _style(worker, [_batch_message(batches, segments, 2, tmp_path / "off.mp4")])
    assert off.temporal is None and len(AveragingStabiliser.made) == 3, "strength 0: no stabiliser"
    assert (tmp_path / "off.mp4").read_bytes() != alone.read_bytes(), "the double did change the frames"


def test_the_identity_model_gets_no_stabiliser_and_no_context_whatever_its_message_says(clip_batches, worker, tmp_path):
    clip, batches, segments = clip_batches
    message = replace(_batch_message(batches, segments, 2, tmp_path / "identity.mp4", temporal_strength=1.0), model="identity")
    (result,) = _style(worker, [message])
    assert result.succeeded and result.temporal is None and AveragingStabiliser.made == []
    batch = batches[2]
    expected = frame_timestamps(clip)[batch.first_frame:batch.first_frame + batch.frame_count]
    assert frame_timestamps(tmp_path / "identity.mp4") == expected
    styled, source = rgb_frames(tmp_path / "identity.mp4"), rgb_frames(clip)[batch.first_frame:batch.first_frame + batch.frame_count]
    assert np.abs(styled.astype(int) - source).mean() < 3, "the batch's own frames, in order, unblended"


# stylize run, stylize submit and the upload metadata

def test_stylize_run_takes_temporal_options_with_defaults_from_the_settings(tmp_path):
    args = build_parser(Settings()).parse_args(["run", "in.mp4", "out.mp4"])
    assert (args.temporal, args.temporal_strength) == ("on", 1.0)
    args = build_parser(Settings(temporal=False, temporal_strength=0.4)).parse_args(["run", "in.mp4", "out.mp4"])
    assert (args.temporal, args.temporal_strength) == ("off", 0.4)
    args = build_parser(Settings()).parse_args(["run", "in.mp4", "out.mp4", "--temporal", "off", "--temporal-strength", "0.3"])
    assert (args.temporal, args.temporal_strength) == ("off", 0.3)
    with pytest.raises(SystemExit):
        build_parser(Settings()).parse_args(["run", "in.mp4", "out.mp4", "--temporal", "maybe"])
    clip = make_clip(tmp_path / "clip.mp4", seconds=0.4, audio=False)
    for strength in (1.5, -1.0, float("nan")):
        with pytest.raises(InvalidInputError, match="--temporal-strength must be between 0 and 1") as refused:
            check_request(RunRequest(clip, tmp_path / "out.mp4", "starry", 10, temporal_strength=strength), probe(clip))
        assert "\n" not in str(refused.value)


def test_stylize_submit_passes_temporal_options_as_upload_metadata(on_azurite, azurite, monkeypatch, tmp_path, capsys):
    settings = Settings()
    service, _ = on_azurite(settings, (settings.input_container,), ())
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    clip = make_clip(tmp_path / "clip.mp4", seconds=0.4, audio=False)
    assert main(["submit", str(clip), "--name", "tp/temporal.mp4", "--temporal", "off", "--temporal-strength", "0.25"]) == 0
    metadata = service.get_blob_client(settings.input_container, "tp/temporal.mp4").get_blob_properties().metadata
    assert (metadata["temporal"], metadata["temporal_strength"]) == ("off", "0.25")
    assert main(["submit", str(clip), "--name", "tp/plain.mp4"]) == 0
    metadata = service.get_blob_client(settings.input_container, "tp/plain.mp4").get_blob_properties().metadata
    assert "temporal" not in metadata and "temporal_strength" not in metadata, "unset: the app's settings decide"
    capsys.readouterr()
    assert main(["submit", str(clip), "--name", "tp/strong.mp4", "--temporal-strength", "2"]) == 2
    assert capsys.readouterr().err == "stylize: error: --temporal-strength must be from 0 to 1\n"
    assert not service.get_blob_client(settings.input_container, "tp/strong.mp4").exists(), "refused before uploading"


def test_upload_metadata_sets_the_jobs_temporal_plan_and_bad_values_are_refused_in_one_line():
    from function_app.upload import temporal_plan

    settings = Settings(temporal_context_frames=6)
    assert temporal_plan("starry", {}, settings) == TemporalPlan(1.0, 6)
    assert temporal_plan("starry", {}, Settings(temporal=False)).strength == 0.0, "default from the settings"
    assert temporal_plan("starry", {"Temporal": "OFF"}, settings).describe()["used"] == "off"
    assert temporal_plan("starry", {"temporal": "on", "temporal_strength": "0.5"}, settings) == TemporalPlan(0.5, 6)
    assert temporal_plan("identity", {"temporal": "on"}, settings).strength == 0.0
    for metadata, reason in [({"temporal": "maybe"}, "metadata temporal 'maybe' is not on or off"),
                             ({"temporal_strength": "1e9"}, "metadata temporal_strength '1e9' is not a number from 0 to 1"),
                             ({"temporal_strength": "nan"}, "metadata temporal_strength 'nan' is not a number from 0 to 1"),
                             ({"temporal": "on\n" * 100}, "is not on or off")]:
        with pytest.raises(InvalidInputError, match=reason) as refused:
            temporal_plan("starry", metadata, settings)
        assert "\n" not in str(refused.value)


def test_a_bad_temporal_metadata_refuses_the_upload(on_azurite, tmp_path):
    from durable_replay import ReplayClient
    from function_app.upload import start_job
    from shared.job_status import read_status, video_job_id

    settings = Settings()
    service, _ = on_azurite(settings, (settings.input_container, settings.output_container), ())
    clip = make_clip(tmp_path / "clip.mp4", seconds=0.4, audio=False)
    blob = service.get_blob_client(settings.input_container, "tp/flicker.mp4")
    blob.upload_blob(clip.read_bytes(), overwrite=True, metadata={"style": "starry", "temporal": "sometimes"})
    client = ReplayClient()
    assert asyncio.run(start_job(blob, client, settings)) is None and not client.started
    document = read_status(service, settings.output_container, video_job_id("tp/flicker.mp4", blob.get_blob_properties().etag))
    assert document["stage"] == "refused" and document["error"] == "metadata temporal 'sometimes' is not on or off"
    blob.upload_blob(clip.read_bytes(), overwrite=True, metadata={"style": "starry", "temporal_strength": "0.5"})
    instance = asyncio.run(start_job(blob, client, settings))
    ((_, started, job),) = client.started
    assert started == instance
    assert (job["temporal_strength"], job["context_frames"]) == (0.5, settings.temporal_context_frames)
    assert job["temporal"] == {"used": "on", "strength": 0.5, "context_frames": settings.temporal_context_frames}


def test_the_apps_job_carries_its_temporal_plan_into_the_split_and_the_batch_messages(on_azurite, tmp_path):
    from durable_replay import ReplayClient
    from function_app.activities import enqueue_batches, split_job
    from function_app.upload import start_job

    settings = Settings(batch_frames=12, temporal_context_frames=5)
    service, queues = on_azurite(settings, (settings.input_container, settings.output_container, settings.work_container),
                                 (settings.batch_queue,))
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.2, audio=False)
    sent = {}
    for style, metadata in [("starry", {"temporal_strength": "0.7"}), ("identity", {}), ("ember", {"temporal": "off"})]:
        blob = service.get_blob_client(settings.input_container, f"tp/{style}.mp4")
        blob.upload_blob(clip.read_bytes(), overwrite=True, metadata={"style": style, **metadata})
        client = ReplayClient()
        asyncio.run(start_job(blob, client, settings))
        ((_, _, job),) = client.started
        plan = split_job(job, settings)
        enqueue_batches({"job": job, "frames": plan["frames"], "batches": [{"batch": b, "attempt": 1} for b in plan["batches"]]}, settings)
        messages = [BatchMessage.from_json(m.content) for m in queues[settings.batch_queue].receive_messages(max_messages=32)]
        queues[settings.batch_queue].clear_messages()
        sent[style] = sorted(messages, key=lambda m: m.batch.index)
    starry = sent["starry"]
    assert [m.temporal_strength for m in starry] == [0.7] * 3
    assert [m.batch.context_pts is not None for m in starry] == [False, True, True]
    info = probe(clip)
    assert [m.batch for m in starry] == plan_batches(info, 12, 5), "the app plans what stylize run plans"
    for style in ("identity", "ember"):
        assert [(m.temporal_strength, m.batch.context_pts) for m in sent[style]] == [(0.0, None)] * 3, style


# Bit-identical with temporal off, and what the report says

def _baseline(tmp_path: Path) -> Path:
    """The code as it was before temporal stabilisation, from git."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE], capture_output=True)
    assert archive.returncode == 0, f"the baseline commit {BASELINE[:12]} is not in this checkout's history: {archive.stderr.decode()}"
    target = tmp_path / "baseline"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def _stylize_run(code: Path, clip: Path, output: Path, *options: str, model: str = "random") -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(clip), str(output), "--model", model, "--batch-frames", "10",
                           "--device", "cpu", *options], cwd=code, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(output.with_name(f"{output.stem}.report.json").read_text())
    if "temporal" in report:
        assert ("temporal stabilisation at strength" if report["temporal"]["used"] == "on" else "temporal stabilisation off (") in done.stderr
    return report


def test_temporal_off_writes_exactly_what_the_code_before_it_wrote(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.2, audio=True)
    before = _stylize_run(_baseline(tmp_path), clip, tmp_path / "before.mp4")
    off = _stylize_run(ROOT, clip, tmp_path / "off.mp4", "--temporal", "off")
    assert "temporal" not in before and off["temporal"]["used"] == "off"
    assert (tmp_path / "off.mp4").read_bytes() == (tmp_path / "before.mp4").read_bytes()


def test_the_report_says_what_stabilised_the_frames_or_why_nothing_did(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", seconds=0.8, audio=False)
    on = _stylize_run(ROOT, clip, tmp_path / "on.mp4", "--temporal-strength", "0.6")
    assert on["temporal"]["used"] == "on" and on["temporal"]["strength"] == 0.6
    assert on["temporal"]["context_frames"] == Settings().temporal_context_frames
    assert on["temporal"]["stabiliser"]["strength"] == 0.6, "the stabiliser's own description, from the worker"
    assert frame_timestamps(tmp_path / "on.mp4") == frame_timestamps(clip), "frame-exact with context frames"
    identity = _stylize_run(ROOT, clip, tmp_path / "identity.mp4", model="identity")
    assert identity["temporal"]["used"] == "off" and "identity" in identity["temporal"]["reason"]


def test_the_report_adds_up_each_batchs_counts_in_both_runners():
    """Each batch's stabiliser counts its own scene cuts: the report sums them (it gave one batch's, and not the same
    batch in the local runner and the Function app); a forged count that is not a number is left out."""
    from shared.report import temporal_report

    plan = {"used": "on", "strength": 1.0, "context_frames": 4}
    described = [{"method": "m", "scene_cuts": 2, "too_small_frames": 0, "reblended_frames": 1}, {},
                 {"method": "m", "scene_cuts": 3, "too_small_frames": 5, "reblended_frames": 4}, {"method": "m", "scene_cuts": "many"}]
    report = temporal_report(plan, described)
    assert report["stabiliser"] == {"method": "m", "scene_cuts": 5, "too_small_frames": 5, "reblended_frames": 5}
    assert temporal_report(plan, [{}, None])["stabiliser"] is None
    assert temporal_report({"used": "off", "reason": "r"}, described) == {"used": "off", "reason": "r"}


def test_the_reports_counts_are_of_each_batchs_own_frames(tmp_path):
    """Context frames are the batch before's own frames: a strip too small for the flow (every frame passes through)
    counts each of its frames once, not once more for each batch that takes it as context."""
    clip = tmp_path / "strip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x20:rate=25:duration=0.8", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(clip)], check=True)
    report = _stylize_run(ROOT, clip, tmp_path / "strip-out.mp4")
    assert len(report["batches"]) == 2 and report["temporal"]["context_frames"] == Settings().temporal_context_frames > 0
    assert report["temporal"]["stabiliser"]["too_small_frames"] == report["frames"] == 20
