"""Record your own training loop into a run directory, as :func:`msam_core.train` does.

msam's figures, widgets, ``msam report``, ``load_run`` and ``load_trained`` read run
directories; :class:`Recorder` writes one from any loop (yours, or the Lightning module in
:mod:`msam_core.lightning`)::

    with Recorder("runs/mine", model, data=data, method="msam", lr=0.05, epochs=3) as rec:
        rec.evaluate(model, epoch=0)                      # the initial weights (optional)
        for epoch in range(1, 4):
            for inputs, targets in batches:
                result = msam_step(model, optimizer, inputs, targets)
                rec.log_step(result, epoch=epoch, lr=optimizer.param_groups[0]["lr"])
            rec.evaluate(model, epoch=epoch)              # train / val / test, best.pt, summary

It writes what the loop writes: ``config.json`` (the config keys, the modality order, your
dataset's name), one ``iterations.jsonl`` line per step, ``epochs.jsonl`` lines per evaluation,
``summary.json`` (best epoch on val, never test), ``checkpoints/best.pt`` and
``checkpoints/epoch_XXXX.pt`` (the model's weights, for ``load_trained(run, model=...,
data=...)`` and landscapes), and hands every record to the same sinks (TensorBoard with
``log_to=["tensorboard"]``; the watch that warns when a model ignores ``mask``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from msam_core.config import TrainConfig, resolve_config
from msam_core.data import MultimodalDataset
from msam_core.derived import SELECTION, selection_key
from msam_core.evaluate import evaluate_split
from msam_core.layout import epoch_checkpoint_name
from msam_core.record import RunWriter
from msam_core.rundir import CHECKPOINT_FORMAT, save_checkpoint
from msam_core.sinks import Sink, check_log_targets, open_sinks

SPLITS = ("train", "val", "test")


class Recorder:
    """A run directory for a loop you write yourself (module docstring).

    Args:
        out: the run directory (created; an existing run needs ``overwrite=True``).
        model: your model, following the protocol (``model.modalities``; see ``check_model``).
        data: your :class:`~msam_core.MultimodalDataset`, for :meth:`evaluate` and the config's
            ``dataset`` name (None: the config's registered dataset).
        config: a :class:`~msam_core.TrainConfig`, mapping or file; with ``**overrides``
            (``method="msam", lr=0.05, rho=0.05, epochs=3, batch_size=64``) it says what the
            loop does, so figures and ``msam report`` label the run correctly.
        overwrite: replace a previous run in ``out``.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        model: nn.Module,
        *,
        data: MultimodalDataset | None = None,
        config: TrainConfig | Mapping[str, Any] | str | os.PathLike | None = None,
        overwrite: bool = False,
        **overrides: Any,
    ) -> None:
        cfg = resolve_config(config, **overrides)
        if data is not None and cfg.dataset != data.name:
            cfg = cfg.replace(dataset=data.name)
        check_log_targets(cfg.log_to)  # before anything is written
        modalities = list(getattr(model, "modalities", None) or [])
        if not modalities:
            raise ValueError(
                f"{type(model).__name__} has no `modalities` list: the recorder needs the "
                "model protocol (check it with msam_core.check_model(model, batch))"
            )
        self.config: TrainConfig = cfg
        self.data = data
        self.modalities = modalities
        self.writer = RunWriter(out, overwrite=overwrite, fsync=cfg.fsync)
        self.path: Path = self.writer.path
        info: dict[str, Any] = {
            "modalities": modalities,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "custom_data": data is not None,
            "recorded_by": "msam_core.Recorder",
        }
        device = next((p.device for p in model.parameters()), None)
        if device is not None:
            info["device"] = str(device)
        if data is not None:
            n_train = len(data.train)
            info.update(
                num_classes=int(data.num_classes),
                dataset_name=data.name,
                n_train=n_train,
                steps_per_epoch=math.ceil(n_train / cfg.batch_size),
                dataset_info=data.info,
            )
        self.writer.write_config(cfg.to_dict(), run_info=info)
        self.sinks: list[Sink] = open_sinks(cfg.log_to, self.path, modalities)
        self.step = 0
        self.epoch = 0
        self.best_epoch: int | None = None
        self._best_key: tuple[float, float] | None = None
        self._best: dict[str, dict[str, Any]] = {}
        self._sharpness: list[float] = []
        self._closed = False

    # -- records ---------------------------------------------------------------------------

    def log_step(
        self, result: Any, *, epoch: int, lr: float | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Append one step's record; returns it.

        ``result`` is what a step function returns (:class:`~msam_core.StepResult`, e.g. from
        ``msam_step``) or a mapping of record keys (``loss``, ``phi/<m>``, ...).  The recorder
        numbers the steps (``step`` 1, 2, ...) and adds ``epoch``, ``lr`` and ``extra`` keys.
        """
        body = result.to_record(self.modalities) if hasattr(result, "to_record") else result
        if not isinstance(body, Mapping):
            raise TypeError(
                f"log_step takes a StepResult or a mapping of record keys, got "
                f"{type(result).__name__}"
            )
        self.step += 1
        record: dict[str, Any] = {"step": self.step, "epoch": int(epoch)}
        if lr is not None:
            record["lr"] = float(lr)
        record.update(body)
        record.update(extra)
        sharpness = record.get("sharpness")
        if isinstance(sharpness, int | float) and math.isfinite(sharpness):
            self._sharpness.append(float(sharpness))
        self.writer.log_iteration(record)
        for sink in self.sinks:
            sink.log_iteration(record)
        return record

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Append one evaluation record (it carries ``epoch`` and ``split``)."""
        if "split" not in record or "epoch" not in record:
            raise ValueError("an evaluation record needs 'epoch' and 'split' keys")
        self.writer.log_epoch(record)
        for sink in self.sinks:
            sink.log_epoch(record)

    def evaluate(
        self,
        model: nn.Module,
        epoch: int,
        data: MultimodalDataset | None = None,
        *,
        checkpoint: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Evaluate ``model`` on train / val / test (:func:`~msam_core.evaluate_split`: loss,
        acc, acc/<m>, phi/<m>, balance), record them, select on val, and save the weights.

        ``checkpoint``: write ``checkpoints/epoch_XXXX.pt`` (weights, epoch, step, config);
        ``best.pt`` is written whenever val improves (epoch 0, the initial weights, never
        counts as best).  ``summary.json`` is rewritten.  Returns ``{split: record}``.
        """
        data = data if data is not None else self.data
        if data is None:
            raise ValueError("evaluate needs the data: Recorder(..., data=...) or data=...")
        cfg = self.config
        metrics = {}
        for split in SPLITS:
            result = evaluate_split(
                model,
                data.split(split),
                batch_size=cfg.eval_batch_size,
                value=cfg.shapley_value,
            )
            metrics[split] = {"epoch": int(epoch), "split": split, "step": self.step, **result}
            self.log_epoch(metrics[split])
        self.epoch = max(self.epoch, int(epoch))
        state = {"model": model.state_dict(), "epoch": int(epoch), "step": self.step}
        key = selection_key(metrics["val"])
        if epoch > 0 and (self._best_key is None or key > self._best_key):
            self._best_key, self.best_epoch, self._best = key, int(epoch), metrics
            save_checkpoint(state, self.writer.checkpoints_dir / "best.pt")
        if checkpoint:
            full = {**state, "format": CHECKPOINT_FORMAT, "config": cfg.to_dict()}
            save_checkpoint(full, self.writer.checkpoints_dir / epoch_checkpoint_name(epoch))
        self._write_summary(finished=False)
        return metrics

    # -- end -------------------------------------------------------------------------------

    def _write_summary(self, *, finished: bool, stopped: str | None = None) -> None:
        cfg = self.config
        summary: dict[str, Any] = {
            "name": cfg.name or self.path.name,
            "method": cfg.method,
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "modalities": self.modalities,
            "epochs": max(cfg.epochs, self.epoch) if finished else cfg.epochs,
            "epochs_done": self.epoch,
            "steps": self.step,
            "finished": finished,
            "stopped": stopped,
            "diverged": False,
            "selection": SELECTION,
            "best_epoch": self.best_epoch,
            "best": {split: dict(record) for split, record in self._best.items()},
        }
        if self._sharpness:
            summary["mean_sharpness"] = sum(self._sharpness) / len(self._sharpness)
        self.writer.write_summary(summary)

    def close(self, *, finished: bool = True, stopped: str | None = None) -> None:
        """Write the final summary and close the files (``finished=False``: the loop stopped
        early, ``stopped`` says why)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._write_summary(finished=finished, stopped=stopped)
        finally:
            self.writer.close()
            for sink in self.sinks:
                sink.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _) -> None:
        if kind is None:
            self.close()
        else:
            self.close(finished=False, stopped=f"{kind.__name__}: {error}")

    def __repr__(self) -> str:
        return f"Recorder({str(self.path)!r}, steps={self.step}, epochs_done={self.epoch})"
