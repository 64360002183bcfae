"""``msam demo``: joint training vs M-SAM on embedded data, side by side.

Two datasets that ship with the package, so nothing is downloaded:

- ``synthetic``: a strong modality (audio) and a weak one (visual) that still owns classes the
  strong one cannot tell apart;
- ``mfeat``: real handwritten digits seen through two UCI Multiple Features views, Fourier
  coefficients (``fou``, weaker) and pixel averages (``pix``, stronger).

For each dataset the demo trains both methods from the same seed and initial weights, writes
the runs (``OUT/<dataset>/<method>``) and prints, at each run's best-validation epoch: fused and
unimodal test accuracy, test Shapley shares, balance and the sharpness measured on a fixed
training probe batch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HELP = "train joint and M-SAM on the embedded synthetic and mfeat sets, print them side by side"
DEMO_METHODS = ("joint", "msam")
#: small enough for < 1 min on two CPU cores, long enough for the imbalance to show
DEMO_CONFIG: dict[str, Any] = {
    "dataset": "synthetic",
    "fusion": "concat",
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "batch_size": 64,
    "epochs": 12,
    "measure_every": 47,  # about once per epoch (47 steps/epoch): sharpness per modality
    "measure_options": {"hessian": False},
}
#: per-dataset changes to DEMO_CONFIG (mfeat: 1200 training digits, 19 steps per epoch)
DEMO_DATASETS: dict[str, dict[str, Any]] = {
    "synthetic": {},
    "mfeat": {"dataset": "mfeat", "dataset_options": {"views": "fou,pix"}, "measure_every": 19},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for both runs (runs/demo)")
    parser.add_argument("--epochs", type=int, default=DEMO_CONFIG["epochs"], help="epochs per run")
    parser.add_argument("--seed", type=int, default=0, help="seed shared by both runs")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--datasets",
        default=",".join(DEMO_DATASETS),
        help=f"comma-separated demo datasets, from {list(DEMO_DATASETS)} (default: both)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEMO_METHODS),
        help="comma-separated methods to compare (default joint,msam)",
    )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def summary_rows(run: Any) -> dict[str, Any]:
    """The demo's table column for one loaded run (at its best-val epoch)."""
    summary = run.summary
    best = summary.get("best", {})
    test, train = best.get("test", {}), best.get("train", {})
    rows: dict[str, Any] = {"best epoch (val)": summary.get("best_epoch")}
    rows["test acc, fused"] = test.get("acc")
    for m in run.modalities:
        rows[f"test acc, {m} alone"] = test.get(f"acc/{m}")
    positive = {m: max(float(test.get(f"phi/{m}", 0.0)), 0.0) for m in run.modalities}
    total = sum(positive.values())
    for m in run.modalities:
        rows[f"Shapley share, {m}"] = positive[m] / total if total > 0 else None
    rows["balance (test)"] = test.get("balance")
    rows["sharpness (probe)"] = train.get("sharpness")
    for m in run.modalities:
        rows[f"sharpness, {m} encoder"] = train.get(f"sharpness/{m}")
    rows["train time (s)"] = summary.get("train_time_s")
    return rows


def summary_table(runs: Sequence[Any]) -> str:
    """Plain-text side-by-side table: one column per run, one row per quantity."""
    columns = [summary_rows(run) for run in runs]
    labels: list[str] = []
    for col in columns:
        labels += [k for k in col if k not in labels]
    names = [run.method or run.name for run in runs]
    width = max(len(label) for label in labels) + 2
    cell = max(10, *(len(n) + 2 for n in names))
    lines = [" " * width + "".join(f"{n:>{cell}}" for n in names)]
    for label in labels:
        digits = 1 if label.startswith("train time") else 3
        values = "".join(f"{_fmt(col.get(label), digits):>{cell}}" for col in columns)
        lines.append(f"{label:<{width}}{values}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from msam_core.config import TrainConfig
    from msam_core.record import load_run
    from msam_core.train import train

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty; give e.g. joint,msam")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in DEMO_DATASETS]
    if unknown or not datasets:
        raise ValueError(f"--datasets {args.datasets!r}: choose from {list(DEMO_DATASETS)}")
    out = Path(args.out)
    for dataset in datasets:
        base = TrainConfig.from_dict(
            {
                **DEMO_CONFIG,
                **DEMO_DATASETS[dataset],
                "epochs": args.epochs,
                "seed": args.seed,
                "device": args.device,
            }
        )
        paths = []
        for method in methods:
            if not args.quiet:
                print(f"training {method} on {dataset} ...", flush=True)
            # the demo owns OUT/<dataset>/<method>: re-running it replaces its own earlier runs
            path = train(
                base, out=out / dataset / method, overwrite=True, quiet=args.quiet, method=method
            )
            paths.append(path)
        print(f"\n== {dataset} ==")
        print(summary_table([load_run(p) for p in paths]))
    print()
    print(
        f"runs written to {out}/<dataset>/<method>; "
        f"draw them with `msam report {out} --out report.html` or msam_viz.load_runs"
    )
    return 0
