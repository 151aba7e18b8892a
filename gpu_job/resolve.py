"""Resolve ``--model`` to what a worker loads: a name that needs no file, or a local checkpoint,
fetching a published style once into the cache.

Light on purpose (no numpy, no engine): the local runner resolves the model before anything else
and starts its first worker with the answer while its own imports are still to come.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from gpu_job.styles import ARBITRARY, BUILTIN_MODELS, PRETRAINED_STYLES, parse_blend
from shared.atomic import write_bytes_atomic
from shared.errors import PipelineError

WEIGHTS_ARCHIVE_URL = "https://www.dropbox.com/s/lrvwfehqdcxoza8/saved_models.zip?dl=1"
# Pin of the published archive. It could not be read here (no network to that host); until it is
# set, a download is accepted only after every member loads as a tensor-only TransformerNet state
# dict, and its digest is printed so it can be pinned here.
WEIGHTS_ARCHIVE_SHA256: str | None = None


class ModelUnavailableError(PipelineError):
    """A named style could not be fetched and is not cached."""


def resolve_model(spec: str, cache_dir: Path, archive_sha256: str | None = WEIGHTS_ARCHIVE_SHA256, url: str = WEIGHTS_ARCHIVE_URL) -> str:
    """Turn a ``--model`` value into a name that needs no file (built-in style or blend, ``arbitrary``,
    ``identity``, ``random``) or the path of a local checkpoint, fetching a pretrained style if need be."""
    if spec in BUILTIN_MODELS or spec == ARBITRARY or parse_blend(spec) is not None:
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
    raise PipelineError(f"unknown model {spec!r}: `stylize styles` lists the names; or give a path to a .pth checkpoint")


def _fetch_pretrained(cache_dir: Path, archive_sha256: str | None, url: str, wanted: str) -> None:
    import hashlib
    import shutil
    import urllib.request  # with http.client and ssl, 25-30 ms of every start that fetches nothing

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
    import zipfile

    from gpu_job.models import load_transformer  # numpy and torch, needed only to check a download

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
