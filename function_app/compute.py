"""Compute backends that score one batch attempt. Both take a :class:`BatchMessage` and are idempotent per attempt.

``local`` runs ``python -m gpu_job`` here (for ``func start`` and tests) and writes the styled
segment, or a failure marker, to the work container. ``azureml`` submits the same scorer as an
Azure ML command job on GPU compute, named after job, batch and attempt, so a redelivered message
never submits twice; its output lands in the same place.
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Protocol

from function_app.storage import blob_service, download_file, upload_file
from gpu_job.command import ScorerOptions, local_command, scorer_args
from shared.config import Settings
from shared.messages import BatchMessage

STYLED_OUTPUT = "styled"
SEGMENT_INPUT = "segment"


class ComputeBackend(Protocol):
    def submit(self, message: BatchMessage) -> str:
        """Start (or, for a duplicate, recognise) the attempt; returns its run or job name."""


def job_name(message: BatchMessage) -> str:
    """Deterministic and valid as an Azure ML job name (letters, digits, '-', '_'; at most 255)."""
    raw = f"{message.job_id}-b{message.batch.index:05d}-a{message.attempt}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:255]


class LocalBackend:
    def __init__(self, settings: Settings, python: str = sys.executable) -> None:
        self.settings, self.python = settings, python

    def submit(self, message: BatchMessage) -> str:
        service = blob_service(self.settings)
        container = self.settings.work_container
        failure_blob = message.styled_blob.replace(".mp4", ".failed.json")
        if service.get_blob_client(container, message.styled_blob).exists():
            return job_name(message)
        with tempfile.TemporaryDirectory(prefix="batch-") as scratch:
            segment = download_file(service, container, message.segment_blob, Path(scratch) / "segment.mp4")
            styled = Path(scratch) / posixpath.basename(message.styled_blob)
            options = ScorerOptions(model=message.model, batch_size=self.settings.infer_batch, crf=self.settings.crf, preset=self.settings.preset)
            run = subprocess.run(local_command(scorer_args(str(segment), str(styled), message.batch, options), self.python),
                                 capture_output=True, text=True)
            if run.returncode == 0:
                upload_file(service, container, message.styled_blob, styled, {"job_id": message.job_id})
            else:
                last = next((line for line in reversed(run.stderr.splitlines()) if line.strip()), f"exit code {run.returncode}")
                body = json.dumps({"job": job_name(message), "error": last.strip()})
                service.get_blob_client(container, failure_blob).upload_blob(body.encode(), overwrite=True)
        return job_name(message)


class AzureMLBackend:
    """Submits each batch attempt as a command job made from the registered ``stylize_batch`` component.

    The component (gpu_job/azureml/component.yml, registered with its code and environment by the
    azd post-deploy hook) owns the command line; this class only fills in one batch's inputs.
    """

    def __init__(self, settings: Settings, ml_client=None) -> None:
        self.settings = settings
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
            self._component = self.ml_client.components.get(self.settings.azureml_component, label="latest")
        return self._component

    def build_job(self, message: BatchMessage):
        """The command job for one batch attempt, built without contacting Azure."""
        from azure.ai.ml import Input, Output
        from azure.ai.ml.constants import AssetTypes, InputOutputModes
        from azure.ai.ml.entities import CommandJob, ManagedIdentityConfiguration

        s, batch, component = self.settings, message.batch, self.component
        datastore = f"azureml://datastores/{s.azureml_datastore}/paths"
        inputs = {
            SEGMENT_INPUT: Input(type=AssetTypes.URI_FILE, path=f"{datastore}/{message.segment_blob}", mode=InputOutputModes.DOWNLOAD),
            "styled_name": posixpath.basename(message.styled_blob),
            "model": message.model,
            "start_pts": batch.start_pts,
            "time_base": batch.time_base,
            "frames": batch.frame_count,
            "batch_size": s.infer_batch,
            "crf": s.crf,
            "preset": s.preset,
        }
        if batch.end_pts is not None:
            inputs["end_pts"] = batch.end_pts
        return CommandJob(
            name=job_name(message),
            display_name=f"{message.batch.name} attempt {message.attempt}",
            experiment_name="stylize",
            command=component.command,
            code=component.code,
            environment=component.environment,
            inputs=inputs,
            outputs={STYLED_OUTPUT: Output(type=AssetTypes.URI_FOLDER, path=f"{datastore}/{posixpath.dirname(message.styled_blob)}/",
                                           mode=InputOutputModes.UPLOAD)},
            compute=s.azureml_compute,
            identity=ManagedIdentityConfiguration(),
            tags={"orchestration_id": message.job_id, "batch": str(message.batch.index), "attempt": str(message.attempt)},
        )

    def submit(self, message: BatchMessage) -> str:
        from azure.core.exceptions import ResourceNotFoundError

        name = job_name(message)
        try:
            self.ml_client.jobs.get(name)
            return name
        except ResourceNotFoundError:
            pass
        return self.ml_client.jobs.create_or_update(self.build_job(message)).name


def backend_for(settings: Settings) -> ComputeBackend:
    backends = {"local": LocalBackend, "azureml": AzureMLBackend}
    if settings.compute_backend not in backends:
        raise ValueError(f"STYLIZE_COMPUTE_BACKEND={settings.compute_backend!r}: use local or azureml")
    return backends[settings.compute_backend](settings)
