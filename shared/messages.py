"""Messages between the orchestrator, the batch queue, the compute backends and the completion path.

Plain JSON, validated on the way in: a malformed message fails with a :class:`MessageError` that
names what is wrong, and is never half-understood.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from shared.errors import PipelineError
from shared.plan import Batch

MESSAGE_VERSION = 1
_STYLED_NAME = re.compile(r"^(?P<batch>batch-\d{5})\.a(?P<attempt>\d+)\.(?P<kind>mp4|failed\.json)$")


class MessageError(PipelineError):
    """A message that cannot be acted on: bad JSON, missing or mistyped fields."""


@dataclass(frozen=True)
class BatchMessage:
    job_id: str
    batch: Batch
    attempt: int
    model: str
    segment_blob: str
    styled_blob: str
    version: int = MESSAGE_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["batch"] = self.batch.to_dict()
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchMessage:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MessageError(f"batch message is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise MessageError("batch message is not a JSON object")
        if data.get("version", MESSAGE_VERSION) != MESSAGE_VERSION:
            raise MessageError(f"batch message version {data.get('version')!r} is not supported")
        _require(data, {"job_id": str, "batch": dict, "attempt": int, "model": str, "segment_blob": str, "styled_blob": str})
        _require(data["batch"], {name: object for name in Batch.__dataclass_fields__})
        if data["attempt"] < 1 or not data["job_id"]:
            raise MessageError("batch message has an empty job_id or an attempt below 1")
        return cls(
            job_id=data["job_id"], batch=Batch.from_dict(data["batch"]), attempt=data["attempt"], model=data["model"],
            segment_blob=data["segment_blob"], styled_blob=data["styled_blob"],
        )


def _require(data: dict, fields: dict[str, type]) -> None:
    missing = [name for name in fields if name not in data]
    if missing:
        raise MessageError(f"batch message lacks {', '.join(missing)}")
    wrong = [name for name, kind in fields.items() if not isinstance(data[name], kind) or isinstance(data[name], bool) and kind is int]
    if wrong:
        raise MessageError(f"batch message has mistyped {', '.join(wrong)}")


@dataclass(frozen=True)
class BatchResult:
    """What the completion path tells the orchestrator about one attempt of one batch."""

    batch: int
    attempt: int
    succeeded: bool
    styled_blob: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BatchResult:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


def styled_name(batch: Batch, attempt: int, failed: bool = False) -> str:
    return f"{batch.name}.a{attempt}.{'failed.json' if failed else 'mp4'}"


def parse_styled_name(name: str) -> tuple[int, int, bool] | None:
    """(batch index, attempt, failed) for a styled segment or failure marker name; None for anything else."""
    match = _STYLED_NAME.match(name)
    if not match:
        return None
    return int(match["batch"].split("-")[1]), int(match["attempt"]), match["kind"] != "mp4"
