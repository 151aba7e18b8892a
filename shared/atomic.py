"""Atomic file writes: a reader sees the old file, or the whole new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import, while the process has one thread: os.umask can only be read by setting it.
UMASK = _process_umask()


class AtomicFile:
    """A temporary path beside ``final``, renamed over it by :meth:`commit` or removed by :meth:`discard`.

    For a file whose writing spans threads or calls; a block that writes one uses :func:`atomic_path`.
    The temporary name keeps the final suffix so that muxers choosing a format by extension
    still pick the right one. The file gets the permissions a plain ``open`` would give it (the
    temporary file is private, 0600, until then).
    """

    def __init__(self, final: str | os.PathLike[str]) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.final.stem}.", suffix=f".part{self.final.suffix}", dir=self.final.parent)
        os.close(fd)
        self.tmp = Path(tmp_name)

    def commit(self) -> None:
        try:
            os.chmod(self.tmp, 0o666 & ~UMASK)
            os.replace(self.tmp, self.final)
        finally:
            self.discard()

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds."""
    file = AtomicFile(final)
    try:
        yield file.tmp
    except BaseException:
        file.discard()
        raise
    file.commit()


def write_bytes_atomic(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))
