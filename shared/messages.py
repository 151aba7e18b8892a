"""Messages between the orchestrator, the batch queue, the workers and the results queue.

Plain JSON, validated on the way in: a malformed message fails with a :class:`MessageError` that
names what is wrong, and is never half-understood.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from shared.errors import PipelineError
from shared.plan import Batch

MESSAGE_VERSION = 2


class MessageError(PipelineError):
    """A message that cannot be acted on: bad JSON, missing or mistyped fields."""


def _load_object(text: str | bytes, what: str) -> dict:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"{what} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MessageError(f"{what} is not a JSON object")
    return data


def _require(data: dict, types: dict[str, type | tuple], what: str) -> None:
    missing = [name for name in types if name not in data]
    if missing:
        raise MessageError(f"{what} lacks {', '.join(missing)}")
    wrong = [name for name, kind in types.items()
             if not isinstance(data[name], kind) or (isinstance(data[name], bool) and kind is int)]
    if wrong:
        raise MessageError(f"{what} has mistyped {', '.join(wrong)}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides which styler a batch needs: the key of a worker's model cache."""

    model: str
    precision: str = "auto"
    style_image: str | None = None
    style_strength: float = 1.0


@dataclass(frozen=True)
class BatchMessage:
    """One attempt at one batch: the work item a worker takes.

    ``segment``, ``styled`` and ``style_image`` (the picture a style is taken from, for the model
    ``arbitrary``) are blob names when the item comes from the batch queue (the work container and
    the styles container), and file paths in a local run.
    """

    job_id: str
    batch: Batch
    attempt: int
    model: str
    segment: str
    styled: str
    precision: str = "auto"
    style_image: str | None = None
    style_strength: float = 1.0
    keep_10bit: bool = False
    """Encode 10-bit output for a source of more than 8 bits."""
    preview_frames: tuple[int, ...] = ()
    """Offsets in the batch of the frames the preview samples: the styled segment starts a GOP at each, and
    the worker draws their rows of the preview beside it (:func:`shared.preview.rows_name`)."""
    version: int = MESSAGE_VERSION

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.precision, self.style_image, self.style_strength)

    def to_json(self) -> str:
        data = asdict(self)
        data["batch"] = self.batch.to_dict()
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchMessage:
        data = _load_object(text, "batch message")
        if data.get("version", MESSAGE_VERSION) != MESSAGE_VERSION:
            raise MessageError(f"batch message version {data.get('version')!r} is not supported")
        _require(data, {"job_id": str, "batch": dict, "attempt": int, "model": str, "segment": str, "styled": str}, "batch message")
        _require(data["batch"], {name: object for name in Batch.__dataclass_fields__}, "batch message")
        optional = {"precision": (str,), "style_image": (str, type(None)), "style_strength": (int, float), "keep_10bit": (bool,),
                    "preview_frames": (list,)}
        _require({name: data[name] for name in optional if name in data}, {name: kinds for name, kinds in optional.items() if name in data},
                 "batch message")
        if data["attempt"] < 1 or not data["job_id"]:
            raise MessageError("batch message has an empty job_id or an attempt below 1")
        batch = Batch.from_dict(data["batch"])
        options = {name: data[name] for name in optional if name in data}
        options["preview_frames"] = tuple(options.get("preview_frames", ()))
        if not all(type(offset) is int and 0 <= offset < batch.frame_count for offset in options["preview_frames"]):
            raise MessageError(f"batch message has preview frames outside its {batch.frame_count} frames")
        return cls(job_id=data["job_id"], batch=batch, attempt=data["attempt"], model=data["model"], segment=data["segment"],
                   styled=data["styled"], **options)


@dataclass(frozen=True)
class BatchResult:
    """What a worker reports about one attempt at one batch.

    ``retryable`` is false for an error that will repeat (a damaged segment, an unknown model, a
    message that keeps killing its workers): the orchestration then fails at once with the reason.
    ``worker``, ``model_loads`` and ``delivery`` say who did it, how often that worker has loaded a
    model so far, and which delivery of the queue message this was; ``styler`` what styled the
    frames (model, style, engine, device, precision).
    """

    job_id: str
    batch: int
    attempt: int
    succeeded: bool
    styled: str | None = None
    error: str | None = None
    retryable: bool = True
    frames: int = 0
    seconds: float = 0.0
    worker: str = ""
    model_loads: int = 0
    delivery: int = 1
    styler: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> BatchResult:
        _require(data, {"job_id": str, "batch": int, "attempt": int, "succeeded": bool}, "batch result")
        if data["succeeded"] and not isinstance(data.get("styled"), str):
            raise MessageError("batch result says succeeded but names no styled segment")
        return cls(**{field.name: data[field.name] for field in fields(cls) if field.name in data})

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchResult:
        return cls.from_dict(_load_object(text, "batch result"))


def styled_name(batch: Batch, attempt: int) -> str:
    return f"{batch.name}.a{attempt}.mp4"
