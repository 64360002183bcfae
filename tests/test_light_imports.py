"""The numerical modules import without the config / CLI / run-directory machinery.

Someone who uses one piece (a landscape, Shapley values, a SAM step) should not pay for PyYAML,
pandas or scipy.signal; each module is imported in a fresh interpreter, since this test
process has long imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMERICAL = [
    "msam_core.landscape",
    "msam_core.shapley",
    "msam_core.coalitions",
    "msam_core.hessian",
    "msam_core.sharpness",
    "msam_core.step",
    "msam_core.optim",
]
HEAVY = [
    "yaml",
    "scipy.signal",
    "pandas",
    "msam_core.config",
    "msam_core.cli",
    "msam_core.commands",
    "msam_core.record",
    "msam_core.train",
    "msam_core.compare",
    "msam_core.data",  # every dataset loader
]


def _loaded_after_import(module: str, heavy: list[str] = HEAVY) -> list[str]:
    """Which of ``heavy`` a fresh interpreter holds after ``import module``."""
    code = (
        f"import json, sys, {module}; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", NUMERICAL)
def test_numerical_module_imports_light(module):
    assert _loaded_after_import(module) == []


def test_dataset_registry_imports_without_scipy():
    """``import msam_core.data`` (every command that builds a dataset, and each ``compare``
    worker) leaves scipy to the loaders that use it: blurring digits_halves, reading WAVs."""
    assert _loaded_after_import("msam_core.data", ["scipy"]) == []


def test_the_flat_api_still_loads_on_use():
    code = (
        "import sys, msam_core; "
        "assert 'msam_core.train' not in sys.modules; "
        "from msam_core import MSAM, train, compare; "
        "import msam_core.train as t, msam_core.compare as c; "
        "assert callable(train) and t is train and c is compare, (t, train); "
        "assert msam_core.train is train and msam_core.masking.__name__ == 'msam_core.masking'; "
        "assert set(msam_core.__all__) <= set(dir(msam_core)); "
        "[getattr(msam_core, n) for n in msam_core.__all__]"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
