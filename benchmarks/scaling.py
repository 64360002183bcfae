"""Past one process: a run on 2 processes vs 1, and a comparison grid on 2 jobs vs 1, on the CPU.

1. ``msam train --nproc 2`` (torch.distributed, gloo, the global batch split over the ranks)
   vs ``msam train`` on the same config: training samples per second, from each run's own
   ``summary.json`` (training time only; process start-up and evaluation left out).
2. ``msam compare --jobs 2`` vs ``--jobs 1`` on the same grid: wall time of the whole command,
   start-up of the worker processes included (goal <= 0.75 on 2 cores).
3. ``--compile`` vs eager: median ``time/step_s`` of epochs 2-3 of the default model (the first
   epoch holds the compiling), and the compiling's cost in the whole run.

Rounds interleave the two sides so load from other processes hits both alike; the ratios of
each round are summarised by their best and median.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling.py [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from msam_core.compare import compare
from msam_core.executors import available_cpus
from msam_core.train import train

ROOT = Path(__file__).resolve().parents[1]


def train_throughput(out: Path, nproc: int, options: list[str]) -> float:
    """Training samples per second of one ``msam train`` run on ``nproc`` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "msam_core", "train", "--out", str(out), "--quiet"]
    command += ["--nproc", str(nproc), *options]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    samples = config["run"]["n_train"] * summary["epochs_done"]
    return samples / summary["train_time_s"]


def compare_wall(out: Path, jobs: int, grid: dict) -> float:
    start = time.perf_counter()
    compare(out=out, jobs=jobs, **grid)
    return time.perf_counter() - start


def step_times(out: Path, compiled: bool, n_train: int) -> tuple[float, float]:
    """Median seconds per step after the first epoch, and the whole run's seconds."""
    config = {"device": "cpu", "epochs": 3, "batch_size": 64, "compile": compiled}
    config["dataset_options"] = {"n_train": n_train, "n_val": 64, "n_test": 64}
    start = time.perf_counter()
    run = train(config, out=out, quiet=True)
    total = time.perf_counter() - start
    records = [json.loads(line) for line in (run / "iterations.jsonl").open()]
    return statistics.median(r["time/step_s"] for r in records if r["epoch"] >= 2), total


def summarise(label: str, ratios: list[float], goal: str = "") -> None:
    text = f"{label}: best {min(ratios) if 'time' in label else max(ratios):.2f}, "
    text += f"median {statistics.median(ratios):.2f} over {len(ratios)} rounds"
    print(text + (f"   ({goal})" if goal else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one small round (smoke run)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    n_train = 512 if args.quick else 2048
    train_options = ["--device", "cpu", "--epochs", "2", "--batch_size", "256", "--method", "msam"]
    train_options += ["--dataset_options.n_train", str(n_train), "--dataset_options.dims", "300"]
    train_options += ["--dataset_options.n_val", "64", "--dataset_options.n_test", "64"]
    train_options += ["--model_options.dropout", "0"]
    grid = {
        "dataset": "synthetic",
        "methods": "joint,msam",
        "seeds": 2,
        "epochs": 2 if args.quick else 4,
        "batch_size": 64,
        "device": "cpu",
        "dataset_options": {"n_train": n_train, "n_val": 128, "n_test": 128},
    }
    print(f"{available_cpus()} CPU(s) available; OMP_NUM_THREADS=1 per process")
    speedups, walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            one = train_throughput(Path(tmp) / f"one{r}", 1, train_options)
            two = train_throughput(Path(tmp) / f"two{r}", 2, train_options)
            speedups.append(two / one)
            print(f"round {r}: train {one:8.0f} samples/s on 1 process, {two:8.0f} on 2")
            t1 = compare_wall(Path(tmp) / f"cmp1_{r}", 1, grid)
            t2 = compare_wall(Path(tmp) / f"cmp2_{r}", 2, grid)
            walls.append(t2 / t1)
            print(f"round {r}: compare 4 runs {t1:6.1f} s with --jobs 1, {t2:6.1f} s with --jobs 2")
        eager, eager_total = step_times(Path(tmp) / "eager", False, n_train)
        compiled, compiled_total = step_times(Path(tmp) / "compiled", True, n_train)
    print(
        f"compile: {1000 * compiled:.2f} ms per step vs {1000 * eager:.2f} eager "
        f"({compiled / eager:.2f}x); whole run {compiled_total:.1f} s vs {eager_total:.1f} s"
    )
    summarise("train --nproc 2 / --nproc 1, samples/s (speed-up)", speedups)
    summarise("compare --jobs 2 / --jobs 1, wall time", walls, "goal <= 0.75 on 2 cores")


if __name__ == "__main__":
    main()
