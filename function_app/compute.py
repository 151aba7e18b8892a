"""Worker fleets: keep enough warm workers alive to drain a work queue, never more than the fleet's maximum.

One fleet per kind of work (:mod:`shared.work`): video batches on the GPU cluster, model shards on
the CPU cluster. ``local`` starts ``python -m gpu_job worker --work KIND`` processes on this
machine (``func start``, tests); ``azureml`` submits Azure ML command jobs made from the fleet's
registered component (``stylize_worker``, ``stylize_shard_worker``) on its cluster. Both run the
same worker against the same queues. Which workers a fleet started is kept in a registry blob,
updated under a blob lease, so orchestrations that ask at the same time together start no more
than the maximum.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError

from gpu_job.command import WorkerOptions, worker_command
from shared.config import Settings
from shared.storage import blob_service, connection_env, queue_client

log = logging.getLogger(__name__)
REGISTRY_BLOB = "workers/{backend}-{work}.json"
LEASE_S = 60
LEASE_WAIT_S = 90
WORKER_ROLE_TAG = "stylize_role"
WORKER_ROLES = {"batches": "worker", "shards": "shard-worker"}
# Azure ML job states in which a worker job may still take batches.
AZUREML_ACTIVE_STATES = frozenset({"NotStarted", "Queued", "Preparing", "Provisioning", "Starting", "Running"})


@dataclass(frozen=True)
class Fleet:
    """The workers of one kind of work: the queue they drain, how many at once, and where they run on Azure ML."""

    work: str
    queue: str
    max_workers: int
    compute: str
    component: str
    compute_client_id: str
    """Client id of the cluster's user-assigned identity, with which its jobs reach the data account."""
    compute_client_setting: str
    """The app setting that holds it, named when it is missing."""
    experiment: str

    @classmethod
    def of(cls, settings: Settings, work: str = "batches") -> Fleet:
        s = settings
        if work == "shards":
            return cls("shards", s.shard_queue, s.max_shard_workers, s.azureml_cpu_compute, s.azureml_shard_component,
                       s.azureml_cpu_compute_client_id, "STYLIZE_AZUREML_CPU_COMPUTE_CLIENT_ID", "score-models")
        if work == "batches":
            return cls("batches", s.batch_queue, s.max_workers, s.azureml_compute, s.azureml_component, s.azureml_compute_client_id,
                       "STYLIZE_AZUREML_COMPUTE_CLIENT_ID", "stylize")
        raise ValueError(f"no fleet does {work!r}: use batches or shards")


class WorkerBackend(Protocol):
    name: str
    fleet: Fleet

    def start(self) -> str:
        """Start one worker; returns its name."""

    def running(self, names: list[str]) -> list[str]:
        """Those of ``names`` that are still starting or running."""


def worker_environment(settings: Settings, storage: dict[str, str]) -> dict[str, str]:
    """What a worker needs to find its queues and containers: the settings (less this machine's model cache) and the storage connection."""
    env = {key: value for key, value in settings.to_env().items() if key != "STYLIZE_MODEL_CACHE_DIR"}
    return {**env, **storage}


class LocalWorkers:
    """Worker processes on this machine. Their handles live in this process, which reaps them."""

    name = "local"
    processes: dict[str, subprocess.Popen] = {}

    def __init__(self, settings: Settings, fleet: Fleet | None = None, python: str = sys.executable) -> None:
        self.settings, self.python = settings, python
        self.fleet = fleet or Fleet.of(settings)

    def start(self) -> str:
        options = WorkerOptions.from_settings(self.settings) if self.fleet.work == "batches" else None
        command = worker_command(options, work=self.fleet.work, python=self.python)
        process = subprocess.Popen(command, env={**os.environ, **worker_environment(self.settings, connection_env(self.settings))}, stdin=subprocess.DEVNULL)
        name = f"local-{process.pid}"
        self.processes[name] = process
        return name

    def running(self, names: list[str]) -> list[str]:
        return [name for name in names if name in self.processes and self.processes[name].poll() is None]

    @classmethod
    def stop_all(cls) -> None:
        for process in cls.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()
        cls.processes.clear()


