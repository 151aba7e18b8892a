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

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


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
    def from_dict(cls, data: dict) -> ModelEntry:
        return cls(**{**data, "key": tuple(str(value) for value in data["key"])})


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
        """The manifest in ``raw`` (the content of ``where``), checked."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{where}: not a JSON manifest ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise InvalidInputError(f"{where}: manifest format {data.get('format') if isinstance(data, dict) else None!r} "
                                    f"is not {MANIFEST_FORMAT}")
        try:
            models = {name: ModelEntry.from_dict(entry) for name, entry in data["models"].items()}
            manifest = cls(key_columns=tuple(data["key_columns"]), models=models)
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidInputError(f"{where}: malformed manifest ({exc!r})") from None
        wrong = [name for name, entry in models.items() if key_id(entry.key) != name or len(entry.key) != len(manifest.key_columns)]
        if wrong:
            raise InvalidInputError(f"{where}: manifest entry {wrong[0]!r} does not match its key")
        return manifest


def model_file_name(key: ModelKey) -> str:
    """A plain file name for a key: readable part plus a hash, so different keys never collide."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "-", "_".join(key)).strip("-.")[:60] or "model"
    return f"{readable}.{hashlib.sha256(key_id(key).encode()).hexdigest()[:12]}.npz"


