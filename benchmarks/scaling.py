"""Past one process: a run on 2 processes vs 1, and a comparison grid on 2 jobs vs 1, on the CPU.

1. ``msam train --nproc 2`` (torch.distributed, gloo, the global batch split over the ranks)
   vs ``msam train`` on the same config, one intra-op thread per process (so the ideal is 2x):
   training samples per second, from each run's own ``summary.json`` (training time only;
   process start-up and evaluation left out).  Two workloads (:data:`WORKLOADS`): ``small``,
   the default late-fusion MLP on two 300-d modalities at batch 256 (a few ms per step, where
   the fixed per-step costs and the step's four all-reduces weigh most), and ``large``, 1024-d
   modalities, 256-d encoders and batch 1024 (tens of ms of arithmetic per step).
2. ``msam compare --jobs 2`` vs ``--jobs 1`` on the same grid: wall time of the whole command
   (Python start-up, the workers' start-up, the tables), every run trained from scratch.  The
   grid is a methods x seeds sweep in miniature, not tuned to flatter: :data:`GRID`, three
   methods x two seeds plus the two modalities trained alone (the command's default), 10 runs
   of about 1-2 s each on an idle core (more than half of it the run's fixed costs).
   ``--jobs 2`` gets ``OMP_NUM_THREADS`` = the CPU count, which it shares out (one thread per
   worker on 2 CPUs); ``--jobs 1`` runs with one thread and with all of them, and the ratio is
   taken against the faster (goal <= 0.75 on 2 cores).
3. ``--compile`` vs eager (``--parts compile``): median ``time/step_s`` of epochs 2-3 of the
   default model (the first epoch holds the compiling), and the compiling's cost.

Rounds interleave the sides, alternating which goes first, so load from other processes hits
them alike; each round's ratios are summarised by their best and median.  The default
(train and compare, 3 rounds) takes about 4 minutes on an idle 2-core machine.

    python benchmarks/scaling.py [--rounds 3] [--quick] [--parts train,compare,compile]
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

from msam_core.executors import available_cpus

ROOT = Path(__file__).resolve().parents[1]

#: ``msam train`` options of the two workloads (the run's length is added)
WORKLOADS = {
    "small": ["--batch_size", "256", "--dataset_options.dims", "300"],
    "large": [
        *("--batch_size", "1024", "--dataset_options.dims", "1024"),
        *("--model_options.feature_dim", "256"),
    ],
}
#: the comparison grid: methods x seeds, with each modality alone (the command's default)
GRID = ["--methods", "joint,ogm_ge,msam", "--seeds", "2", "--epochs", "3", "--batch_size", "64"]
GRID += ["--dataset_options.n_train", "4096", "--dataset_options.n_val", "512"]
GRID += ["--dataset_options.n_test", "512", "--device", "cpu"]


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}


def train_throughput(out: Path, nproc: int, options: list[str]) -> float:
    """Training samples per second of one ``msam train`` run on ``nproc`` processes."""
    command = [sys.executable, "-m", "msam_core", "train", "--out", str(out), "--quiet"]
    command += ["--nproc", str(nproc), *options]
    subprocess.run(command, env=_env(1), check=True, capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    samples = config["run"]["n_train"] * summary["epochs_done"]
    return samples / summary["train_time_s"]


def compare_wall(out: Path, jobs: int, threads: int, grid: list[str]) -> float:
    """Seconds of one whole ``msam compare --jobs N`` command on ``grid``."""
    command = [sys.executable, "-m", "msam_core", "compare", "--out", str(out), "--quiet"]
    command += ["--jobs", str(jobs), *grid]
    start = time.perf_counter()
    subprocess.run(command, env=_env(threads), check=True, capture_output=True)
    return time.perf_counter() - start


def step_times(out: Path, compiled: bool, n_train: int) -> tuple[float, float]:
    """Median seconds per step after the first epoch, and the whole run's seconds."""
    from msam_core.train import train

    config = {"device": "cpu", "epochs": 3, "batch_size": 64, "compile": compiled}
    config["dataset_options"] = {"n_train": n_train, "n_val": 64, "n_test": 64}
    start = time.perf_counter()
    run = train(config, out=out, quiet=True)
    total = time.perf_counter() - start
    records = [json.loads(line) for line in (run / "iterations.jsonl").open()]
    return statistics.median(r["time/step_s"] for r in records if r["epoch"] >= 2), total


