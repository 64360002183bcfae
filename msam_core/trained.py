"""A run's trained model, rebuilt from its directory for analysis after training.

A checkpoint holds weights; the run's config holds everything that built the model and its
data.  :func:`load_trained` puts the two together, so a notebook or script can evaluate,
probe or plot the model of any epoch (or the best-validation one) without repeating the
training code.  The checkpoint files are the loop's (``msam_core.train``):
``checkpoints/epoch_XXXX.pt``, ``last.pt`` and ``best.pt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msam_core.config import TrainConfig
from msam_core.data.base import MultimodalDataset
from msam_core.record import CONFIG_FILE

#: named checkpoints besides the epoch numbers
NAMED_CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class TrainedModel:
    """The model (eval mode) with a checkpoint's weights, the data it was trained on, and where
    the weights came from."""

    model: nn.Module
    dataset: MultimodalDataset
    config: TrainConfig
    epoch: int | None
    step: int | None
    checkpoint: Path


def checkpoint_epochs(run_dir: str | os.PathLike) -> dict[int, Path]:
    """``{epoch: path}`` of the run's ``checkpoints/epoch_XXXX.pt`` files, sorted by epoch."""
    folder = Path(run_dir) / "checkpoints"
    found = {}
    for path in folder.glob("epoch_*.pt"):
        suffix = path.stem.removeprefix("epoch_")
        if suffix.isdigit():
            found[int(suffix)] = path
    return dict(sorted(found.items()))


def epoch_checkpoints(run_dir: str | os.PathLike, purpose: str = "use") -> dict[int, Path]:
    """:func:`checkpoint_epochs`, or FileNotFoundError when the run kept none (saying why)."""
    found = checkpoint_epochs(run_dir)
    if not found:
        raise FileNotFoundError(
            f"run {str(run_dir)!r} has no checkpoints/epoch_XXXX.pt; train it with "
            f"checkpoint_every >= 1 to {purpose} the weights of its epochs"
        )
    return found


def checkpoint_path(run_dir: str | os.PathLike, which: str | int = "best") -> Path:
    """The file of checkpoint ``which``: ``"best"`` (best validation epoch), ``"last"``, or an
    epoch number.  Errors name what the run has."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {str(run_dir)!r}")
    if isinstance(which, str) and not which.isdigit():
        if which not in NAMED_CHECKPOINTS:
            raise ValueError(
                f"checkpoint must be one of {list(NAMED_CHECKPOINTS)} or an epoch number, "
                f"got {which!r}"
            )
        path = run_dir / "checkpoints" / f"{which}.pt"
        if not path.is_file():
            hint = (
                "no epoch after 0 has been evaluated yet"
                if which == "best"
                else "it was killed before its first checkpoint"
            )
            raise FileNotFoundError(f"run {str(run_dir)!r} has no checkpoints/{which}.pt: {hint}")
        return path
    epoch = int(which)
    available = epoch_checkpoints(run_dir)
    if epoch not in available:
        raise ValueError(
            f"run {str(run_dir)!r} has no checkpoint for epoch {epoch}; "
            f"available epochs: {list(available)}"
        )
    return available[epoch]


def load_trained(
    run: Any, which: str | int = "best", device: str | torch.device = "cpu"
) -> TrainedModel:
    """Rebuild ``run``'s model with the weights of checkpoint ``which`` (see
    :func:`checkpoint_path`), and its dataset, from the run's config.

    ``run`` is a run directory or anything with a ``.path`` (a :class:`~msam_core.Run`).
    The model is returned in eval mode on ``device``.  A run trained with a model or data
    passed to ``train(model=..., data=...)`` cannot be rebuilt from its config: the error
    says so, and ``torch.load(checkpoint)["model"]`` gives its weights.
    """
    from msam_core.train import build_dataset, build_run_model, load_checkpoint

    run_dir = Path(getattr(run, "path", run))
    path = checkpoint_path(run_dir, which)
    state = load_checkpoint(path, map_location="cpu")
    if "config" in state:
        config = TrainConfig.from_dict(state["config"])
    else:  # best.pt holds the weights only; the run's config.json has the rest
        config = TrainConfig.from_file(run_dir / CONFIG_FILE)
    dataset = build_dataset(config)
    model = build_run_model(config, dataset)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(
            f"the weights in {str(path)!r} do not fit the model its config builds "
            f"({config.fusion} fusion, encoder {config.encoder!r}); was the run trained "
            f"with its own model (train(model=...))? Build that model and load "
            f"torch.load(path)['model'] into it. ({str(err).splitlines()[0]})"
        ) from err
    model.to(device).eval()
    return TrainedModel(model, dataset, config, state.get("epoch"), state.get("step"), path)
