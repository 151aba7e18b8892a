"""Splitting and stitching on a Flex Consumption instance's temporary disk (0.8 GB): the upload limit
fits it, and a video that would not fit is refused in one line before the disk fills, with nothing
left behind. Real split and stitch activities against Azurite; only the instance's disk size is set
smaller, since no test can fill a real disk."""

from __future__ import annotations

import threading
import time

import pytest
from azure.storage.blob import BlobServiceClient

from function_app import activities
from media import make_clip
from shared.config import Settings
from shared.errors import InvalidInputError

LIMITS = Settings(batch_frames=20)


@pytest.fixture()
def service(azurite, monkeypatch) -> BlobServiceClient:
    monkeypatch.setenv(LIMITS.storage_connection, azurite)
    service = BlobServiceClient.from_connection_string(azurite)
    for container in (LIMITS.input_container, LIMITS.work_container):
        if not service.get_container_client(container).exists():
            service.create_container(container)
    return service


def _work_blobs(service: BlobServiceClient, job_id: str) -> list[str]:
    return [b.name for b in service.get_container_client(LIMITS.work_container).list_blobs(name_starts_with=f"jobs/{job_id}/")]


def _scratch_folders(tmp_root) -> list:
    return [p for p in tmp_root.iterdir() if p.name.startswith(("split-", "stitch-"))]


def test_the_upload_limit_fits_the_instance_disk():
    assert activities.split_disk_bytes(Settings().max_upload_bytes) <= activities.INSTANCE_DISK_BYTES
    assert activities.split_disk_bytes(4 * 1024**3) > activities.INSTANCE_DISK_BYTES, "the former 4 GiB limit did not fit"


def test_split_and_stitch_refuse_a_video_the_disk_cannot_hold(service, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    clip = make_clip(tmp_path / "clip.mp4", seconds=2)
    service.get_blob_client(LIMITS.input_container, "clip.mp4").upload_blob(clip.read_bytes(), overwrite=True)
    job = {"job_id": "disk-1", "input_blob": "clip.mp4", "style": "identity"}

    monkeypatch.setattr(activities, "INSTANCE_DISK_BYTES", clip.stat().st_size)
    with pytest.raises(InvalidInputError, match=r"^clip\.mp4: needs \d+ MB of scratch disk, the instance has \d+ MB$"):
        activities.split_job(job, LIMITS)
    assert _work_blobs(service, "disk-1") == [] and _scratch_folders(tmp_path) == []

    monkeypatch.setattr(activities, "INSTANCE_DISK_BYTES", activities.split_disk_bytes(clip.stat().st_size))
    plan = activities.split_job(job, LIMITS)
    segments = _work_blobs(service, "disk-1")
    assert len(plan["batches"]) == 3 and len(segments) == 4 and _scratch_folders(tmp_path) == []

    # The segments stand in for styled ones. With the instance's disk no bigger than the input,
    # stitching them (they and their output: twice their size) is refused before any download.
    for name in segments:
        if "/segments/" in name:
            styled = name.replace("/segments/", "/styled/").rsplit(".", 1)[0] + ".a1.mp4"
            source = service.get_blob_client(LIMITS.work_container, name).download_blob().readall()
            service.get_blob_client(LIMITS.work_container, styled).upload_blob(source, overwrite=True)
    request = {"job": job, "plan": plan, "attempts": {str(b["index"]): 1 for b in plan["batches"]}, "errors": []}
    monkeypatch.setattr(activities, "INSTANCE_DISK_BYTES", clip.stat().st_size)
    with pytest.raises(InvalidInputError, match=r"^clip\.mp4\.identity\.mp4: needs \d+ MB of scratch disk"):
        activities.stitch_job(request, LIMITS)
    outputs = service.get_container_client(LIMITS.output_container)
    assert not outputs.exists() or not list(outputs.list_blobs(name_starts_with="clip.mp4.identity"))
    assert _scratch_folders(tmp_path) == []


def test_one_split_or_stitch_at_a_time_holds_the_disk():
    order = []

    def hold(name: str, seconds: float) -> None:
        with activities.scratch(f"{name}-", 0, name):
            order.append(f"{name} in")
            time.sleep(seconds)
            order.append(f"{name} out")

    first = threading.Thread(target=hold, args=("split", 0.3))
    first.start()
    while not order:
        time.sleep(0.01)
    second = threading.Thread(target=hold, args=("stitch", 0))
    second.start()
    first.join()
    second.join()
    assert order == ["split in", "split out", "stitch in", "stitch out"]
