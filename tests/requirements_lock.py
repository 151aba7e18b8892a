"""scripts/lock_requirements.py as a module, for the tests that read requirement files the way it does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("lock_requirements", Path(__file__).resolve().parents[1] / "scripts" / "lock_requirements.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)
