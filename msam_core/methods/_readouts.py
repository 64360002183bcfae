"""Coalition logits and per-modality parameter blocks, shared by the balancing methods.

OGM-GE reads each modality's unimodal output, AGM and M-SAM's attributed decomposition the
outputs of every coalition; all of them come from :func:`coalition_logits`:

* feature masking (late fusion, ``encode`` / ``fuse``): the fusion head sees each modality's
  features, an absent modality's replaced by the encoding of its baseline input.  For a concat
  head with a linear classifier the unimodal readout of modality m is
  ``W_m h_m + Σ_{k≠m} W_k b_k + c``, where OGM-GE's paper uses ``W_m h_m + c/2``: the two
  differ by a logit offset that is the same for every sample;
* input masking (any model, early fusion included): the model sees the batch once per
  coalition with the absent inputs at their baselines.

Shapes: ``K`` coalitions (rows of a bool mask ``[K, M]``), ``B`` samples, ``C`` classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from msam_core.coalitions import (
    baseline_inputs,
    encode_baselines,
    eval_mode,
    has_feature_path,
    unwrap,
)
from msam_core.masking import coalition_masks
from msam_core.param_groups import has_modality_groups, modality_parameter_groups


def singleton_masks(n_modalities: int, device: torch.device | str | None = None) -> Tensor:
    """``[M, M]`` bool identity: row m keeps modality m only (its unimodal coalition)."""
    return torch.eye(n_modalities, dtype=torch.bool, device=device)


def all_masks(n_modalities: int, device: torch.device | str | None = None) -> Tensor:
    """Every coalition, ``[2**M, M]`` in bitmask order (row 0 = none, last = all)."""
    return coalition_masks(n_modalities, device)


def _stack(x: Tensor, k: int) -> Tensor:
    return x.repeat(k, *([1] * (x.ndim - 1)))


def coalition_logits(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    masks: Tensor,
    *,
    features: Mapping[str, Tensor] | None = None,
    grad: bool = False,
) -> Tensor:
    """Logits ``[K, B, C]`` of the model with only coalition ``masks[k]`` present.

    Args:
        model: a protocol model (a DDP wrapper is unwrapped).
        inputs: ``{m: [B, ...]}``.
        masks: bool ``[K, M]`` in ``model.modalities`` order.
        features: the batch's features from a forward pass (late fusion); recomputed when
            None.  With ``grad=False`` they are detached.
        grad: False: no-grad, eval-mode passes (a readout, as coalition values are taken);
            True: the passes stay in the autograd graph, in the model's current mode.
    """
    core = unwrap(model)
    modalities = list(core.modalities)
    masks = masks.to(torch.bool)
    k = masks.shape[0]
    batch_size = int(inputs[modalities[0]].shape[0])
    row_mask = masks.to(inputs[modalities[0]].device).repeat_interleave(batch_size, dim=0)
    scope = contextlib.nullcontext() if grad else torch.no_grad()
    mode = contextlib.nullcontext() if grad else eval_mode(core)
    with scope, mode:
        if has_feature_path(core):
            if features is None:
                features = core.encode(inputs)
            if grad:
                # the baseline features stay differentiable, so the logits have the derivative
                # input masking would give them; encoded in eval mode as every coalition path
                # does (a one-sample batch has no batch statistics to normalise with)
                with eval_mode(core):
                    base = core.encode(baseline_inputs(core, inputs))
            else:
                base = encode_baselines(core, inputs)
            stacked = {}
            for i, m in enumerate(modalities):
                real = _stack(features[m] if grad else features[m].detach(), k)
                keep = row_mask[:, i].view(-1, *([1] * (real.ndim - 1)))
                stacked[m] = torch.where(keep, real, base[m].to(real))
            logits = core.fuse(stacked, row_mask)
        else:
            repeated = {m: _stack(inputs[m], k) for m in modalities}
            logits = core(repeated, row_mask)
    return logits.view(k, batch_size, -1)


def require_modality_encoders(model: nn.Module, method: str) -> None:
    """ValueError unless ``model`` has one encoder per modality and at least two modalities.

    The gradient-modulation methods scale each modality's encoder gradients, which early
    fusion does not have.
    """
    core = unwrap(model)
    modalities = list(getattr(core, "modalities", []) or [])
    if len(modalities) < 2:
        raise ValueError(
            f"{method} balances modalities against each other and needs at least two, "
            f"got {modalities}"
        )
    if not (has_feature_path(core) and has_modality_groups(core)):
        raise ValueError(
            f"{method} modulates each modality's encoder gradients and reads each modality's "
            f"output with the others masked at the fusion head; {type(core).__name__} has no "
            "per-modality encoders and encode/fuse (early fusion cannot give either). Use a "
            "late-fusion head: --fusion concat, sum, gated or film"
        )


def encoder_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each modality's encoder parameters, ``{m: [...]}`` in ``model.modalities`` order."""
    groups = modality_parameter_groups(unwrap(model))
    return {m: groups[m] for m in unwrap(model).modalities}


class ModulationWindow:
    """Epochs ``start .. end`` (inclusive; None = open) in which a method modulates gradients.

    The loop reports the epoch through the method's ``set_epoch``; a window that is set while
    no epoch was ever reported is an error rather than a silently ignored option.
    """

    def __init__(self, method: str, start: int | None = None, end: int | None = None) -> None:
        self.method = method
        self.start = None if start is None else int(start)
        self.end = None if end is None else int(end)
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(
                f"{method}: the modulation window ends (epoch {self.end}) before it starts "
                f"(epoch {self.start})"
            )

    @property
    def always(self) -> bool:
        return self.start is None and self.end is None

    def active(self, epoch: int | None) -> bool:
        """Whether to modulate in ``epoch`` (None: not known)."""
        if self.always:
            return True
        if epoch is None:
            raise RuntimeError(
                f"{self.method}: a modulation window (epochs {self.start} to {self.end}) is set "
                "but the training loop did not report the epoch (Method.set_epoch); drop the "
                "window options or use a loop that reports epochs"
            )
        return (self.start is None or epoch >= self.start) and (
            self.end is None or epoch <= self.end
        )
