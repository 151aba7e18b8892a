"""The unit of distributed work: a shard of many models, and what scoring it reports.

Both are plain JSON (``to_json``/``from_json``, validated on the way in) so that a shard can travel
as a queue message to any worker and its result come back the same way. Each attempt at a shard
writes its own predictions file, so a late result of a superseded attempt never mixes with the
one that was kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from shared.errors import InvalidInputError
from shared.many_models.schema import ModelKey, Window, key_id
from shared.messages import MessageError, parsed
from shared.names import check_run_id, check_shard_id

SHARD_FORMAT = 1
MODEL_STATUSES = ("ok", "failed", "no_data")
REASON_CHARS = 300
"""A model's failure reason is cut to this length."""
QUEUED_MODELS_MAX = 100
"""Models in a shard that travels through the queue: its result must fit in one queue message."""
KEY_VALUES_MAX, KEY_JSON_MAX = 8, 320
"""A model key's values, and its length as JSON text: a key is outside input (the readings' columns)."""
MESSAGE_TEXT_MAX = 48 * 1024
"""A queue message holds 64 KiB; the Functions convention encodes it in Base64 (4 characters per 3 bytes)."""


class ShardMessageError(MessageError, InvalidInputError):
    """A shard description or result that cannot be acted on; retrying it will not help."""


