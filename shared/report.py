"""The run report: what was done, how long each stage and batch took, and what was retried."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.atomic import write_text_atomic


@dataclass
class BatchRecord:
    index: int
    first_frame: int
    frames: int
    seconds: float = 0.0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    worker: str = ""
    """The worker whose attempt succeeded."""


def worker_stats(done_by: Iterable[dict]) -> list[dict]:
    """Per worker, from the facts of the batches it styled: how many, and how often it loaded a model (at most)."""
    stats: dict[str, dict] = {}
    for facts in done_by:
        entry = stats.setdefault(facts["worker"], {"worker": facts["worker"], "batches": 0, "model_loads": 0})
        entry["batches"] += 1
        entry["model_loads"] = max(entry["model_loads"], facts["model_loads"])
    return list(stats.values())


STABILISER_COUNTS = ("scene_cuts", "too_small_frames", "reblended_frames")
"""Counts in a stabiliser's description that are each batch's own: the report adds them up."""


def temporal_report(plan: dict, stabilisers: Iterable[dict | None]) -> dict:
    """The report's ``temporal``: the job's plan (:meth:`shared.plan.TemporalPlan.describe`) and, when on, what the
    workers said stabilised the batches' frames (the first batch's description, with its counts added up over all)."""
    if plan.get("used") != "on":
        return dict(plan)
    described = [description for description in stabilisers if description]
    combined = dict(described[0]) if described else None
    for key in STABILISER_COUNTS if combined else ():
        counts = [description.get(key) for description in described]
        combined[key] = sum(count for count in counts if type(count) is int)
    return {**plan, "stabiliser": combined}


@dataclass
class RunReport:
    input: dict
    output: str
    model: dict
    device: str
    batch_frames: int
    workers: int
    frames: int = 0
    seconds: float = 0.0
    status: str = "running"
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    """One line each on what was done beyond styling every frame: container, colour, tracks, damage."""
    skipped_frames: list[float] = field(default_factory=list)
    """Times (s) of input frames FFmpeg could not decode, left out of the output."""
    stages: dict[str, float] = field(default_factory=dict)
    batches: list[BatchRecord] = field(default_factory=list)
    worker_stats: list[dict] = field(default_factory=list)
    """Per worker: its name, the batches it styled and how many times it loaded a model."""
    temporal: dict = field(default_factory=dict)
    """Temporal stabilisation: ``used`` off and why, or on with its strength, context frames and the stabiliser's
    description (:meth:`shared.plan.TemporalPlan.describe`, :func:`temporal_report`)."""

    @contextmanager
    def stage(self, name: str):
        """Time a stage; its seconds are recorded even if it fails."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - began, 4)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fps"] = round(self.frames / self.seconds, 4) if self.seconds else 0.0
        data["retries"] = sum(max(0, b.attempts - 1) for b in self.batches)
        return data

    def write(self, path: str | os.PathLike[str]) -> Path:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)
