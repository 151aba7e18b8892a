"""A run's output folder, what it already holds, and what is left to score.

Layout of ``OUT_DIR``: ``run.json`` (which window this folder is for, and how many passes ran),
``shards/<shard id>.csv`` (predictions of a shard's ``ok`` models) and ``shards/<shard id>.json``
(its recorded result, written after its predictions), then the merged ``predictions.csv`` and
``report.json``. A model that is ``ok`` in any recorded result is finished: later passes skip it,
so each model's rows are in exactly one shard file, and merging them never duplicates a row.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from shared.atomic import atomic_path, write_text_atomic
from shared.errors import InvalidInputError
from shared.many_models.schema import Window, key_id, predictions_header
from shared.many_models.shards import ModelResult, ShardMessageError, ShardResult

RUN_FILE = "run.json"
SHARDS_DIR = "shards"
PREDICTIONS_NAME = "predictions.csv"
REPORT_NAME = "report.json"


@dataclass
class RecordedModel:
    result: ModelResult
    shard_id: str
    run_pass: int


@dataclass
class RunState:
    out_dir: Path
    window: Window
    key_columns: tuple[str, ...]
    run_pass: int = 1
    results: dict[str, tuple[int, ShardResult]] = field(default_factory=dict)
    """Recorded shard results by shard id, with the pass that recorded them."""

    @property
    def run_id(self) -> str:
        return self.window.run_id

    @property
    def shards_dir(self) -> Path:
        return self.out_dir / SHARDS_DIR

    @classmethod
    def open(cls, out_dir: Path, window: Window, key_columns: tuple[str, ...]) -> RunState:
        """Start a new pass over ``out_dir``: a new folder, or one that holds a run of this same window and keys."""
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise InvalidInputError(f"{out_dir}: is not a folder")
        identity = {"run_id": window.run_id, "window": window.to_dict(), "key_columns": list(key_columns)}
        run_file = out_dir / RUN_FILE
        previous_passes = 0
        if run_file.exists():
            try:
                held = json.loads(run_file.read_text(encoding="utf-8"))
                previous_passes = int(held["passes"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(f"{run_file}: unreadable run file ({exc!r})") from None
            if {name: held.get(name) for name in identity} != identity:
                raise InvalidInputError(f"{out_dir} holds the run {held.get('run_id')} (keys {held.get('key_columns')}), "
                                        f"not {window.run_id} (keys {list(key_columns)}): choose another --out")
        elif out_dir.exists() and any(out_dir.iterdir()):
            raise InvalidInputError(f"{out_dir}: folder is not empty and holds no run: choose another --out")
        state = cls(out_dir=out_dir, window=window, key_columns=key_columns, run_pass=previous_passes + 1)
        state.results = state._load_results()
        write_text_atomic(run_file, json.dumps({**identity, "passes": state.run_pass}, indent=1) + "\n")
        return state

    def _load_results(self) -> dict[str, tuple[int, ShardResult]]:
        results = {}
        for path in sorted(self.shards_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                results[path.stem] = (int(data["pass"]), ShardResult.from_dict(data["result"]))
            except (ValueError, KeyError, TypeError, ShardMessageError) as exc:
                raise InvalidInputError(f"{path}: unreadable shard result ({exc})") from None
        return results

    def record(self, result: ShardResult) -> None:
        """Keep a shard's result (after its predictions are in place); a re-delivered result replaces its own."""
        if result.run_id != self.run_id:
            raise InvalidInputError(f"shard result for run {result.run_id} recorded into run {self.run_id}")
        self.results[result.shard_id] = (self.run_pass, result)
        write_text_atomic(self.shards_dir / f"{result.shard_id}.json",
                          json.dumps({"pass": self.run_pass, "result": result.to_dict()}) + "\n")

    def models(self) -> dict[str, RecordedModel]:
        """Each model's standing result: its ``ok`` one if any, else its latest."""
        standing: dict[str, RecordedModel] = {}
        for shard_id, (run_pass, result) in sorted(self.results.items(), key=lambda item: (item[1][0], item[0])):
            for model in result.models:
                name = key_id(model.key)
                if name not in standing or standing[name].result.status != "ok":
                    standing[name] = RecordedModel(model, shard_id, run_pass)
        return standing

    def finished(self) -> set[str]:
        return {name for name, recorded in self.models().items() if recorded.result.status == "ok"}

    def merge_predictions(self) -> tuple[Path, int]:
        """Concatenate the shards' predictions into ``predictions.csv`` (one header); returns it and its row count."""
        header = ",".join(predictions_header(self.key_columns)) + "\n"
        target = self.out_dir / PREDICTIONS_NAME
        rows = 0
        with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8", newline="") as merged:
            merged.write(header)
            for _, result in sorted((result for result in self.results.values()), key=lambda item: item[1].shard_id):
                if result.predictions is None:
                    continue
                with (self.shards_dir / result.predictions).open(encoding="utf-8", newline="") as part:
                    if part.readline() != header:
                        raise InvalidInputError(f"{self.shards_dir / result.predictions}: header is not {header.strip()}")
                    shutil.copyfileobj(part, merged)
                rows += result.rows
        return target, rows
