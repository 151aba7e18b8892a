"""Synthetic readings in the reference's shape, with labelled out-of-range anomalies.

The reference file (``sensor_data.csv``) has 3 devices x 5 sensors over about four hours, one row
per sensor that reported in a 5-second window (about 39% of them), each sensor in its own range.
The first half of the generated span is clean and is the training window; anomalies (a sensor
reporting out of its range for 30 s to 2 min) are injected only into the second half.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from shared.errors import InvalidInputError
from shared.many_models.schema import TS_COLUMN, VALUE_COLUMN, Window

SENSOR_RANGES = ((10.0, 15.0), (30.0, 40.0), (60.0, 65.0), (80.0, 85.0), (100.0, 110.0))
"""Sensor 1 to 5 of the reference; sensor 6 on repeats them, shifted up by 120 per round."""
STEP = timedelta(seconds=5)
REPORT_PROBABILITY = 0.39
"""Share of 5-second windows in which a sensor reports (17,768 rows / (3,029 windows x 15 sensors) in the reference)."""
START = datetime(2018, 8, 28, 23, 0, 0)
TS_FORMAT = "%Y-%m-%d %H:%M:%S.000"
ANOMALY_STEPS = (12, 36)
ANOMALY_HOURS = 1
"""One anomaly per sensor per this many scored hours (at least one)."""


def sensor_range(sensor: int) -> tuple[float, float]:
    low, high = SENSOR_RANGES[(sensor - 1) % len(SENSOR_RANGES)]
    shift = 120.0 * ((sensor - 1) // len(SENSOR_RANGES))
    return low + shift, high + shift


@dataclass
class GeneratedData:
    readings: pd.DataFrame
    labels: pd.DataFrame
    """One row per injected anomaly: Device, Sensor, Start, End (end exclusive)."""
    training_window: Window


def generate(devices: int, sensors: int, hours: int, seed: int) -> GeneratedData:
    if devices < 1 or sensors < 1 or hours < 1:
        raise InvalidInputError("--devices, --sensors and --hours must be at least 1")
    rng = np.random.default_rng(seed)
    steps = hours * 3600 // int(STEP.total_seconds())
    series = devices * sensors
    ranges = np.array([sensor_range(sensor) for sensor in range(1, sensors + 1)] * devices)  # (series, 2)
    low, width = ranges[:, 0], ranges[:, 1] - ranges[:, 0]
    present = rng.random((steps, series)) < REPORT_PROBABILITY
    values = np.round(low + rng.random((steps, series)) * width, 3)
    training_end = START + timedelta(hours=hours / 2)
    first_scored = steps // 2 - 1  # step i is at START + (i + 1) * STEP: the first at or after training_end
    labels = []
    anomalies = max(1, round((steps - first_scored) * STEP.total_seconds() / 3600 / ANOMALY_HOURS))
    slot = (steps - first_scored) // anomalies
    for column in range(series):
        for index in range(anomalies):
            length = int(rng.integers(ANOMALY_STEPS[0], min(ANOMALY_STEPS[1], slot) + 1))
            begin = first_scored + index * slot + int(rng.integers(0, slot - length + 1))
            beyond = width[column] * rng.uniform(0.5, 2.0, length)
            high = rng.random() < 0.5
            edge = low[column] + width[column] if high else low[column]
            values[begin : begin + length, column] = np.round(edge + beyond if high else edge - beyond, 3)
            present[begin : begin + length, column] = True
            labels.append((column // sensors + 1, column % sensors + 1, begin, begin + length))
    step_times = np.array([START + STEP * (i + 1) for i in range(steps)])
    step_text = np.array([moment.strftime(TS_FORMAT) for moment in step_times])
    rows, columns = np.nonzero(present)
    readings = pd.DataFrame({
        TS_COLUMN: step_text[rows], "Device": columns // sensors + 1, "Sensor": columns % sensors + 1,
        VALUE_COLUMN: values[rows, columns],
    })
    label_frame = pd.DataFrame(labels, columns=["Device", "Sensor", "Start", "End"])
    label_frame["Start"] = step_text[label_frame["Start"]]
    label_frame["End"] = [(START + STEP * (end + 1)).strftime(TS_FORMAT) for end in label_frame["End"]]
    return GeneratedData(readings, label_frame, Window(START, training_end))
