"""The cloud pipeline from one command: ``stylize submit``, ``stylize status``, ``stylize jobs`` (and ``score-models submit``).

A job is followed through its status document (:mod:`shared.job_status`), read with the caller's own storage role: no
function key. Connection as Azure tools do it: ``--account NAME`` with ``DefaultAzureCredential`` (az login, a managed
identity), ``--connection-string`` (or ``AZURE_STORAGE_CONNECTION_STRING``; ``UseDevelopmentStorage=true`` for
Azurite), else the values of ``azd env get-values`` when run in the project's folder (``azure.yaml``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from time import monotonic, sleep
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from shared.config import Settings
from shared.errors import InvalidInputError, PipelineError
from shared.job_status import ENDED, check_status_id, fraction_done, job_outputs, progress_text, read_status, recent_jobs, video_job_id
from shared.names import shown
from shared.uploads import upload_problem

ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")
CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
AZD_LINE = re.compile(r'([A-Z][A-Z0-9_]*)="(.*)"')
AZD_CONTAINERS = {"INPUT_CONTAINER": "input_container", "OUTPUT_CONTAINER": "output_container", "STYLES_CONTAINER": "styles_container"}
AZD_TIMEOUT_S = 60
BAR_WIDTH = 30
EXIT_REFUSED, EXIT_FAILED, EXIT_PARTIAL = 2, 1, 3
RUN_STATUS_EXIT = {"succeeded": 0, "partial": EXIT_PARTIAL, "failed": EXIT_FAILED}
"""``score-models``' own exit codes for a run's status."""
RESPONSE_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Cloud:
    """Where the jobs are: the data account's blob service, its containers (in ``settings``) and the Function app."""

    service: BlobServiceClient
    settings: Settings
    app_url: str | None = None


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (default: AZURE_STORAGE_CONNECTION_STRING, else `azd env get-values` in the project's folder)")
    group.add_argument("--account", default=None, help="data storage account name, reached with DefaultAzureCredential (az login, managed identity)")
    group.add_argument("--connection-string", default=None, help="a storage connection string (UseDevelopmentStorage=true for Azurite)")


def azd_values(folder: Path) -> dict[str, str]:
    """``azd env get-values`` in ``folder`` as a dict; empty where there is no azd project or no azd."""
    azd = shutil.which("azd")
    if not azd or not (folder / "azure.yaml").is_file():
        return {}
    try:
        done = subprocess.run([azd, "env", "get-values"], cwd=folder, capture_output=True, text=True, timeout=AZD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_azd_values(done.stdout) if done.returncode == 0 else {}


def parse_azd_values(text: str) -> dict[str, str]:
    """``KEY="value"`` lines (what ``azd env get-values`` prints); other lines are ignored."""
    values = {}
    for line in text.splitlines():
        match = AZD_LINE.fullmatch(line.strip())
        if match:
            values[match.group(1)] = match.group(2).replace('\\"', '"')
    return values


def connect(args: argparse.Namespace, settings: Settings, environ: dict[str, str] | None = None, folder: Path | None = None) -> Cloud:
    """The :class:`Cloud` the arguments, the environment or azd name; a one-line InvalidInputError if none does."""
    environ = os.environ if environ is None else environ
    connection = args.connection_string or environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection and not args.account:
        try:
            return Cloud(BlobServiceClient.from_connection_string(connection), settings, environ.get("STYLIZE_FUNCTION_APP_URL"))
        except ValueError:
            raise InvalidInputError("the storage connection string is not one (e.g. UseDevelopmentStorage=true)") from None
    values = azd_values(folder or Path.cwd())
    containers = {field: values[key] for key, field in AZD_CONTAINERS.items() if values.get(key)}
    for name in containers.values():
        if not CONTAINER_NAME.fullmatch(name):
            raise InvalidInputError(f"azd's container name {shown(name)} is not a storage container name")
    settings = replace(settings, **containers)
    app_url = environ.get("STYLIZE_FUNCTION_APP_URL") or values.get("FUNCTION_APP_URL")
    account = args.account or values.get("DATA_STORAGE_ACCOUNT")
    if not account:
        raise InvalidInputError("no storage account: give --account NAME (after az login) or --connection-string, "
                                "or run in the project's folder after azd up")
    if not ACCOUNT_NAME.fullmatch(account):
        raise InvalidInputError(f"storage account {shown(account)} is not a storage account name (3-24 lowercase letters and digits)")
    from azure.identity import DefaultAzureCredential

    return Cloud(BlobServiceClient(f"https://{account}.blob.core.windows.net", credential=DefaultAzureCredential()), settings, app_url)


# Submitting

def upload_style_picture(cloud: Cloud, picture: Path) -> str:
    """The picture, checked as the trigger will check it, in the styles container under a name from its content."""
    from gpu_job.styles import STYLE_IMAGE_MAX_BYTES, check_style_image

    if not picture.is_file():
        raise InvalidInputError(f"{picture.name}: no such file")
    if picture.stat().st_size > STYLE_IMAGE_MAX_BYTES:
        raise InvalidInputError(f"{picture.name}: {picture.stat().st_size} bytes is over the limit of {STYLE_IMAGE_MAX_BYTES}")
    data = picture.read_bytes()
    check_style_image(data, picture.name, cloud.settings.max_style_megapixels)
    name = f"{hashlib.sha256(data).hexdigest()[:32]}{picture.suffix.lower()}"
    cloud.service.get_blob_client(cloud.settings.styles_container, name).upload_blob(data, overwrite=True)
    return name


def submit(cloud: Cloud, video: Path, name: str | None, style: str | None, style_image: Path | None, strength: float | None,
           temporal: str | None = None, temporal_strength: float | None = None) -> str:
    """Upload the video with the metadata the upload trigger reads; returns the job id the trigger will give it.
    ``temporal`` (on or off) and ``temporal_strength`` unset leave the choice to the app's settings."""
    from gpu_job.styles import ARBITRARY, is_known_style

    if not video.is_file():
        raise InvalidInputError(f"{video.name}: no such file")
    blob = name or video.name
    problem = upload_problem(blob, video.stat().st_size, cloud.settings)
    if problem:
        raise InvalidInputError(problem)
    if style is not None and not is_known_style(style):
        raise InvalidInputError(f"unknown style {shown(style)} (`stylize styles` lists the names)")
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise InvalidInputError("--strength must be from 0 to 1")
    if temporal_strength is not None and not 0.0 <= temporal_strength <= 1.0:
        raise InvalidInputError("--temporal-strength must be from 0 to 1")
    metadata = {"style": ARBITRARY if style_image else (style or cloud.settings.default_style)}
    if style_image:
        metadata["style_image"] = upload_style_picture(cloud, style_image)
    if strength is not None:
        metadata["strength"] = repr(strength)
    if temporal is not None:
        metadata["temporal"] = temporal
    if temporal_strength is not None:
        metadata["temporal_strength"] = repr(temporal_strength)
    with video.open("rb") as data:
        uploaded = cloud.service.get_blob_client(cloud.settings.input_container, blob).upload_blob(
            data, overwrite=True, metadata=metadata, max_concurrency=4)
    return video_job_id(blob, uploaded["etag"])


# Following

def progress_bar(document: dict) -> str:
    done = fraction_done(document)
    filled = round(done * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done * 100:3.0f}% {progress_text(document)}"


FIRST_STATUS_S = 300
"""A job with no status document this long after it is followed does not exist (an upload's first comes within a minute)."""


def follow(cloud: Cloud, job_id: str, interval_s: float, timeout_s: float | None) -> dict:
    """Poll the job's document until its stage has ended, showing a progress bar on stderr; returns the last document."""
    out = sys.stderr
    began = monotonic()
    deadline = None if timeout_s is None else began + timeout_s
    shown_line, live = None, out.isatty()
    while True:
        document = read_status(cloud.service, cloud.settings.output_container, job_id)
        line = progress_bar(document) if document else "waiting for the job's first status (an upload's comes within a minute)"
        if line != shown_line:
            print(f"\r{line}\033[K" if live else line, end="" if live else "\n", file=out, flush=True)
            shown_line = line
        if document and document["stage"] in ENDED:
            if live:
                print(file=out)
            return document
        if document is None and monotonic() - began > FIRST_STATUS_S:
            if live:
                print(file=out)
            raise InvalidInputError(f"{job_id} has no status after {FIRST_STATUS_S} s: no such job, or its upload never reached "
                                    "the trigger (`stylize jobs` lists the recent ones)")
        if deadline is not None and monotonic() > deadline:
            if live:
                print(file=out)
            raise PipelineError(f"{job_id} has not ended after {timeout_s:.0f} s (still {document['stage'] if document else 'not started'}); "
                                f"`stylize status {job_id} --wait` follows it again")
        sleep(interval_s)


def download(cloud: Cloud, document: dict, folder: Path) -> list[Path]:
    """The job's outputs into ``folder``, each under its blob's last part, written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in job_outputs(document, cloud.settings.output_container).values():
        path = folder / posixpath.basename(name)
        part = path.with_name(f".{path.name}.part")
        with part.open("wb") as out:
            cloud.service.get_blob_client(cloud.settings.output_container, name).download_blob(max_concurrency=4).readinto(out)
        part.replace(path)
        paths.append(path)
    return paths


def finish(cloud: Cloud, document: dict, folder: Path | None) -> int:
    """Say how the job ended (one line for a refusal or failure), download its outputs; the exit code."""
    stage = document["stage"]
    if stage == "refused":
        print(f"stylize: refused: {document.get('error', 'the upload was refused')}", file=sys.stderr)
        return EXIT_REFUSED
    if stage == "failed":
        print(f"stylize: failed: {document.get('error', 'the job failed')}", file=sys.stderr)
        return EXIT_FAILED
    outputs = job_outputs(document, cloud.settings.output_container)
    if folder is not None:
        for path in download(cloud, document, folder):
            print(f"downloaded: {path}")
    else:
        for kind, name in outputs.items():
            print(f"{kind}: {cloud.settings.output_container}/{name}")
    if document.get("kind") != "models":
        return 0
    print(f"run {document.get('status')}: {document.get('models_succeeded', 0)} models succeeded, {document.get('models_failed', 0)} failed, "
          f"{document.get('models_skipped', 0)} skipped, {document.get('models_no_data', 0)} without data; "
          f"{document.get('rows_scored', 0)} rows scored", file=sys.stderr)
    return RUN_STATUS_EXIT.get(document.get("status"), EXIT_FAILED)


def status(cloud: Cloud, job_id: str, wait: bool, folder: Path | None, interval_s: float, timeout_s: float | None) -> int:
    check_status_id(job_id)
    if wait:
        document = follow(cloud, job_id, interval_s, timeout_s)
    else:
        document = read_status(cloud.service, cloud.settings.output_container, job_id)
        if document is None:
            raise InvalidInputError(f"{job_id} has no status yet (a job just submitted gets one within a minute)")
        print(progress_bar(document))
    if document["stage"] not in ENDED:
        return 0
    return finish(cloud, document, folder)


JOBS_LIMIT_MAX = 200


def _jobs_limit(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= JOBS_LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"give a whole number from 1 to {JOBS_LIMIT_MAX}, not {text!r}")
    return value


def jobs(cloud: Cloud, limit: int) -> int:
    """The jobs updated last, one a line: id, stage, progress, style, output (or input)."""
    for document in recent_jobs(cloud.service, cloud.settings.output_container, limit):
        percent = f"{fraction_done(document) * 100:.0f}%"
        what = document.get("output") or document.get("report") or document.get("input") or ""
        print("\t".join(str(part) for part in (document["job_id"], document["stage"], percent, document.get("style") or document.get("kind", ""),
                                              what, document.get("updated", ""))))
    return 0


# Many models

def start_backfill(app_url: str | None, function_key: str | None, start: str, end: str) -> str:
    """``POST /api/models/runs`` on the Function app; the run's id (its status document's). The app's answer is read
    bounded, and only its one-line ``error`` or its ``id`` (checked) is taken from it."""
    if not app_url or urlsplit(app_url).scheme not in ("http", "https") or not urlsplit(app_url).netloc:
        raise InvalidInputError("no Function app URL: give --app-url https://<app>.azurewebsites.net (or run in the project's folder after azd up)")
    request = urllib.request.Request(f"{app_url.rstrip('/')}/api/models/runs", data=json.dumps({"start": start, "end": end}).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             **({"x-functions-key": function_key} if function_key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read(RESPONSE_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        error = _answer(exc.read(RESPONSE_MAX_BYTES + 1)).get("error")
        reason = str(error).splitlines()[0][:300] if error else f"HTTP {exc.code}"
        if exc.code == 400:
            raise InvalidInputError(reason) from None
        raise PipelineError(f"the Function app answered {exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PipelineError(f"could not reach the Function app: {getattr(exc, 'reason', exc)}") from None
    job_id = _answer(body).get("id")
    if not isinstance(job_id, str) or not job_id.startswith("score-models-"):
        raise PipelineError("the Function app's answer names no run")
    return check_status_id(job_id)


def _answer(body: bytes) -> dict:
    try:
        answer = json.loads(body) if len(body) <= RESPONSE_MAX_BYTES else None
    except ValueError:
        answer = None
    return answer if isinstance(answer, dict) else {}


def add_models_submit(commands) -> None:
    submit_parser = commands.add_parser("submit", help="in the cloud: start the backfill of a window on the Function app, and with --wait follow it")
    submit_parser.add_argument("--start", required=True, help="ISO 8601 UTC, on a boundary of the schedule's periods")
    submit_parser.add_argument("--end", required=True, help="ISO 8601 UTC, on a boundary of the schedule's periods")
    submit_parser.add_argument("--app-url", default=None, help="the Function app (default: STYLIZE_FUNCTION_APP_URL, or azd's FUNCTION_APP_URL)")
    submit_parser.add_argument("--function-key", default=os.environ.get("STYLIZE_FUNCTION_KEY"),
                               help="the app's function key (default: STYLIZE_FUNCTION_KEY; `az functionapp keys list` shows it)")
    _add_follow_arguments(submit_parser)


def run_models_submit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        cloud = connect(args, settings)
        job_id = start_backfill(args.app_url or cloud.app_url, args.function_key, args.start, args.end)
        print(job_id, flush=True)
        if not args.wait and args.download is None:
            return 0
        return status(cloud, job_id, True, args.download, args.interval, args.timeout)
    except AzureError as exc:
        raise PipelineError(f"storage: {_first_line(exc)}") from None


# The commands

def add_commands(commands, settings: Settings) -> None:
    submit_parser = commands.add_parser("submit", help="style VIDEO in the cloud: upload it, print its job id, and with --wait follow it")
    submit_parser.add_argument("video", type=Path)
    style = submit_parser.add_mutually_exclusive_group()
    style.add_argument("--style", default=None, help=f"a name `stylize styles` lists, or a blend (default: {settings.default_style})")
    style.add_argument("--style-image", type=Path, default=None, help="any picture as the style (uploaded to the styles container)")
    submit_parser.add_argument("--strength", type=float, default=None, help="0..1: how much of the style to apply (default 1)")
    submit_parser.add_argument("--temporal", choices=("on", "off"), default=None,
                               help="stabilise the styled frames over time (default: the app's STYLIZE_TEMPORAL, on)")
    submit_parser.add_argument("--temporal-strength", type=float, default=None, help="0..1: how strongly (default: the app's setting)")
    submit_parser.add_argument("--name", default=None, help="blob name of the upload (default: the file's name)")
    _add_follow_arguments(submit_parser)
    status_parser = commands.add_parser("status", help="a cloud job's progress; with --wait, follow it to its end")
    status_parser.add_argument("job_id")
    _add_follow_arguments(status_parser)
    jobs_parser = commands.add_parser("jobs", help="the cloud jobs updated last: id, stage, progress, style, output")
    jobs_parser.add_argument("--limit", type=_jobs_limit, default=20, help=f"how many jobs (1 to {JOBS_LIMIT_MAX})")
    add_connection_arguments(jobs_parser)


def _add_follow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    parser.add_argument("--download", type=Path, default=None, metavar="DIR", help="once done, download the video, preview and report here")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between looks at the job's status (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=None, help="give up following after this many seconds")
    add_connection_arguments(parser)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """``submit``, ``status`` or ``jobs``; storage errors become one line (exit 1)."""
    try:
        cloud = connect(args, settings)
        if args.command == "jobs":
            return jobs(cloud, args.limit)
        if args.command == "submit":
            job_id = submit(cloud, args.video, args.name, args.style, args.style_image, args.strength, args.temporal,
                            args.temporal_strength)
            print(job_id, flush=True)
            if not args.wait and args.download is None:
                return 0
            args.job_id = job_id
        return status(cloud, args.job_id, args.wait or args.command == "submit", args.download, args.interval, args.timeout)
    except ResourceNotFoundError as exc:
        raise PipelineError(f"storage: {_first_line(exc)} (is the container there, and the account the right one?)") from None
    except AzureError as exc:
        raise PipelineError(f"storage: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
