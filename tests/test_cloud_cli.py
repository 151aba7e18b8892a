"""``stylize submit`` / ``status`` / ``jobs`` on Azurite, against the real upload trigger and the real orchestrator code
(stepped by the replay harness, with real workers on the queues)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import azure.functions as func
import pytest

import durable_replay
from durable_replay import ReplayClient
from durable_replay import user_function as _user
from function_app.activities import ACTIVITIES
from function_app.batches import on_batch_result
from function_app.compute import LocalWorkers
from function_app.publish import publish_status
from function_app.upload import start_job
from media import frame_timestamps, make_clip
from runner import cloud
from runner.cli import main
from shared.config import Settings
from shared.job_status import read_status, recent_jobs, video_job_id, write_status
from shared.messages import BatchResult

LIMITS = Settings(batch_frames=20, max_attempts=2, max_workers=1, worker_idle_s=20, visibility_timeout_s=4, max_deliveries=2,
                  worker_check_s=30, batch_timeout_s=3600)


@pytest.fixture()
def storage(on_azurite, azurite, monkeypatch):
    service, queues = on_azurite(LIMITS, (LIMITS.input_container, LIMITS.output_container, LIMITS.work_container, LIMITS.styles_container),
                                 (LIMITS.batch_queue, LIMITS.result_queue, LIMITS.poison_queue))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    output = service.get_container_client(LIMITS.output_container)
    for blob in output.list_blobs(name_starts_with="status/"):  # no job left from another test
        output.delete_blob(blob.name)
    yield service, queues
    LocalWorkers.stop_all()


def _host(client: ReplayClient, instance_id: str, queues: dict) -> durable_replay.Host:
    def deliver(body: str) -> BatchResult:
        asyncio.run(_user(on_batch_result)(func.QueueMessage(body=body.encode()), client))
        return BatchResult.from_json(body)

    return durable_replay.Host(client, instance_id, ACTIVITIES, queues[LIMITS.result_queue], deliver, LIMITS, 2.0)


def _submit(capsys, *arguments: str) -> str:
    assert main(["submit", *arguments]) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("stylize-")
    return job_id


def test_submit_prints_the_triggers_id_and_status_wait_follows_every_stage_then_downloads(storage, tmp_path, capsys, monkeypatch):
    service, queues = storage
    clip = make_clip(tmp_path / "clip.mp4", seconds=3, rate="25")
    job_id = _submit(capsys, str(clip), "--style", "identity", "--strength", "0.5", "--name", "trips/clip.mp4")

    blob = service.get_blob_client(LIMITS.input_container, "trips/clip.mp4")
    assert blob.get_blob_properties().metadata == {"style": "identity", "strength": "0.5"}
    client = ReplayClient(publisher=lambda document: publish_status(document, LIMITS))
    assert asyncio.run(start_job(blob, client, LIMITS)) == job_id, "the id printed is the orchestration's instance id"
    assert client.started[0][2]["style_strength"] == 0.5

    host = _host(client, job_id, queues)
    seen: list[str] = []

    def one_host_round(_seconds: float) -> None:  # the follower's pause between looks: the host takes one turn
        document = read_status(service, LIMITS.output_container, job_id)
        seen.append(document["stage"] if document else "none")
        host.round()

    monkeypatch.setattr(cloud, "sleep", one_host_round)
    out = tmp_path / "out"
    assert main(["status", job_id, "--wait", "--download", str(out), "--interval", "0"]) == 0
    captured = capsys.readouterr()
    stages = [document["stage"] for document in host.replay.published]
    assert stages[0] == "splitting" and stages[-1] == "done" and {"scoring", "stitching"} <= set(stages)
    followed = [line.split("% ", 1)[1].split(",")[0] for line in captured.err.splitlines() if "% " in line]
    assert [stage for i, stage in enumerate(followed) if i == 0 or followed[i - 1] != stage] == ["splitting", "scoring", "stitching", "done"]
    assert "batches 4/4, frames 75/75" in captured.err.splitlines()[-1] and captured.err.splitlines()[-1].startswith("[" + "#" * 30 + "] 100%")
    assert sorted(path.name for path in out.iterdir()) == ["clip.mp4.identity.mp4", "clip.mp4.identity.preview.png", "clip.mp4.identity.report.json"]
    assert frame_timestamps(out / "clip.mp4.identity.mp4") == frame_timestamps(clip)
    assert json.loads((out / "clip.mp4.identity.report.json").read_text())["frames"] == 75
    assert [f"downloaded: {out / name}" for name in sorted(p.name for p in out.iterdir())] == sorted(captured.out.splitlines())

    assert main(["jobs"]) == 0
    assert capsys.readouterr().out.split("\t")[:5] == [job_id, "done", "100%", "identity", "trips/clip.mp4.identity.mp4"]


def test_submit_wait_with_a_style_image_is_one_command_from_upload_to_outputs(storage, tmp_path, capsys, monkeypatch):
    from PIL import Image

    service, queues = storage
    clip = make_clip(tmp_path / "clip.mp4", seconds=1, rate="25")
    picture = tmp_path / "painting.png"
    Image.new("RGB", (64, 48), (30, 90, 200)).save(picture)
    client = ReplayClient(publisher=lambda document: publish_status(document, LIMITS))
    hosts: list[durable_replay.Host] = []

    def trigger_then_host_rounds(_seconds: float) -> None:  # the upload trigger fires at the first pause, then the host turns
        if not hosts:
            started = asyncio.run(start_job(service.get_blob_client(LIMITS.input_container, "clip.mp4"), client, LIMITS))
            hosts.append(_host(client, started, queues))
        hosts[0].round()

    monkeypatch.setattr(cloud, "sleep", trigger_then_host_rounds)
    out = tmp_path / "out"
    assert main(["submit", str(clip), "--style-image", str(picture), "--wait", "--download", str(out), "--interval", "0"]) == 0
    captured = capsys.readouterr()
    job_id = captured.out.splitlines()[0]
    (name, instance_id, job), = client.started
    assert instance_id == job_id and job["style"] == "arbitrary"
    stored = service.get_blob_client(LIMITS.styles_container, job["style_image"]).download_blob().readall()
    assert stored == picture.read_bytes(), "the picture went to the styles container, named in the upload's metadata"
    assert sorted(path.name for path in out.iterdir()) == ["clip.mp4.arbitrary.mp4", "clip.mp4.arbitrary.preview.png",
                                                          "clip.mp4.arbitrary.report.json"]
    assert frame_timestamps(out / "clip.mp4.arbitrary.mp4") == frame_timestamps(clip)


def test_a_refused_upload_is_reported_in_one_line(storage, tmp_path, capsys):
    service, _ = storage
    clip = make_clip(tmp_path / "clip.mp4", seconds=1)
    job_id = _submit(capsys, str(clip), "--style", "starry")
    client = ReplayClient()
    small = Settings(max_upload_bytes=1000)
    assert asyncio.run(start_job(service.get_blob_client(LIMITS.input_container, "clip.mp4"), client, small)) is None
    assert main(["status", job_id, "--wait", "--interval", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"stylize: refused: clip.mp4: {clip.stat().st_size} bytes is over the limit of 1000"
    assert not client.started
    assert {document["job_id"]: document["stage"] for document in recent_jobs(service, LIMITS.output_container, 5)}[job_id] == "refused"


def test_a_strength_out_of_range_is_refused_by_the_trigger_in_one_line(storage, tmp_path, capsys):
    service, _ = storage
    clip = make_clip(tmp_path / "clip.mp4", seconds=1)
    blob = service.get_blob_client(LIMITS.input_container, "strong.mp4")
    blob.upload_blob(clip.read_bytes(), overwrite=True, metadata={"style": "starry", "strength": "1e9"})
    client = ReplayClient()
    assert asyncio.run(start_job(blob, client, LIMITS)) is None and not client.started
    job_id = video_job_id("strong.mp4", blob.get_blob_properties().etag)
    assert main(["status", job_id]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "stylize: refused: metadata strength '1e9' is not a number from 0 to 1"


def test_bad_input_is_one_line_before_anything_is_uploaded(storage, tmp_path, capsys):
    service, _ = storage
    notes = tmp_path / "cli-notes.txt"  # a name no other test uploads to the session's Azurite
    notes.write_text("not a video")
    assert main(["submit", str(notes)]) == 2
    assert capsys.readouterr().err.strip().startswith("stylize: error: cli-notes.txt: extension .txt is not accepted")
    assert main(["submit", str(notes), "--name", "../x.mp4"]) == 2
    assert "not a plain relative path" in capsys.readouterr().err
    assert main(["status", "../../etc/passwd"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not list(service.get_container_client(LIMITS.input_container).list_blobs(name_starts_with="cli-notes"))


def test_a_status_document_naming_another_jobs_blob_is_refused(storage, tmp_path, capsys):
    service, _ = storage
    job_id = "stylize-" + "ab" * 16
    write_status(service, LIMITS.output_container, job_id, {"stage": "done", "kind": "video", "input": "clip.mp4", "style": "starry",
                                                            "output": "someone-else.mp4"})
    assert main(["status", job_id, "--download", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"stylize: error: the status document of {job_id} names outputs that are not its job's"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_connection_from_azd_values(tmp_path, monkeypatch):
    text = 'AZURE_LOCATION="westeurope"\nDATA_STORAGE_ACCOUNT="stylizedata123"\nOUTPUT_CONTAINER="videos-out"\nFUNCTION_APP_URL="https://app.example"\n'
    assert cloud.parse_azd_values(text)["DATA_STORAGE_ACCOUNT"] == "stylizedata123"
    azd = tmp_path / "bin" / "azd"
    azd.parent.mkdir()
    azd.write_text("#!/bin/sh\nprintf '%s' '" + text + "'\n")
    azd.chmod(0o755)
    (tmp_path / "azure.yaml").write_text("name: stylize\n")
    monkeypatch.setenv("PATH", f"{azd.parent}:/usr/bin:/bin")
    args = main.__globals__["build_parser"](Settings()).parse_args(["jobs"])
    connected = cloud.connect(args, Settings(), environ={}, folder=tmp_path)
    assert connected.service.account_name == "stylizedata123" and connected.app_url == "https://app.example"
    with pytest.raises(Exception, match="no storage account"):
        cloud.connect(args, Settings(), environ={}, folder=tmp_path / "bin")


def test_score_models_submit_starts_a_backfill_and_follows_it_to_its_report(models_on_azurite, azurite, generated, tmp_path, capsys,
                                                                           monkeypatch):
    """``score-models submit`` posts to the app's real backfill function (behind a stand-in for the host's router), then
    follows the run's status document, written by the real many-models orchestration, to its report."""
    import test_models_azure as models_test
    from function_app.many_models import start_model_run
    from runner.score_models import main as score_models

    limits = models_test.LIMITS
    service, queues = models_test.storage.__wrapped__(models_on_azurite, generated, monkeypatch)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    client = ReplayClient(publisher=lambda document: publish_status(document, limits))

    class Backfill(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = func.HttpRequest("POST", f"http://{self.headers['Host']}{self.path}", body=body, headers=dict(self.headers))
            response = asyncio.run(_user(start_model_run)(request, client)) if self.path == "/api/models/runs" else func.HttpResponse(status_code=404)
            self.send_response(response.status_code)
            self.end_headers()
            self.wfile.write(response.get_body())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Backfill)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hosts: list[durable_replay.Host] = []

    def one_host_round(_seconds: float) -> None:
        if not hosts:
            (instance_id,) = client.replays
            hosts.append(models_test._host(client, instance_id, queues))
        hosts[0].round()

    monkeypatch.setattr(cloud, "sleep", one_host_round)
    app = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert score_models(["submit", "--start", "2018-08-29T01:00:00", "--end", "2018-08-29T01:00:01", "--app-url", app]) == 2
        assert capsys.readouterr().err.strip() == ("score-models: error: end 2018-08-29T01:00:01 is not on a boundary of the "
                                                   "schedule's 3600 s periods (the one before it is 2018-08-29T01:00:00)")
        out = tmp_path / "out"
        assert score_models(["submit", "--start", "2018-08-29T01:00:00", "--end", "2018-08-29T03:00:00", "--app-url", app,
                             "--wait", "--download", str(out), "--interval", "0"]) == 0
    finally:
        server.shutdown()
        server.server_close()
        LocalWorkers.stop_all()
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "score-models-20180829T010000--20180829T030000"
    followed = [line.split("% ", 1)[1].split(",")[0] for line in captured.err.splitlines() if "% " in line]
    assert [stage for i, stage in enumerate(followed) if i == 0 or followed[i - 1] != stage] == ["planning", "scoring", "merging", "done"]
    assert "shards 4/4, models 15/15" in captured.err
    assert sorted(path.name for path in out.iterdir()) == ["predictions.csv", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["models_succeeded"] == 15 and report["rows_scored"] > 0
    assert captured.err.splitlines()[-1] == f"run succeeded: 15 models succeeded, 0 failed, 0 skipped, 0 without data; {report['rows_scored']} rows scored"
    assert len((out / "predictions.csv").read_text().splitlines()) == report["rows_scored"] + 1


@pytest.mark.parametrize("limit", ["-1", "0", "100000", "ten"])
def test_jobs_takes_a_bounded_limit(limit, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["jobs", "--limit", limit])
    assert exited.value.code == 2 and "give a whole number from 1 to 200" in capsys.readouterr().err


def test_waiting_on_a_job_that_never_appears_ends_in_one_line(storage, capsys, monkeypatch):
    monkeypatch.setattr(cloud, "FIRST_STATUS_S", 0.5)
    assert main(["status", "stylize-" + "d" * 32, "--wait"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has no status after 0.5 s" in error and "Traceback" not in error
