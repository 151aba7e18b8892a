"""Local copies of the blobs a shard worker reads from the queue path: one download per blob version (ETag)
or per model file content (sha256), so a warm worker reads a window's data once however many shards it scores."""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError

from shared.atomic import atomic_path
from shared.many_models.manifest import MANIFEST_NAME, Manifest
from shared.many_models.schema import key_id
from shared.many_models.shards import ShardSpec


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
