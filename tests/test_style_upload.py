"""Uploads that name a style picture (metadata ``style_image``), against a real Azurite."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from azure.storage.blob import BlobServiceClient
from PIL import Image

from durable_replay import ReplayClient
from function_app.upload import start_job, style_for
from shared.config import Settings

LIMITS = Settings(batch_frames=20, max_attempts=2)


@pytest.fixture()
def service(azurite, monkeypatch) -> BlobServiceClient:
    monkeypatch.setenv(LIMITS.storage_connection, azurite)
    client = BlobServiceClient.from_connection_string(azurite)
    for container in (LIMITS.input_container, LIMITS.output_container, LIMITS.styles_container):
        if not client.get_container_client(container).exists():
            client.create_container(container)
    return client


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(service: BlobServiceClient, name: str, metadata: dict[str, str]):
    blob = service.get_blob_client(LIMITS.input_container, name)
    blob.upload_blob(b"video bytes", overwrite=True, metadata=metadata)
    return blob


def _error(service: BlobServiceClient, name: str) -> str:
    return json.loads(service.get_blob_client(LIMITS.output_container, name).download_blob().readall())["error"]


def test_style_rules_with_a_style_image():
    assert style_for("clip.mp4", {"style_image": "monet.jpg"}, "starry") == "arbitrary"
    assert style_for("starry+ember/clip.mp4", {}, "candy") == "starry+ember"
    assert style_for("clip.mp4", {"Style": "fauve"}, "starry") == "fauve"


def test_upload_naming_a_picture_starts_a_job_that_carries_it(service):
    service.get_blob_client(LIMITS.styles_container, "paintings/monet.png").upload_blob(_png(), overwrite=True)
    client = ReplayClient()
    instance = asyncio.run(start_job(_upload(service, "trip.mp4", {"style_image": "paintings/monet.png"}), client, LIMITS))
    assert instance is not None
    (_, _, job), = client.started
    assert job["style"] == "arbitrary" and job["style_image"] == "paintings/monet.png"


@pytest.mark.parametrize("metadata, error_blob, reason", [
    ({"style_image": "nowhere.jpg"}, "clip.mp4.arbitrary.error.json", "style image nowhere.jpg: no such blob in container styles"),
    ({"style_image": "notes.jpg"}, "clip.mp4.arbitrary.error.json", "style image notes.jpg: not a picture Pillow can read"),
    ({"style": "arbitrary"}, "clip.mp4.arbitrary.error.json", "style 'arbitrary' needs metadata style_image="),
    ({"style": "starry", "style_image": "paintings/monet.png"}, "clip.mp4.starry.error.json", "goes with style 'arbitrary'"),
])
def test_bad_style_picture_refuses_the_upload_with_a_report(metadata, error_blob, reason, service):
    service.get_blob_client(LIMITS.styles_container, "notes.jpg").upload_blob(b"plain text, not a picture", overwrite=True)
    service.get_blob_client(LIMITS.styles_container, "paintings/monet.png").upload_blob(_png(), overwrite=True)
    client = ReplayClient()
    blob = _upload(service, "clip.mp4", metadata)
    assert asyncio.run(start_job(blob, client, LIMITS)) is None
    assert client.started == []
    assert reason in _error(service, error_blob)
    assert blob.download_blob().readall() == b"video bytes", "the input is never changed"


def one_colour_png(side: int) -> bytes:
    """A side x side one-colour PNG, under a megabyte compressed, made a row at a time (decoded: side*side*3 bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\xc8\x50\x14" * side
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 20)).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("picture, make, reason", [
    ("huge.png", lambda: one_colour_png(13000), "style image huge.png: 13000x13000 is over the limit of 24 megapixels"),
    ("scan.tiff", _tiff, "style image scan.tiff: not a picture Pillow can read in the formats accepted (PNG, JPEG, WEBP)"),
])
def test_a_style_picture_over_the_limit_or_in_another_format_refuses_the_upload(picture, make, reason, service):
    service.get_blob_client(LIMITS.styles_container, picture).upload_blob(make(), overwrite=True)
    client = ReplayClient()
    blob = _upload(service, "clip.mp4", {"style_image": picture})
    assert asyncio.run(start_job(blob, client, LIMITS)) is None
    assert client.started == []
    assert _error(service, "clip.mp4.arbitrary.error.json") == reason


def test_the_split_binds_the_job_to_the_picture_it_checked(service, tmp_path):
    """Workers read the job's own copy of its picture (they have no access to the styles container): the split copies
    it once checked, and refuses a picture that was replaced by one over the limits after the upload was accepted."""
    from function_app import activities
    from media import make_clip
    from shared.errors import InvalidInputError
    from shared.storage import JobLayout

    if not service.get_container_client(LIMITS.work_container).exists():
        service.create_container(LIMITS.work_container)
    clip = make_clip(tmp_path / "clip.mp4", seconds=1, size="96x64", audio=False)
    service.get_blob_client(LIMITS.input_container, "trip.mp4").upload_blob(clip.read_bytes(), overwrite=True)
    service.get_blob_client(LIMITS.styles_container, "paintings/monet.png").upload_blob(_png(), overwrite=True)
    job = {"job_id": "stylize-" + "7" * 32, "input_blob": "trip.mp4", "style": "arbitrary", "style_image": "paintings/monet.png"}
    activities.split_job(job, LIMITS)
    copy = service.get_blob_client(LIMITS.work_container, JobLayout(job["job_id"]).style_picture)
    assert copy.download_blob().readall() == _png()

    service.get_blob_client(LIMITS.styles_container, "paintings/monet.png").upload_blob(one_colour_png(13000), overwrite=True)
    with pytest.raises(InvalidInputError, match="over the limit of 24 megapixels"):
        activities.split_job({**job, "job_id": "stylize-" + "8" * 32}, LIMITS)
