"""Cost of recording: the training loop writing a record every step vs a bare loop.

Both loops use the same dataset, model initialisation, method and data order, in the same
process.  The bare loop only gathers batches and calls ``method.step`` and the learning-rate
schedule; the recorded loop is
:func:`msam_core.train` itself (record dict, JSON line appended and flushed every step,
callback and control checks, step timing).  Evaluation and checkpoints happen between epochs
and are not part of either number: the recorded time is the loop's own ``train_time_s``.

Usage::

    python benchmarks/loop_overhead.py [--method msam] [--epochs 5] [--repeats 11]

Prints the median and the minimum over repeats of each loop's seconds per step and their
ratio (goal: recorded / bare <= 1.05); the minimum is the least disturbed by other load.
Then the part of that difference measured inside each run: the loop's time around the
steps (each loop times its own ``method.step`` calls), which is where recording happens.
The rest of the end-to-end difference is the steps themselves running slower after a write
(the write system call's effect on the caches), which only the end-to-end ratio sees.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from msam_core.batches import iterate_batches
from msam_core.config import TrainConfig
from msam_core.methods import build_method
from msam_core.record import RunWriter, load_run
from msam_core.train import (
    build_dataset,
    build_run_model,
    build_scheduler,
    seed_everything,
    train,
)


def bare_loop(config: TrainConfig) -> tuple[float, int, float]:
    """Seconds spent in the training epochs, the step count, and the seconds inside steps."""
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
    elapsed = in_steps = 0.0
    for _ in range(config.epochs):
        order = torch.randperm(len(dataset.train), generator=generator)
        model.train()
        start = time.perf_counter()
        for inputs, targets in iterate_batches(dataset.train, order, config.batch_size, device):
            t0 = time.perf_counter()
            method.step(model, inputs, targets)
            in_steps += time.perf_counter() - t0
            scheduler.step()
            steps += 1
        elapsed += time.perf_counter() - start
    return elapsed, steps, in_steps


def recorded_loop(config: TrainConfig, out: Path) -> tuple[float, int, float]:
    """The loop's own seconds for its training epochs, the step count, seconds inside steps."""
    path = train(config, out=out, overwrite=True, quiet=True)
    run = load_run(path)
    in_steps = float(run.iterations["time/step_s"].sum())  # the loop times each step itself
    return float(run.summary["train_time_s"]), int(run.summary["steps"]), in_steps


def replay_records(run_dir: Path, out: Path) -> float:
    """Seconds per record to write a run's own step records again (build-free: the writer only)."""
    records = load_run(run_dir).iterations.to_dict("records")
    with RunWriter(out) as writer:
        start = time.perf_counter()
        for record in records:
            writer.log_iteration(record)
        return (time.perf_counter() - start) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="msam")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=11)
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
    outside: dict[str, list[float]] = {"bare": [], "recorded": []}  # loop time around steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare_loop(config)  # warm-up: first-call costs (allocator, kernels) would hit one side
        for repeat in range(args.repeats):  # interleaved, order alternating, so drift hits both
            loops = {
                "bare": lambda: bare_loop(config),
                "recorded": lambda r=repeat: recorded_loop(config, tmp / f"run{r}"),
            }
            for name in sorted(loops, reverse=bool(repeat % 2)):
                seconds, steps, in_steps = loops[name]()
                (bare if name == "bare" else recorded).append(seconds / steps)
                outside[name].append((seconds - in_steps) / steps)
        write_s = replay_records(tmp / "run0", tmp / "replay")
    print(f"method {args.method}, {steps} steps per run, {args.repeats} repeats")
    for name, pick in (("median", statistics.median), ("min", min)):
        b, r = pick(bare), pick(recorded)
        print(
            f"{name:>6}: bare {1e3 * b:7.3f} ms/step, recorded {1e3 * r:7.3f} ms/step, "
            f"ratio recorded/bare {r / b:.3f}  (goal <= 1.05)"
        )
    # The steps themselves are the same code; what recording adds is the loop's time around
    # them (record dict, JSON line, checks), measured inside each run and so free of the
    # run-to-run drift of the step time that dominates the end-to-end ratio on a shared host.
    extra = statistics.median(outside["recorded"]) - statistics.median(outside["bare"])
    print(
        f"around the steps (batching, schedule, recording), median: bare "
        f"{1e6 * statistics.median(outside['bare']):.1f} us/step, recorded "
        f"{1e6 * statistics.median(outside['recorded']):.1f} us/step -> recording adds "
        f"{100 * extra / statistics.median(bare):.2f} % of a bare step  (goal <= 5 %)"
    )
    print(
        f"writing one step record alone: {1e6 * write_s:.1f} us = "
        f"{100 * write_s / statistics.median(bare):.2f} % of a median bare step"
    )


if __name__ == "__main__":
    main()
