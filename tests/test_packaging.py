"""The set-up files agree with each other: environment.yml, pyproject.toml, Makefile."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _makefile_torch_spec() -> str:
    match = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile must define TORCH_SPEC"
    return match.group(1)


def test_environment_python_is_allowed_by_pyproject() -> None:
    conda_python = next(
        d for d in _environment()["dependencies"] if isinstance(d, str) and d.startswith("python")
    )
    version = conda_python.split("=")[1]
    assert version == "3.11"
    minimum = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))


def test_environment_installs_project_through_pip_with_the_makefile_torch_pin() -> None:
    pip_section = next(d["pip"] for d in _environment()["dependencies"] if isinstance(d, dict))
    assert pip_section[0] == _makefile_torch_spec(), "torch must be pinned first, as in Makefile"
    assert any(line.startswith("-e") and ".[dev]" in line for line in pip_section)


def test_pyproject_torch_range_admits_the_pinned_build() -> None:
    pinned = _makefile_torch_spec().split("==")[1]
    torch_req = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch"))
    lower = torch_req.split(">=")[1]
    as_tuple = lambda v: tuple(int(p) for p in v.split(".")[:2])  # noqa: E731
    assert as_tuple(pinned) >= as_tuple(lower)


def test_console_script_points_at_the_cli() -> None:
    assert _pyproject()["project"]["scripts"]["msam"] == "msam_core.cli:entry"
