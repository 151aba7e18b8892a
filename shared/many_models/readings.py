"""Reading sensor data: check its columns, keep the window, group the rows by key."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from shared.errors import InvalidInputError
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


def read_readings(path: str | os.PathLike[str], key_columns: tuple[str, ...], window: Window) -> pd.DataFrame:
    """Read a readings CSV, check its schema, and keep the rows in ``window``.

    Keys and ``TS`` stay text; ``Value`` is a float; ``_time`` holds the parsed timestamps.
    """
    check_columns(path, key_columns)
    wanted = (TS_COLUMN, *key_columns, VALUE_COLUMN)
    try:
        frame = pd.read_csv(path, usecols=list(wanted), dtype={name: str for name in wanted if name != VALUE_COLUMN} | {VALUE_COLUMN: "float64"})
        times = pd.to_datetime(frame[TS_COLUMN], format="ISO8601")
    except (ValueError, pd.errors.ParserError) as exc:
        raise InvalidInputError(f"{path}: bad reading ({exc})") from None
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    frame[TIME_COLUMN] = times
    bad = frame[list(wanted)].isna().any(axis=1)
    if bad.any():
        raise InvalidInputError(f"{path}: line {int(np.flatnonzero(bad.to_numpy())[0]) + 2} has an empty field")
    return frame.loc[in_window(times, window)].reset_index(drop=True)


def group_rows(frame: pd.DataFrame, key_columns: tuple[str, ...]) -> dict[ModelKey, np.ndarray]:
    """Row positions of each key's readings, in file order."""
    if frame.empty:
        return {}
    groups = frame.groupby(list(key_columns), sort=False).indices
    return {tuple(key) if isinstance(key, tuple) else (key,): rows for key, rows in groups.items()}
