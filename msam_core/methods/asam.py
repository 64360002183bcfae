"""``asam``: Adaptive SAM (Kwon et al., ICML 2021), SAM with a scale-invariant ascent.

The ascent is taken in the space rescaled by each weight's magnitude, ``T_w = |w|``:
``ε = ρ · T_w² g / ‖T_w g‖`` (elementwise), so weights that are large get perturbed more and
a rescaling of a layer that leaves the network's function unchanged leaves the sharpness
unchanged too.  Everything else is the ``sam`` method (it is ``sam`` with ``adaptive=True``
forced), including the ``sharpness`` record, which here is ℓ(θ+ε) − ℓ(θ) for the adaptive ε.

ρ: the adaptive ε is about ``|w|`` times SAM's, so ASAM needs a larger ρ than SAM for the same
effect; Kwon et al. use ρ ten times SAM's (e.g. 0.5 against 0.05).  ``rho`` is the config's
(``--rho``), as for every method of the SAM family, so set it for ASAM explicitly.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msam_core.methods.registry import register_method
from msam_core.methods.sam import SamMethod


@register_method("asam")
class AsamMethod(SamMethod):
    """SAM with ``adaptive=True`` whatever the config says."""

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config.replace(adaptive=True))
