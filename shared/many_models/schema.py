"""The reference schema (``TS``, key columns, ``Value``), model keys and the time window; no pandas here."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from shared.errors import InvalidInputError
from shared.names import shown

TS_COLUMN = "TS"
VALUE_COLUMN = "Value"
DEFAULT_KEY_COLUMNS = ("Device", "Sensor")
PREDICTION_COLUMN = "Prediction"
"""1 marks an anomaly: the model's decision function is <= 0 (libsvm's rule)."""
SCORE_COLUMN = "Score"
"""Minus the decision function: 0 or more is an anomaly, the higher the further out."""

EPOCH = datetime(1970, 1, 1)
"""Scheduled windows are aligned on multiples of their length since this moment (UTC)."""

ModelKey = tuple[str, ...]
"""The values of the key columns of one series, as text (``("1", "4")``): one model per key."""


def key_id(key: ModelKey) -> str:
    """Readable, unambiguous id of a key (``1/4``): each value percent-encoded, joined by ``/``."""
    return "/".join(quote(value, safe="") for value in key)


def predictions_header(key_columns: tuple[str, ...]) -> list[str]:
    return [TS_COLUMN, *key_columns, VALUE_COLUMN, PREDICTION_COLUMN, SCORE_COLUMN]


def check_header(columns: list[str], key_columns: tuple[str, ...], where: str) -> None:
    """Fail with one clear line unless the columns hold ``TS``, the key columns and ``Value``."""
    missing = [name for name in (TS_COLUMN, *key_columns, VALUE_COLUMN) if name not in columns]
    if missing:
        raise InvalidInputError(f"{where}: no column {', '.join(missing)} (columns: {', '.join(columns)}); "
                                "name the key columns with --keys when training")


def check_columns(path: str | os.PathLike[str], key_columns: tuple[str, ...]) -> None:
    """:func:`check_header` on a local CSV file's first line."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            header = next(csv.reader(file), [])
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: not a readable CSV file ({exc})") from None
    check_header([name.strip() for name in header], key_columns, str(path))


def check_first_line(start: bytes, key_columns: tuple[str, ...], where: str) -> None:
    """:func:`check_header` on the first line of a CSV file's first bytes (``start``, e.g. a blob's first few KiB)."""
    line = start.split(b"\n", 1)[0]
    try:
        header = next(csv.reader([line.decode("utf-8").rstrip("\r")]), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{where}: not a readable CSV file ({exc})") from None
    check_header([name.strip() for name in header], key_columns, where)


def parse_key_columns(text: str) -> tuple[str, ...]:
    columns = tuple(part.strip() for part in text.split(",") if part.strip())
    if not columns or len(set(columns)) != len(columns) or {TS_COLUMN, VALUE_COLUMN} & set(columns):
        raise InvalidInputError(f"--keys {text!r}: give distinct column names other than {TS_COLUMN} and {VALUE_COLUMN}")
    return columns


def _parse_time(text: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInputError(f"{what} {shown(text)} is not an ISO 8601 time (e.g. 2018-08-29T00:00:00)") from None
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise InvalidInputError(f"{what} {shown(text)} is not a time UTC can hold") from None
    return moment


@dataclass(frozen=True)
class Window:
    """Readings with ``start <= TS < end``; an open end (None) is unbounded. Times are naive UTC."""

    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise InvalidInputError(f"window start {self.start.isoformat()} is not before its end {self.end.isoformat()}")

    @classmethod
    def parse(cls, start: str | None, end: str | None, names: tuple[str, str] = ("--window-start", "--window-end")) -> Window:
        """The window from ISO 8601 texts; ``names`` name them in errors."""
        return cls(
            _parse_time(start, names[0]) if start else None,
            _parse_time(end, names[1]) if end else None,
        )

    @classmethod
    def backfill(cls, start: object, end: object, period_s: int, max_periods: int) -> Window:
        """The window a backfill asks for, as a scheduler runs them: both ends given, each on a boundary of the
        schedule's period (a multiple of ``period_s`` since 1970-01-01 UTC, as :meth:`ending_at` aligns them), at most
        ``max_periods`` periods long. A window shifted by a second is refused rather than run as one more full run."""
        for name, text in (("start", start), ("end", end)):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError(f"{name} is required: an ISO 8601 time on a boundary of the schedule's {period_s} s periods")
        window = cls.parse(start, end, names=("start", "end"))
        period = timedelta(seconds=period_s)
        for name, moment in (("start", window.start), ("end", window.end)):
            if moment < EPOCH:
                raise InvalidInputError(f"{name} {moment.isoformat()} is before 1970-01-01")
            offset = (moment - EPOCH) % period
            if offset:
                raise InvalidInputError(f"{name} {moment.isoformat()} is not on a boundary of the schedule's {period_s} s periods "
                                        f"(the one before it is {(moment - offset).isoformat()})")
        periods = (window.end - window.start) // period
        if periods > max_periods:
            raise InvalidInputError(f"the window spans {periods} periods of {period_s} s; a backfill runs at most {max_periods} at once")
        return window

    @classmethod
    def ending_at(cls, moment: datetime, seconds: int) -> Window:
        """The last whole window of ``seconds`` before ``moment``, windows aligned on multiples of ``seconds`` since
        1970-01-01 UTC: firings anywhere in the same period (repeated, late, overlapping) get the same window."""
        if seconds <= 0:
            raise InvalidInputError(f"a window must last at least one second, not {seconds}")
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        elapsed = int((moment - EPOCH).total_seconds())
        end = EPOCH + timedelta(seconds=elapsed - elapsed % seconds)
        return cls(end - timedelta(seconds=seconds), end)

    @property
    def run_id(self) -> str:
        """Stable name of the run over this window: the same window always gives the same id."""
        def part(moment: datetime | None, open_name: str) -> str:
            return f"{moment.year:04d}{moment.strftime('%m%dT%H%M%S')}" if moment else open_name

        return f"{part(self.start, 'begin')}--{part(self.end, 'end')}"

    def to_dict(self) -> dict:
        return {"start": self.start.isoformat() if self.start else None, "end": self.end.isoformat() if self.end else None}

    @classmethod
    def from_dict(cls, data: dict) -> Window:
        bounds = (data.get("start"), data.get("end"))
        if not all(bound is None or isinstance(bound, str) for bound in bounds):
            raise InvalidInputError("a window's start and end must be ISO 8601 text or null")
        return cls.parse(*bounds)
