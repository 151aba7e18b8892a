"""Names that come from outside: blob names, metadata values, message fields, manifest entries.

Every such name is checked here before it reaches a path, a blob client or a message. A name that
passes is a plain relative path (or a plain file name): no ``.`` or ``..`` segment, no leading
``/``, no ``\\``, no control or format characters, already in normal form, and bounded in length.
Job and run ids are checked against the exact pattern their makers use. A name that fails raises
:class:`UnsafeNameError`, an :class:`~shared.errors.InvalidInputError`: the error will repeat, so
it is never retried, and its message quotes the name only as far as is safe to show.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata

from shared.errors import InvalidInputError

BLOB_NAME_MAX_CHARS = 1024
"""Azure's own bound on a blob name."""
UPLOAD_NAME_MAX_CHARS = 400
"""An upload's name: its outputs (``<name>.<style>.preview.png`` and the like) and work names must stay under Azure's
bound however long the style is, and a name this long is already no one's real file."""
STYLE_NAME_MAX_CHARS = 100
"""A style's name, a blend's included: it becomes part of an output's name, which Azure bounds."""
FILE_NAME_MAX_CHARS = 128
JOB_ID = re.compile(r"stylize-[0-9a-f]{32}")
"""What :func:`function_app.upload.instance_id_for` makes: a video job that came through the queue (the local
runner's one job, ``local``, never does)."""
RUN_ID = re.compile(r"(?:[0-9]{8}T[0-9]{6}|begin)--(?:[0-9]{8}T[0-9]{6}|end)")
"""What :attr:`shared.many_models.schema.Window.run_id` makes."""
SHARD_ID = re.compile(r"shard-[0-9a-f]{16}")
"""What :func:`shared.many_models.shards.shard_id` makes."""
PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""Any id a name is built from, where its exact maker is not known (a local run's)."""
PLAIN_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class UnsafeNameError(InvalidInputError):
    """A name from outside that is not a plain, bounded relative path (or id)."""


def shown(name: object, limit: int = 80) -> str:
    """A name as it may appear in an error: printable, quoted, cut to ``limit`` characters."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(name))
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_blob_name(name: object, what: str, max_chars: int = BLOB_NAME_MAX_CHARS) -> str:
    """``name`` if it is a plain relative blob path (see the module's rules); else :class:`UnsafeNameError`."""
    if not isinstance(name, str) or not name:
        raise UnsafeNameError(f"{what} must be a non-empty name")
    if len(name) > max_chars:
        raise UnsafeNameError(f"{what} {shown(name)} is {len(name)} characters long (at most {max_chars})")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        raise UnsafeNameError(f"{what} {shown(name)} holds control characters")
    if "\\" in name:
        raise UnsafeNameError(f"{what} {shown(name)} holds a backslash")
    if name.startswith("/"):
        raise UnsafeNameError(f"{what} {shown(name)} is absolute")
    if any(part in (".", "..") for part in name.split("/")) or posixpath.normpath(name) != name:
        raise UnsafeNameError(f"{what} {shown(name)} is not a plain relative path (no '.', '..', empty or trailing parts)")
    return name


def check_file_name(name: object, what: str, suffixes: tuple[str, ...] = ()) -> str:
    """``name`` if it is one plain file name (letters, digits, ``._-``; no folder), with one of ``suffixes`` if given."""
    if not isinstance(name, str) or len(name) > FILE_NAME_MAX_CHARS or not PLAIN_FILE_NAME.fullmatch(name) or ".." in name:
        raise UnsafeNameError(f"{what} {shown(name)} is not a plain file name (letters, digits, '.', '_', '-'; "
                              f"at most {FILE_NAME_MAX_CHARS} characters)")
    if suffixes and not name.endswith(suffixes):
        raise UnsafeNameError(f"{what} {shown(name)} does not end in {' or '.join(suffixes)}")
    return name


def _check_id(value: object, pattern: re.Pattern, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UnsafeNameError(f"{what} {shown(value)} is not of the form {pattern.pattern}")
    return value


def check_plain_id(value: object, what: str) -> str:
    return _check_id(value, PLAIN_ID, what)


def check_job_id(job_id: object) -> str:
    return _check_id(job_id, JOB_ID, "job id")


def check_run_id(run_id: object) -> str:
    return _check_id(run_id, RUN_ID, "run id")


def check_shard_id(shard_id: object) -> str:
    return _check_id(shard_id, SHARD_ID, "shard id")
