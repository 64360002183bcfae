"""Datasets: the contract (:mod:`base`), the name registry, and the sets that register into it.

Importing this package registers every shipped dataset: each dataset module calls
``register_dataset`` at import, so a new one needs one import line in the block below.
"""

from msam_core.data.base import MODALITY_KINDS, ModalitySpec, MultimodalDataset, TensorSplit
from msam_core.data.registry import dataset_names, load_dataset, register_dataset

# Dataset modules (registered on import), one line each.
from msam_core.data import synthetic  # noqa: F401  isort: skip
from msam_core.data import mfeat  # noqa: F401  isort: skip
from msam_core.data import basic_motions  # noqa: F401  isort: skip
from msam_core.data import digits_halves  # noqa: F401  isort: skip
from msam_core.data.av import cremad  # noqa: F401  isort: skip
from msam_core.data.av import ave  # noqa: F401  isort: skip
from msam_core.data.av import kinetics_sounds  # noqa: F401  isort: skip
from msam_core.data.av import avmnist  # noqa: F401  isort: skip

from msam_core.data.synthetic import load_synthetic

__all__ = [
    "MODALITY_KINDS",
    "ModalitySpec",
    "MultimodalDataset",
    "TensorSplit",
    "dataset_names",
    "load_dataset",
    "load_synthetic",
    "register_dataset",
]
