"""Messages between the orchestrator, the batch queue, the workers and the results queue.

Plain JSON, validated on the way in: a malformed message fails with a :class:`MessageError` that
names what is wrong, and is never half-understood.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from shared.errors import InvalidInputError
from shared.names import check_plain_id
from shared.plan import Batch, batch_name

MESSAGE_VERSION = 3
"""3: a batch's context frames (``context_pts``) and the stabiliser's strength (``temporal_strength``)."""
TEXT_MAX_CHARS = 2048
"""A free-text field of a message or result (a path in a local run, an error): longer is malformed."""
ERROR_MAX_CHARS = 500
"""An error a result carries is cut to this length, so that every result fits in one queue message."""


class MessageError(InvalidInputError):
    """A message that cannot be acted on: bad JSON, missing or mistyped fields, or names that are not its own.
    Retrying it will not help."""


def parsed(what: str, parse, error: type[MessageError] | None = None):
    """``parse()``, with any failure of a malformed message turned into a one-line :class:`MessageError` (or
    ``error``): a message is outside input, and no mistake in it may surface as a Python error, a repr, or a retry."""
    try:
        return parse()
    except MessageError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError, InvalidInputError) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0][:200] if text and not isinstance(exc, KeyError) else type(exc).__name__
        raise (error or MessageError)(f"malformed {what}: {reason}") from None


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
             if not isinstance(data[name], kind) or (isinstance(data[name], bool) and kind in (int, (int, float)))
             or (isinstance(data[name], str) and len(data[name]) > TEXT_MAX_CHARS)]
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
    temporal_strength: float = 0.0
    """0..1: the temporal stabiliser's strength; 0 (off) styles every frame on its own and styles no context frames."""
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
        return parsed("batch message", lambda: cls._from_json(text))

    @classmethod
    def _from_json(cls, text: str | bytes) -> BatchMessage:
        data = _load_object(text, "batch message")
        if data.get("version", MESSAGE_VERSION) != MESSAGE_VERSION:
            raise MessageError("batch message version is not supported")
        _require(data, {"job_id": str, "batch": dict, "attempt": int, "model": str, "segment": str, "styled": str}, "batch message")
        optional = {"precision": (str,), "style_image": (str, type(None)), "style_strength": (int, float), "keep_10bit": (bool,),
                    "preview_frames": (list,), "temporal_strength": (int, float)}
        _require({name: data[name] for name in optional if name in data}, {name: kinds for name, kinds in optional.items() if name in data},
                 "batch message")
        check_plain_id(data["job_id"], "job id")
        if data["attempt"] < 1:
            raise MessageError("batch message has an attempt below 1")
        for name, default in (("style_strength", 1.0), ("temporal_strength", 0.0)):
            if not 0.0 <= data.get(name, default) <= 1.0:
                raise MessageError(f"batch message has a {name} outside 0..1")
        batch = Batch.from_dict(data["batch"])
        options = {name: data[name] for name in optional if name in data}
        options["preview_frames"] = tuple(options.get("preview_frames", ()))
        if len(options["preview_frames"]) > batch.frame_count or not all(
                type(offset) is int and 0 <= offset < batch.frame_count for offset in options["preview_frames"]):
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
    frames (model, style, engine, device, precision); ``temporal`` the stabiliser's description, when one ran.
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
    temporal: dict | None = None

    def __post_init__(self) -> None:
        if self.error is not None and len(self.error) > ERROR_MAX_CHARS:
            object.__setattr__(self, "error", self.error[: ERROR_MAX_CHARS - 3] + "...")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> BatchResult:
        return parsed("batch result", lambda: cls._from_dict(data))

    @classmethod
    def _from_dict(cls, data: dict) -> BatchResult:
        if not isinstance(data, dict):
            raise MessageError("batch result is not a JSON object")
        _require(data, {"job_id": str, "batch": int, "attempt": int, "succeeded": bool}, "batch result")
        optional = {"styled": (str, type(None)), "error": (str, type(None)), "retryable": bool, "frames": int, "seconds": (int, float),
                    "worker": str, "model_loads": int, "delivery": int, "styler": (dict, type(None)),
                    "temporal": (dict, type(None))}
        present = {name: kinds for name, kinds in optional.items() if name in data}
        _require({name: data[name] for name in present}, present, "batch result")
        check_plain_id(data["job_id"], "job id")
        if data["batch"] < 0 or data["attempt"] < 1:
            raise MessageError("batch result has a negative batch or an attempt below 1")
        if data["succeeded"] and not isinstance(data.get("styled"), str):
            raise MessageError("batch result says succeeded but names no styled segment")
        for name in ("styler", "temporal"):
            if len(json.dumps(data.get(name))) > TEXT_MAX_CHARS:
                raise MessageError(f"batch result has an oversized {name}")
        return cls(**{field.name: data[field.name] for field in fields(cls) if field.name in data})

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchResult:
        return parsed("batch result", lambda: cls._from_dict(_load_object(text, "batch result")))


def styled_name(index: int, attempt: int) -> str:
    """The styled segment's file name of a batch's attempt: each attempt writes its own."""
    return f"{batch_name(index)}.a{attempt}.mp4"
