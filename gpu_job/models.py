"""Resolve ``--model`` to weights: a named pretrained style, a checkpoint path, ``identity`` or ``random``.

Named styles are the four checkpoints published with pytorch/examples ``fast_neural_style``. They
are fetched once from the published archive, checked, and cached; later runs read the cache.
Resolving imports no torch, so the local runner resolves (and downloads) once without paying for it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_job.styles import BUILTIN_MODELS, PRETRAINED_STYLES
from shared.atomic import write_bytes_atomic
from shared.errors import PipelineError

WEIGHTS_ARCHIVE_URL = "https://www.dropbox.com/s/lrvwfehqdcxoza8/saved_models.zip?dl=1"
# Pin of the published archive. It could not be read here (no network to that host); until it is
# set, a download is accepted only after every member loads as a tensor-only TransformerNet state
# dict, and its digest is printed so it can be pinned here.
WEIGHTS_ARCHIVE_SHA256: str | None = None
if TYPE_CHECKING:
    import torch

    from gpu_job.scorer import FrameStyler
    from gpu_job.transformer_net import TransformerNet

LEGACY_KEY = re.compile(r"in\d+\.running_(mean|var)$")
RANDOM_SEED = 0
RANDOM_OUTPUT_GAIN = 40.0


class ModelUnavailableError(PipelineError):
    """A named style could not be fetched and is not cached."""


def resolve_model(spec: str, cache_dir: Path, archive_sha256: str | None = WEIGHTS_ARCHIVE_SHA256, url: str = WEIGHTS_ARCHIVE_URL) -> str:
    """Turn a ``--model`` value into ``identity``, ``random`` or the path of a local checkpoint."""
    if spec in BUILTIN_MODELS:
        return spec
    if spec in PRETRAINED_STYLES:
        cached = cache_dir / f"{spec}.pth"
        if not cached.exists():
            _fetch_pretrained(cache_dir, archive_sha256, url, spec)
        return str(cached)
    path = Path(spec).expanduser()
    if path.suffix in (".pth", ".pt") or path.exists():
        if not path.is_file():
            raise PipelineError(f"checkpoint {spec}: no such file")
        return str(path.resolve())
    choices = ", ".join(PRETRAINED_STYLES + BUILTIN_MODELS)
    raise PipelineError(f"unknown model {spec!r}: use one of {choices}, or a path to a .pth checkpoint")


def _fetch_pretrained(cache_dir: Path, archive_sha256: str | None, url: str, wanted: str) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        archive = Path(scratch) / "saved_models.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ModelUnavailableError(
                f"cannot fetch style {wanted!r} ({reason}) and it is not cached in {cache_dir}; "
                f"pass a checkpoint instead: --model /path/to/{wanted}.pth"
            ) from None
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if archive_sha256 and digest != archive_sha256.lower():
            raise PipelineError(f"style archive from {url} has sha256 {digest}, expected {archive_sha256}; refusing it")
        members = _extract_checkpoints(archive)
        if not archive_sha256:
            print(f"warning: style archive is not pinned; accepted after checking its checkpoints, sha256 {digest}", file=sys.stderr)
    for style, data in members.items():
        write_bytes_atomic(cache_dir / f"{style}.pth", data)


def _extract_checkpoints(archive: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                style = Path(info.filename).stem
                if style in PRETRAINED_STYLES and info.filename.endswith(".pth"):
                    members[style] = bundle.read(info)
    except zipfile.BadZipFile:
        raise PipelineError("downloaded style archive is not a zip file") from None
    missing = sorted(set(PRETRAINED_STYLES) - members.keys())
    if missing:
        raise PipelineError(f"downloaded style archive lacks {', '.join(missing)}")
    for style, data in members.items():
        with tempfile.NamedTemporaryFile(suffix=".pth") as check:
            check.write(data)
            check.flush()
            load_transformer(check.name)
    return members


def clean_state_dict(state: dict) -> dict:
    """Drop the InstanceNorm running stats that checkpoints from older PyTorch versions carry."""
    return {key: value for key, value in state.items() if not LEGACY_KEY.search(key)}


def load_transformer(path: str) -> TransformerNet:
    import torch

    from gpu_job.transformer_net import TransformerNet

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean the same to the user
        raise PipelineError(f"checkpoint {path}: cannot be read ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise PipelineError(f"checkpoint {path}: not a state dict")
    model = TransformerNet()
    try:
        model.load_state_dict(clean_state_dict(state))
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()[:200]
        raise PipelineError(f"checkpoint {path}: not a TransformerNet state dict ({detail})") from None
    return model


def random_transformer(seed: int = RANDOM_SEED) -> TransformerNet:
    """Seeded random weights, for tests and benchmarks (same cost as a real style, no download).

    The output layer is rescaled to the pixel range so the result is a visible, content-dependent
    pattern rather than a black frame. It is not a style.
    """
    import torch

    from gpu_job.transformer_net import TransformerNet

    generator = torch.Generator().manual_seed(seed)
    model = TransformerNet()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.empty_like(parameter).uniform_(-1, 1, generator=generator) * parameter.abs().max().clamp(min=0.1))
        model.deconv3.conv2d.weight.mul_(RANDOM_OUTPUT_GAIN)
        model.deconv3.conv2d.bias.fill_(127.5)
    return model


def build_model(resolved: str) -> TransformerNet | None:
    """The network for a resolved model; None means identity (frames pass through)."""
    if resolved == "identity":
        return None
    if resolved == "random":
        return random_transformer()
    return load_transformer(resolved)


def load_styler(spec: str, device: torch.device, cache_dir: Path) -> FrameStyler:
    """The styler for a ``--model`` value on ``device``. Not cached here: each worker keeps its own cache."""
    from gpu_job.scorer import FrameStyler

    return FrameStyler(build_model(resolve_model(spec, cache_dir)), device)
