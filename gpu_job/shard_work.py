"""Model shards as the worker's work: score many anomaly models on their readings of one window.

Locally a shard names files (the readings, the models folder, the run's shards folder). From the
shard queue it names blobs: the readings in the sensor-data container, the manifest and model
files in the models container, and the folder of the work container its predictions go to
(``runs/<run id>/shards/<shard id>.a<attempt>.csv``, one upload: atomic, and the same name again
when a message is delivered twice). The worker keeps what it downloaded: the readings and the
manifest while their blobs' ETags are unchanged, each model file while the manifest vouches for the
same sha256, so a warm worker reads a window's data once however many shards it scores.

Neither torch nor PyAV is imported here: this runs on a CPU node whose image has neither.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import socket
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError

from gpu_job.worker import one_line
from shared.atomic import atomic_path
from shared.config import Settings
from shared.errors import InvalidInputError
from shared.many_models.manifest import MANIFEST_NAME, Manifest
from shared.many_models.schema import key_id
from shared.many_models.shards import ShardResult, ShardSpec
from shared.storage import CLOSED_MARKER, blob_service, run_prefix, upload_file
from shared.work import SHARDS


class BlobCache:
    """Local copies of blobs: one download per blob version (ETag) or per model file content (sha256)."""

    def __init__(self, service, root: Path) -> None:
        self.service, self.root = service, root
        self.downloads = 0
        self._manifests: dict[Path, tuple[str, Manifest]] = {}
        self._model_sha256: dict[Path, str] = {}

    def _etag(self, container: str, blob: str) -> str:
        return self.service.get_blob_client(container, blob).get_blob_properties().etag

    def _download(self, container: str, blob: str, local: Path, etag: str | None = None) -> None:
        """Write the blob to ``local`` atomically; with ``etag``, only that version (a blob replaced meanwhile fails)."""
        client = self.service.get_blob_client(container, blob)
        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        with atomic_path(local) as tmp, tmp.open("wb") as out:
            client.download_blob(max_concurrency=4, **condition).readinto(out)
        self.downloads += 1

    def readings(self, container: str, blob: str) -> Path:
        """The readings blob as a local file named after its version, so a changed blob is read anew."""
        etag = self._etag(container, blob)
        name = hashlib.sha256(f"{container}/{blob}\n{etag}".encode()).hexdigest()[:24]
        local = self.root / "readings" / f"{name}{posixpath.splitext(blob)[1]}"
        if not local.exists():
            for old in local.parent.glob("*"):
                old.unlink()
            self._download(container, blob, local, etag)
        return local

    def models(self, container: str, prefix: str, spec: ShardSpec) -> Path:
        """A local models folder with the current manifest and the shard's model files."""
        folder = self.root / "models" / hashlib.sha256(f"{container}/{prefix}".encode()).hexdigest()[:24]
        blob = posixpath.join(prefix, MANIFEST_NAME)
        etag = self._etag(container, blob)
        if self._manifests.get(folder, ("", None))[0] != etag:
            self._download(container, blob, folder / MANIFEST_NAME, etag)
            self._manifests[folder] = (etag, Manifest.load(folder))
        entries = self._manifests[folder][1].models
        for key in spec.keys:
            entry = entries.get(key_id(key))
            if entry is None or self._model_sha256.get(folder / entry.file) == entry.sha256:
                continue
            try:
                self._download(container, posixpath.join(prefix, entry.file), folder / entry.file)
            except ResourceNotFoundError:  # scoring reports the model's file missing
                continue
            self._model_sha256[folder / entry.file] = entry.sha256
        return folder


class ShardWork:
    kind = SHARDS

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._blobs = None
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._cache: BlobCache | None = None

    @property
    def blobs(self):
        if self._blobs is None:
            self._blobs = blob_service(self.settings)
        return self._blobs

    @property
    def cache(self) -> BlobCache:
        if self._cache is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="shard-cache-")
            self._cache = BlobCache(self.blobs, Path(self._scratch.name))
        return self._cache

    def ready(self) -> dict:
        return {}

    def local(self, spec: ShardSpec, emit: Callable[[dict], None]) -> ShardResult:
        return self._score(spec)

    def _score(self, spec: ShardSpec) -> ShardResult:
        from shared.many_models.scoring import score_shard

        try:
            return score_shard(spec)
        except Exception as exc:  # reported to whoever sent the shard, which decides about retrying
            return ShardResult.all_failed(spec, one_line(exc), retryable=not isinstance(exc, InvalidInputError), worker=self.name)

    def closed(self, spec: ShardSpec) -> bool:
        return self.blobs.get_blob_client(self.settings.work_container, run_prefix(spec.run_id) + CLOSED_MARKER).exists()

    def failure(self, spec: ShardSpec, error: str, delivery: int) -> ShardResult:
        return ShardResult.all_failed(spec, error, retryable=False, worker=self.name)

    def queued(self, spec: ShardSpec, delivery: int) -> ShardResult:
        """Fetch (or reuse) the readings and models, score, upload the predictions. A blob that is gone or a file that
        is invalid fails the shard for good; any other failure (storage refused a read or a write) fails this attempt,
        and the orchestration may try again."""
        s = self.settings
        try:
            try:
                data = self.cache.readings(s.sensor_data_container, spec.data)
            except ResourceNotFoundError:
                return self.failure(spec, f"readings {s.sensor_data_container}/{spec.data} are gone", delivery)
            try:
                models = self.cache.models(s.models_container, spec.models_dir, spec)
            except ResourceNotFoundError:
                return self.failure(spec, f"no {posixpath.join(s.models_container, spec.models_dir, MANIFEST_NAME)}", delivery)
            with tempfile.TemporaryDirectory(prefix="shard-") as scratch:
                result = self._score(replace(spec, data=str(data), models_dir=str(models), out_dir=scratch))
                if result.predictions:
                    upload_file(self.blobs, s.work_container, posixpath.join(spec.out_dir, result.predictions),
                                Path(scratch) / result.predictions, {"run_id": spec.run_id})
        except InvalidInputError as exc:
            return self.failure(spec, str(exc), delivery)
        except Exception as exc:  # noqa: BLE001 - storage refused or failed: this attempt fails, another may not
            return ShardResult.all_failed(spec, one_line(exc), retryable=True, worker=self.name)
        return result
