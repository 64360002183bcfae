"""Tiny models that follow the model protocol (docs/design.md), for tests (importable by any test).

* :class:`TinyLateFusion`: one small encoder per modality (``encode``), a linear head on the
  concatenated features (``fuse``); optional BatchNorm in the encoders, and ``ignore`` names
  modalities whose features the head never reads (their Shapley value is exactly 0).
* :class:`TinyEarlyFusion`: the masked inputs joined, then one MLP; no ``encode`` / ``fuse``.
* :func:`tiny_batch`: a reproducible batch ``(inputs, targets)`` for these models.

Inputs are vectors: ``inputs[m]`` is ``[B, dims[m]]``. Absent modalities are replaced by zeros
(or the model's ``baselines`` when set), exactly as ``msam_core.masking.apply_input_mask`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from msam_core.masking import apply_input_mask, check_inputs, validate_mask


class TinyLateFusion(nn.Module):
    """``fuse(encode(apply_input_mask(x, mask)), mask)`` with ``encoders[m]: [B, d_m] -> [B, F]``.

    ``batchnorm=True`` puts a BatchNorm1d in every encoder (samples then interact in train
    mode).  ``ignore`` lists modalities the head leaves out of the concatenation.
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        num_classes: int = 3,
        feature_dim: int = 4,
        *,
        batchnorm: bool = False,
        dropout: float = 0.0,
        ignore: Sequence[str] = (),
        baselines: Mapping[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.modalities = list(dims)
        self.ignore = set(ignore)
        self.baselines = dict(baselines) if baselines is not None else None
        self.encoders = nn.ModuleDict()
        for m, d in dims.items():
            layers: list[nn.Module] = [nn.Linear(d, feature_dim)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(feature_dim))
            layers.append(nn.Tanh())
            self.encoders[m] = nn.Sequential(*layers)
        self.used = [m for m in self.modalities if m not in self.ignore]
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(feature_dim * len(self.used), num_classes)
        )

    def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        check_inputs(inputs, self.modalities)
        return {m: self.encoders[m](inputs[m]) for m in self.modalities}

    def fuse(self, features: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        batch_size = check_inputs(features, self.modalities)
        validate_mask(mask, len(self.modalities), batch_size)
        return self.head(torch.cat([features[m] for m in self.used], dim=1))

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        masked = apply_input_mask(inputs, mask, self.modalities, self.baselines)
        return self.fuse(self.encode(masked), mask)


class TinyEarlyFusion(nn.Module):
    """``MLP([x_1, ..., x_M])`` on the masked inputs; no per-modality encoders."""

    def __init__(
        self, dims: Mapping[str, int], num_classes: int = 3, hidden: int = 8, *, batchnorm=False
    ) -> None:
        super().__init__()
        self.modalities = list(dims)
        layers: list[nn.Module] = [nn.Linear(sum(dims.values()), hidden)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(), nn.Linear(hidden, num_classes)]
        self.network = nn.Sequential(*layers)

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        masked = apply_input_mask(inputs, mask, self.modalities)
        return self.network(torch.cat([masked[m] for m in self.modalities], dim=1))


def tiny_batch(
    dims: Mapping[str, int], batch_size: int = 16, num_classes: int = 3, seed: int = 0
) -> tuple[dict[str, Tensor], Tensor]:
    """Gaussian inputs ``{m: [B, d_m]}`` whose class shifts every modality's mean, and targets."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(num_classes, (batch_size,), generator=generator)
    inputs = {}
    for i, (m, d) in enumerate(dims.items()):
        centres = torch.randn(num_classes, d, generator=generator) * (1.0 + i)
        noise = torch.randn(batch_size, d, generator=generator)
        inputs[m] = centres[targets] + noise
    return inputs, targets
