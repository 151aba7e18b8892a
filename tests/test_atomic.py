"""Atomic writes: all or nothing, with the permissions a plain write would give."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from shared.atomic import atomic_path, write_text_atomic


def test_written_file_gets_the_umask_permissions_not_the_private_temporary_ones(tmp_path):
    code = ("import os, sys; os.umask(0o022); from shared.atomic import write_text_atomic; "
            "write_text_atomic(sys.argv[1], 'x'); os.umask(0o077); import importlib, shared.atomic as a; "
            "importlib.reload(a); a.write_text_atomic(sys.argv[2], 'y')")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "shared.txt"), str(tmp_path / "private.txt")], check=True)
    assert stat.S_IMODE(os.stat(tmp_path / "shared.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "private.txt").st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("failed halfway")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
