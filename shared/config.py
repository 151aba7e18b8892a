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
    precision: str = "auto"
    """Inference precision: ``auto`` (each engine's fastest measured: bf16 on CPUs that have it, fp16 on CUDA) or ``fp32``."""
    crf: int = 14
    preset: str = "veryfast"
    """x264 preset and CRF of styled segments. ``veryfast`` at CRF 14 matches ``medium`` at CRF 18 in RGB PSNR (mean and
    worst frame, on a style and on a sharp pattern) for under half the CPU time and files a third to nearly half
    larger (bench/encoder.py): the encoder then hides behind inference on a small CPU, and keeps up with a GPU."""
    model_cache_dir: Path = _default_cache()
    default_style: str = "starry"
    # Temporal stabilisation of styled frames (issue 23)
    temporal: bool = True
    """Stabilise styled frames over time (flicker): on for every style, never for ``identity``."""
    temporal_strength: float = 1.0
    """0..1: how much of the previous stabilised frame, warped, a frame takes where the motion allows (0: off)."""
    temporal_context_frames: int = 12
    """Frames before a batch's first one that its worker decodes, styles and feeds to the stabiliser, not output: a
    batch's first frame is then as stable as any other, and batches stay independent. The blend remembers about ten
    frames where a style keeps its full weight, so fewer leave a cold start: measured (bench/temporal.py, the styles
    that meet every target), the pairs across a boundary have 1.46-2.28 times the error of the same pairs stabilised in
    one stream with 4, 1.12-1.31 with 8, 1.04-1.09 with 12 and 1.01-1.03 with 16; 12 costs 5 % more styling a batch
    of 240 frames."""
    # Upload limits, checked before any work is queued
    allowed_extensions: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts")
    max_upload_bytes: int = 256 * 1024**2
    """The Function app splits an upload on an instance's temporary disk (0.8 GB on Flex Consumption),
    holding it and its segments at once: about twice its size (see function_app/activities.py)."""
    page_file_max_bytes: int = 64 * 1024**2
    """Largest output the status page streams through the Function app (it holds the whole blob in memory); a larger one
    is fetched with ``stylize status JOB --download DIR``."""
    max_duration_s: float = 3600.0
    max_width: int = 3840
    max_height: int = 2160
    max_frames: int = 216_000
    """Width, height and frame count are checked from the container's headers before anything is decoded, and
    the probe stops reading packets as soon as the frame count or duration passes its limit."""
    max_attachment_bytes: int = 32 * 1024**2
    """Matroska attachments (fonts, mostly) and MP4/MOV cover art, measured from their headers: FFmpeg reads all of
    them into memory (Matroska's several times over) when it opens the file, and none is carried to the output.
    Holds a set of fonts."""
    max_style_megapixels: float = 24.0
    """Style pictures, by the size their header gives, before they are decoded (a 6000x4000 photo; the network
    sees a 256x256 square of it)."""
    # Storage layout (one connection, named by the Functions binding setting prefix)
    storage_connection: str = "DataStorage"
    input_container: str = "videos-in"
    output_container: str = "videos-out"
    work_container: str = "stylize-work"
    batch_queue: str = "batches"
    """Batch work items, one message per batch attempt; drained by the workers."""
    result_queue: str = "batch-results"
    """Each batch attempt's result, posted by the worker that did it; triggers the Function app."""
    styles_container: str = "styles"
    """Pictures an upload may name as its style (``style_image`` metadata)."""
    blob_trigger_source: str = "EventGrid"
    """EventGrid in Azure (Flex Consumption needs it); LogsAndContainerScan polls, for func start on Azurite."""
    # Compute: warm workers that drain the batch queue
    compute_backend: str = "local"
    """Where workers run: ``local`` (processes on this machine) or ``azureml`` (command jobs on the GPU cluster)."""
    max_workers: int = 4
    """Most workers at once (local processes or Azure ML worker jobs)."""
    worker_idle_s: int = 120
    """A worker stops after this long with no work."""
    worker_check_s: int = 120
    """How often a running orchestration checks that enough workers are alive."""
    visibility_timeout_s: int = 60
    """A batch message stays hidden this long after a worker takes it; the worker renews it while it works."""
    max_deliveries: int = 3
    """A batch message delivered more often than this (its workers died each time) goes to the poison queue."""
    batch_timeout_s: int = 3600
    azureml_subscription_id: str = ""
    azureml_resource_group: str = ""
    azureml_workspace: str = ""
    azureml_compute: str = "gpu-cluster"
    azureml_component: str = "stylize_worker"
    azureml_compute_client_id: str = ""
    """Client id of the GPU cluster's user-assigned identity; worker jobs reach the data account with it."""
    # Many models on a schedule (score-models)
    models_per_shard: int = 100
    """Models scored by one work item: 10,000 models make 100 shards, not 10,000 jobs."""
    models_max_failed_fraction: float = 0.1
    """A run with failed models is ``partial`` up to this fraction of all models, ``failed`` past it (0: any failure fails it)."""
    models_window_s: int = 3600
    """Length of a scheduled run's window: a firing at time T scores [T' - this, T'), T' being T rounded down to a multiple of it."""
    models_backfill_max_windows: int = 24
    """A backfill's window spans at most this many scheduled windows (a day at the hourly default): a run over a longer
    one reads and scores that much more at once, and a year is no one's backfill."""
    models_max_running: int = 3
    """Most many-models runs at once (the scheduled one included); a backfill asking for another is refused (429) until one ends."""
    sensor_data_container: str = "sensor-data"
    """Where the readings are (``sensor_data_blob`` in it), in the reference schema."""
    sensor_data_blob: str = "sensor_data.csv"
    sensor_capture_path: str = ""
    """``<namespace>/<hub>`` of the Event Hubs Capture files in ``sensor_data_container``: set, each window reads the
    Capture files of its time range; empty, every window reads ``sensor_data_blob`` (the reference data, an upload)."""
    capture_interval_s: int = 300
    """Capture's time window (its ``intervalInSeconds``): a file holds events enqueued this long from the time in its name."""
    models_late_s: int = 10800
    """How long after a window's end its readings are still looked for: a pass over the window reads the Capture files
    enqueued until then (a later pass reads the late ones too; readings later still are not scored)."""
    models_container: str = "models"
    """The models' ``manifest.json`` and model files (``score-models train`` output, uploaded as is)."""
    shard_queue: str = "shards"
    """Shard work items, one message per shard attempt; drained by the shard workers (its poison queue: ``<name>-poison``)."""
    shard_result_queue: str = "shard-results"
    """Each shard attempt's result, posted by the worker that scored it; triggers the Function app."""
    shard_timeout_s: int = 1800
    """Deadline for outstanding shards before they are resubmitted (covers a CPU node's start from zero)."""
    max_shard_workers: int = 2
    """Most shard workers at once (local processes or Azure ML jobs on the CPU cluster)."""
    azureml_cpu_compute: str = "cpu-cluster"
    azureml_shard_component: str = "stylize_shard_worker"
    azureml_cpu_compute_client_id: str = ""
    """Client id of the CPU cluster's user-assigned identity; shard worker jobs reach the data account with it."""

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

    def to_env(self) -> dict[str, str]:
        """The ``STYLIZE_*`` variables that reproduce these settings in another process (a worker)."""
        env = {}
        for field in fields(self):
            value = getattr(self, field.name)
            env[f"STYLIZE_{field.name.upper()}"] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env

    @property
    def models_lag_s(self) -> int:
        """How long after a window's end the timer waits before it scores it: with Capture, until the file of the
        window's last interval is closed and written (its interval, and a minute's margin); none for a static CSV."""
        return self.capture_interval_s + 60 if self.sensor_capture_path else 0

    @property
    def poison_queue(self) -> str:
        """Where batch messages that keep killing their workers end (the Functions ``-poison`` convention)."""
        return f"{self.batch_queue}-poison"

    @property
    def shard_poison_queue(self) -> str:
        """Where shard messages that keep killing their workers end."""
        return f"{self.shard_queue}-poison"


_ZERO_ALLOWED = {"infer_batch", "models_max_failed_fraction", "temporal_strength", "temporal_context_frames"}
_AT_MOST_ONE = {"temporal_strength"}
_AT_MOST = {"temporal_context_frames": 64}
"""Upper bounds: each context frame is decoded and styled again by every batch after it."""
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _convert(name: str, default: object, raw: str) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() not in _BOOLEANS:
                raise ValueError(raw)
            return _BOOLEANS[raw.lower()]
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
        kind = "on or off" if isinstance(default, bool) else f"a valid {type(default).__name__}"
        raise PipelineError(f"setting STYLIZE_{name.upper()}={raw!r} is not {kind}") from None
    if value < 0 or (value == 0 and name not in _ZERO_ALLOWED):
        raise PipelineError(f"setting STYLIZE_{name.upper()} must be positive, got {raw}")
    if not value <= 1 and name in _AT_MOST_ONE:
        raise PipelineError(f"setting STYLIZE_{name.upper()} must be from 0 to 1, got {raw}")
    if name in _AT_MOST and value > _AT_MOST[name]:
        raise PipelineError(f"setting STYLIZE_{name.upper()} must be at most {_AT_MOST[name]}, got {raw}")
    return value
