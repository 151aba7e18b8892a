from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_model_cache(tmp_path_factory):
    """Tests never read or fill the user's model cache."""
    os.environ["STYLIZE_MODEL_CACHE_DIR"] = str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def stylize_bin() -> str:
    path = Path(sys.executable).with_name("stylize")
    assert path.exists(), "the stylize console script is not installed in the test environment"
    return str(path)


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> Path:
    """Readings in the reference's shape (3 devices x 5 sensors, 5-second windows, four hours, labelled anomalies)
    and their 15 models, trained on the first two hours: ``score-models generate``."""
    from runner.score_models import main

    root = tmp_path_factory.mktemp("generated")
    assert main(["generate", str(root / "g")]) == 0
    return root / "g"


@pytest.fixture(scope="session")
def app_functions() -> dict:
    """The Function app's functions by name, indexed once (the SDK refuses to index an app twice)."""
    import stylize_functions

    return {function.get_function_name(): function for function in stylize_functions.app.get_functions()}


def pytest_configure(config):
    if not shutil.which("ffmpeg"):
        raise pytest.UsageError("ffmpeg is not installed: run `make test`, which installs it")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """A real Azurite (blob, queue, table) on free loopback ports, for the session; yields its connection string."""
    import subprocess
    import time
    import urllib.request

    binary = ROOT / "node_modules" / ".bin" / "azurite"
    if not binary.exists():
        pytest.fail("Azurite is not installed: run `make test`, which installs it with npm")
    blob, queue, table = _free_port(), _free_port(), _free_port()
    process = subprocess.Popen(
        [str(binary), "--silent", "--skipApiVersionCheck", "--inMemoryPersistence", "--loose",
         "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
         "--blobPort", str(blob), "--queuePort", str(queue), "--tablePort", str(table)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    account = "devstoreaccount1"
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{blob}/{account};QueueEndpoint=http://127.0.0.1:{queue}/{account};"
        f"TableEndpoint=http://127.0.0.1:{table}/{account};"
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{blob}/{account}?comp=list", timeout=1)
        except urllib.error.HTTPError:
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Azurite did not start: {process.stderr.read().decode(errors='replace')[-500:]}")
            time.sleep(0.2)
        else:
            break
    yield connection
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture()
def on_azurite(azurite, monkeypatch):
    """A function that points ``settings``' data connection at Azurite and makes the named containers and
    queues exist (the queues empty); it returns the blob service and the queues by name."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    from shared.storage import queue_client

    def prepare(settings, containers, queues):
        monkeypatch.setenv(settings.storage_connection, azurite)
        service = BlobServiceClient.from_connection_string(azurite)
        for container in containers:
            if not service.get_container_client(container).exists():
                service.create_container(container)
        clients = {}
        for name in queues:
            clients[name] = queue_client(settings, name)
            try:
                clients[name].create_queue()
            except ResourceExistsError:
                clients[name].clear_messages()
        return service, clients

    return prepare


@pytest.fixture()
def models_on_azurite(on_azurite, generated):
    """A function that readies Azurite for a many-models run under ``settings``: its containers emptied (leases
    broken), the generated models uploaded, its shard queues empty; it returns the blob service and the queues. Shard
    workers started meanwhile are stopped afterwards."""
    from azure.storage.blob import BlobLeaseClient

    from function_app.compute import LocalWorkers

    def prepare(settings):
        containers = (settings.sensor_data_container, settings.models_container, settings.work_container, settings.output_container)
        service, queues = on_azurite(settings, containers, (settings.shard_queue, settings.shard_result_queue, settings.shard_poison_queue))
        for container in containers:
            client = service.get_container_client(container)
            for blob in client.list_blobs():
                if blob.lease.status == "locked":
                    BlobLeaseClient(client.get_blob_client(blob.name)).break_lease(lease_break_period=0)
                client.delete_blob(blob.name)
        for path in (generated / "models").iterdir():
            service.get_blob_client(settings.models_container, path.name).upload_blob(path.read_bytes(), overwrite=True)
        return service, queues

    yield prepare
    LocalWorkers.stop_all()
