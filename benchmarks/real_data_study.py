"""Real-data study: every method on the embedded real datasets, several seeds.

Three settings, each through :func:`msam_core.compare` with one config shared by every
method (nothing tuned per method; method options at their defaults):

``mfeat``          UCI Multiple Features, all six views (fou, fac, kar, pix, zer, mor)
``mfeat_fou_pix``  the same digits seen through the two views fou + pix only
``basic_motions``  BasicMotions, accelerometer + gyroscope

Training config, chosen once per dataset: the config defaults for the optimizer (SGD, lr
0.05, momentum 0.9, no schedule, ``rho`` 0.05 for the SAM family) and the model (late
concat fusion, ``auto`` encoders: MLPs for the mfeat views, 1-D CNNs for the sensor series).
On mfeat (1200 training digits) batch 64 and 30 epochs: with joint training the train loss
falls below 0.01 by epoch 8 and validation accuracy is flat from epoch 5, so 30 epochs leave
every method room to converge.  On BasicMotions (48 training series) batch 16, so an epoch is
3 steps rather than one, and 60 epochs: joint training reaches train loss < 0.01 and 100 %
validation accuracy by epoch 20.  Splits (stratified 60/20/20) are redrawn with each seed,
since a dataset's split seed follows the run's seed.

For each setting the script prints a Markdown table of test metrics at each run's
best-validation epoch, mean ± sample sd over seeds: fused accuracy, each modality's
unimodal accuracy (the others replaced by their baselines, zeros), the balance measure
(normalised entropy of the Shapley shares on test; 1 = equal) and milliseconds per
optimisation step (with the ratio to joint training in the same run; wall time on a shared
CPU, so a rough guide).  BasicMotions has only 16 test series per seed: one series is
6.25 points of accuracy.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/real_data_study.py [--seeds 3] [--out DIR]
        [--settings mfeat,mfeat_fou_pix,basic_motions] [--epochs N]

With ``--out`` the runs are kept in ``DIR/<setting>/`` (a re-run reuses them) and the tables
are also written to ``DIR/real_data_study.md``; by default everything goes to a temporary
folder.  Reports what it measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from _study import ordered_methods, pm

from msam_core.compare import compare
from msam_core.config import TrainConfig
from msam_core.data import load_dataset


@dataclass(frozen=True)
class Setting:
    """One comparison: a dataset, its loader options and the training config of every run."""

    title: str
    dataset: str
    dataset_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    note: str = ""


SETTINGS = {
    "mfeat": Setting("UCI Multiple Features, all six views", "mfeat"),
    "mfeat_fou_pix": Setting(
        "UCI Multiple Features, two views fou + pix", "mfeat", {"views": "fou,pix"}
    ),
    "basic_motions": Setting(
        "BasicMotions, accelerometer + gyroscope",
        "basic_motions",
        epochs=60,
        batch_size=16,
        note=(
            "Only 16 test series per seed (4 per activity): one series is 6.25 points of "
            "accuracy, so differences of a few points are within the noise."
        ),
    ),
}


def parse_settings(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        raise SystemExit(
            f"unknown settings {unknown or names}; choose a comma list of {list(SETTINGS)}"
        )
    return names


def balance_cell(mean: float, std: float) -> str:
    """The balance measure (in [0, 1]) as ``mean ± sd``, two decimals; ``–`` when missing."""
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}"


def ms_cell(row: pd.Series, joint_ms: float) -> str:
    """Milliseconds per step, mean ± sd, and the ratio of means to joint training."""
    mean, std = 1000 * row["sec_per_step_mean"], 1000 * row["sec_per_step_std"]
    if not math.isfinite(mean):
        return "–"
    text = f"{mean:.1f} ± {std:.1f}" if math.isfinite(std) else f"{mean:.1f}"
    if math.isfinite(joint_ms) and joint_ms > 0:
        text += f" ({mean / joint_ms:.2f}×)"
    return text


def table(setting: Setting, summary: pd.DataFrame, modalities: list[str], seeds: int) -> str:
    """The Markdown block of one setting: a header line, the table and its note."""
    data = load_dataset(setting.dataset, **setting.dataset_options)
    sizes = "/".join(str(len(s)) for s in (data.train, data.val, data.test))
    cfg = TrainConfig()  # the defaults every run keeps
    lines = [
        f"### {setting.title}",
        "",
        f"`{setting.dataset}`"
        + (f" with `{setting.dataset_options}`" if setting.dataset_options else "")
        + f": {len(modalities)} modalities, train/val/test = {sizes} samples; {seeds} seed(s), "
        f"{setting.epochs} epochs, batch {setting.batch_size}, {cfg.optimizer.upper()} lr "
        f"{cfg.lr} momentum {cfg.momentum}, {cfg.fusion} fusion, rho {cfg.rho}; the same "
        "config for every method. Test accuracy (%) at the best-val "
        "epoch, mean ± sd over seeds; `<m> alone`: only modality m present.",
        "",
    ]
    header = ["method", "fused test acc", *[f"{m} alone" for m in modalities]]
    header += ["balance", "ms / step (× joint)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    joint = summary.loc[summary["method"] == "joint", "sec_per_step_mean"]
    joint_ms = 1000 * float(joint.iloc[0]) if len(joint) else math.nan
    for _, row in summary.iterrows():
        name = str(row["method"])
        if row["diverged"]:
            name += f" ({row['diverged']} diverged)"
        cells = [name, pm(row["test_acc_mean"], row["test_acc_std"])]
        cells += [pm(row[f"acc/{m}_mean"], row[f"acc/{m}_std"]) for m in modalities]
        cells.append(balance_cell(row["balance_mean"], row["balance_std"]))
        cells.append(ms_cell(row, joint_ms))
        lines.append("| " + " | ".join(cells) + " |")
    if setting.note:
        lines += ["", setting.note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma list of settings to run (default: all of {','.join(SETTINGS)})",
    )
    parser.add_argument(
        "--epochs", type=int, help="epochs of every run (default: 30 on mfeat, 60 on BasicMotions)"
    )
    parser.add_argument("--device", default="cpu", help="device of every run (default cpu)")
    args = parser.parse_args()
    names = parse_settings(args.settings)
    methods = ordered_methods()

    blocks = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for name in names:
            setting = SETTINGS[name]
            if args.epochs:
                setting = dataclasses.replace(setting, epochs=args.epochs)
            t0 = time.perf_counter()
            summary = compare(
                setting.dataset,
                methods,
                args.seeds,
                root / name,
                quiet=True,
                epochs=setting.epochs,
                batch_size=setting.batch_size,
                dataset_options=dict(setting.dataset_options),
                device=args.device,
            )
            modalities = [
                c[len("acc/") : -len("_mean")]
                for c in summary.columns
                if c.startswith("acc/") and c.endswith("_mean")
            ]
            block = table(setting, summary, modalities, args.seeds)
            block += f"\n{len(methods) * args.seeds} runs in {time.perf_counter() - t0:.0f} s\n"
            print(block, flush=True)
            blocks.append(block)
    total = f"{len(names)} settings, {len(methods)} methods, {args.seeds} seeds in "
    total += f"{time.perf_counter() - started:.0f} s"
    print(total)
    if args.out:
        path = Path(args.out) / "real_data_study.md"
        path.write_text("\n".join(blocks) + "\n" + total + "\n", encoding="utf-8")
        print(f"tables written to {path}")


if __name__ == "__main__":
    main()
