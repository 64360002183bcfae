"""msam_core: train multimodal models with Modality-Aware SAM and record modality balance.

The flat public API re-exports the pieces in data-flow order (DESIGN.md):
masking -> coalitions -> shapley -> optim -> train -> record.
"""

from msam_core.data import (
    ModalitySpec,
    MultimodalDataset,
    TensorSplit,
    dataset_names,
    load_dataset,
    register_dataset,
)
from msam_core.models import (
    EarlyFusionModel,
    LateFusionModel,
    build_model,
    encoder_names,
    fusion_names,
    register_encoder,
)

__version__ = "0.1.0"

# the flat API: every name imported above (sorted; add new exports here too)
__all__ = [
    "EarlyFusionModel",
    "LateFusionModel",
    "ModalitySpec",
    "MultimodalDataset",
    "TensorSplit",
    "build_model",
    "dataset_names",
    "encoder_names",
    "fusion_names",
    "load_dataset",
    "register_dataset",
    "register_encoder",
]
