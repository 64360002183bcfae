"""Where records go besides the run directory, and what watches them as they pass.

A *sink* takes every record a training loop writes (``log_iteration`` for step records,
``log_epoch`` for per-split evaluation records) and is closed at the end.  The loop of
:func:`msam_core.train`, :class:`msam_core.Recorder` (your own loop) and the Lightning module
hand records to the same sinks, so they behave alike wherever the training runs:

- :class:`TensorBoardSink` (config ``log_to: [tensorboard]``, ``msam train --tensorboard``)
  writes the scalars to ``RUN/tensorboard/`` for TensorBoard;
- :class:`IgnoredMaskWatch` warns when every modality's φ has been identical for many steps,
  the signature of a model that ignores ``mask``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

#: the names ``log_to`` accepts
LOG_TARGETS = ("tensorboard",)
TENSORBOARD_DIR = "tensorboard"
#: consecutive steps with identical φ for every modality before the watch warns
IGNORED_MASK_STEPS = 50


class Sink(Protocol):
    def log_iteration(self, record: Mapping[str, Any]) -> None: ...

    def log_epoch(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _scalars(record: Mapping[str, Any], skip: Iterable[str]) -> dict[str, float]:
    """The record's finite numbers (bools, strings, nulls and counters left out)."""
    skipped = set(skip)
    return {
        key: float(value)
        for key, value in record.items()
        if key not in skipped
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class TensorBoardSink:
    """Scalars for TensorBoard in ``RUN/tensorboard/``.

    Step records at their ``step``: ``loss``, ``lr``, ``sharpness``, ``phi/<m>``,
    ``weight/<m>`` and every other measured number under its record key.  Evaluation records at
    their ``epoch``, prefixed by the split: ``val/acc``, ``val/acc/<m>``, ``val/loss``,
    ``val/balance``, ``val/phi/<m>`` ...  A value that was not finite is left out.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        SummaryWriter = tensorboard_writer_class()
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_iteration(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("step", 0))
        for key, value in _scalars(record, ("step", "epoch")).items():
            self._writer.add_scalar(key, value, step)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        split, epoch = record.get("split", "eval"), int(record.get("epoch", 0))
        for key, value in _scalars(record, ("step", "epoch", "n")).items():
            self._writer.add_scalar(f"{split}/{key}", value, epoch)
        self._writer.flush()  # one flush per evaluation: TensorBoard shows epochs as they end

    def close(self) -> None:
        self._writer.close()


def tensorboard_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or ValueError saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        # a ValueError, so `msam train --tensorboard` says it in one line
        raise ValueError(
            "log_to: tensorboard needs the tensorboard package: pip install 'msam[tensorboard]' "
            f"(or pip install tensorboard) ({err})"
        ) from err
    return SummaryWriter


class IgnoredMaskWatch:
    """Warns once when φ has been identical for every modality over ``steps`` steps in a row.

    A model that ignores ``mask`` gives every coalition the same value, so every φ is 0 at
    every step: M-SAM then sees no dominant modality and the balance figures are empty of
    meaning.  ``msam_core.check_model(model, batch)`` says what is wrong.
    """

    def __init__(self, modalities: Sequence[str], steps: int | None = None) -> None:
        self.keys = [f"phi/{m}" for m in modalities]
        self.steps = int(IGNORED_MASK_STEPS if steps is None else steps)
        self.run = 0
        self.warned = False

    def log_iteration(self, record: Mapping[str, Any]) -> None:
        if self.warned or len(self.keys) < 2:
            return
        values = [record.get(key) for key in self.keys]
        if any(not isinstance(v, int | float) for v in values):
            return  # φ not recorded at this step: no evidence either way
        self.run = self.run + 1 if max(values) - min(values) <= 1e-12 else 0
        if self.run >= self.steps:
            self.warned = True
            warnings.warn(
                f"every modality's φ has been identical ({values[0]:g}) for {self.run} steps in "
                f"a row (up to step {record.get('step')}): the model's output does not seem to "
                "depend on `mask`, so no modality can be told from another. Check the model "
                "with msam_core.check_model(model, batch)",
                RuntimeWarning,
                stacklevel=2,
            )

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def check_log_targets(targets: Iterable[str]) -> list[str]:
    """``log_to`` as a list; ValueError for an unknown target or a missing package (call it
    before anything is written)."""
    from msam_core.suggest import did_you_mean

    chosen = list(targets)
    for target in chosen:
        if target not in LOG_TARGETS:
            hint = did_you_mean(str(target), LOG_TARGETS)
            raise ValueError(
                f"log_to: unknown target {target!r}{hint}; choose from {list(LOG_TARGETS)}"
            )
    if "tensorboard" in chosen:
        tensorboard_writer_class()
    return chosen


def open_sinks(
    log_to: Iterable[str], run_dir: str | os.PathLike, modalities: Sequence[str]
) -> list[Sink]:
    """The sinks a run writes to besides its run directory: the watch, and ``log_to``'s."""
    sinks: list[Sink] = [IgnoredMaskWatch(modalities)]
    if "tensorboard" in check_log_targets(log_to):
        sinks.append(TensorBoardSink(run_dir))
    return sinks
