"""Many models on a schedule, on the video pipeline's backbone: one orchestration per window.

A timer (``%STYLIZE_MODELS_SCHEDULE%``, NCRONTAB) starts the run of the window that just ended, and
an HTTP call starts one for any window (backfill). The orchestration's id is derived from the
window, so a repeated or overlapping firing starts nothing new. It plans the pass (the manifest's
models that no earlier pass over this window finished, in shards), queues one message per shard,
keeps shard workers alive on the CPU fleet, fans their results in (:mod:`function_app.fan_in`: a
shard whose attempt fails is resubmitted alone; one that fails for good has its models failed,
the others go on), then merges the predictions and writes the report into the output container
(``predictions/<run id>/``). Progress: ``GET /api/jobs/<id>``. The run's state is the core's
(:mod:`shared.many_models.run_state`) in the work container, ``runs/<run id>/``; no pandas or
scikit-learn is needed here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlsplit

import azure.durable_functions as df
import azure.functions as func
from azure.core.exceptions import ResourceNotFoundError

from function_app.batches import ACTIVE, deliver
from function_app.fan_in import Progress, Work, WorkersUnavailable, collect, reason, workers_count
from function_app.publish import publish
from shared.config import Settings
from shared.errors import InvalidInputError
from shared.many_models.capture import capture_prefix, files_digest, files_list_text, window_files
from shared.job_status import MODELS_PREFIX
from shared.many_models.manifest import MANIFEST_MAX_BYTES, MANIFEST_NAME, Manifest
from shared.many_models.run import finish_run, plan_pass
from shared.many_models.run_state import INPUTS_DIR, PREDICTIONS_NAME, REPORT_NAME, SHARDS_DIR, RunState, write_text
from shared.many_models.schema import Window, check_first_line
from shared.many_models.shards import QUEUED_MODELS_MAX, ShardResult, ShardSpec
from shared.storage import CLOSED_MARKER, BlobStore, blob_service, queue_client, read_blob_within, run_prefix

bp = df.Blueprint()
settings = Settings.from_env()
log = logging.getLogger(__name__)
ORCHESTRATOR = "score_models_orchestrator"
SHARD_RESULT_EVENT = "shard_result"
INSTANCE_PREFIX = MODELS_PREFIX
PREDICTIONS_FOLDER = "predictions"
ERROR_NAME = "error.json"
HEADER_BYTES = 64 * 1024
RETRY_AFTER_S = 60
"""What a backfill refused for too many running runs is told to wait: runs take minutes."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def instance_id_for(run_id: str) -> str:
    """One orchestration per window: the run id is the window's."""
    return f"{INSTANCE_PREFIX}{run_id}"


def outputs_of(service, limits: Settings, run_id: str) -> BlobStore:
    return BlobStore(service, limits.output_container, f"{PREDICTIONS_FOLDER}/{run_id}/")


async def start_run(client: df.DurableOrchestrationClient, window: Window, again: bool) -> tuple[str, bool]:
    """Start the window's orchestration unless one runs (or, without ``again``, ever ran); returns (id, started)."""
    instance_id = instance_id_for(window.run_id)
    existing = await client.get_status(instance_id)
    if existing and existing.runtime_status is not None and (not again or existing.runtime_status in ACTIVE):
        log.info("run %s already has orchestration %s (%s); not starting another", window.run_id, instance_id, existing.runtime_status)
        return instance_id, False
    await client.start_new(ORCHESTRATOR, instance_id, {"run_id": window.run_id, "window": window.to_dict()})
    log.info("started %s for the window %s", instance_id, window.to_dict())
    return instance_id, True


