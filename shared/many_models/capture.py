"""Readings as Event Hubs Capture writes them: Avro files named by namespace, hub, partition and time.

Capture's default name format is ``{Namespace}/{EventHub}/{PartitionId}/{Year}/{Month}/{Day}/{Hour}/{Minute}/{Second}``
(``.avro`` added): one file per partition per capture interval, named after the moment (UTC) its interval began, each
record an event whose ``Body`` holds a JSON reading ``{"TS", <key columns>, "Value"}`` or a JSON array of them.

A window's readings are in the files whose interval could hold an event enqueued from the window's start until
``late_s`` after its end: readings arrive after they are taken, never before. :func:`window_files` lists only the
hour folders of that range, one partition at a time, and keeps only the names of Capture's layout in it. A file
is read with :func:`read_capture_file`: its size bounded first, every event's body checked, one line naming the
file and the event for anything else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path

from shared.errors import InvalidInputError
from shared.many_models.schema import TS_COLUMN, VALUE_COLUMN, Window
from shared.names import check_blob_name, shown

log = logging.getLogger(__name__)
CAPTURE_SUFFIX = ".avro"
CAPTURE_FILE_MAX_BYTES = 512 * 1024**2
"""Capture closes a file at its size window (at most 500 MiB): a bigger one is no Capture file."""
BODY_MAX_BYTES = 1024**2
"""An event holds at most 1 MiB (Standard, Premium and Dedicated; Basic, which has no Capture, 256 KiB)."""
CLOCK_SKEW_S = 60
"""A reading may be enqueued this long before its own ``TS`` (a sensor whose clock runs a little fast): the files a
window reads start this much earlier."""
REJECTED_SHOWN = 5
"""Rejected events named in the log, of each file (all are counted)."""
PARTITIONS_MAX = 2048
"""Event Hubs' most partitions per hub (Dedicated): a listing with more partition folders is refused."""
FILES_MAX = 20_000
"""Files one window may read: a window's list travels to every worker as one blob."""
LAYOUT = re.compile(r"(?P<partition>[0-9]{1,4})/(?P<time>[0-9]{4}/[0-9]{2}/[0-9]{2}/[0-9]{2}/[0-9]{2}/[0-9]{2})\.avro")
"""A file's name after ``<namespace>/<hub>/``."""
_TIME_FORMAT = "%Y/%m/%d/%H/%M/%S"


@dataclass(frozen=True)
class CaptureFile:
    name: str
    etag: str


def capture_prefix(path: str) -> str:
    """``<namespace>/<hub>/`` from the setting, checked as a blob name."""
    return check_blob_name(path.strip("/"), "STYLIZE_SENSOR_CAPTURE_PATH") + "/"


def file_time(name: str, prefix: str) -> datetime | None:
    """When the file's capture interval began, if ``name`` is a Capture file under ``prefix``; else None."""
    if not name.startswith(prefix):
        return None
    match = LAYOUT.fullmatch(name[len(prefix):])
    if match is None:
        return None
    try:
        return datetime.strptime(match["time"], _TIME_FORMAT)
    except ValueError:
        return None


def time_range(window: Window, interval_s: int, late_s: int) -> tuple[datetime, datetime]:
    """Files whose interval began in ``(first, last)`` can hold readings of the window: the interval ends after the
    window starts (less :data:`CLOCK_SKEW_S`), and began before the window's end plus ``late_s``."""
    if window.start is None or window.end is None:
        raise InvalidInputError("a window read from Event Hubs Capture files needs a start and an end")
    return window.start - timedelta(seconds=interval_s + CLOCK_SKEW_S), window.end + timedelta(seconds=late_s)


def in_range(name: str, prefix: str, first: datetime, last: datetime) -> bool:
    moment = file_time(name, prefix)
    return moment is not None and first < moment < last


def window_files(container, prefix: str, window: Window, interval_s: int, late_s: int) -> list[CaptureFile]:
    """The window's Capture files in ``container`` (a blob container client), sorted by name: only the hour
    folders of :func:`time_range` are listed, per partition."""
    first, last = time_range(window, interval_s, late_s)
    folders = (item.name for item in container.walk_blobs(name_starts_with=prefix, delimiter="/") if item.name.endswith("/"))
    partitions = list(islice(folders, PARTITIONS_MAX + 1))
    if len(partitions) > PARTITIONS_MAX:
        raise InvalidInputError(f"{shown(prefix)} holds more than {PARTITIONS_MAX} partition folders")
    hours = []
    hour = first.replace(minute=0, second=0, microsecond=0)
    while hour < last:
        hours.append(hour.strftime("%Y/%m/%d/%H/"))
        hour += timedelta(hours=1)
    found = []
    for partition in partitions:
        if not re.fullmatch(r"[0-9]{1,4}/", partition[len(prefix):]):
            continue
        for hour_folder in hours:
            for blob in container.list_blobs(name_starts_with=partition + hour_folder):
                if in_range(blob.name, prefix, first, last):
                    found.append(CaptureFile(blob.name, blob.etag))
                    if len(found) > FILES_MAX:
                        raise InvalidInputError(f"the window {window.run_id} has more than {FILES_MAX} Capture files")
    return sorted(found, key=lambda item: item.name)


