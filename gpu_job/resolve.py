"""Resolve ``--model`` to what a worker loads: a name that needs no file, or a local checkpoint,
fetching a published style once into the cache.

Light on purpose (no numpy, no engine): the local runner resolves the model before anything else
and starts its first worker with the answer while its own imports are still to come.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from gpu_job.styles import ARBITRARY, BUILTIN_MODELS, PRETRAINED_STYLES, parse_blend
from shared.atomic import write_bytes_atomic
from shared.errors import PipelineError

WEIGHTS_ARCHIVE_URL = "https://www.dropbox.com/s/lrvwfehqdcxoza8/saved_models.zip?dl=1"
PUBLISHED_CHECKPOINT_SHA256: dict[str, str | None] = {
    "candy": "c3da09dfa2877fe4b64154d5561ef764a666aed17f9e59bfa6e102aaa31f4966",
    "mosaic": "3d6d92cebde0cd068b8ed508f0d2d4c54b2b2b7137ffb4032bea44f2ab87c973",
    "rain_princess": "4b24113ab5bd2f6d84ec00b3b5d114281f4bbcf3da74dc05f9cdcd82709578fd",
    "udnie": "0e3f2dd8dc537495ff321e61fa0b45c663682889f5b02762d29e309aed7928da",
}
"""The sha256 of each checkpoint in the published archive: a download is cached only if it matches, a cached file
only used while it does, and a style pinned to None is not downloaded at all. The archive could not be read here (no
network to its host); these are the Git LFS object ids of a public copy of the four files, saved_models/*.pth in
github.com/imageupsc/imageupscaling at commit 30648a456c64 (6,740,723, 6,740,703, 6,740,717 and 6,740,707 bytes).
Should the archive differ, its styles are refused (never accepted unchecked); check a pin with ``sha256sum`` on the
archive's files."""


STYLE_ARCHIVE_MAX_BYTES = 64 * 1024**2
"""The published archive holds four checkpoints of about 6.7 MB each; anything much larger is not it."""
CHECKPOINT_MAX_BYTES = 16 * 1024**2
"""A TransformerNet checkpoint is about 6.7 MB: a larger member is refused from the size the archive states, unread."""
_CHUNK_BYTES = 1024**2


class ModelUnavailableError(PipelineError):
    """A named style could not be fetched and is not cached."""


def resolve_model(spec: str, cache_dir: Path, url: str = WEIGHTS_ARCHIVE_URL) -> str:
    """Turn a ``--model`` value into a name that needs no file (built-in style or blend, ``arbitrary``,
    ``identity``, ``random``) or the path of a local checkpoint, fetching a pretrained style if need be."""
    if spec in BUILTIN_MODELS or spec == ARBITRARY or parse_blend(spec) is not None:
        return spec
    if spec in PRETRAINED_STYLES:
        return str(_published_checkpoint(spec, cache_dir, url))
    path = Path(spec).expanduser()
    if path.suffix in (".pth", ".pt") or path.exists():
        if not path.is_file():
            raise PipelineError(f"checkpoint {spec}: no such file")
        return str(path.resolve())
    raise PipelineError(f"unknown model {spec!r}: `stylize styles` lists the names; or give a path to a .pth checkpoint")


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _published_checkpoint(style: str, cache_dir: Path, url: str) -> Path:
    """The cached checkpoint of a published style while it matches its pin; else fetched again (and checked)."""
    pinned = PUBLISHED_CHECKPOINT_SHA256.get(style)
    if not pinned:
        raise ModelUnavailableError(f"style {style!r} has no pinned sha256 in this release, so it is not downloaded; "
                                    f"pass a checkpoint you trust instead: --model /path/to/{style}.pth")
    cached = cache_dir / f"{style}.pth"
    if _sha256(cached) != pinned:
        _fetch_pretrained(cache_dir, url, style)
    return cached


def _fetch_pretrained(cache_dir: Path, url: str, wanted: str) -> None:
    """Download the archive and cache each checkpoint in it that matches its pin (checked before it is moved into the
    cache); ``wanted`` must be one of them."""
    import urllib.request  # with http.client and ssl, 25-30 ms of every start that fetches nothing

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        archive = Path(scratch) / "saved_models.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, archive.open("wb") as out:
                _copy_within(response, out, url)
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ModelUnavailableError(
                f"cannot fetch style {wanted!r} ({reason}) and it is not cached; pass a checkpoint instead: --model /path/to/{wanted}.pth"
            ) from None
        checkpoints = _extract_checkpoints(archive, wanted)
    digests = {style: hashlib.sha256(data).hexdigest() for style, data in checkpoints.items()}
    if digests[wanted] != PUBLISHED_CHECKPOINT_SHA256[wanted]:
        raise PipelineError(f"style {wanted!r} downloaded from {url} has sha256 {digests[wanted]}, not its pinned "
                            f"{PUBLISHED_CHECKPOINT_SHA256[wanted]}; refusing it")
    for style, data in checkpoints.items():
        if digests[style] == PUBLISHED_CHECKPOINT_SHA256.get(style):
            _check_loads(data)
            write_bytes_atomic(cache_dir / f"{style}.pth", data)


def _copy_within(response, out, url: str) -> None:
    """Copy the download to ``out``, refusing one over :data:`STYLE_ARCHIVE_MAX_BYTES`: from the size it states before
    anything is read, else once that many bytes have come."""
    stated = response.headers.get("Content-Length", "")
    if stated.isascii() and stated.isdigit() and int(stated) > STYLE_ARCHIVE_MAX_BYTES:  # else no size is stated
        raise PipelineError(f"the style archive at {url} is {int(stated)} bytes, more than the {STYLE_ARCHIVE_MAX_BYTES} it may be")
    copied = 0
    while chunk := response.read(_CHUNK_BYTES):
        copied += len(chunk)
        if copied > STYLE_ARCHIVE_MAX_BYTES:
            raise PipelineError(f"the style archive at {url} is more than the {STYLE_ARCHIVE_MAX_BYTES} bytes it may be")
        out.write(chunk)


def _extract_checkpoints(archive: Path, wanted: str) -> dict[str, bytes]:
    """The archive's checkpoints of published styles, by style; ``wanted`` must be among them. A style held twice, or a
    member over :data:`CHECKPOINT_MAX_BYTES`, refuses the archive before any is read (a member is never read past its
    stated size), so what it inflates to is bounded too."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as bundle:
            chosen: dict[str, zipfile.ZipInfo] = {}
            for info in bundle.infolist():
                style = Path(info.filename).stem
                if style not in PRETRAINED_STYLES or not info.filename.endswith(".pth"):
                    continue
                if style in chosen:
                    raise PipelineError(f"the style archive holds more than one checkpoint of {style}")
                if info.file_size > CHECKPOINT_MAX_BYTES:
                    raise PipelineError(f"the style archive's {info.filename} is {info.file_size} bytes, more than the "
                                        f"{CHECKPOINT_MAX_BYTES} a checkpoint may be")
                chosen[style] = info
            members = {style: bundle.read(info) for style, info in chosen.items()}
    except zipfile.BadZipFile:
        raise PipelineError("downloaded style archive is not a zip file") from None
    if wanted not in members:
        raise PipelineError(f"downloaded style archive lacks {wanted}")
    return members


def _check_loads(data: bytes) -> None:
    """A checkpoint loads as a tensor-only TransformerNet state dict (a second check after its pin)."""
    from gpu_job.models import load_transformer  # numpy and torch, needed only to check a download

    with tempfile.NamedTemporaryFile(suffix=".pth") as check:
        check.write(data)
        check.flush()
        load_transformer(check.name)
