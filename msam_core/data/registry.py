"""Dataset registry: the names users type (docs/design.md, "Names users type") -> loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msam_core.data.base import MultimodalDataset
from msam_core.options import check_options
from msam_core.suggest import did_you_mean

DatasetLoader = Callable[..., MultimodalDataset]
_DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator: make ``loader(**options) -> MultimodalDataset`` available as ``name``."""

    def decorate(loader: DatasetLoader) -> DatasetLoader:
        if name in _DATASETS and _DATASETS[name] is not loader:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = loader
        return loader

    return decorate


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def load_dataset(name: str, **options: Any) -> MultimodalDataset:
    """Build dataset ``name`` with loader ``options`` (seed, data_root, ...).

    Raises ValueError listing the registered names when ``name`` is unknown, and the
    loader's options when one of ``options`` is not among them.
    """
    if name not in _DATASETS:
        choices = dataset_names()
        raise ValueError(
            f"unknown dataset {name!r}{did_you_mean(name, choices)}; choose one of {choices}"
        )
    check_options(_DATASETS[name], options, f"dataset_options of {name!r}")
    return _DATASETS[name](**options)
