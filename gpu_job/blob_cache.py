"""Local copies of the blobs a shard worker reads from the queue path: one download per blob version (ETag)
or per model file content (sha256), so a warm worker reads a window's data once however many shards it scores.

Every local path is derived here: the readings' from a hash of their name and version, a models folder's from a
hash of its blob prefix, a model file's from its manifest name only once :func:`shared.names.check_file_name` has
passed it (one plain ``.npz`` name, so the file lands in its folder and nowhere else)."""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError

from shared.atomic import atomic_path
from shared.errors import InvalidInputError
from shared.many_models.capture import CAPTURE_FILE_MAX_BYTES, CaptureFile, files_digest, files_list_text
from shared.many_models.manifest import MANIFEST_MAX_BYTES, MANIFEST_NAME, MODEL_FILE_MAX_BYTES, MODEL_FILE_SUFFIX, Manifest, ModelEntry
from shared.many_models.schema import key_id
from shared.many_models.shards import ShardSpec
from shared.names import check_blob_name, check_file_name

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties


class BlobCache:
    """Local copies of blobs: one download per blob version (ETag) or per model file content (sha256)."""

    def __init__(self, service, root: Path) -> None:
        self.service, self.root = service, root
        self.downloads = 0
        self._manifests: dict[Path, tuple[str, Manifest]] = {}
        self._model_sha256: dict[Path, str] = {}

    def _properties(self, container: str, blob: str) -> BlobProperties:
        return self.service.get_blob_client(container, blob).get_blob_properties()

    def _download(self, container: str, blob: str, local: Path, etag: str | None = None, max_bytes: int | None = None,
                  size: int | None = None) -> None:
        """Write the blob to ``local`` atomically; with ``etag``, only that version (a blob replaced meanwhile fails);
        with ``max_bytes``, a larger blob is refused from its size (``size`` where the caller read its properties, else
        read here), before any of it is read (a download's first response would already hold up to 32 MiB), and the
        version whose size was checked is the one read."""
        client = self.service.get_blob_client(container, blob)
        if max_bytes is not None:
            if size is None:
                properties = client.get_blob_properties(**_version(etag))
                size, etag = properties.size, properties.etag
            if size > max_bytes:
                raise InvalidInputError(f"{container}/{blob} is {size} bytes, more than the {max_bytes} it may be")
        stream = client.download_blob(max_concurrency=4, **_version(etag))
        with atomic_path(local) as tmp, tmp.open("wb") as out:
            stream.readinto(out)
        self.downloads += 1

    def readings(self, container: str, blob: str) -> Path:
        """The readings blob as a local file named after its version, so a changed blob is read anew."""
        etag = self._properties(container, blob).etag
        name = hashlib.sha256(f"{container}/{blob}\n{etag}".encode()).hexdigest()[:24]
        local = self.root / "readings" / f"{name}{posixpath.splitext(blob)[1]}"
        if not local.exists():
            for old in local.parent.glob("*"):
                old.unlink()
            self._download(container, blob, local, etag)
        return local

    def capture(self, container: str, files: list[CaptureFile]) -> Path:
        """A local folder holding exactly ``files`` (Capture files, their names checked by
        :func:`shared.many_models.capture.parse_files_list`), each at its blob name and downloaded once per version."""
        digest = files_digest(files_list_text(files))
        folder = self.root / "capture" / digest[:24]
        kept = self.root / "capture-files"
        for item in files:
            local = kept / hashlib.sha256(f"{container}/{item.name}\n{item.etag}".encode()).hexdigest()[:24]
            if not local.exists():
                self._download(container, item.name, local, item.etag, CAPTURE_FILE_MAX_BYTES)
            linked = folder / check_blob_name(item.name, "Capture file")
            if not linked.exists():
                linked.parent.mkdir(parents=True, exist_ok=True)
                os.link(local, linked)
        return folder

    def manifest(self, container: str, prefix: str) -> tuple[Path, Manifest]:
        """The local models folder of ``prefix`` and its current manifest (checked as it is parsed)."""
        folder = self.root / "models" / hashlib.sha256(f"{container}/{prefix}".encode()).hexdigest()[:24]
        blob = posixpath.join(prefix, MANIFEST_NAME)
        properties = self._properties(container, blob)
        etag = properties.etag
        if self._manifests.get(folder, ("", None))[0] != etag:
            self._download(container, blob, folder / MANIFEST_NAME, etag, MANIFEST_MAX_BYTES, properties.size)
            manifest = Manifest.parse((folder / MANIFEST_NAME).read_bytes(), f"{container}/{blob}")
            self._manifests[folder] = (etag, manifest)
        return folder, self._manifests[folder][1]

    def models(self, container: str, prefix: str, spec: ShardSpec) -> tuple[Path, dict[str, str]]:
        """A local models folder with the current manifest and the shard's model files, and the models refused
        unread (by key id, with the reason): a file over its bound fails its own model, not the shard."""
        folder, manifest = self.manifest(container, prefix)
        refused: dict[str, str] = {}
        for key in spec.keys:
            entry = manifest.models.get(key_id(key))
            if entry is None:
                continue
            local = folder / _local_name(entry)
            if self._model_sha256.get(local) == entry.sha256:
                continue
            try:
                self._download(container, posixpath.join(prefix, local.name), local, max_bytes=MODEL_FILE_MAX_BYTES)
            except ResourceNotFoundError:  # scoring reports the model's file missing
                continue
            except InvalidInputError as exc:
                refused[key_id(key)] = f"model {key_id(key)}: {exc}"
                continue
            self._model_sha256[local] = entry.sha256
        return folder, refused


def _version(etag: str | None) -> dict:
    """The keywords that hold a request to one version of a blob (none without an etag)."""
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}


def _local_name(entry: ModelEntry) -> str:
    """The entry's file name, checked here again (whatever made the entry): one plain ``.npz`` name, no folder."""
    return check_file_name(entry.file, f"model {key_id(entry.key)}: file", (MODEL_FILE_SUFFIX,))