class AzureMLWorkers:
    """Worker jobs on the fleet's cluster, made from its registered component (its command, code and environment).

    A job runs the worker with the cluster's managed identity until the queue has been empty for
    ``worker_idle_s``; the storage endpoints and the settings reach it as environment variables.
    """

    name = "azureml"

    def __init__(self, settings: Settings, fleet: Fleet | None = None, ml_client=None) -> None:
        self.settings = settings
        self.fleet = fleet or Fleet.of(settings)
        self._ml_client = ml_client
        self._component = None

    @property
    def ml_client(self):
        if self._ml_client is None:
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential

            s = self.settings
            self._ml_client = MLClient(DefaultAzureCredential(), s.azureml_subscription_id, s.azureml_resource_group, s.azureml_workspace)
        return self._ml_client

    @property
    def component(self):
        if self._component is None:
            self._component = self.ml_client.components.get(self.fleet.component, label="latest")
        return self._component

    def build_job(self, name: str):
        """The command job for one worker, built without contacting Azure."""
        from azure.ai.ml.entities import CommandJob, ManagedIdentityConfiguration

        component, role = self.component, WORKER_ROLES[self.fleet.work]
        return CommandJob(
            name=name,
            display_name=f"stylize {role.replace('-', ' ')}",
            experiment_name=self.fleet.experiment,
            command=component.command,
            code=component.code,
            environment=component.environment,
            environment_variables=worker_environment(self.settings, self.storage_env()),
            compute=self.fleet.compute,
            identity=ManagedIdentityConfiguration(),
            tags={WORKER_ROLE_TAG: role},
        )

    def storage_env(self) -> dict[str, str]:
        """The data account's endpoints, reached with the cluster's user-assigned identity: never a key or a connection string.

        On a cluster node azure-identity gets its token from Azure ML's endpoint and must be told which
        user-assigned identity to use (``AZURE_CLIENT_ID``; the storage helper reads ``__clientId``).
        """
        prefix, client_id = self.settings.storage_connection, self.fleet.compute_client_id
        endpoints = {f"{prefix}__{key}": os.environ.get(f"{prefix}__{key}", "") for key in ("blobServiceUri", "queueServiceUri")}
        missing = [key for key, value in endpoints.items() if not value] + ([] if client_id else [self.fleet.compute_client_setting])
        if missing:
            raise ValueError(f"the azureml backend needs identity-based storage settings; {', '.join(missing)} not set")
        return {**endpoints, f"{prefix}__credential": "managedidentity", f"{prefix}__clientId": client_id, "AZURE_CLIENT_ID": client_id}

    def start(self) -> str:
        name = f"stylize-{WORKER_ROLES[self.fleet.work]}-{uuid.uuid4().hex[:12]}"
        return self.ml_client.jobs.create_or_update(self.build_job(name)).name

    def running(self, names: list[str]) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        alive = []
        for name in names:
            try:
                if self.ml_client.jobs.get(name).status in AZUREML_ACTIVE_STATES:
                    alive.append(name)
            except ResourceNotFoundError:
                pass
        return alive


def backend_for(settings: Settings, work: str = "batches") -> WorkerBackend:
    backends = {"local": LocalWorkers, "azureml": AzureMLWorkers}
    if settings.compute_backend not in backends:
        raise ValueError(f"STYLIZE_COMPUTE_BACKEND={settings.compute_backend!r}: use local or azureml")
    return backends[settings.compute_backend](settings, Fleet.of(settings, work))


def ensure_workers(settings: Settings, outstanding: int, backend: WorkerBackend | None = None, work: str = "batches") -> dict:
    """Start workers until min(the fleet's maximum, outstanding work) are alive; returns who runs and who was started.

    Outstanding work is the larger of the caller's unfinished items and the fleet's queue length
    (which counts other jobs' items too).
    """
    backend = backend or backend_for(settings, work)
    fleet = Fleet.of(settings, backend.fleet.work)
    queued = queue_client(settings, fleet.queue).get_queue_properties().approximate_message_count or 0
    wanted = min(fleet.max_workers, max(outstanding, queued))
    registry = blob_service(settings).get_blob_client(settings.work_container, REGISTRY_BLOB.format(backend=backend.name, work=fleet.work))
    with _Lease(registry) as lease:
        alive = backend.running(json.loads(registry.download_blob(lease=lease).readall() or b"[]"))
        started = [backend.start() for _ in range(wanted - len(alive))]
        registry.upload_blob(json.dumps(alive + started).encode(), overwrite=True, lease=lease)
    if started:
        log.info("started %d %s %s worker(s): %s (%d running, %d wanted)", len(started), backend.name, fleet.work, started, len(alive), wanted)
    return {"running": alive, "started": started}


class _Lease:
    """An exclusive lease on the registry blob (created empty on first use): one caller at a time.

    Renewed every third of its duration for as long as it is held: listing and submitting Azure ML
    jobs takes seconds each (more for the first client), and a lease that lapsed meanwhile would let
    another orchestration take it and start more workers than the maximum.
    """

    def __init__(self, blob) -> None:
        self.blob = blob
        self._released = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self):
        try:
            self.blob.upload_blob(b"[]", overwrite=False)
        except ResourceExistsError:
            pass
        deadline = time.monotonic() + LEASE_WAIT_S
        while True:
            try:
                self.lease = self.blob.acquire_lease(lease_duration=LEASE_S)
                break
            except HttpResponseError as exc:
                if exc.status_code != 409 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._renewer = threading.Thread(target=self._renew, args=(LEASE_S / 3,), name="worker-registry-lease", daemon=True)
        self._renewer.start()
        return self.lease

    def _renew(self, every_s: float) -> None:
        while not self._released.wait(every_s):
            try:
                self.lease.renew()
            except AzureError as exc:
                # Lost or unreachable: the holder's write of the registry then fails with the lease's error.
                log.warning("worker registry lease not renewed: %s", type(exc).__name__)
                return

    def __exit__(self, *exc_info) -> None:
        self._released.set()
        self._renewer.join()
        self.lease.release()
