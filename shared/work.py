"""The kinds of work the one warm worker does: video batches and model shards.

The worker (``python -m gpu_job worker --work KIND``), the local worker pool and the queues treat
both alike: a message is one attempt at one item, checked on the way in; its result says whether it
succeeded and, if not, whether another attempt may do better. Each kind names its messages, its
results and its three queues (work, results, poison).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from shared.config import Settings
from shared.many_models.shards import ShardResult, ShardSpec
from shared.messages import BatchMessage, BatchResult


class WorkMessage(Protocol):
    attempt: int

    def to_json(self) -> str: ...


class WorkResult(Protocol):
    attempt: int
    error: str | None
    retryable: bool
    worker: str

    @property
    def succeeded(self) -> bool: ...

    def to_dict(self) -> dict: ...

    def to_json(self) -> str: ...


M = TypeVar("M", bound=WorkMessage)
R = TypeVar("R", bound=WorkResult)


@dataclass(frozen=True)
class WorkKind(Generic[M, R]):
    name: str
    """The worker's ``--work`` value."""
    parse: Callable[[str | bytes], M]
    """A message from its JSON text; raises :class:`shared.messages.MessageError` for one that cannot be acted on."""
    result: Callable[[dict], R]
    """A result from its JSON object; raises :class:`shared.messages.MessageError` likewise."""
    failed: Callable[[M, str, bool], R]
    """The result of an attempt that produced none (its worker died): message, reason, retryable."""
    label: Callable[[M], str]
    """The item, for people."""
    queues: Callable[[Settings], tuple[str, str, str]]
    """Its work queue, results queue and poison queue."""


def _failed_batch(message: BatchMessage, error: str, retryable: bool) -> BatchResult:
    return BatchResult(job_id=message.job_id, batch=message.batch.index, attempt=message.attempt, succeeded=False, error=error,
                       retryable=retryable)


def _failed_shard(spec: ShardSpec, error: str, retryable: bool) -> ShardResult:
    return ShardResult.all_failed(spec, error, retryable)


BATCHES: WorkKind[BatchMessage, BatchResult] = WorkKind(
    name="batches", parse=BatchMessage.from_json, result=BatchResult.from_dict, failed=_failed_batch,
    label=lambda message: message.batch.name, queues=lambda s: (s.batch_queue, s.result_queue, s.poison_queue))
SHARDS: WorkKind[ShardSpec, ShardResult] = WorkKind(
    name="shards", parse=ShardSpec.from_json, result=ShardResult.from_dict, failed=_failed_shard,
    label=lambda spec: spec.shard_id, queues=lambda s: (s.shard_queue, s.shard_result_queue, s.shard_poison_queue))
KINDS = {kind.name: kind for kind in (BATCHES, SHARDS)}
