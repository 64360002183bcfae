"""Which parameters belong to which modality: the blocks of per-modality measurements.

A late-fusion model keeps one encoder per modality in an ``nn.ModuleDict`` keyed by modality
name (conventionally ``model.encoders``).  Modality ``m``'s block is that encoder's parameters;
everything else (fusion head, shared layers) is the ``"fusion"`` block.  Per-modality sharpness,
Hessian blocks and modality-restricted landscape directions are all taken over these blocks.

:func:`modality_parameters` is the wider notion M-SAM's targeted ascent needs: a modality's
part may be entries of a shared tensor (early fusion: the first layer's columns reading it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FUSION = "fusion"


def _encoder_dict(model: nn.Module) -> tuple[str, nn.ModuleDict]:
    """Find the ModuleDict of per-modality encoders: ``model.encoders`` or the first other
    ModuleDict whose keys are exactly ``model.modalities``."""
    modalities = list(getattr(model, "modalities", []) or [])
    if not modalities:
        raise ValueError(
            f"{type(model).__name__} has no `modalities` attribute; per-modality parameter "
            "groups need a model following the msam protocol (model.modalities: list[str])"
        )
    if FUSION in modalities:
        raise ValueError(f"a modality may not be named {FUSION!r}: that name is the shared block")
    candidates = []
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, nn.ModuleDict):
        candidates.append(("encoders", encoders))
    candidates += [(n, mod) for n, mod in model.named_modules() if isinstance(mod, nn.ModuleDict)]
    for name, mod in candidates:
        if sorted(mod.keys()) == sorted(modalities):
            return name, mod
    raise ValueError(
        f"{type(model).__name__} has no per-modality encoders (an nn.ModuleDict keyed by "
        f"{modalities}, e.g. `model.encoders`); per-modality measurements need a late-fusion "
        "model (fusion concat, sum, gated or film), not early fusion"
    )


def modality_parameter_names(model: nn.Module) -> dict[str, list[str]]:
    """Names (as in ``model.named_parameters()``) of each block's trainable parameters.

    Keys: the modalities in ``model.modalities`` order, then ``"fusion"`` (all remaining
    trainable parameters; possibly empty).  Raises ValueError for models without
    per-modality encoders.
    """
    prefix, _ = _encoder_dict(model)
    modalities = list(model.modalities)
    groups: dict[str, list[str]] = {m: [] for m in [*modalities, FUSION]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        block = FUSION
        if name.startswith(prefix + "."):
            block = name[len(prefix) + 1 :].split(".", 1)[0]
        groups[block].append(name)
    return groups


def modality_parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each block's trainable parameters: ``{modality: [...], ..., "fusion": [...]}``.

    Modality ``m``'s block is its encoder (``model.encoders[m]``); ``"fusion"`` holds the
    head and any shared parameters.  Raises ValueError naming the problem for models
    without per-modality encoders (early fusion).
    """
    params = dict(model.named_parameters())
    return {b: [params[n] for n in names] for b, names in modality_parameter_names(model).items()}


def has_modality_groups(model: nn.Module) -> bool:
    """True when the model has per-modality encoders (so per-modality measures apply)."""
    try:
        _encoder_dict(model)
    except ValueError:
        return False
    return True


def block_choices(model: nn.Module) -> list[str]:
    """The block names a user may pick: the modalities, then ``"fusion"``."""
    return [*model.modalities, FUSION]


#: Each modality's share of the parameters: ``[(parameter, bool mask of its shape or None)]``.
ModalityParameters = dict[str, list[tuple[nn.Parameter, Tensor | None]]]

#: What a user can do when a model has no per-modality parameters (named in the error).
WAYS_OUT = (
    "use a late-fusion model (--fusion concat, sum, gated or film: each modality's encoder is "
    "its part), or early fusion (--fusion early: the first layer's columns reading it), or give "
    "the model a method modality_parameters() returning {modality: [parameter or (parameter, "
    "bool mask of its shape)]}, or perturb the whole model (--method_options.perturb all)"
)


def modality_parameters(model: nn.Module, needed_by: str = "this") -> ModalityParameters:
    """Which parameters (and which entries of them) belong to each modality.

    In order: the model's own ``modality_parameters()`` when it has one (the protocol's optional
    method; early fusion declares the columns of its first layer that read each modality); a
    late-fusion model's per-modality encoders (whole tensors, mask None).  Frozen parameters are
    left out.  Keys follow ``model.modalities``.  ValueError naming the ways out for a model
    with neither; ``needed_by`` names what asked.
    """
    modalities = list(getattr(model, "modalities", []) or [])
    declared = getattr(model, "modality_parameters", None)
    if callable(declared):
        parts = declared()
        if sorted(parts) != sorted(modalities):
            raise ValueError(
                f"{type(model).__name__}.modality_parameters() returned modalities "
                f"{sorted(parts)}; it must return one entry per modality of {modalities}"
            )
        own = {id(p) for p in model.parameters()}
        out: ModalityParameters = {}
        for m in modalities:
            entries = []
            for entry in parts[m]:
                p, mask = entry if isinstance(entry, tuple) else (entry, None)
                if id(p) not in own:  # the optimizer would not hold it: refused at build
                    raise ValueError(
                        f"{type(model).__name__}.modality_parameters()[{m!r}] holds a tensor of "
                        f"shape {list(p.shape)} that is not a parameter of the model; return "
                        "the model's own parameters (e.g. self.layer.weight), not copies"
                    )
                if mask is not None and (mask.dtype != torch.bool or mask.shape != p.shape):
                    raise ValueError(
                        f"{type(model).__name__}.modality_parameters()[{m!r}]: a mask must be a "
                        f"bool tensor of its parameter's shape {list(p.shape)}, got "
                        f"{mask.dtype} {list(mask.shape)}"
                    )
                if p.requires_grad:
                    entries.append((p, mask))
            out[m] = entries
        return out
    if has_modality_groups(model):
        groups = modality_parameter_groups(model)
        return {m: [(p, None) for p in groups[m]] for m in modalities}
    raise ValueError(
        f"{needed_by} needs to know which parameters belong to each modality, and "
        f"{type(model).__name__} declares none (no per-modality encoders, no "
        f"modality_parameters() method). Ways out: {WAYS_OUT}"
    )
