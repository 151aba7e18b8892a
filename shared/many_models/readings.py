"""Reading sensor data: check its columns, keep the window, group the rows by key."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from shared.errors import InvalidInputError
from shared.many_models.capture import capture_files_in, read_capture_file
from shared.many_models.schema import TS_COLUMN, VALUE_COLUMN, ModelKey, Window, check_columns

TIME_COLUMN = "_time"
"""Parsed timestamps, added beside ``TS`` (which keeps the text as read, so outputs repeat it exactly)."""


def in_window(times: pd.Series, window: Window) -> np.ndarray:
    keep = np.ones(len(times), dtype=bool)
    if window.start is not None:
        keep &= (times >= pd.Timestamp(window.start)).to_numpy()
    if window.end is not None:
        keep &= (times < pd.Timestamp(window.end)).to_numpy()
    return keep


EVENTS_REJECTED = "events_rejected"


def _read_capture_folder(folder: Path, key_columns: tuple[str, ...]) -> pd.DataFrame:
    """Every reading of the Capture files under ``folder`` (named in errors by their path in it)."""
    rows, rejected = [], 0
    for path in capture_files_in(folder):
        file_rows, file_rejected = read_capture_file(path, key_columns, path.relative_to(folder).as_posix())
        rows.extend(file_rows)
        rejected += len(file_rejected)
    frame = pd.DataFrame(rows, columns=[TS_COLUMN, *key_columns, VALUE_COLUMN]).astype({VALUE_COLUMN: "float64"})
    frame.attrs[EVENTS_REJECTED] = rejected
    return frame


def read_readings(path: str | os.PathLike[str], key_columns: tuple[str, ...], window: Window, shown_as: str | None = None) -> pd.DataFrame:
    """Read a readings CSV, or a folder of Event Hubs Capture files, check its schema, and keep the rows in ``window``,
    each reading once: a duplicate (same keys and time, as a redelivered event brings) is dropped. ``shown_as`` names
    the data in errors (a worker's copy lives in a scratch folder, which is no one's business).

    Keys and ``TS`` stay text; ``Value`` is a float; ``_time`` holds the parsed timestamps. ``attrs[EVENTS_REJECTED]``
    counts the Capture events that were not readings (skipped).
    """
    shown_as = shown_as or str(path)
    wanted = (TS_COLUMN, *key_columns, VALUE_COLUMN)
    try:
        if Path(path).is_dir():
            frame = _read_capture_folder(Path(path), key_columns)
        else:
            check_columns(path, key_columns)
            frame = pd.read_csv(path, usecols=list(wanted), dtype={name: str for name in wanted if name != VALUE_COLUMN} | {VALUE_COLUMN: "float64"})
        times = pd.to_datetime(frame[TS_COLUMN], format="ISO8601")
    except (ValueError, pd.errors.ParserError) as exc:
        raise InvalidInputError(f"{shown_as}: bad reading ({str(exc).splitlines()[0][:160]})") from None
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    frame[TIME_COLUMN] = times
    bad = frame[list(wanted)].isna().any(axis=1)
    if bad.any():
        raise InvalidInputError(f"{shown_as}: line {int(np.flatnonzero(bad.to_numpy())[0]) + 2} has an empty field")
    rejected = frame.attrs.get(EVENTS_REJECTED, 0)
    frame = frame.loc[in_window(times, window)]
    frame = frame.loc[~frame.duplicated([TIME_COLUMN, *key_columns])].reset_index(drop=True)
    frame.attrs[EVENTS_REJECTED] = rejected
    return frame


def group_rows(frame: pd.DataFrame, key_columns: tuple[str, ...]) -> dict[ModelKey, np.ndarray]:
    """Row positions of each key's readings, in file order."""
    if frame.empty:
        return {}
    groups = frame.groupby(list(key_columns), sort=False).indices
    return {tuple(key) if isinstance(key, tuple) else (key,): rows for key, rows in groups.items()}
