"""msam_core: train multimodal models with Modality-Aware SAM and record modality balance.

The flat public API re-exports the pieces in data-flow order (docs/design.md, "Layers"):
masking -> coalitions -> shapley -> optim -> train -> record.
"""

from msam_core.check import ModelCheck, check_model
from msam_core.coalitions import coalition_values, coalition_values_from_features

# `compare` the function shadows its submodule as a package attribute (as `train` does):
# import the module's other names with `from msam_core.compare import ...`
from msam_core.compare import compare
from msam_core.config import TrainConfig
from msam_core.data import (
    ModalitySpec,
    MultimodalDataset,
    TensorSplit,
    dataset_names,
    load_dataset,
    register_dataset,
)
from msam_core.evaluate import balance_entropy, evaluate_split
from msam_core.hessian import hessian_record, hessian_top_eigenvalue, hutchinson_trace
from msam_core.landscape import (
    Landscape,
    compute_landscape,
    landscape_for_run,
    load_landscape,
    load_landscapes,
    pca_directions,
    random_direction,
    save_landscape,
)
from msam_core.methods import Method, build_method, method_names, register_method
from msam_core.models import (
    EarlyFusionModel,
    LateFusionModel,
    build_model,
    encoder_names,
    fusion_names,
    register_encoder,
)
from msam_core.optim import MSAM, SAM
from msam_core.param_groups import modality_parameter_groups
from msam_core.record import Run, RunWriter, load_run
from msam_core.recorder import Recorder
from msam_core.rundir import TrainedModel, load_trained
from msam_core.shapley import (
    ShapleyResult,
    balance_weights,
    exact_shapley,
    modality_shapley,
    permutation_shapley,
)

# (`sharpness` itself stays in msam_core.sharpness: a package attribute of that name would
# shadow the submodule for `import msam_core.sharpness as ...`)
from msam_core.sharpness import modality_sharpness, periodic_measures
from msam_core.step import (
    NonFiniteLossError,
    StepResult,
    frozen_batchnorm_stats,
    msam_step,
    plain_step,
    sam_step,
)

# `train` the function shadows the submodule as a package attribute: import the module's
# other names with `from msam_core.train import ...`
from msam_core.train import TrainingControl, TrainingDiverged, train
from msam_core.version import __version__ as __version__

# the flat API: every name imported above (sorted; add new exports here too)
__all__ = [
    "MSAM",
    "SAM",
    "EarlyFusionModel",
    "Landscape",
    "LateFusionModel",
    "Method",
    "ModalitySpec",
    "ModelCheck",
    "MultimodalDataset",
    "NonFiniteLossError",
    "Recorder",
    "Run",
    "RunWriter",
    "ShapleyResult",
    "StepResult",
    "TensorSplit",
    "TrainConfig",
    "TrainedModel",
    "TrainingControl",
    "TrainingDiverged",
    "balance_entropy",
    "balance_weights",
    "build_method",
    "build_model",
    "check_model",
    "coalition_values",
    "coalition_values_from_features",
    "compare",
    "compute_landscape",
    "dataset_names",
    "encoder_names",
    "evaluate_split",
    "exact_shapley",
    "frozen_batchnorm_stats",
    "fusion_names",
    "hessian_record",
    "hessian_top_eigenvalue",
    "hutchinson_trace",
    "landscape_for_run",
    "load_dataset",
    "load_landscape",
    "load_landscapes",
    "load_run",
    "load_trained",
    "method_names",
    "modality_parameter_groups",
    "modality_shapley",
    "modality_sharpness",
    "msam_step",
    "pca_directions",
    "periodic_measures",
    "permutation_shapley",
    "plain_step",
    "random_direction",
    "register_dataset",
    "register_encoder",
    "register_method",
    "sam_step",
    "save_landscape",
    "train",
]
