"""The status page, rendered by headless Chromium from status documents the real orchestrator code wrote (replay
harness) on Azurite: a running, a finished and a failed job, and the list of recent jobs; served by the app's own
HTTP functions behind a small stand-in for the Functions host's router."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import azure.functions as func
import pytest
from PIL import Image

from browser import Chromium, live_group_members
from durable_replay import Replay, orchestrator_function
from function_app import status_page
from function_app.orchestrator import RESULT_EVENT
from function_app.publish import publish_status
from shared.config import Settings
from shared.job_status import output_names

LIMITS = Settings()
RUNNING, FINISHED, FAILED = (f"stylize-{digit * 32}" for digit in "abc")
PLAN = {"batches": [{"index": i, "first_frame": 10 * i, "frame_count": 10, "start_pts": 10 * i, "end_pts": 10 * i + 10 if i < 2 else None,
                     "time_base": "1/25", "first_gop": i, "last_gop": i} for i in range(3)],
        "frames": 30, "tracks_blob": "jobs/x/tracks.mp4", "video": {}}
ROUTES = [(re.compile(r"/api/jobs/view"), status_page.view_jobs), (re.compile(r"/api/jobs/(?P<job_id>[^/]+)/view"), status_page.view_job),
          (re.compile(r"/api/jobs/(?P<job_id>[^/]+)/files/(?P<kind>[^/]+)"), status_page.job_file)]


@pytest.fixture(scope="module")
def chromium():
    browser = Chromium()
    yield browser
    browser.close()


def test_closing_the_browser_stops_every_process_it_started_and_removes_its_profile():
    """A CI run failed at teardown: the profile was removed while a Chromium helper still wrote into it."""
    browser = Chromium()
    try:
        assert browser.render("data:text/html,<p>hello</p>").text.strip() == "hello"
        assert len(live_group_members(browser.process.pid)) > 1, "Chromium and the helpers it started, in a group of their own"
    finally:
        browser.close()
    assert live_group_members(browser.process.pid) == [] and not os.path.exists(browser.profile.name)


@pytest.fixture()
def app_url(on_azurite):
    """The page's functions on a loopback port, routed as the Functions host routes them (no status document left from
    another test)."""
    service, _ = on_azurite(LIMITS, (LIMITS.output_container,), ())
    output = service.get_container_client(LIMITS.output_container)
    for blob in output.list_blobs(name_starts_with="status/"):
        output.delete_blob(blob.name)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            url = urlsplit(self.path)
            for pattern, function in ROUTES:
                match = pattern.fullmatch(url.path)
                if match:
                    request = func.HttpRequest("GET", f"http://{self.headers['Host']}{self.path}", body=b"",
                                               route_params=match.groupdict(), params={k: v[0] for k, v in parse_qs(url.query).items()})
                    response = function(request, LIMITS)
                    break
            else:
                response = func.HttpResponse("not found", status_code=404)
            body = response.get_body()
            self.send_response(response.status_code)
            self.send_header("Content-Type", response.mimetype + (f"; charset={response.charset}" if response.charset else ""))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/jobs"
    server.shutdown()
    server.server_close()


def _replay(job_id: str) -> Replay:
    job = {"job_id": job_id, "input_blob": "holiday/clip.mp4", "style": "starry", "limits": {"max_attempts": 2, "batch_timeout_s": 600,
                                                                                         "worker_check_s": 60}}
    replay = Replay(orchestrator_function("stylize_orchestrator"), job, job_id, publisher=lambda document: publish_status(document, LIMITS))
    (split,) = replay.step()
    return replay, split


def _settle(replay: Replay) -> None:
    """Step until the orchestration waits for a result, answering its queue and worker activities."""
    answers = {"enqueue_batches": 1, "ensure_workers": {"running": ["w1"], "started": ["w2"]}}
    while activities := [action for action in replay.step() if action.get("functionName") in answers]:
        for action in activities:
            replay.complete(action, answers[action["functionName"]])


def _ok(replay: Replay, index: int, attempt: int) -> None:
    replay.raise_event(RESULT_EVENT, {"batch": index, "attempt": attempt, "succeeded": True, "styled": f"s/{index}.a{attempt}.mp4",
                                      "job_id": replay.instance_id, "worker": "w1", "model_loads": 1, "seconds": 1.5})


def _score(replay: Replay, split: dict) -> None:
    replay.complete(split, PLAN)
    _settle(replay)
    _ok(replay, 0, 1)
    _settle(replay)
    replay.raise_event(RESULT_EVENT, {"batch": 1, "attempt": 1, "succeeded": False, "job_id": replay.instance_id, "error": "CUDA out of memory"})
    _settle(replay)


def _write_jobs(service) -> None:
    running, split = _replay(RUNNING)
    _score(running, split)
    finished, split = _replay(FINISHED)
    _score(finished, split)
    for index in (1, 2):
        _ok(finished, index, 2 if index == 1 else 1)
        _settle(finished)
    (stitch,) = finished.pending_activities()
    names = output_names("holiday/clip.mp4", "starry")
    preview = io.BytesIO()
    Image.new("RGB", (640, 180), (200, 120, 40)).save(preview, "PNG")
    for kind, data in (("video", b"\x00\x00\x00\x18ftypisom"), ("preview", preview.getvalue()), ("report", b'{"frames": 30}')):
        service.get_blob_client(LIMITS.output_container, names[kind]).upload_blob(data, overwrite=True)
    finished.complete(stitch, names)
    finished.step()
    failed, split = _replay(FAILED)
    failed.fail(split, "clip.mp4: no video stream")
    (report,) = failed.step()
    failed.complete(report, "holiday/clip.mp4.starry.error.json")
    failed.step()
    assert [running.published[-1]["stage"], finished.published[-1]["stage"], failed.published[-1]["stage"]] == ["scoring", "done", "failed"]


def _write_models_run(service) -> str:
    """A many-models run whose second pass found every model done: its document, written by the real orchestration."""
    run_id = "20180829T010000--20180829T030000"
    replay = Replay(orchestrator_function("score_models_orchestrator"), {"run_id": run_id, "window": {"start": "2018-08-29T01:00:00+00:00",
                    "end": "2018-08-29T03:00:00+00:00"}}, f"score-models-{run_id}", "score_models_orchestrator",
                    publisher=lambda document: publish_status(document, LIMITS))
    (plan,) = replay.step()
    replay.complete(plan, {"shards": [], "models_total": 15, "models_skipped": 15, "pass": 2})
    (finish,) = replay.step()
    where = f"{LIMITS.output_container}/predictions/{run_id}"
    replay.complete(finish, {"status": "succeeded", "models_total": 15, "models_succeeded": 0, "models_failed": 0, "models_skipped": 15,
                             "models_no_data": 0, "rows_scored": 0, "rows_total": 0, "predictions": f"{where}/predictions.csv",
                             "report": f"{where}/report.json"})
    replay.step()
    assert replay.published[-1]["stage"] == "done"
    return f"score-models-{run_id}"


def _checked(rendered, *texts: str) -> None:
    assert rendered.errors == []
    assert rendered.lang == "en"
    assert Image.open(io.BytesIO(rendered.screenshot)).size == (390, 844), "a phone-sized viewport, whole"
    for text in texts:
        assert text in rendered.text


def test_pages_of_a_running_a_finished_and_a_failed_job(on_azurite, app_url, chromium):
    service, _ = on_azurite(LIMITS, (LIMITS.output_container,), ())
    _write_jobs(service)

    running = chromium.render(f"{app_url}/{RUNNING}/view?code=k%20ey")
    _checked(running, "Scoring: 33% done", "batches 1/3, frames 10/30, workers 2, errors 1", "batch 1 attempt 1 failed: CUDA out of memory",
             "holiday/clip.mp4")
    assert running.images == [] and running.title.startswith("scoring 33%")

    finished = chromium.render(f"{app_url}/{FINISHED}/view?code=k%20ey")
    _checked(finished, "Done: 100% done", "batches 3/3, frames 30/30", "Styled video", "Preview (PNG)", "Report (JSON)")
    assert finished.images == [[True, 640]], "the preview image loaded, through the app, with the caller's key kept"

    failed = chromium.render(f"{app_url}/{FAILED}/view")
    _checked(failed, "Failed: 0% done", "split failed: clip.mp4: no video stream")
    assert failed.images == []

    listing = chromium.render(f"{app_url}/view")
    _checked(listing, "The 3 jobs updated last", f"{RUNNING}\tscoring\t33%\tstarry", f"{FINISHED}\tdone\t100%\tstarry",
             f"{FAILED}\tfailed\t0%\tstarry")


def test_the_page_of_a_many_models_run_shows_its_counts_and_links_its_report(on_azurite, app_url, chromium):
    service, _ = on_azurite(LIMITS, (LIMITS.output_container,), ())
    job_id = _write_models_run(service)
    service.get_blob_client(LIMITS.output_container, f"predictions/{job_id.removeprefix('score-models-')}/report.json").upload_blob(
        b'{"status": "succeeded"}', overwrite=True)
    rendered = chromium.render(f"{app_url}/{job_id}/view")
    _checked(rendered, "Done: 100% done", "Result\nsucceeded", "Models skipped\n15",
             "Window\n2018-08-29T01:00:00+00:00 to 2018-08-29T03:00:00+00:00", "Report (JSON)", "Predictions (CSV)")
    import urllib.request

    with urllib.request.urlopen(f"{app_url}/{job_id}/files/report") as response:
        assert json.load(response) == {"status": "succeeded"}


def test_a_preview_that_does_not_load_is_caught(on_azurite, app_url, chromium):
    service, _ = on_azurite(LIMITS, (LIMITS.output_container,), ())
    _write_jobs(service)
    service.get_blob_client(LIMITS.output_container, output_names("holiday/clip.mp4", "starry")["preview"]).delete_blob()
    rendered = chromium.render(f"{app_url}/{FINISHED}/view")
    assert rendered.images == [[True, 0]] and any("404" in error for error in rendered.errors)


def test_outputs_are_served_only_by_the_jobs_own_names(on_azurite, app_url):
    import urllib.error
    import urllib.request

    service, _ = on_azurite(LIMITS, (LIMITS.output_container,), ())
    _write_jobs(service)
    with urllib.request.urlopen(f"{app_url}/{FINISHED}/files/report") as response:
        assert json.load(response) == {"frames": 30} and response.headers["Content-Disposition"].startswith("inline")
    for path, status in ((f"{FINISHED}/files/error", 404), (f"{RUNNING}/files/preview", 404), ("..%2Fx/files/report", 400), ("nope/view", 400)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{app_url}/{path}")
        assert refused.value.code == status
        assert b"Traceback" not in refused.value.read()


def test_a_forged_status_document_reaches_no_other_blob_and_a_mistyped_one_gets_one_line(on_azurite, app_url):
    """A style of ``x/../../videos-in/...`` in a document would make the storage client climb out of the output container
    (the path is normalised before it is sent): the names a document gives are checked as blob names, and a style is
    one name."""
    import urllib.error
    import urllib.request

    from shared.job_status import status_blob

    service, _ = on_azurite(LIMITS, (LIMITS.output_container, LIMITS.input_container), ())
    service.get_blob_client(LIMITS.input_container, "victim/private.mp4").upload_blob(b"OTHER USER'S UPLOAD", overwrite=True)
    forged_id, mistyped_id = "stylize-" + "f" * 32, "stylize-" + "e" * 32
    style = "x/../../videos-in/victim/private"
    forged = {"job_id": forged_id, "kind": "video", "stage": "done", "input": "a.mp4", "style": style,
              "output": f"a.mp4.{style}.mp4"}
    mistyped = {"job_id": mistyped_id, "kind": "video", "stage": "scoring", "errors": 5, "batches_done": "x"}
    for document in (forged, mistyped):
        service.get_blob_client(LIMITS.output_container, status_blob(document["job_id"])).upload_blob(json.dumps(document), overwrite=True)
    for path, status in ((f"{forged_id}/files/video", 400), (f"{mistyped_id}/view", 502)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{app_url}/{path}")
        body = refused.value.read()
        assert refused.value.code == status, body
        assert b"OTHER USER" not in body and b"Traceback" not in body and len(body.splitlines()) < 40