def _load(text: str | bytes, what: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ShardMessageError(f"{what} is not JSON ({exc})") from None


def _require(data: object, what: str, fields: dict[str, type | tuple[type, ...]]) -> dict:
    if not isinstance(data, dict):
        raise ShardMessageError(f"{what} is not a JSON object")
    missing = [name for name in fields if name not in data]
    if missing:
        raise ShardMessageError(f"{what} lacks {', '.join(missing)}")
    wrong = [name for name, kind in fields.items()
             if not isinstance(data[name], kind) or (isinstance(data[name], bool) and kind in (int, float, (int, float)))]
    if wrong:
        raise ShardMessageError(f"{what} has mistyped {', '.join(wrong)}")
    return data


def _keys(raw: list, what: str) -> tuple[ModelKey, ...]:
    if not raw or not all(isinstance(key, list) and key and all(isinstance(v, str) for v in key) for key in raw):
        raise ShardMessageError(f"{what}: keys must be a non-empty list of lists of strings")
    if any(len(key) > KEY_VALUES_MAX or len(json.dumps(key)) > KEY_JSON_MAX for key in raw):
        raise ShardMessageError(f"{what}: a key has more than {KEY_VALUES_MAX} values or is over {KEY_JSON_MAX} characters as JSON")
    return tuple(tuple(key) for key in raw)


@dataclass(frozen=True)
class ShardSpec:
    """Attempt ``attempt`` at scoring ``keys`` (models in ``models_dir``'s manifest) on ``data`` within ``window``; write into ``out_dir``.

    ``models_dir``, ``data`` and ``out_dir`` are local paths in a local run, and blob names (in the
    models, sensor-data and work containers) when the shard comes from the shard queue.
    """

    run_id: str
    shard_id: str
    keys: tuple[ModelKey, ...]
    models_dir: str
    data: str
    window: Window
    out_dir: str
    attempt: int = 1

    @property
    def predictions_name(self) -> str:
        return f"{self.shard_id}.a{self.attempt}.csv"

    def to_dict(self) -> dict:
        return {"format": SHARD_FORMAT, "run_id": self.run_id, "shard_id": self.shard_id,
                "keys": [list(key) for key in self.keys], "models_dir": self.models_dir, "data": self.data,
                "window": self.window.to_dict(), "out_dir": self.out_dir, "attempt": self.attempt}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardSpec:
        return parsed("shard", lambda: cls._from_dict(_load(text, "shard")), ShardMessageError)

    @classmethod
    def from_dict(cls, data: object) -> ShardSpec:
        return parsed("shard", lambda: cls._from_dict(data), ShardMessageError)

    @classmethod
    def _from_dict(cls, data: object) -> ShardSpec:
        data = _require(data, "shard", {"format": int, "run_id": str, "shard_id": str, "keys": list,
                                        "models_dir": str, "data": str, "window": dict, "out_dir": str})
        if data["format"] != SHARD_FORMAT:
            raise ShardMessageError(f"shard format {data['format']} is not {SHARD_FORMAT}")
        check_shard_id(data["shard_id"])
        try:
            window = Window.from_dict(data["window"])
        except InvalidInputError as exc:
            raise ShardMessageError(f"shard: {exc}") from None
        attempt = data.get("attempt", 1)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise ShardMessageError(f"shard attempt {attempt!r} is not a positive integer")
        return cls(run_id=data["run_id"], shard_id=data["shard_id"], keys=_keys(data["keys"], "shard"),
                   models_dir=data["models_dir"], data=data["data"], window=window, out_dir=data["out_dir"], attempt=attempt)


def shard_id(window: Window, keys: tuple[ModelKey, ...], inputs: str = "") -> str:
    """Derived from the content (and the digest of the files read, where there are several): a re-delivered shard
    overwrites its own output, never another's, and a pass that reads a late file too writes new files."""
    content = json.dumps([window.to_dict(), sorted(key_id(key) for key in keys), *([inputs] if inputs else [])])
    return "shard-" + hashlib.sha256(content.encode()).hexdigest()[:16]


def plan_shards(run_id: str, keys: list[ModelKey], models_per_shard: int, *, models_dir: str, data: str,
                window: Window, out_dir: str, inputs: str = "") -> list[ShardSpec]:
    """Consecutive groups of at most ``models_per_shard`` keys, sized evenly."""
    if models_per_shard < 1:
        raise InvalidInputError("models per shard must be at least 1")
    if not keys:
        return []
    _keys([list(key) for key in keys], "model keys")  # refused here, before the run, not shard by shard
    count = -(-len(keys) // models_per_shard)
    bounds = [len(keys) * i // count for i in range(count + 1)]
    groups = [tuple(keys[bounds[i] : bounds[i + 1]]) for i in range(count)]
    return [ShardSpec(run_id=run_id, shard_id=shard_id(window, group, inputs), keys=group, models_dir=models_dir, data=data,
                      window=window, out_dir=out_dir) for group in groups]


@dataclass
class ModelResult:
    key: ModelKey
    status: str
    rows: int = 0
    seconds: float = 0.0
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.reason is not None and len(self.reason) > REASON_CHARS:
            self.reason = self.reason[: REASON_CHARS - 3] + "..."

    @classmethod
    def from_dict(cls, data: object) -> ModelResult:
        data = _require(data, "model result", {"key": list, "status": str, "rows": int, "seconds": (int, float)})
        if data["status"] not in MODEL_STATUSES:
            raise ShardMessageError(f"model status {data['status']!r} is not one of {', '.join(MODEL_STATUSES)}")
        return cls(key=_keys([data["key"]], "model result")[0], status=data["status"], rows=data["rows"],
                   seconds=float(data["seconds"]), reason=data.get("reason"))


@dataclass
class ShardResult:
    """What an attempt at a shard did: one result per model, rows written, where, and how the time split.

    ``error`` is set when the shard could not be scored at all (its data unreadable, its worker
    gone): every model is then failed with that reason, and ``retryable`` says whether another
    attempt may do better. A model that fails alone does not make its shard fail.
    """

    run_id: str
    shard_id: str
    models: list[ModelResult]
    rows: int = 0
    predictions: str | None = None
    """File name (in the shard's ``out_dir``) of the predictions of its ``ok`` models; None when none."""
    timings: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    attempt: int = 1
    error: str | None = None
    retryable: bool = True
    events_rejected: int = 0
    """Capture events in the shard's readings that were not readings, skipped (every shard of a pass reads the same)."""

    @property
    def succeeded(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["models"] = [{**model, "key": list(model["key"])} for model in data["models"]]
        data["format"] = SHARD_FORMAT
        return data

    def to_json(self) -> str:
        """The result as one queue message's text: where the models' reasons would make it too long, they are cut
        shorter, and at the last dropped (the shard's own ``error``, cut to :data:`REASON_CHARS`, stays)."""
        text = json.dumps(self.to_dict(), separators=(",", ":"))
        for limit in (100, 40, 0):
            if len(text.encode()) <= MESSAGE_TEXT_MAX:
                break
            data = self.to_dict()
            for model in data["models"]:
                if model["reason"] is not None:
                    model["reason"] = model["reason"][:limit] or None
            if data["error"] is not None:
                data["error"] = data["error"][:REASON_CHARS]
            text = json.dumps(data, separators=(",", ":"))
        return text

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardResult:
        return parsed("shard result", lambda: cls._from_dict(_load(text, "shard result")), ShardMessageError)

    @classmethod
    def from_dict(cls, data: object) -> ShardResult:
        return parsed("shard result", lambda: cls._from_dict(data), ShardMessageError)

    @classmethod
    def _from_dict(cls, data: object) -> ShardResult:
        data = _require(data, "shard result", {"format": int, "run_id": str, "shard_id": str, "models": list,
                                               "rows": int, "timings": dict, "worker": str})
        if data["format"] != SHARD_FORMAT:
            raise ShardMessageError(f"shard result format {data['format']} is not {SHARD_FORMAT}")
        optional = {"predictions": (str, type(None)), "attempt": int, "error": (str, type(None)), "retryable": bool,
                    "events_rejected": int}
        wrong = [name for name, kinds in optional.items()
                 if name in data and (not isinstance(data[name], kinds) or (kinds is int and isinstance(data[name], bool)))]
        if wrong:
            raise ShardMessageError(f"shard result has mistyped {', '.join(wrong)}")
        check_run_id(data["run_id"])
        check_shard_id(data["shard_id"])
        attempt = data.get("attempt", 1)
        if data.get("events_rejected", 0) < 0:
            raise ShardMessageError("shard result has a negative events_rejected")
        if attempt < 1 or data.get("predictions") not in (None, f"{data['shard_id']}.a{attempt}.csv"):
            raise ShardMessageError("shard result names predictions that are not its attempt's")
        return cls(run_id=data["run_id"], shard_id=data["shard_id"],
                   models=[ModelResult.from_dict(model) for model in data["models"]], rows=data["rows"],
                   timings={str(k): float(v) for k, v in data["timings"].items()}, worker=data["worker"],
                   **{name: data[name] for name in optional if name in data})

    @classmethod
    def all_failed(cls, spec: ShardSpec, reason: str, retryable: bool = True, worker: str = "") -> ShardResult:
        """The result of an attempt that could not score the shard at all (its worker died, its data is unreadable)."""
        return cls(run_id=spec.run_id, shard_id=spec.shard_id, attempt=spec.attempt, worker=worker, error=reason,
                   retryable=retryable, models=[ModelResult(key=key, status="failed", reason=reason) for key in spec.keys])