def files_list_text(files: list[CaptureFile]) -> str:
    return json.dumps([[item.name, item.etag] for item in files], separators=(",", ":"))


def files_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_files_list(raw: bytes, prefix: str, window: Window, interval_s: int, late_s: int, where: str) -> list[CaptureFile]:
    """A window's list of Capture files as :func:`files_list_text` wrote it, every name checked: a plain blob name
    of Capture's layout under ``prefix``, in the window's time range."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInputError(f"{where}: not a JSON list of Capture files") from None
    if not isinstance(data, list) or len(data) > FILES_MAX or not all(
            isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item) for item in data):
        raise InvalidInputError(f"{where}: must be a list of at most {FILES_MAX} [name, etag] pairs")
    first, last = time_range(window, interval_s, late_s)
    for name, _ in data:
        check_blob_name(name, f"{where}: file")
        if not in_range(name, prefix, first, last):
            raise InvalidInputError(f"{where}: {shown(name)} is not a Capture file of the window {window.run_id}")
    return [CaptureFile(name, etag) for name, etag in data]


def _reading(item: object, key_columns: tuple[str, ...]) -> list[str | float]:
    if not isinstance(item, dict):
        raise ValueError("a reading must be a JSON object")
    row: list[str | float] = []
    for column in (TS_COLUMN, *key_columns):
        value = item.get(column)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise ValueError(f"{column} must be a non-empty text or a whole number")
        row.append(str(value))
    try:
        moment = datetime.fromisoformat(row[0])
    except ValueError:
        raise ValueError(f"{TS_COLUMN} {shown(row[0], 40)} is not an ISO 8601 time") from None
    if moment.tzinfo is not None:  # one clock for every reading: UTC without an offset, as the windows are
        row[0] = moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat()
    value = item.get(VALUE_COLUMN)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{VALUE_COLUMN} must be a finite number")
    row.append(float(value))
    return row


def read_capture_file(path: str | os.PathLike[str], key_columns: tuple[str, ...], shown_as: str) -> tuple[list[list[str | float]], list[str]]:
    """The readings of one Capture file as rows ``TS, keys..., Value`` in event order, and the events that are not
    readings (``<shown_as>: event N: why``), which are skipped: anyone holding Data Sender can send a bad event, and a
    Capture file never changes, so one bad event must not fail every window that reads its file. A file that is not
    a readable Capture file fails whole, in one line; ``shown_as`` names it."""
    import fastavro

    path = Path(path)
    size = path.stat().st_size
    if size > CAPTURE_FILE_MAX_BYTES:
        raise InvalidInputError(f"{shown_as}: {size} bytes is more than a Capture file holds ({CAPTURE_FILE_MAX_BYTES})")
    rows: list[list[str | float]] = []
    rejected: list[str] = []
    with path.open("rb") as file:
        try:
            for number, record in enumerate(fastavro.reader(file)):
                body = record.get("Body") if isinstance(record, dict) else None
                if not isinstance(body, bytes) or len(body) > BODY_MAX_BYTES:
                    rejected.append(f"{shown_as}: event {number}: no Body of at most {BODY_MAX_BYTES} bytes")
                    continue
                try:
                    data = json.loads(body, parse_constant=_no_constant)
                    items = data if isinstance(data, list) else [data]
                    rows.extend([_reading(item, key_columns) for item in items])
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    rejected.append(f"{shown_as}: event {number}: not a reading ({str(exc).splitlines()[0][:120]})")
        except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds on a damaged file
            raise InvalidInputError(f"{shown_as}: not a readable Avro file ({type(exc).__name__})") from None
    for line in rejected[:REJECTED_SHOWN]:
        log.warning("rejected %s", line)
    return rows, rejected


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a reading may hold")


def capture_files_in(folder: Path) -> list[Path]:
    """The ``.avro`` files under a local folder (Capture's layout or any other), sorted by their relative name."""
    return sorted(folder.rglob(f"*{CAPTURE_SUFFIX}"), key=lambda path: path.relative_to(folder).as_posix())
