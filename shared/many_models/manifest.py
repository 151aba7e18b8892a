"""The manifest of a models folder: key -> model file, sha256, version, scikit-learn version, training window.

No scikit-learn here: planning a run needs only the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.atomic import write_text_atomic
from shared.errors import InvalidInputError
from shared.many_models.schema import ModelKey, key_id
from shared.names import check_file_name, shown

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
MANIFEST_MAX_BYTES = 64 * 1024**2
"""A manifest's entries take about 400 bytes each: room for over 100,000 models."""
MODEL_FILE_MAX_BYTES = 16 * 1024**2
"""A model file (and the arrays it holds, together) is at most this big. A trained model takes about 10 KB; 16 MiB
holds two million support vectors, which no one-feature anomaly model has, and which would be too slow to score."""
MODEL_FILE_SUFFIX = ".npz"
TEXT_MAX_CHARS = 256
"""A key value, version or scikit-learn version longer than this is no one's real value."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = {"key": (list, "a list"), "file": (str, "a text"), "sha256": (str, "a text"), "version": (str, "a text"),
                 "sklearn_version": (str, "a text"), "training_window": (dict, "an object"), "training_rows": (int, "a whole number")}


@dataclass(frozen=True)
class ModelEntry:
    key: ModelKey
    file: str
    sha256: str
    version: str
    sklearn_version: str
    training_window: dict
    training_rows: int

    @classmethod
    def from_dict(cls, data: object, what: str = "model") -> ModelEntry:
        """The entry in ``data``, every field checked (``what`` names it in errors): a plain ``.npz`` file name, a sha256
        of 64 hex digits, a key of bounded texts, bounded texts, a training window of two times and a row count."""
        if not isinstance(data, dict) or set(data) != set(_ENTRY_FIELDS):
            fields = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise InvalidInputError(f"{what}: an entry must have exactly the fields {', '.join(_ENTRY_FIELDS)}, not {shown(fields)}")
        for name, (kind, kind_name) in _ENTRY_FIELDS.items():
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise InvalidInputError(f"{what}: {name} must be {kind_name}")
        key = data["key"]
        if not key or not all(isinstance(value, str) and len(value) <= TEXT_MAX_CHARS for value in key):
            raise InvalidInputError(f"{what}: key must be a list of texts of at most {TEXT_MAX_CHARS} characters")
        check_file_name(data["file"], f"{what}: file", (MODEL_FILE_SUFFIX,))
        if not _SHA256.fullmatch(data["sha256"]):
            raise InvalidInputError(f"{what}: sha256 {shown(data['sha256'])} is not 64 lowercase hex digits")
        for name in ("version", "sklearn_version"):
            if not 0 < len(data[name]) <= TEXT_MAX_CHARS:
                raise InvalidInputError(f"{what}: {name} must be a text of 1 to {TEXT_MAX_CHARS} characters")
        window = data["training_window"]
        if set(window) != {"start", "end"} or not all(bound is None or isinstance(bound, str) and len(bound) <= 64
                                                        for bound in window.values()):
            raise InvalidInputError(f"{what}: training_window must be {{\"start\": time or null, \"end\": time or null}}")
        if data["training_rows"] < 0:
            raise InvalidInputError(f"{what}: training_rows is negative")
        return cls(**{**data, "key": tuple(key)})


@dataclass
class Manifest:
    key_columns: tuple[str, ...]
    models: dict[str, ModelEntry] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict:
        return {"format": self.format, "key_columns": list(self.key_columns),
                "models": {name: asdict(entry) for name, entry in self.models.items()}}

    def write(self, models_dir: Path) -> Path:
        path = Path(models_dir) / MANIFEST_NAME
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, models_dir: str | os.PathLike[str]) -> Manifest:
        path = Path(models_dir) / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InvalidInputError(f"{path}: no manifest (train models first: score-models train)") from None
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Manifest:
        """The manifest in ``raw`` (the content of ``where``), every entry checked; anything else is one line naming
        what is wrong."""
        if len(raw) > MANIFEST_MAX_BYTES:
            raise InvalidInputError(f"{where}: manifest of {len(raw)} bytes is larger than {MANIFEST_MAX_BYTES}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidInputError(f"{where}: not a JSON manifest ({str(exc).splitlines()[0][:200]})") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise InvalidInputError(f"{where}: manifest format {shown(found)} is not {MANIFEST_FORMAT}")
        columns, entries = data.get("key_columns"), data.get("models")
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and 0 < len(c) <= TEXT_MAX_CHARS for c in columns):
            raise InvalidInputError(f"{where}: key_columns must be a list of column names")
        if not isinstance(entries, dict):
            raise InvalidInputError(f"{where}: models must be an object mapping model ids to entries")
        models = {name: ModelEntry.from_dict(entry, f"{where}: model {shown(name)}") for name, entry in entries.items()}
        wrong = [name for name, entry in models.items() if key_id(entry.key) != name or len(entry.key) != len(columns)]
        if wrong:
            raise InvalidInputError(f"{where}: manifest entry {shown(wrong[0])} does not match its key")
        return cls(key_columns=tuple(columns), models=models)


def model_file_name(key: ModelKey) -> str:
    """A plain file name for a key: readable part plus a hash, so different keys never collide."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "-", "_".join(key)).strip("-.")[:60] or "model"
    return f"{readable}.{hashlib.sha256(key_id(key).encode()).hexdigest()[:12]}.npz"


