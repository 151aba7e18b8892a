"""azd post-deploy hook: check the workspace, register the Azure ML assets, subscribe the upload function.

1. The workspace must reach its storage with identities (``systemDatastoresAuthMode`` identity): its
   storage account accepts no shared key, so with account keys code upload and job logs would fail.
2. The worker's two environments and components, one per kind of work (``stylize-gpu`` and
   ``stylize_worker`` for video batches, ``stylize-cpu`` and ``stylize_shard_worker`` for model
   shards; gpu_job/azureml/), each component with the worker's code, are registered in the workspace
   under versions derived from their content, so a redeploy with nothing changed registers nothing,
   and a changed worker becomes the components' ``latest``.
3. The Event Grid subscription for uploads to the input container goes to the blob trigger's
   webhook, which needs the app's ``blobs_extension`` system key, so this cannot be done in Bicep
   without ``listKeys``. An existing subscription is updated in place.

Reads the azd environment (the outputs of bicep/main.bicep). Run by azd; by hand:
``azd env get-values > .env && set -a && . ./.env && python deploy/postdeploy.py``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AML_DIR = REPO / "gpu_job" / "azureml"
CODE_DIRS = ("gpu_job", "shared")
UPLOAD_FUNCTION = "on_upload"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
IDENTITY_AUTH_MODE = "identity"
KEY_WAIT_S = 300
ML_ASSETS = (("environment.yml", "gpu-image", "component.yml"), ("environment-cpu.yml", "conda-cpu.yml", "component-shards.yml"))
"""(environment, what defines its image: a conda file or a build folder, the component that runs in it) in
gpu_job/azureml/: the GPU worker, the CPU shard worker."""


class HookError(Exception):
    """A one-line reason the hook stopped."""


@dataclass(frozen=True)
class Deployment:
    """What provisioning produced, from the azd environment (bicep/main.bicep outputs)."""

    subscription_id: str
    resource_group: str
    function_app: str
    function_app_url: str
    input_container: str
    data_events_topic: str
    workspace: str

    ENVIRONMENT = {
        "subscription_id": "AZURE_SUBSCRIPTION_ID",
        "resource_group": "AZURE_RESOURCE_GROUP",
        "function_app": "FUNCTION_APP_NAME",
        "function_app_url": "FUNCTION_APP_URL",
        "input_container": "INPUT_CONTAINER",
        "data_events_topic": "DATA_EVENTS_TOPIC",
        "workspace": "AZUREML_WORKSPACE",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Deployment:
        missing = [name for name in cls.ENVIRONMENT.values() if not environ.get(name)]
        if missing:
            raise HookError(f"azd environment lacks {', '.join(missing)}: run `azd provision` first")
        return cls(**{field: environ[name] for field, name in cls.ENVIRONMENT.items()})


def code_files(root: Path = REPO) -> list[Path]:
    """The files of the component's code snapshot: what .amlignore lets through."""
    return sorted(path for folder in CODE_DIRS for path in (root / folder).rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc")


def content_version(files: Iterable[Path], *extra: str, root: Path = REPO) -> str:
    """A version string that changes exactly when the files (by path and content) or the extras change."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for value in extra:
        digest.update(value.encode() + b"\0")
    return digest.hexdigest()[:16]


def _get_or_create(operations, asset):
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return operations.get(asset.name, version=asset.version)
    except ResourceNotFoundError:
        return operations.create_or_update(asset)


def register_ml_assets(ml_client) -> list[str]:
    """Register each environment and component (each only if its version is new); returns ``name:version`` of the components."""
    from azure.ai.ml import load_component, load_environment

    registered = []
    for environment_file, definition, component_file in ML_ASSETS:
        environment = load_environment(AML_DIR / environment_file)
        image = AML_DIR / definition
        image_files = sorted(path for path in image.rglob("*") if path.is_file()) if image.is_dir() else [image]
        environment.version = content_version([AML_DIR / environment_file, *image_files])
        environment = _get_or_create(ml_client.environments, environment)
        component = load_component(AML_DIR / component_file)
        component.environment = f"azureml:{environment.name}:{environment.version}"
        component.version = content_version([AML_DIR / component_file, *code_files()], component.environment)
        _get_or_create(ml_client.components, component)
        registered.append(f"{component.name}:{component.version}")
    return registered


def check_identity_access(workspace) -> None:
    """Refuse a workspace whose system datastores use account keys: its storage accepts none."""
    mode = (workspace.system_datastores_auth_mode or "").lower()
    if mode != IDENTITY_AUTH_MODE:
        raise HookError(f"workspace {workspace.name} reaches its storage with {mode or 'account keys'}, not identities: "
                        "code upload and job logs will fail; check systemDatastoresAuthMode in bicep/modules/ml-workspace.bicep")


def blob_webhook_url(deployment: Deployment, function_name: str, blobs_key: str) -> str:
    return (f"{deployment.function_app_url.rstrip('/')}/runtime/webhooks/blobs"
            f"?functionName=Host.Functions.{function_name}&code={blobs_key}")


def event_subscriptions(deployment: Deployment, blobs_key: str) -> dict[tuple[str, str], object]:
    """(topic, subscription name) -> the Event Grid subscription to create or update."""
    from azure.mgmt.eventgrid import models

    uploads = models.EventSubscription(
        destination=models.WebHookEventSubscriptionDestination(
            endpoint_url=blob_webhook_url(deployment, UPLOAD_FUNCTION, blobs_key), max_events_per_batch=1),
        filter=models.EventSubscriptionFilter(
            included_event_types=[BLOB_CREATED],
            subject_begins_with=f"/blobServices/default/containers/{deployment.input_container}/blobs/"),
        event_delivery_schema=models.EventDeliverySchema.EVENT_GRID_SCHEMA,
        retry_policy=models.RetryPolicy(max_delivery_attempts=30, event_time_to_live_in_minutes=1440),
    )
    return {(deployment.data_events_topic, "stylize-uploads"): uploads}


def blobs_extension_key(web_client, deployment: Deployment, wait_s: float = KEY_WAIT_S, poll_s: float = 10.0) -> str:
    """The app's ``blobs_extension`` system key; the host creates it when it first starts after deployment."""
    deadline = time.monotonic() + wait_s
    while True:
        keys = web_client.web_apps.list_host_keys(deployment.resource_group, deployment.function_app)
        key = (keys.system_keys or {}).get("blobs_extension")
        if key:
            return key
        if time.monotonic() >= deadline:
            raise HookError(f"{deployment.function_app} has no blobs_extension key after {wait_s:.0f} s: "
                            "is the deployment running? Re-run with `azd hooks run postdeploy`")
        time.sleep(poll_s)


def subscribe(eventgrid_client, deployment: Deployment, blobs_key: str) -> list[str]:
    done = []
    for (topic, name), subscription in event_subscriptions(deployment, blobs_key).items():
        eventgrid_client.system_topic_event_subscriptions.begin_create_or_update(
            deployment.resource_group, topic, name, subscription).result()
        done.append(f"{topic}/{name}")
    return done


def main(environ: Mapping[str, str] = os.environ) -> int:
    try:
        deployment = Deployment.from_env(environ)
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential
        from azure.mgmt.eventgrid import EventGridManagementClient
        from azure.mgmt.web import WebSiteManagementClient

        credential = DefaultAzureCredential()
        ml_client = MLClient(credential, deployment.subscription_id, deployment.resource_group, deployment.workspace)
        check_identity_access(ml_client.workspaces.get(deployment.workspace))
        for component in register_ml_assets(ml_client):
            print(f"registered component {component}")
        key = blobs_extension_key(WebSiteManagementClient(credential, deployment.subscription_id), deployment)
        for name in subscribe(EventGridManagementClient(credential, deployment.subscription_id), deployment, key):
            print(f"event subscription {name} is in place")
    except HookError as exc:
        print(f"postdeploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
