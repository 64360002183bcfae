"""msam_core: train multimodal models with Modality-Aware SAM and record modality balance.

The flat public API re-exports the pieces in data-flow order (docs/design.md, "Layers"):
masking -> coalitions -> shapley -> optim -> train -> record.

Names are imported on first use (PEP 562), so ``import msam_core.landscape`` or
``from msam_core.shapley import exact_shapley`` loads only the numerical modules it needs, not
the config / CLI / run-directory machinery (PyYAML, pandas, the audio loaders' scipy.signal);
``from msam_core import train`` works as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from msam_core.version import __version__ as __version__

# the flat API: module -> the names it exports (add new exports here)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "check": ("ModelCheck", "check_model"),
    "coalitions": ("coalition_values", "coalition_values_from_features"),
    "compare": ("compare",),
    "config": ("TrainConfig",),
    "data": (
        "ModalitySpec",
        "MultimodalDataset",
        "TensorSplit",
        "dataset_names",
        "load_dataset",
        "register_dataset",
    ),
    "evaluate": ("balance_entropy", "evaluate_split"),
    "hessian": ("hessian_record", "hessian_top_eigenvalue", "hutchinson_trace"),
    "landscape": (
        "Landscape",
        "compute_landscape",
        "landscape_for_run",
        "load_landscape",
        "load_landscapes",
        "pca_directions",
        "random_direction",
        "save_landscape",
    ),
    "methods": ("Method", "build_method", "method_names", "register_method"),
    "models": (
        "EarlyFusionModel",
        "LateFusionModel",
        "build_model",
        "encoder_names",
        "fusion_names",
        "register_encoder",
    ),
    "optim": ("MSAM", "SAM"),
    "param_groups": ("modality_parameter_groups",),
    "record": ("Run", "RunWriter", "load_run"),
    "recorder": ("Recorder",),
    "shapley": (
        "ShapleyResult",
        "balance_weights",
        "exact_shapley",
        "modality_shapley",
        "permutation_shapley",
    ),
    # (`sharpness` itself stays in msam_core.sharpness: a package attribute of that name would
    # shadow the submodule for `import msam_core.sharpness as ...`)
    "sharpness": ("modality_sharpness", "periodic_measures"),
    "step": (
        "NonFiniteLossError",
        "StepResult",
        "frozen_batchnorm_stats",
        "msam_step",
        "plain_step",
        "sam_step",
    ),
    "rundir": ("TrainedModel", "load_trained"),
    "train": ("TrainingControl", "TrainingDiverged", "train"),
}
_SOURCE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_SOURCE)

# `train` and `compare` the functions shadow their submodules as package attributes: import
# the modules' other names with `from msam_core.train import ...`
_SHADOWING = frozenset(n for n in _SOURCE if n == _SOURCE[n])


def __getattr__(name: str) -> Any:
    if name in _SOURCE:
        value = getattr(importlib.import_module(f"{__name__}.{_SOURCE[name]}"), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a submodule: msam_core.masking
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Keeps ``msam_core.train`` / ``msam_core.compare`` the functions once their submodules
    are imported (the import system sets a submodule as its package's attribute)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWING and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
