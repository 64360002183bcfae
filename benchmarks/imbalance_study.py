"""Imbalance study: every method on the default synthetic imbalance, several seeds.

The default ``synthetic`` dataset has a strong modality (audio, signal strength 4) and a weak
one (visual, strength 2) that alone owns a pair of classes the strong one cannot tell apart.
Every registered method is trained with the same config defaults (nothing tuned per method),
through :func:`msam_core.compare`, and the script prints, at each run's best-validation epoch,
the fused test accuracy and the weak modality's unimodal test accuracy (the strong one
replaced by its baseline), as mean ± sample sd over seeds, in a Markdown table.

Usage::

    python benchmarks/imbalance_study.py [--epochs 30] [--seeds 3] [--out DIR]

With ``--out`` the runs are kept (and a re-run reuses them); by default they go to a
temporary folder.  Reports what it measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _study import ordered_methods
from _study import pm as _pm

from msam_core.compare import compare
from msam_core.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (default 30)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()

    methods = ordered_methods()
    info = load_dataset("synthetic", n_train=8, n_val=8, n_test=8).info
    strengths = info["strengths"]
    weak = min(strengths, key=strengths.get)
    strong = max(strengths, key=strengths.get)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        table = compare(
            "synthetic", methods, args.seeds, out, epochs=args.epochs, device="cpu", quiet=True
        )
    elapsed = time.perf_counter() - started

    print(
        f"Default synthetic imbalance (strengths {strengths}; weak modality: {weak}), "
        f"{args.seeds} seeds, {args.epochs} epochs, config defaults for every method; "
        "test accuracy (%) at the best-val epoch, mean ± sd over seeds.\n"
    )
    print(f"| method | fused test acc | {weak} alone (weak) | {strong} alone | balance |")
    print("|---|---|---|---|---|")
    for _, row in table.iterrows():
        balance = row["balance_mean"]
        print(
            f"| {row['method']} | {_pm(row['test_acc_mean'], row['test_acc_std'])} | "
            f"{_pm(row[f'acc/{weak}_mean'], row[f'acc/{weak}_std'])} | "
            f"{_pm(row[f'acc/{strong}_mean'], row[f'acc/{strong}_std'])} | "
            f"{balance:.2f} |"
        )
    print(f"\n{len(methods) * args.seeds} runs in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
