"""Which parameters belong to which modality: the blocks of per-modality measurements.

A late-fusion model keeps one encoder per modality in an ``nn.ModuleDict`` keyed by modality
name (conventionally ``model.encoders``).  Modality ``m``'s block is that encoder's parameters;
everything else (fusion head, shared layers) is the ``"fusion"`` block.  Per-modality sharpness,
Hessian blocks and modality-restricted landscape directions are all taken over these blocks.
"""

from __future__ import annotations

from torch import nn

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
