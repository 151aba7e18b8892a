"""Local warm workers for shards: a few long-lived processes, each scoring shard after shard.

A worker imports scikit-learn once and keeps the data it read (see :mod:`shared.many_models.scoring`),
so its later shards cost only their models. Shards go in and results come out as plain dicts, as
they would through a queue; this module is the only local part, the rest is the core's.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

from shared.many_models.scoring import score_shard
from shared.many_models.shards import ShardResult, ShardSpec


def score_shard_message(shard: dict) -> dict:
    """What a worker does with one work item: a shard description in, its result out, both plain JSON."""
    return score_shard(ShardSpec.from_dict(shard)).to_dict()


def score_shards(shards: list[ShardSpec], workers: int) -> Iterator[ShardResult]:
    """Results in the order they finish; a shard whose worker died comes back with every model failed."""
    if not shards:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(shards)), mp_context=context) as pool:
        futures = {pool.submit(score_shard_message, shard.to_dict()): shard for shard in shards}
        for future in as_completed(futures):
            try:
                yield ShardResult.from_dict(future.result())
            except Exception as exc:  # noqa: BLE001 - a lost worker fails its shard's models, never the run
                yield ShardResult.all_failed(futures[future], f"worker failed: {type(exc).__name__}: {exc}")
