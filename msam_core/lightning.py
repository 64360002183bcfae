"""M-SAM (or any msam method) and msam's run directory inside PyTorch Lightning.

:class:`MsamLightningModule` wraps a protocol model and a dataset.  Lightning drives the epochs,
devices, callbacks and loggers; each training step is the registered method's own step
(manual optimisation: M-SAM's two passes and its weighted descent are one call, the same
``Method.step`` :func:`msam_core.train` makes), and every record goes through
:class:`msam_core.Recorder` into a run directory, so msam's figures, widgets, ``msam report``
and ``load_trained`` read a Lightning run like any other.  The numbers are also handed to
``self.log`` (``loss``, ``sharpness``, ``phi/<m>``, ``weight/<m>``; ``val/acc`` ... at epoch
ends), so Lightning's own loggers (TensorBoard, CSV, W&B) see them (every
``Trainer(log_every_n_steps=...)`` steps; the run directory gets every step).  A fit is not
resumed from a Lightning checkpoint (``fit(ckpt_path=...)`` is refused before anything is
written): the checkpoint lacks the run's step count, data order, schedule and method state::

    module = MsamLightningModule(model, data, "runs/lightning", method="msam", epochs=2)
    lightning.Trainer(max_epochs=2, logger=False).fit(module)

The batches and their order are :func:`msam_core.train`'s (a permutation per epoch from a
generator seeded by ``seed``), the learning-rate schedule is its schedule, and the initial
weights are evaluated as epoch 0, so with the same seed and model initialisation a Lightning
fit records the steps ``msam train`` records (``tests/test_lightning.py``).  One process;
needs the ``lightning`` extra (``pip install 'msam[lightning]'``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from msam_core.batches import fetch_batch
from msam_core.config import TrainConfig, resolve_config
from msam_core.data import MultimodalDataset
from msam_core.methods import build_method
from msam_core.recorder import Recorder
from msam_core.train import build_scheduler, check_model_matches_data

try:
    import lightning as L
except ImportError as err:  # pragma: no cover - the extra is installed with dev
    raise ImportError(
        "msam_core.lightning needs PyTorch Lightning: pip install 'msam[lightning]' "
        f"(or pip install lightning) ({err})"
    ) from err


class _EpochOrder(Sampler):
    """One permutation of the training set per epoch from a seeded generator, cut into batches
    of indices: the order :func:`msam_core.train` draws."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator)
        yield from order.split(self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class _Batches(Dataset):
    """``split[indices]`` as one batch ``(inputs, targets)`` (one indexing op in memory)."""

    def __init__(self, split: Dataset) -> None:
        self.split = split

    def __getitem__(self, indices: torch.Tensor):
        return fetch_batch(self.split, indices)

    def __len__(self) -> int:
        return len(self.split)  # type: ignore[arg-type]


def _as_is(batch):
    return batch


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    skip = ("step", "epoch", "n")
    return {
        k: float(v)
        for k, v in record.items()
        if k not in skip
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


class MsamLightningModule(L.LightningModule):
    """A LightningModule that trains ``model`` on ``data`` with an msam method and records the
    run in ``out`` (module docstring).

    Args:
        model: a model following the protocol (``check_model`` says whether it does).
        data: a :class:`~msam_core.MultimodalDataset`; its train split is the training data,
            and train / val / test are evaluated at each epoch end.
        out: the run directory.
        config: a :class:`~msam_core.TrainConfig`, mapping or file, with ``**overrides``
            (``method="msam", rho=0.05, lr=0.05, batch_size=64, seed=0, epochs=...``).  Set
            ``epochs`` to the Trainer's ``max_epochs`` (the schedule and the summary use it).
        overwrite: replace a previous run in ``out``.
    """

    def __init__(
        self,
        model: nn.Module,
        data: MultimodalDataset,
        out: str | os.PathLike,
        config: TrainConfig | Mapping[str, Any] | str | os.PathLike | None = None,
        *,
        overwrite: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the method's step does both SAM passes
        self.steps_done = 0  # optimisation steps taken (the method's step_index)
        cfg = resolve_config(config, **overrides)
        check_model_matches_data(model, data)
        self.model = model
        self.config = cfg
        self.out = out
        self.overwrite = overwrite
        self.method = build_method(cfg.method, model, cfg)
        # as msam train: the method may hold part of train out for itself (G-Blending)
        self.data = dataclasses.replace(data, train=self.method.training_split(data.train))
        self.steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        scheduled = getattr(self.method.optimizer, "base_optimizer", self.method.optimizer)
        self.scheduler = build_scheduler(scheduled, cfg, self.steps_per_epoch)
        self.recorder: Recorder | None = None

    # -- what Lightning asks for -------------------------------------------------------------

    def forward(self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None):
        return self.model(inputs, mask)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the method owns the optimizer; Lightning gets it for its checkpoints and hooks
        return self.method.optimizer

    def train_dataloader(self) -> DataLoader:
        cfg = self.config
        order = _EpochOrder(len(self.data.train), cfg.batch_size, cfg.seed)
        return DataLoader(
            _Batches(self.data.train), batch_size=None, sampler=order, collate_fn=_as_is
        )

    # -- the run ---------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume a fit: Lightning calls this before it loads the checkpoint's
        weights into the model (with every strategy), so the refusal changes nothing."""
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            raise ValueError(
                f"Trainer.fit(ckpt_path={str(trainer.ckpt_path)!r}): a Lightning checkpoint "
                "holds neither the run directory's step count nor its data order, learning-rate "
                "schedule or method state, so a resumed fit would record wrong steps; start the "
                "fit again without ckpt_path (with another out, or overwrite=True), or train "
                "with `msam train` and continue it with `msam train --resume RUN`, which resumes "
                "bit for bit. The model's weights were left as they were"
            )

    def on_fit_start(self) -> None:
        if str(self.trainer.precision).startswith("16"):
            raise ValueError(
                f"Trainer(precision={self.trainer.precision!r}): the method's step takes its own "
                "backward passes (both SAM passes), which Lightning's gradient scaler never sees, "
                "so fp16 would train unscaled; use precision='bf16-mixed', or msam train "
                "--precision fp16 (its loss scaling runs through every pass)"
            )
        if self.trainer.is_global_zero:
            self.recorder = Recorder(
                self.out, self.model, data=self.data, config=self.config, overwrite=self.overwrite
            )
            self._evaluate(0)  # the initial weights, as msam train records them

    def on_train_epoch_start(self) -> None:
        self.method.set_epoch(self.current_epoch + 1)
        self.model.train()

    def training_step(self, batch, batch_idx: int) -> None:
        inputs, targets = batch
        lr = self.method.optimizer.param_groups[0]["lr"]
        self.method.step_index = self.steps_done  # seeds the step's shapley_rows subset
        device = self.device.type
        # Lightning's autocast (bf16-mixed) as it is, without its cast cache: a step moves
        # weights in place (SAM's θ+ε, MLA's sub-steps), as msam train runs autocast
        with torch.autocast(
            device,
            dtype=torch.get_autocast_dtype(device),
            enabled=torch.is_autocast_enabled(device),
            cache_enabled=False,
        ):
            record = self.method.step(self.model, inputs, targets)
        self.steps_done += 1
        self.scheduler.step()
        if self.recorder is not None:
            record = self.recorder.log_step(record, epoch=self.current_epoch + 1, lr=lr)
        self.log_dict(_scalars(record), on_step=True, on_epoch=False, batch_size=len(targets))

    def on_train_epoch_end(self) -> None:
        self._evaluate(self.current_epoch + 1)

    def _evaluate(self, epoch: int) -> None:
        if self.recorder is None:
            return
        metrics = self.recorder.evaluate(self.model, epoch)
        logged = {
            f"{split}/{k}": v for split, rec in metrics.items() for k, v in _scalars(rec).items()
        }
        if epoch > 0:  # self.log is not allowed outside the training loop's hooks
            self.log_dict(logged, on_step=False, on_epoch=True)

    def on_fit_end(self) -> None:
        if self.recorder is not None:
            finished = self.current_epoch >= self.config.epochs
            stopped = None if finished else f"stopped after epoch {self.current_epoch}"
            self.recorder.close(finished=finished, stopped=stopped)

    def configure_callbacks(self) -> list[L.Callback]:
        return [_CloseOnError()]


class _CloseOnError(L.Callback):
    """A fit that raises (or is interrupted) still leaves a summary saying why it stopped."""

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, error: BaseException):
        recorder = getattr(module, "recorder", None)
        if recorder is not None:
            recorder.close(finished=False, stopped=f"{type(error).__name__}: {error}")
