"""What an upload must be before any work: the upload trigger's rule, which ``stylize submit`` applies before it uploads."""

from __future__ import annotations

import posixpath

from shared.config import Settings
from shared.names import UPLOAD_NAME_MAX_CHARS, UnsafeNameError, check_blob_name


def upload_problem(blob_name: str, size: int, limits: Settings) -> str | None:
    """The reason to refuse an upload by its name, extension and size, or None."""
    try:
        check_blob_name(blob_name, "upload name", UPLOAD_NAME_MAX_CHARS)
    except UnsafeNameError as exc:
        return str(exc)
    extension = posixpath.splitext(blob_name)[1].lower()
    if extension not in limits.allowed_extensions:
        return f"{blob_name}: extension {extension or '(none)'} is not accepted (use {', '.join(limits.allowed_extensions)})"
    if size <= 0:
        return f"{blob_name}: empty file (0 bytes)"
    if size > limits.max_upload_bytes:
        return f"{blob_name}: {size} bytes is over the limit of {limits.max_upload_bytes}"
    return None
