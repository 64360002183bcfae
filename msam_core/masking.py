"""Coalitions as bitmasks, and replacing absent modalities by their baselines.

Bit ``m`` of a coalition index is set when modality ``m`` (in ``model.modalities`` order)
is present.  A mask is the same information as a bool tensor: ``[M]`` for one coalition
applied to the whole batch, or ``[B, M]`` for one coalition per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def coalition_masks(n_modalities: int, device: torch.device | str | None = None) -> Tensor:
    """All ``2**M`` coalitions as a bool tensor ``[2**M, M]``; row ``k`` is bitmask ``k``."""
    if n_modalities < 1:
        raise ValueError(f"need at least one modality, got {n_modalities}")
    index = torch.arange(2**n_modalities, device=device)
    bits = torch.arange(n_modalities, device=device)
    return (index.unsqueeze(1) >> bits).bitwise_and(1).bool()


def mask_to_index(mask: Tensor) -> Tensor:
    """Bool mask ``[..., M]`` -> coalition bitmask index ``[...]`` (long)."""
    weights = 2 ** torch.arange(mask.shape[-1], device=mask.device)
    return (mask.long() * weights).sum(-1)


def validate_mask(mask: Tensor | None, n_modalities: int, batch_size: int) -> Tensor | None:
    """Check a mask against the protocol and return it as bool ``[M]`` or ``[B, M]``.

    Raises ValueError naming the expected and received shapes.
    """
    if mask is None:
        return None
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"mask must be boolean (or 0/1 integers), got dtype {mask.dtype}")
        mask = mask.bool()
    ok_1d = mask.ndim == 1 and mask.shape[0] == n_modalities
    ok_2d = mask.ndim == 2 and mask.shape == (batch_size, n_modalities)
    if not (ok_1d or ok_2d):
        raise ValueError(
            f"mask must have shape [{n_modalities}] or [{batch_size}, {n_modalities}] "
            f"(modalities in model.modalities order), got {list(mask.shape)}"
        )
    return mask


def check_inputs(inputs: Mapping[str, Tensor], modalities: Sequence[str]) -> int:
    """Check every modality is present with one shared batch size; return that batch size."""
    missing = [m for m in modalities if m not in inputs]
    if missing:
        raise KeyError(
            f"inputs are missing modalities {missing}; the model expects {list(modalities)} "
            f"and got {sorted(inputs)}"
        )
    sizes = {m: int(inputs[m].shape[0]) for m in modalities}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"modalities disagree on batch size: {sizes}")
    return next(iter(sizes.values()))


def apply_input_mask(
    inputs: Mapping[str, Tensor],
    mask: Tensor | None,
    modalities: Sequence[str],
    baselines: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Replace each absent modality's input by its baseline (zeros unless given).

    ``baselines[m]`` broadcasts against one sample (e.g. a per-modality mean ``[*shape]``).
    Returns a new dict; inputs are not modified.
    """
    batch_size = check_inputs(inputs, modalities)
    mask = validate_mask(mask, len(modalities), batch_size)
    if mask is None:
        return dict(inputs)
    out = dict(inputs)
    for m, name in enumerate(modalities):
        x = inputs[name]
        base = baselines.get(name) if baselines is not None else None
        base = torch.zeros((), dtype=x.dtype, device=x.device) if base is None else base.to(x)
        keep = mask[m] if mask.ndim == 1 else mask[:, m].view(-1, *([1] * (x.ndim - 1)))
        keep = keep.to(x.device)
        out[name] = torch.where(keep, x, base)
    return out