def summarise(label: str, ratios: list[float], lower_is_better: bool, goal: str) -> None:
    best = min(ratios) if lower_is_better else max(ratios)
    each = ", ".join(f"{r:.2f}" for r in ratios)
    text = f"{label}: best {best:.2f}, median {statistics.median(ratios):.2f}"
    print(f"{text} over {len(ratios)} rounds ({each})   ({goal})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one small round (smoke run)")
    parser.add_argument("--parts", default="train,compare", help="of train,compare,compile")
    parser.add_argument(
        "--one-job-threads",
        default=None,
        help="comma list of OMP_NUM_THREADS for the --jobs 1 side (default: 1 and the CPUs)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    rounds = 1 if args.quick else args.rounds
    cpus = available_cpus()
    one_job = sorted({1, cpus})
    if args.one_job_threads:
        one_job = [int(t) for t in args.one_job_threads.split(",")]
    n_train = 512 if args.quick else 8192
    base = ["--device", "cpu", "--epochs", "2", "--method", "msam", "--model_options.dropout", "0"]
    base += ["--dataset_options.n_train", str(n_train), "--dataset_options.n_val", "64"]
    base += ["--dataset_options.n_test", "64"]
    grid = [*GRID, "--epochs", "1", "--dataset_options.n_train", "512"] if args.quick else GRID
    print(f"{cpus} CPU(s) available; load average {os.getloadavg()[0]:.1f} at the start")
    print("train: OMP_NUM_THREADS=1 in every process")
    print(f"compare: --jobs 1 with OMP_NUM_THREADS in {one_job}, --jobs 2 with {cpus} shared out")
    print("compare grid: " + " ".join(grid), flush=True)
    speedups: dict[str, list[float]] = {name: [] for name in WORKLOADS}
    walls: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            flip = -1 if r % 2 else 1  # alternate which side goes first
            for name, options in WORKLOADS.items() if "train" in parts else ():
                rate = {}
                for n in (1, 2)[::flip]:
                    rate[n] = train_throughput(Path(tmp) / f"{name}{n}_{r}", n, base + options)
                speedups[name].append(rate[2] / rate[1])
                print(
                    f"round {r}: train {name:5s} {rate[1]:8.0f} samples/s on 1 process, "
                    f"{rate[2]:8.0f} on 2 ({rate[2] / rate[1]:.2f}x)",
                    flush=True,
                )
            if "compare" in parts:
                wall = {}
                for jobs, threads in [*((1, t) for t in one_job), (2, cpus)][::flip]:
                    out = Path(tmp) / f"cmp{jobs}_{threads}_{r}"
                    wall[jobs, threads] = compare_wall(out, jobs, threads, grid)
                alone = min(wall[1, t] for t in one_job)
                walls.append(wall[2, cpus] / alone)
                ones = ", ".join(f"{wall[1, t]:.1f} s on {t} thread(s)" for t in one_job)
                print(
                    f"round {r}: compare --jobs 1 {ones}; --jobs 2 {wall[2, cpus]:.1f} s "
                    f"({walls[-1]:.2f}x the faster --jobs 1)",
                    flush=True,
                )
        if "compile" in parts:
            eager, eager_total = step_times(Path(tmp) / "eager", False, n_train // 4)
            compiled, compiled_total = step_times(Path(tmp) / "compiled", True, n_train // 4)
            print(
                f"compile: {1000 * compiled:.2f} ms per step vs {1000 * eager:.2f} eager "
                f"({compiled / eager:.2f}x); whole run {compiled_total:.1f} s vs "
                f"{eager_total:.1f} s"
            )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    for name, ratios in speedups.items():
        if ratios:
            label = f"train --nproc 2 / --nproc 1, {name} workload, samples/s (speed-up)"
            summarise(label, ratios, lower_is_better=False, goal="ideal 2")
    if walls:
        label = "compare --jobs 2 / the faster --jobs 1, wall time"
        summarise(label, walls, lower_is_better=True, goal="goal <= 0.75 on 2 cores")


if __name__ == "__main__":
    main()
