from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_model_cache(tmp_path_factory):
    """Tests never read or fill the user's model cache."""
    os.environ["STYLIZE_MODEL_CACHE_DIR"] = str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def stylize_bin() -> str:
    path = Path(sys.executable).with_name("stylize")
    assert path.exists(), "the stylize console script is not installed in the test environment"
    return str(path)


def pytest_configure(config):
    if not shutil.which("ffmpeg"):
        raise pytest.UsageError("ffmpeg is not installed: run `make test`, which installs it")
