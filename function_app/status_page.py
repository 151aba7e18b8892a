"""The status page: a job's progress, preview and outputs (``GET /api/jobs/{id}/view``) and the recent jobs
(``GET /api/jobs/view``), read from the jobs' status documents; the outputs streamed by the app
(``GET /api/jobs/{id}/files/{kind}``), their names derived from the job's layout (:func:`shared.job_status.job_outputs`).

Plain HTML, a stylesheet and one line of script (the page reloads itself every few seconds while the job runs). The
function key a caller came with (``code``) is kept on the page's own links.
"""

from __future__ import annotations

import html
import logging
import posixpath
from urllib.parse import quote

import azure.durable_functions as df
import azure.functions as func
from azure.core.exceptions import AzureError, ResourceNotFoundError

from shared.config import Settings
from shared.errors import InvalidInputError
from shared.job_status import ENDED, check_status_id, fraction_done, job_outputs, progress_text, read_status, recent_jobs
from shared.storage import CONTENT_TYPES, blob_service, read_blob_within

log = logging.getLogger(__name__)
UNAVAILABLE = (AzureError, TypeError, ValueError, KeyError, AttributeError)
"""Storage failing, or a document of the wrong shape (it is outside input too): answered in one line, never a traceback."""
bp = df.Blueprint()
settings = Settings.from_env()
REFRESH_S = 5
RECENT_JOBS = 50
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;line-height:1.5;color:#1a1a1a;background:#fff;margin:0 auto;
max-width:44rem;padding:1rem}
h1{font-size:1.3rem;overflow-wrap:anywhere}progress{width:100%;height:1.4rem}img{max-width:100%;height:auto;border:1px solid #ccc}
dt{font-weight:600}dd{margin:0 0 .5rem 0;overflow-wrap:anywhere}.error{color:#a40000}a{color:#0645ad}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem;border-bottom:1px solid #ddd;overflow-wrap:anywhere}
"""
LINK_TEXT = {"video": "Styled video", "preview": "Preview (PNG)", "report": "Report (JSON)", "predictions": "Predictions (CSV)"}


def _page(title: str, body: str, refresh: bool) -> str:
    script = f"<script>setTimeout(function () {{ location.reload(); }}, {REFRESH_S * 1000});</script>" if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><main>{body}</main>{script}</body></html>")


def _with_key(path: str, code: str | None) -> str:
    return f"{path}?code={quote(code, safe='')}" if code else path


def _html_response(text: str, status_code: int = 200) -> func.HttpResponse:
    return func.HttpResponse(text, status_code=status_code, mimetype="text/html", charset="utf-8", headers={"Cache-Control": "no-store"})


def _text(value: object) -> str:
    """A document's value as text: a window as its two ends."""
    if isinstance(value, dict) and set(value) == {"start", "end"}:
        return f"{value['start']} to {value['end']}"
    return str(value)


def job_page(document: dict, code: str | None, container: str) -> str:
    """One job's page: stage, progress bar, counts, workers, errors, the preview inline and links to the outputs."""
    e = html.escape
    stage, percent = document["stage"], round(fraction_done(document) * 100)
    rows = [(label, document[key]) for key, label in (("input", "Input"), ("style", "Style"), ("window", "Window"), ("workers", "Workers"),
                                                        ("status", "Result"), ("models_succeeded", "Models succeeded"),
                                                        ("models_failed", "Models failed"), ("models_skipped", "Models skipped"),
                                                        ("models_no_data", "Models without data"), ("rows_scored", "Rows scored"),
                                                        ("updated", "Updated")) if document.get(key) not in (None, "")]
    details = "".join(f"<dt>{e(label)}</dt><dd>{e(_text(value))}</dd>" for label, value in rows)
    parts = [f"<h1>Job {e(document['job_id'])}</h1>",
             f'<p><label for="progress">{e(stage.capitalize())}: {percent}% done</label></p>',
             f'<progress id="progress" max="100" value="{percent}">{percent}%</progress>',
             f'<p role="status" aria-live="polite">{e(progress_text(document))}</p>', f"<dl>{details}</dl>"]
    if document.get("error"):
        parts.append(f'<p class="error" role="alert">{e(stage.capitalize())}: {e(str(document["error"]))}</p>')
    if document.get("errors"):
        items = "".join(f"<li>{e(str(error))}</li>" for error in document["errors"])
        parts.append(f"<h2>Recent errors</h2><ul>{items}</ul>")
    outputs = job_outputs(document, container) if stage == "done" else {}
    if "preview" in outputs:
        parts.append(f'<figure><img src="{e(_with_key("files/preview", code))}" '
                     f'alt="Preview: input frames beside their styled versions" width="640"><figcaption>Preview</figcaption></figure>')
    if outputs:
        links = "".join(f'<li><a href="{e(_with_key(f"files/{kind}", code))}">{e(LINK_TEXT[kind])}</a> '
                        f"({e(posixpath.basename(name))})</li>" for kind, name in outputs.items())
        parts.append(f"<h2>Outputs</h2><ul>{links}</ul>")
    parts.append(f'<p><a href="{e(_with_key("../view", code))}">All recent jobs</a></p>')
    return _page(f"{stage} {percent}% - job {document['job_id']}", "".join(parts), refresh=stage not in ENDED)


def jobs_page(documents: list[dict], code: str | None) -> str:
    e = html.escape
    rows = "".join(f'<tr><td><a href="{e(_with_key(quote(d["job_id"]) + "/view", code))}">{e(d["job_id"])}</a></td>'
                   f"<td>{e(d['stage'])}</td><td>{round(fraction_done(d) * 100)}%</td>"
                   f"<td>{e(str(d.get('style') or d.get('kind') or ''))}</td><td>{e(str(d.get('updated', '')))}</td></tr>"
                   for d in documents)
    table = (f"<table><caption>The {len(documents)} jobs updated last</caption><thead><tr><th scope=\"col\">Job</th>"
             f'<th scope="col">Stage</th><th scope="col">Done</th><th scope="col">Style</th><th scope="col">Updated</th></tr></thead>'
             f"<tbody>{rows}</tbody></table>") if documents else "<p>No jobs yet.</p>"
    return _page("stylize jobs", f"<h1>Recent jobs</h1>{table}",
                 refresh=any(d["stage"] not in ENDED for d in documents))


def _unavailable(exc: Exception) -> func.HttpResponse:
    """A 502 in one line for a storage error or a document that is not what its job wrote; the details stay in the log."""
    log.error("status page: %s", exc)
    return _html_response(_page("unavailable", "<h1>Status unavailable</h1><p>Storage did not answer, or the job's status "
                                "document is malformed; try again later.</p>", refresh=False), 502)


def _document(job_id: str, limits: Settings) -> dict | None:
    return read_status(blob_service(limits), limits.output_container, check_status_id(job_id))


def view_job(req: func.HttpRequest, limits: Settings = settings) -> func.HttpResponse:
    try:
        document = _document(req.route_params.get("job_id", ""), limits)
        if document is None:
            return _html_response(_page("no such job", "<h1>No such job</h1><p>A job just submitted shows here within a minute.</p>",
                                        refresh=True), 404)
        return _html_response(job_page(document, req.params.get("code"), limits.output_container))
    except InvalidInputError as exc:
        return _html_response(_page("bad request", f"<h1>Bad request</h1><p>{html.escape(str(exc))}</p>", refresh=False), 400)
    except UNAVAILABLE as exc:
        return _unavailable(exc)


def view_jobs(req: func.HttpRequest, limits: Settings = settings) -> func.HttpResponse:
    try:
        documents = recent_jobs(blob_service(limits), limits.output_container, RECENT_JOBS)
        return _html_response(jobs_page(documents, req.params.get("code")))
    except UNAVAILABLE as exc:
        return _unavailable(exc)


def job_file(req: func.HttpRequest, limits: Settings = settings) -> func.HttpResponse:
    """An output of a finished job, by kind; its name is the job's own (checked), its size bounded before it is read."""
    no_such_output = func.HttpResponse("no such output", status_code=404, mimetype="text/plain")
    try:
        document = _document(req.route_params.get("job_id", ""), limits)
        name = job_outputs(document, limits.output_container).get(req.route_params.get("kind", "")) if document and document["stage"] == "done" else None
        if name is None:
            return no_such_output
        data = read_blob_within(blob_service(limits), limits.output_container, name, limits.page_file_max_bytes,
                                f"{posixpath.basename(name)} (fetch it with `stylize status {document['job_id']} --download DIR`)")
    except ResourceNotFoundError:
        return no_such_output
    except InvalidInputError as exc:
        return func.HttpResponse(str(exc), status_code=400, mimetype="text/plain")
    except UNAVAILABLE as exc:
        return _unavailable(exc)
    suffix = posixpath.splitext(name)[1]
    disposition = "inline" if suffix in (".png", ".json") else "attachment"
    return func.HttpResponse(data, mimetype={**CONTENT_TYPES, ".csv": "text/csv"}.get(suffix, "application/octet-stream"),
                             headers={"Content-Disposition": f'{disposition}; filename="{quote(posixpath.basename(name))}"',
                                      "Cache-Control": "private, max-age=60"})


@bp.function_name("view_jobs")
@bp.route(route="jobs/view", methods=["GET"])
def view_jobs_http(req: func.HttpRequest) -> func.HttpResponse:
    return view_jobs(req)


@bp.function_name("view_job")
@bp.route(route="jobs/{job_id}/view", methods=["GET"])
def view_job_http(req: func.HttpRequest) -> func.HttpResponse:
    return view_job(req)


@bp.function_name("job_file")
@bp.route(route="jobs/{job_id}/files/{kind}", methods=["GET"])
def job_file_http(req: func.HttpRequest) -> func.HttpResponse:
    return job_file(req)
