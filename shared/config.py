"""One configuration object, read from the environment (app settings in Azure), with safe defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from shared.errors import PipelineError


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stylize" / "models"


@dataclass(frozen=True)
class Settings:
    # Batching and scoring
    batch_frames: int = 240
    max_attempts: int = 3
    infer_batch: int = 0
    """Frames per forward pass; 0 picks by device (1 on CPU, measured fastest there at 640x360; 8 on CUDA)."""
    crf: int = 18
    preset: str = "medium"
    model_cache_dir: Path = _default_cache()
    default_style: str = "candy"
    # Upload limits, checked before any work is queued
    allowed_extensions: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts")
    max_upload_bytes: int = 4 * 1024**3
    max_duration_s: float = 3600.0
    max_width: int = 3840
    max_height: int = 2160
    max_frames: int = 216_000
    # Storage layout (one connection, named by the Functions binding setting prefix)
    storage_connection: str = "DataStorage"
    input_container: str = "videos-in"
    output_container: str = "videos-out"
    work_container: str = "stylize-work"
    batch_queue: str = "batches"
    blob_trigger_source: str = "EventGrid"
    """EventGrid in Azure (Flex Consumption needs it); LogsAndContainerScan polls, for func start on Azurite."""
    # Compute
    compute_backend: str = "local"
    batch_timeout_s: int = 3600
    azureml_subscription_id: str = ""
    azureml_resource_group: str = ""
    azureml_workspace: str = ""
    azureml_compute: str = "gpu-cluster"
    azureml_component: str = "stylize_batch"
    azureml_datastore: str = "stylize_work"
    """Datastore on the work container; job inputs and outputs are paths inside it."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read ``STYLIZE_<FIELD>`` for every field; unset or empty keeps the default."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            raw = environ.get(f"STYLIZE_{field.name.upper()}", "").strip()
            if raw:
                values[field.name] = _convert(field.name, field.default, raw)
        return cls(**values)


def _convert(name: str, default: object, raw: str) -> object:
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        elif isinstance(default, Path):
            return Path(raw).expanduser()
        elif isinstance(default, tuple):
            return tuple(part.strip().lower() for part in raw.split(",") if part.strip())
        else:
            return raw
    except ValueError:
        raise PipelineError(f"setting STYLIZE_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from None
    if value < 0 or (value == 0 and name != "infer_batch"):
        raise PipelineError(f"setting STYLIZE_{name.upper()} must be positive, got {raw}")
    return value
