"""Models that follow the model protocol (docs/design.md): encoders, early and late fusion.

``build_model(dataset.modalities, dataset.num_classes, fusion="concat")`` is the usual entry.
Encoder modules register themselves on import; a new one needs one import line below.
"""

from msam_core.models.base import BASELINE_KINDS, LateFusionModel, MultimodalModel
from msam_core.models.early import EarlyFusionModel
from msam_core.models.encoders import (
    AUTO_ENCODER,
    ConvEncoder1d,
    ConvEncoder2d,
    MLPEncoder,
    build_encoder,
    encoder_names,
    register_encoder,
)
from msam_core.models.factory import FUSIONS, build_model, fusion_names
from msam_core.models.fusion import (
    FUSION_HEADS,
    ConcatFusion,
    FiLMFusion,
    FusionHead,
    GatedFusion,
    SharedFusion,
    SumFusion,
    make_classifier,
)

# Encoder modules beyond encoders.py (registered on import), one line each.
from msam_core.models import resnet  # noqa: F401  isort: skip

__all__ = [
    "AUTO_ENCODER",
    "BASELINE_KINDS",
    "FUSIONS",
    "FUSION_HEADS",
    "ConcatFusion",
    "ConvEncoder1d",
    "ConvEncoder2d",
    "EarlyFusionModel",
    "FiLMFusion",
    "FusionHead",
    "GatedFusion",
    "LateFusionModel",
    "MLPEncoder",
    "MultimodalModel",
    "SharedFusion",
    "SumFusion",
    "build_encoder",
    "build_model",
    "encoder_names",
    "fusion_names",
    "make_classifier",
    "register_encoder",
]
