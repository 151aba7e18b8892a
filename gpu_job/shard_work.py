"""Model shards as the worker's work: score many anomaly models on their readings of one window.

Locally a shard names files (the readings, the models folder, the run's shards folder). From the
shard queue it names blobs: the readings in the sensor-data container, the manifest and model
files in the models container, and the folder of the work container its predictions go to
(``runs/<run id>/shards/<shard id>.a<attempt>.csv``, one upload: atomic, and the same name again
when a message is delivered twice). The worker keeps what it downloaded: the readings and the
manifest while their blobs' ETags are unchanged, each model file while the manifest vouches for the
same sha256, so a warm worker reads a window's data once however many shards it scores.

Neither torch nor PyAV is imported here: this runs on a CPU node whose image has neither. The
storage clients (the Azure SDK takes 0.3 s to import) are imported by the queue paths only, so a
local worker starts without them.
"""

from __future__ import annotations

import os
import posixpath
import re
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_job.worker import Feed, one_line
from shared.config import Settings
from shared.errors import InvalidInputError
from shared.many_models.capture import capture_prefix, files_digest, parse_files_list
from shared.many_models.manifest import MANIFEST_NAME
from shared.many_models.run_state import INPUTS_DIR, SHARDS_DIR
from shared.many_models.shards import QUEUED_MODELS_MAX, ShardResult, ShardSpec, shard_id
from shared.messages import MessageError
from shared.names import check_run_id, shown
from shared.work import SHARDS

INPUTS_MAX_BYTES = 4 * 1024**2
"""A pass's list of Capture files: room for its most files (:data:`shared.many_models.capture.FILES_MAX`)."""
_INPUTS_NAME = re.compile(r"[^/]+/[^/]+/" + INPUTS_DIR + r"/([0-9a-f]{64})\.json")


def _inputs_digest(spec: ShardSpec) -> str:
    """The digest a shard's readings list is named by (``runs/<run id>/inputs/<digest>.json``); else :class:`MessageError`."""
    match = _INPUTS_NAME.fullmatch(spec.data)
    if match is None:
        raise MessageError(f"shard {spec.shard_id} names readings that are not its run's")
    return match[1]


if TYPE_CHECKING:
    from gpu_job.blob_cache import BlobCache
    from gpu_job.queue_worker import QueueFeed


