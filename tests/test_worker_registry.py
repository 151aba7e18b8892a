"""The worker registry's lease on Azurite: held for as long as starting workers takes, however long that is."""

from __future__ import annotations

import threading
import time

import pytest

from function_app import compute
from function_app.compute import REGISTRY_BLOB, Fleet, ensure_workers
from shared.config import Settings

pytestmark = pytest.mark.azurite

SETTINGS = Settings(max_workers=2, work_container="registry-test")
SHORTEST_LEASE_S = 15  # the shortest finite blob lease Azure Storage grants
START_S = 9  # each start: an Azure ML submission takes seconds, the first (client, component) more


class SlowWorkers:
    """A backend whose two starts outlast the shortest lease; every worker it started is alive."""

    name = "slow"

    def __init__(self, settings: Settings, started: list[str]) -> None:
        self.fleet = Fleet.of(settings)
        self.started = started

    def start(self) -> str:
        time.sleep(START_S)
        name = f"worker-{len(self.started)}"
        self.started.append(name)
        return name

    def running(self, names: list[str]) -> list[str]:
        return [name for name in names if name in self.started]


@pytest.fixture()
def registry(on_azurite):
    service, _ = on_azurite(SETTINGS, (SETTINGS.work_container,), (SETTINGS.batch_queue,))
    container = service.get_container_client(SETTINGS.work_container)
    container.delete_blobs(*[blob.name for blob in container.list_blobs()])
    return container.get_blob_client(REGISTRY_BLOB.format(backend=SlowWorkers.name, work="batches"))


def test_a_second_caller_waits_while_the_first_starts_workers_past_the_lease(registry, monkeypatch):
    monkeypatch.setattr(compute, "LEASE_S", SHORTEST_LEASE_S)
    started: list[str] = []
    answers: dict[str, dict | BaseException] = {}

    def ask(caller: str) -> None:
        try:
            answers[caller] = ensure_workers(SETTINGS, outstanding=10, backend=SlowWorkers(SETTINGS, started))
        except BaseException as error:  # noqa: BLE001 - reported by the assertions below
            answers[caller] = error

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    time.sleep(1)  # the first holds the lease and is starting its workers
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    first.join(timeout=120)
    second.join(timeout=120)
    assert 2 * START_S > SHORTEST_LEASE_S, "the starts must outlast the lease"
    assert answers["first"] == {"running": [], "started": ["worker-0", "worker-1"]}
    assert answers["second"] == {"running": ["worker-0", "worker-1"], "started": []}, "no more workers than the maximum"
    assert started == ["worker-0", "worker-1"]
    assert registry.download_blob().readall() == b'["worker-0", "worker-1"]'
    assert registry.get_blob_properties().lease.state == "available", "released once done"


def test_the_lease_is_released_when_starting_a_worker_fails(registry, monkeypatch):
    monkeypatch.setattr(compute, "LEASE_S", SHORTEST_LEASE_S)

    class Failing(SlowWorkers):
        def start(self) -> str:
            raise RuntimeError("quota exceeded")

    with pytest.raises(RuntimeError, match="quota exceeded"):
        ensure_workers(SETTINGS, outstanding=1, backend=Failing(SETTINGS, []))
    assert registry.get_blob_properties().lease.state == "available", "the next caller need not wait for it to lapse"
