"""What does ``shapley_rows`` cost in precision? The dominant modality and φ of a row subset
against the whole batch's, at every step of whole training runs.

Each run trains M-SAM with full-batch φ (the reference trajectory, as without the option).
Before each step, on the same batch and weights, φ is also computed on seeded subsets of
``--rows`` rows (drawn as a run with ``shapley_rows`` draws them). Per subset size it prints:

  agree     the fraction of steps whose dominant modality (argmax φ, the one M-SAM perturbs)
            is the full batch's
  close     agreement on the steps where the full batch's top two φ are within 0.05
  |err|     mean absolute error of φ against the full batch's, over steps and modalities
  se        mean recorded phi_stderr (what a run with the option reports)
  cover     fraction of errors within 2 se (about 0.95 if se is right)

    OMP_NUM_THREADS=1 python benchmarks/shapley_rows.py                       # early fusion
    OMP_NUM_THREADS=1 python benchmarks/shapley_rows.py --seeds 0 1 2 --rows 8 16 32
    OMP_NUM_THREADS=1 python benchmarks/shapley_rows.py --batch-size 256 --rows 32 64 128
    OMP_NUM_THREADS=1 python benchmarks/shapley_rows.py --modalities 4 --batch-size 256 --rows 64

The rule for a default (README, "Early fusion: first-layer masking and shapley_rows"): a
subset becomes early fusion's default only if its dominant modality agrees with the full
batch's on at least 99 % of steps of the default run (seeds 0-2).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from msam_core.methods.msam import MsamMethod
from msam_core.methods.registry import register_method
from msam_core.record import load_run
from msam_core.rows import row_subset
from msam_core.shapley import batch_shapley
from msam_core.train import train

ROWS: tuple[int, ...] = ()  # set from the command line before training


@register_method("msam_rows_probe")
class RowsProbe(MsamMethod):
    """M-SAM on full-batch φ that also records, per subset size, the subset's φ error,
    standard error and dominant-modality agreement on the step's batch."""

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        value = self.config.shapley_value
        full = batch_shapley(model, inputs, targets, None, value)
        top = sorted(full.phi.tolist(), reverse=True)
        probe: dict[str, float] = {"gap": top[0] - top[1]}
        n, seed = int(targets.shape[0]), int(self.config.seed)
        for rows in ROWS:
            chosen = row_subset(n, rows, self.config.batch_size, seed, self.step_index, "cpu")
            sub = batch_shapley(model, inputs, targets, None, value, rows=chosen)
            err = sub.phi - full.phi
            se = sub.stderr if sub.stderr is not None else torch.zeros_like(err)
            probe[f"agree/{rows}"] = float(sub.dominant_index == full.dominant_index)
            probe[f"abs_err/{rows}"] = float(err.abs().mean())
            probe[f"se/{rows}"] = float(se.mean())
            probe[f"cover/{rows}"] = float((err.abs() <= 2 * se + 1e-12).double().mean())
        return {**super().step(model, inputs, targets), **probe}


def summary(frames, rows: int) -> str:
    import pandas as pd

    frame = pd.concat(frames)
    close = frame[frame["gap"] <= 0.05]
    agree_close = close[f"agree/{rows}"].mean() if len(close) else math.nan
    return (
        f"   rows {rows:>4}  agree {frame[f'agree/{rows}'].mean():6.1%}  close {agree_close:6.1%} "
        f"({len(close)} steps)  |err| {frame[f'abs_err/{rows}'].mean():.4f}  "
        f"se {frame[f'se/{rows}'].mean():.4f}  cover {frame[f'cover/{rows}'].mean():6.1%}"
    )


def main() -> None:
    global ROWS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fusion", default="early")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--modalities", type=int, default=2, help="synthetic: modalities")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--value", default="accuracy", help="shapley_value")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    ROWS = tuple(args.rows)
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            path = train(
                out=Path(tmp) / f"seed{seed}",
                method="msam_rows_probe",
                dataset=args.dataset,
                dataset_options={"modalities": args.modalities} if args.modalities != 2 else {},
                fusion=args.fusion,
                batch_size=args.batch_size,
                epochs=args.epochs,
                seed=seed,
                shapley_value=args.value,
                device="cpu",
                probe=False,
                quiet=True,
            )
            frames.append(load_run(path).iterations)
    steps = sum(len(f) for f in frames)
    print(
        f"{args.dataset} (M = {args.modalities}), {args.fusion} fusion, batch {args.batch_size}, "
        f"{args.epochs} epochs, seeds {args.seeds}, value {args.value}: {steps} steps"
    )
    for rows in ROWS:
        print(summary(frames, rows))


if __name__ == "__main__":
    main()
