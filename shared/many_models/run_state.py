"""A run's files, what they already hold, and what is left to score.

A run keeps its files in a :class:`Store`: a local folder (``score-models run --out``) or a blob
prefix in the work container (:class:`shared.storage.BlobStore`, the Azure run ``runs/<run id>/``).
Layout: ``run.json`` (which window the run is for, and how many passes ran),
``shards/<shard id>.a<attempt>.csv`` (predictions of a shard's ``ok`` models, one file per attempt)
and ``shards/<shard id>.json`` (the recorded result of the attempt that was kept, written after its
predictions). A model that is ``ok`` in any recorded result is finished: later passes skip it, so
each model's rows are in exactly one recorded shard file, and merging them never duplicates a row.
A window read from Capture files also keeps ``inputs/<digest>.json`` (the files a pass read); when a
pass finds other files than the last (a late one arrived), ``run.json`` records the new digest and
the pass it began with, and results of earlier passes are neither skipped nor merged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shared.atomic import atomic_path
from shared.errors import InvalidInputError
from shared.many_models.schema import Window, key_id, predictions_header
from shared.many_models.shards import ModelResult, ShardMessageError, ShardResult

RUN_FILE = "run.json"
SHARDS_DIR = "shards"
INPUTS_DIR = "inputs"
"""``inputs/<digest>.json``: a pass's list of Capture files, which its shards read."""
PREDICTIONS_NAME = "predictions.csv"
REPORT_NAME = "report.json"


class Store(Protocol):
    """Named files of one run. Writes are atomic: a reader sees the old content or the whole new one."""

    def read(self, name: str) -> bytes | None:
        """The file's content; None when there is no such file."""

    def write(self, name: str, parts: Iterable[bytes]) -> None:
        """Replace the file with the concatenated parts."""

    def names(self, folder: str) -> list[str]:
        """Names of the files directly in ``folder``, sorted."""

    def empty(self) -> bool:
        """Whether the store holds no file at all."""

    def where(self, name: str) -> str:
        """Where the file is, for people: a path, or a container and blob name."""