class ShardWork:
    kind = SHARDS
    queue_ahead = False
    """From the queue, a shard is taken when the last is done: nothing streams across shards, and a shard held
    ahead would wait while another worker could score it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._cache: BlobCache | None = None

    @cached_property
    def blobs(self):
        from shared.storage import blob_service

        return blob_service(self.settings)

    @property
    def cache(self) -> BlobCache:
        if self._cache is None:
            from gpu_job.blob_cache import BlobCache

            self._scratch = tempfile.TemporaryDirectory(prefix="shard-cache-")
            self._cache = BlobCache(self.blobs, Path(self._scratch.name))
        return self._cache

    def ready(self) -> dict:
        return {}

    def serve(self, feed: Feed) -> None:
        while (item := feed.next()) is not None:
            item.emit({"event": "result", **self._score(item.message).to_dict()})

    def fetch(self, spec: ShardSpec, delivery: int) -> tuple[ShardSpec, None]:
        """Nothing: :meth:`queued` fetches what a shard needs when its turn comes."""
        return spec, None

    def serve_queue(self, feed: QueueFeed) -> None:
        while (item := feed.next()) is not None:
            item.answer(self.queued(item.message, item.delivery))

    def _score(self, spec: ShardSpec, data_shown_as: str | None = None, refused: Mapping[str, str] | None = None) -> ShardResult:
        from shared.many_models.scoring import score_shard

        try:
            return score_shard(spec, data_shown_as, refused)
        except Exception as exc:  # reported to whoever sent the shard, which decides about retrying
            return ShardResult.all_failed(spec, one_line(exc), retryable=not isinstance(exc, InvalidInputError), worker=self.name)

    def check_queued(self, spec: ShardSpec) -> ShardSpec:
        """The shard, if it may be acted on from the queue: a run's id, the id its window and keys give, at most
        :data:`QUEUED_MODELS_MAX` models, the configured readings and models, and its run's shards folder; else
        :class:`MessageError`. A message is never trusted with a path or a blob of its choosing."""
        from shared.storage import run_prefix

        check_run_id(spec.run_id)
        if spec.run_id != spec.window.run_id:
            raise MessageError(f"shard {shown(spec.shard_id)} does not match its window")
        if len(spec.keys) > QUEUED_MODELS_MAX:
            raise MessageError(f"shard {spec.shard_id} holds {len(spec.keys)} models (at most {QUEUED_MODELS_MAX} from the queue)")
        readings, inputs = self.settings.sensor_data_blob, ""
        if self.settings.sensor_capture_path:
            inputs = _inputs_digest(spec)
            readings = f"{run_prefix(spec.run_id)}{INPUTS_DIR}/{inputs}.json"
        if spec.shard_id != shard_id(spec.window, spec.keys, inputs):
            raise MessageError(f"shard {shown(spec.shard_id)} does not match its window, models and readings")
        expected = ("", readings, run_prefix(spec.run_id) + SHARDS_DIR)
        if (spec.models_dir, spec.data, spec.out_dir) != expected:
            raise MessageError(f"shard {spec.shard_id} names folders or readings that are not its run's")
        return spec

    def _capture_folder(self, spec: ShardSpec) -> Path:
        """The local folder of the pass's Capture files: their list is read from the run's folder (bounded), must be
        the one its name's digest vouches for, and each name in it must be a Capture file of the shard's window."""
        from shared.storage import read_blob_within

        s = self.settings
        where = f"the readings list of shard {spec.shard_id}"
        raw = read_blob_within(self.blobs, s.work_container, spec.data, INPUTS_MAX_BYTES, where)
        if files_digest(raw.decode("utf-8", errors="replace")) != _inputs_digest(spec):
            raise InvalidInputError(f"{where} is not the one its shard was planned with")
        files = parse_files_list(raw, capture_prefix(s.sensor_capture_path), spec.window, s.capture_interval_s, s.models_late_s, where)
        return self.cache.capture(s.sensor_data_container, files)

    def closed(self, spec: ShardSpec) -> bool:
        from shared.storage import CLOSED_MARKER, run_prefix

        return self.blobs.get_blob_client(self.settings.work_container, run_prefix(spec.run_id) + CLOSED_MARKER).exists()

    def failure(self, spec: ShardSpec, error: str, delivery: int) -> ShardResult:
        return ShardResult.all_failed(spec, error, retryable=False, worker=self.name)

    def queued(self, spec: ShardSpec, delivery: int) -> ShardResult:
        """Fetch (or reuse) the readings and models, score, upload the predictions. A blob that is gone or a file that
        is invalid fails the shard for good; any other failure (storage refused a read or a write) fails this attempt,
        and the orchestration may try again."""
        from azure.core.exceptions import ResourceNotFoundError

        from shared.storage import upload_file

        s = self.settings
        try:
            try:
                data = self._capture_folder(spec) if s.sensor_capture_path else self.cache.readings(s.sensor_data_container, spec.data)
            except ResourceNotFoundError:
                gone = "a Capture file or the list of them" if s.sensor_capture_path else spec.data
                return self.failure(spec, f"readings {s.sensor_data_container}/{gone} are gone", delivery)
            try:
                models, refused = self.cache.models(s.models_container, spec.models_dir, spec)
            except ResourceNotFoundError:
                return self.failure(spec, f"no {posixpath.join(s.models_container, spec.models_dir, MANIFEST_NAME)}", delivery)
            with tempfile.TemporaryDirectory(prefix="shard-") as scratch:
                readings = f"Capture files of {spec.window.run_id}" if s.sensor_capture_path else spec.data
                result = self._score(replace(spec, data=str(data), models_dir=str(models), out_dir=scratch),
                                     f"{s.sensor_data_container}/{readings}", refused)
                if result.predictions:
                    upload_file(self.blobs, s.work_container, posixpath.join(spec.out_dir, result.predictions),
                                Path(scratch) / result.predictions, {"run_id": spec.run_id})
        except InvalidInputError as exc:
            return self.failure(spec, str(exc), delivery)
        except Exception as exc:  # noqa: BLE001 - storage refused or failed: this attempt fails, another may not
            return ShardResult.all_failed(spec, one_line(exc), retryable=True, worker=self.name)
        return result
