"""Cost of recording: the training loop writing a record every step vs a bare loop.

Both loops use the same dataset, model initialisation, method and data order, in the same
process.  The bare loop only gathers batches and calls ``method.step`` and the learning-rate
schedule; the recorded loop is
:func:`msam_core.train` itself (record dict, JSON line appended and flushed every step,
callback and control checks, step timing).  Evaluation and checkpoints happen between epochs
and are not part of either number: the recorded time is the loop's own ``train_time_s``.

Usage::

    python benchmarks/loop_overhead.py [--method msam] [--epochs 3] [--repeats 3]

Prints the median seconds per step of each loop and the ratio (goal: recorded / bare <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from msam_core.config import TrainConfig
from msam_core.methods import build_method
from msam_core.record import load_run
from msam_core.train import (
    build_dataset,
    build_run_model,
    build_scheduler,
    iterate_batches,
    seed_everything,
    train,
)


def bare_loop(config: TrainConfig) -> tuple[float, int]:
    """Seconds spent in the training steps of ``config.epochs`` epochs, and the step count."""
    seed_everything(config.seed)
    dataset = build_dataset(config)
    model = build_run_model(config, dataset)
    method = build_method(config.method, model, config)
    steps_per_epoch = -(-len(dataset.train) // config.batch_size)
    optimizer = getattr(method.optimizer, "base_optimizer", method.optimizer)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)  # training, not recording
    generator = torch.Generator().manual_seed(config.seed)
    device = torch.device("cpu")
    steps = 0
    elapsed = 0.0
    for _ in range(config.epochs):
        order = torch.randperm(len(dataset.train), generator=generator)
        model.train()
        start = time.perf_counter()
        for inputs, targets in iterate_batches(dataset.train, order, config.batch_size, device):
            method.step(model, inputs, targets)
            scheduler.step()
            steps += 1
        elapsed += time.perf_counter() - start
    return elapsed, steps


def recorded_loop(config: TrainConfig, out: Path) -> tuple[float, int]:
    """Seconds the loop itself reports for its training epochs, and the step count."""
    path = train(config, out=out, overwrite=True, quiet=True)
    summary = load_run(path).summary
    return float(summary["train_time_s"]), int(summary["steps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="msam")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    config = TrainConfig(
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device="cpu",
        checkpoint_every=0,
    )
    bare, recorded = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so drifts in machine load hit both
            seconds, steps = bare_loop(config)
            bare.append(seconds / steps)
            seconds, steps = recorded_loop(config, Path(tmp) / f"run{repeat}")
            recorded.append(seconds / steps)
    b, r = statistics.median(bare), statistics.median(recorded)
    print(f"method {args.method}, {steps} steps per run, {args.repeats} repeats (median)")
    print(f"bare loop:     {1e3 * b:8.3f} ms/step")
    print(f"recorded loop: {1e3 * r:8.3f} ms/step")
    print(f"overhead ratio recorded/bare: {r / b:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