@bp.timer_trigger(arg_name="timer", schedule="%STYLIZE_MODELS_SCHEDULE%", use_monitor=True)
@bp.durable_client_input(client_name="client")
async def on_models_schedule(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """The last window that ended at least ``models_lag_s`` ago (with Capture, the files of its last interval are then
    written); a late or repeated firing in the same period gets the same window, and starts nothing."""
    moment = utc_now() - timedelta(seconds=settings.models_lag_s)
    await start_run(client, Window.ending_at(moment, settings.models_window_s), again=False)


def _json_response(body: dict, status_code: int, headers: dict | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status_code, mimetype="application/json", headers=headers)


async def running_runs(client: df.DurableOrchestrationClient) -> set[str]:
    """The ids of the many-models orchestrations running or about to (not the videos')."""
    statuses = await client.get_status_by(runtime_status=list(ACTIVE), instance_id_prefix=INSTANCE_PREFIX)
    return {status.instance_id for status in statuses}


@bp.route(route="models/runs", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def start_model_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Backfill: ``{"start": T, "end": T}`` (ISO 8601, UTC), both on boundaries of the schedule's periods, at most
    ``STYLIZE_MODELS_BACKFILL_MAX_WINDOWS`` of them (else 400). A window whose run has ended is run again: only its
    failed or missing models are scored. Answers 202 with the orchestration id and its status URL, 200 if it is
    already running, 429 while ``STYLIZE_MODELS_MAX_RUNNING`` many-models runs are running."""
    try:
        body = req.get_json()
        if not isinstance(body, dict):
            raise InvalidInputError('the body must be a JSON object {"start": ISO 8601 time, "end": ISO 8601 time}')
        window = Window.backfill(body.get("start"), body.get("end"), settings.models_window_s, settings.models_backfill_max_windows)
    except (ValueError, InvalidInputError) as exc:
        return _json_response({"error": str(exc).splitlines()[0]}, 400)
    running = await running_runs(client)
    if instance_id_for(window.run_id) not in running and len(running) >= settings.models_max_running:
        return _json_response({"error": f"{len(running)} many-models runs are running, the most at once: try again when one has ended"},
                              429, {"Retry-After": str(RETRY_AFTER_S)})
    instance_id, started = await start_run(client, window, again=True)
    url = urlsplit(req.url)
    status_url = f"{url.scheme}://{url.netloc}{url.path.rsplit('/models/runs', 1)[0]}/jobs/{quote(instance_id)}"
    return _json_response({"id": instance_id, "run_id": window.run_id, "window": window.to_dict(), "started": started,
                           "status": status_url}, 202 if started else 200, {"Location": status_url})


async def deliver_shard_result(body: str, client: df.DurableOrchestrationClient) -> ShardResult | None:
    """A shard result from the results queue to its run's orchestration (a malformed one raises, for the poison queue)."""
    result = ShardResult.from_json(body)
    what = f"the result of {result.shard_id} attempt {result.attempt}"
    return result if await deliver(client, instance_id_for(result.run_id), SHARD_RESULT_EVENT, result.to_dict(), what) else None


@bp.queue_trigger(arg_name="message", queue_name=settings.shard_result_queue, connection=settings.storage_connection)
@bp.durable_client_input(client_name="client")
async def on_shard_result(message: func.QueueMessage, client: df.DurableOrchestrationClient) -> None:
    await deliver_shard_result(message.get_body().decode("utf-8", errors="replace"), client)


# The orchestration

def _status(stage: str, run: dict, plan: dict | None = None, done: dict | None = None, **extra) -> dict:
    status = {"stage": stage, "run_id": run["run_id"], "window": run["window"]}
    if plan:
        done = done or {}
        status.update(shards_done=len(done), shards_total=len(plan["shards"]), models_done=sum(len(r.models) for r in done.values()),
                      models_to_score=sum(len(shard["keys"]) for shard in plan["shards"]), models_total=plan["models_total"],
                      models_skipped=plan["models_skipped"], run_pass=plan["pass"])
    status.update(extra)
    return status


def about(run: dict) -> dict:
    """The run's fixed facts in its status document."""
    return {"job_id": instance_id_for(run["run_id"]), "kind": "models"}


def shard_work(run: dict, plan: dict) -> Work:
    """The pass's shards for the fan-in: a shard that fails for good has its models failed, and the others go on."""
    specs = {spec["shard_id"]: spec for spec in plan["shards"]}

    def status(done: dict, errors: list[str], workers: dict) -> dict:
        return _status("scoring", run, plan, done, **({"errors": errors[-5:]} if errors else {}), workers=workers_count(workers))

    def give_up(shard_id: str, why: str) -> ShardResult:
        return ShardResult.all_failed(ShardSpec.from_dict(specs[shard_id]), why, retryable=False)

    return Work(
        event=SHARD_RESULT_EVENT, parse=ShardResult.from_dict, key=lambda result: result.shard_id, name=lambda shard_id: shard_id,
        submit=lambda ids, attempts: ("enqueue_shards", {"shards": [{"shard": specs[i], "attempt": attempts[i]} for i in ids]}),
        ensure_workers=lambda outstanding: {"outstanding": outstanding, "work": "shards"}, status=status, about=about(run),
        give_up=give_up)


@bp.orchestration_trigger(context_name="context")
def score_models_orchestrator(context: df.DurableOrchestrationContext):
    run = context.get_input()
    limits = {"max_attempts": settings.max_attempts, "timeout_s": settings.shard_timeout_s,
              "worker_check_s": settings.worker_check_s, **run.get("limits", {})}
    began = context.current_utc_datetime
    yield from publish(context, about(run), _status("planning", run))
    try:
        plan = yield context.call_activity("plan_model_run", run)
    except Exception as exc:
        return (yield from _fail(context, run, f"plan failed: {reason(exc)}"))
    planned = context.current_utc_datetime
    progress = Progress(attempts={shard["shard_id"]: 1 for shard in plan["shards"]})
    stopped = None
    if plan["shards"]:
        try:
            yield from collect(context, shard_work(run, plan), progress, limits)
        except WorkersUnavailable as exc:  # publish what was scored; the models left are reported failed
            stopped = str(exc)
    yield from publish(context, about(run), _status("merging", run, plan, progress.done))
    request = {"run": run, "results": [result.to_dict() for result in progress.done.values()], "error": stopped,
               "errors": progress.errors[-5:], "timings": {"plan": (planned - began).total_seconds(),
                                                          "score": (context.current_utc_datetime - planned).total_seconds()}}
    try:
        summary = yield context.call_activity("finish_model_run", request)
    except Exception as exc:
        return (yield from _fail(context, run, f"finish failed: {reason(exc)}"))
    yield from publish(context, about(run), _status("done", run, plan, progress.done, **summary))
    return summary


def _fail(context: df.DurableOrchestrationContext, run: dict, why: str):
    report = yield context.call_activity("fail_model_run", {"run": run, "error": why})
    yield from publish(context, about(run), _status("failed", run, error=why, error_report=report))
    raise RuntimeError(why)


# Activities

def _manifest(service, limits: Settings) -> Manifest:
    """The models container's manifest, its size checked from its properties before it is read."""
    where = f"{limits.models_container}/{MANIFEST_NAME}"
    try:
        raw = read_blob_within(service, limits.models_container, MANIFEST_NAME, MANIFEST_MAX_BYTES, f"{where}: manifest")
    except ResourceNotFoundError:
        raise InvalidInputError(f"{where}: no manifest (upload the folder `score-models train` wrote into the {limits.models_container} container)") from None
    return Manifest.parse(raw, where)


def plan_model_run(run: dict, limits: Settings = settings) -> dict:
    """Check the manifest and the readings' header, begin a pass over the window, shard the models it has left."""
    if limits.models_per_shard > QUEUED_MODELS_MAX:
        raise InvalidInputError(f"STYLIZE_MODELS_PER_SHARD={limits.models_per_shard}: at most {QUEUED_MODELS_MAX} in Azure "
                                "(a shard's result must fit in one queue message)")
    service = blob_service(limits)
    window = Window.from_dict(run["window"])
    manifest = _manifest(service, limits)
    store = BlobStore(service, limits.work_container, run_prefix(window.run_id))
    listing = _capture_listing(service, window, limits) if limits.sensor_capture_path else None
    if listing is None:
        _check_readings_header(service, manifest, limits)
    inputs = files_digest(listing) if listing is not None else ""
    state = RunState.open(store, window, manifest.key_columns, inputs)
    data = limits.sensor_data_blob
    if listing is not None:  # the shards read the list the pass was planned with, named by its digest
        write_text(store, f"{INPUTS_DIR}/{inputs}.json", listing)
        data = f"{run_prefix(window.run_id)}{INPUTS_DIR}/{inputs}.json"
    store.delete(CLOSED_MARKER)
    plan = plan_pass(state, manifest, limits.models_per_shard, models_dir="", data=data, out_dir=run_prefix(window.run_id) + SHARDS_DIR)
    return {"run_id": window.run_id, "pass": state.run_pass, "shards": [shard.to_dict() for shard in plan.shards],
            "models_total": len(manifest.models), "models_skipped": len(state.finished() & manifest.models.keys())}


def _check_readings_header(service, manifest: Manifest, limits: Settings) -> None:
    where = f"{limits.sensor_data_container}/{limits.sensor_data_blob}"
    try:
        head = service.get_blob_client(limits.sensor_data_container, limits.sensor_data_blob).download_blob(0, HEADER_BYTES).readall()
    except ResourceNotFoundError:
        raise InvalidInputError(f"{where}: no readings (upload them there)") from None
    check_first_line(head, manifest.key_columns, where)


def _capture_listing(service, window: Window, limits: Settings) -> str:
    """The window's Capture files (listed from its time range only) with their ETags, as the shards read them."""
    files = window_files(service.get_container_client(limits.sensor_data_container), capture_prefix(limits.sensor_capture_path),
                         window, limits.capture_interval_s, limits.models_late_s)
    return files_list_text(files)


def enqueue_shards(request: dict, limits: Settings = settings) -> int:
    """One queue message per shard attempt. A replay may send one twice; both attempts write the same file, once each."""
    queue = queue_client(limits, limits.shard_queue)
    for item in request["shards"]:
        queue.send_message(replace(ShardSpec.from_dict(item["shard"]), attempt=item["attempt"]).to_json())
    return len(request["shards"])


def finish_model_run(request: dict, limits: Settings = settings) -> dict:
    """Record the pass's results, merge every finished model's predictions and write the report (output container); close the run."""
    began = time.perf_counter()
    run, service = request["run"], blob_service(limits)
    window = Window.from_dict(run["window"])
    manifest = _manifest(service, limits)
    store = BlobStore(service, limits.work_container, run_prefix(window.run_id))
    state = RunState.resume(store, window, manifest.key_columns)
    for result in request["results"]:
        state.record(ShardResult.from_dict(result))
    outputs = outputs_of(service, limits, window.run_id)
    readings = limits.sensor_capture_path.strip("/") + "/" if limits.sensor_capture_path else limits.sensor_data_blob
    context = {"data": f"{limits.sensor_data_container}/{readings}", "models_dir": limits.models_container,
               "error": request["error"], "errors": request["errors"]}
    before = sum(request["timings"].values())
    report = finish_run(state, manifest, outputs, limits.models_max_failed_fraction, request["timings"], context,
                        lambda: before + time.perf_counter() - began)
    outputs.delete(ERROR_NAME)
    store.write(CLOSED_MARKER, [])
    summary = {name: report[name] for name in ("status", "models_total", "models_succeeded", "models_failed", "models_skipped",
                                                 "models_no_data", "rows_scored", "rows_total")}
    return {**summary, "predictions": outputs.where(PREDICTIONS_NAME), "report": outputs.where(REPORT_NAME)}


def fail_model_run(request: dict, limits: Settings = settings) -> str:
    """Close the run (workers drop its leftover shards) and say why it failed, beside its last report (which stays)."""
    run, service = request["run"], blob_service(limits)
    BlobStore(service, limits.work_container, run_prefix(run["run_id"])).write(CLOSED_MARKER, [])
    outputs = outputs_of(service, limits, run["run_id"])
    write_text(outputs, ERROR_NAME, json.dumps({"run_id": run["run_id"], "window": run["window"], "status": "failed",
                                                "error": request["error"]}, indent=1) + "\n")
    return outputs.where(ERROR_NAME)


@bp.function_name("plan_model_run")
@bp.activity_trigger(input_name="run")
def plan_model_run_activity(run: dict) -> dict:
    return plan_model_run(run)


@bp.function_name("enqueue_shards")
@bp.activity_trigger(input_name="request")
def enqueue_shards_activity(request: dict) -> int:
    return enqueue_shards(request)


@bp.function_name("finish_model_run")
@bp.activity_trigger(input_name="request")
def finish_model_run_activity(request: dict) -> dict:
    return finish_model_run(request)


@bp.function_name("fail_model_run")
@bp.activity_trigger(input_name="request")
def fail_model_run_activity(request: dict) -> str:
    return fail_model_run(request)


ACTIVITIES = {"plan_model_run": plan_model_run, "enqueue_shards": enqueue_shards, "finish_model_run": finish_model_run,
              "fail_model_run": fail_model_run}