class FolderStore:
    """A run's files in a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"{self.root}: is not a folder")

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, parts: Iterable[bytes]) -> None:
        with atomic_path(self.root / name) as tmp, tmp.open("wb") as out:
            for part in parts:
                out.write(part)

    def names(self, folder: str) -> list[str]:
        directory = self.root / folder
        return sorted(path.name for path in directory.iterdir() if path.is_file()) if directory.is_dir() else []

    def empty(self) -> bool:
        return not self.root.exists() or not any(self.root.iterdir())

    def where(self, name: str) -> str:
        return str(self.root / name)


def write_text(store: Store, name: str, text: str) -> None:
    store.write(name, [text.encode("utf-8")])


@dataclass
class RecordedModel:
    result: ModelResult
    shard_id: str
    run_pass: int


@dataclass
class RunState:
    store: Store
    window: Window
    key_columns: tuple[str, ...]
    run_pass: int = 1
    results: dict[str, tuple[int, ShardResult]] = field(default_factory=dict)
    """Recorded shard results by shard id, with the pass that recorded them."""
    inputs: str = ""
    """Digest of the files the window's readings are read from (Capture files; empty for one readings file)."""
    inputs_pass: int = 1
    """The first pass that read ``inputs``: results of earlier passes read fewer files (a late one arrived since), and
    are neither skipped nor merged."""

    @property
    def run_id(self) -> str:
        return self.window.run_id

    @classmethod
    def open(cls, store: Store, window: Window, key_columns: tuple[str, ...], inputs: str = "") -> RunState:
        """Start a new pass: on an empty store, or one that holds a run of this same window and keys. Where the
        window's ``inputs`` changed since the last pass (a late file arrived), every model is scored again."""
        state = cls._load(store, window, key_columns)
        if state is None:
            if not store.empty():
                raise InvalidInputError(f"{store.where('')}: is not empty and holds no run: choose another --out")
            state = cls(store=store, window=window, key_columns=key_columns, run_pass=0, inputs=inputs)
        state.run_pass += 1
        if inputs != state.inputs:
            state.inputs, state.inputs_pass, state.results = inputs, state.run_pass, {}
        write_text(store, RUN_FILE, json.dumps({**state._identity(), "passes": state.run_pass, "inputs": state.inputs,
                                                "inputs_pass": state.inputs_pass}, indent=1) + "\n")
        return state

    @classmethod
    def resume(cls, store: Store, window: Window, key_columns: tuple[str, ...]) -> RunState:
        """The pass :meth:`open` last began, with every result recorded so far (for a coordinator that finishes it elsewhere)."""
        state = cls._load(store, window, key_columns)
        if state is None:
            raise InvalidInputError(f"{store.where(RUN_FILE)}: no run was begun here")
        return state

    def _identity(self) -> dict:
        return {"run_id": self.run_id, "window": self.window.to_dict(), "key_columns": list(self.key_columns)}

    @classmethod
    def _load(cls, store: Store, window: Window, key_columns: tuple[str, ...]) -> RunState | None:
        raw = store.read(RUN_FILE)
        if raw is None:
            return None
        state = cls(store=store, window=window, key_columns=key_columns)
        try:
            held = json.loads(raw)
            passes = int(held["passes"])
            inputs, inputs_pass = str(held.get("inputs", "")), int(held.get("inputs_pass", 1))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{store.where(RUN_FILE)}: unreadable run file ({exc!r})") from None
        identity = state._identity()
        if {name: held.get(name) for name in identity} != identity:
            raise InvalidInputError(f"{store.where('')} holds the run {held.get('run_id')} (keys {held.get('key_columns')}), "
                                    f"not {window.run_id} (keys {list(key_columns)}): choose another --out")
        state.run_pass, state.inputs, state.inputs_pass = passes, inputs, inputs_pass
        state.results = {shard: held for shard, held in state._load_results().items() if held[0] >= inputs_pass}
        return state

    def _load_results(self) -> dict[str, tuple[int, ShardResult]]:
        results = {}
        for name in self.store.names(SHARDS_DIR):
            if not name.endswith(".json"):
                continue
            path = f"{SHARDS_DIR}/{name}"
            try:
                data = json.loads(self.store.read(path) or b"")
                results[name.removesuffix(".json")] = (int(data["pass"]), ShardResult.from_dict(data["result"]))
            except (ValueError, KeyError, TypeError, ShardMessageError) as exc:
                raise InvalidInputError(f"{self.store.where(path)}: unreadable shard result ({exc})") from None
        return results

    def record(self, result: ShardResult) -> None:
        """Keep a shard's result (after its predictions are in place); a later result for the same shard replaces it."""
        if result.run_id != self.run_id:
            raise InvalidInputError(f"shard result for run {result.run_id} recorded into run {self.run_id}")
        self.results[result.shard_id] = (self.run_pass, result)
        write_text(self.store, f"{SHARDS_DIR}/{result.shard_id}.json", json.dumps({"pass": self.run_pass, "result": result.to_dict()}) + "\n")

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

    def pass_results(self) -> list[ShardResult]:
        """The results recorded by this pass."""
        return [result for run_pass, result in self.results.values() if run_pass == self.run_pass]

    def merge_predictions(self, outputs: Store, name: str = PREDICTIONS_NAME) -> int:
        """Concatenate the recorded shards' predictions into ``name`` in ``outputs`` (one header); returns its row count."""
        results = sorted((result for _, result in self.results.values() if result.predictions), key=lambda result: result.shard_id)
        outputs.write(name, self._prediction_parts(results))
        return sum(result.rows for result in results)

    def _prediction_parts(self, results: list[ShardResult]) -> Iterator[bytes]:
        header = (",".join(predictions_header(self.key_columns)) + "\n").encode("utf-8")
        yield header
        for result in results:
            path = f"{SHARDS_DIR}/{result.predictions}"
            data = self.store.read(path)
            if data is None:
                raise InvalidInputError(f"{self.store.where(path)}: predictions of a recorded shard are missing")
            if not data.startswith(header):
                raise InvalidInputError(f"{self.store.where(path)}: header is not {header.decode().strip()}")
            yield data[len(header):]
