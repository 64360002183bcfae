"""The step shared by the gradient-modulation baselines (OGM-GE, AGM).

Both take the ordinary backward pass, read per-modality scores from the coalition logits,
turn them into one coefficient per modality, scale each modality's encoder gradients by it
(inside the ``<prefix>_start`` / ``<prefix>_end`` epoch window) and let the base optimizer
step.  A subclass supplies :meth:`EncoderModulation.readout` (and may override
:meth:`EncoderModulation.modulate`); this class does the rest and writes the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from msam_core.methods._readouts import (
    ModulationWindow,
    encoder_parameters,
    require_modality_encoders,
)
from msam_core.methods.base import Method
from msam_core.shapley import ShapleyResult
from msam_core.step import FirstPass, Update, run_step


class EncoderModulation(Method):
    """A method that rescales each modality's encoder gradients after the backward pass.

    ``prefix`` names the method in errors and its window options (``<prefix>_start``,
    ``<prefix>_end``), which subclasses list in their ``OPTIONS``.
    """

    prefix = ""

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        require_modality_encoders(model, self.name)
        self.window = ModulationWindow(
            self.name,
            self.option(f"{self.prefix}_start", None),
            self.option(f"{self.prefix}_end", None),
        )
        self.encoders = encoder_parameters(model)
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """The loop reports the epoch about to start (for the modulation window)."""
        self.epoch = int(epoch)

    def readout(
        self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor, features: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(coefficients [M], {record field: [M]})`` for this batch; called once per step."""
        raise NotImplementedError

    @torch.no_grad()
    def modulate(self, coefficients: Tensor) -> None:
        """Multiply each modality's encoder gradients by its coefficient, in place."""
        for m, name in enumerate(self.modalities):
            k = float(coefficients[m])
            for p in self.encoders[name]:
                if p.grad is not None:
                    p.grad.mul_(k)

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        found: dict[str, Any] = {}

        def update(first: FirstPass, shapley: ShapleyResult | None) -> Update:
            coefs, fields = self.readout(model, inputs, targets, first.features)
            active = self.window.active(self.epoch)
            # recorded before the step: an fp16 step skipped at the optimizer step keeps them
            found.update(coefs=coefs, fields=fields, active=active)
            if active:
                self.modulate(coefs)
            self.optimizer.step()
            return Update()

        value = self.config.shapley_value
        rows = self.shapley_rows(targets)
        result = run_step(model, self.optimizer, inputs, targets, update, value=value, rows=rows)
        record = result.to_record(self.modalities)
        coefs, active = found["coefs"], found["active"]
        for m, name in enumerate(self.modalities):
            for field, values in found["fields"].items():
                record[f"{field}/{name}"] = float(values[m])
            record[f"coef/{name}"] = float(coefs[m]) if active else 1.0
        return record
