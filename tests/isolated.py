"""Run a module in a fresh interpreter where some top-level packages cannot be imported."""

from __future__ import annotations

import subprocess
import sys

_RUNNER = """import runpy, sys
blocked = set(sys.argv[1].split(','))
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in blocked:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Absent())
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name='__main__')
"""


def run_module_without(blocked: tuple[str, ...], module: str, args: list[str], stdin: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m module args`` with ``stdin`` as its input; importing any of ``blocked`` fails as if it were not installed."""
    return subprocess.run([sys.executable, "-c", _RUNNER, ",".join(blocked), module, *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout)
