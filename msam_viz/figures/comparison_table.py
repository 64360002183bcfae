"""Runs as tidy tables: what the comparison figures draw (one job: data, no drawing).

:func:`run_metrics` gives one row per (run, metric) at the last or best epoch,
:func:`epoch_table` one row per (run, epoch, metric); both carry ``dataset``, ``group`` (a
config key, ``method`` by default, so seeds of one method pool) and ``seed``.  The plotly
figures (:mod:`msam_viz.figures.comparison`) and the static seaborn grid
(:mod:`msam_viz.figures.summary_grid`) draw them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from msam_core.derived import best_epoch
from msam_viz.figures._common import (
    ACC,
    as_run_list,
    config_value,
    present,
    run_dataset,
    run_group,
    run_labels,
    run_modalities,
)
from msam_viz.figures.balance import dominant_switches
from msam_viz.style import METHOD_COLORS

#: metrics computed from iteration records rather than read from an epoch row
DERIVED = ("switches", "sharpness")
AT_CHOICES = ("last", "best")

LABELS = {
    "acc": "accuracy",
    "loss": "loss (nats)",
    "balance": "balance",
    "switches": "dominance switches",
    "sharpness": "mean sharpness, last epoch",
    "hessian/top_eig": "Hessian λ_max",
}


def metric_label(metric: str) -> str:
    if metric.startswith(ACC):
        return f"{metric[len(ACC) :]}-only accuracy"
    return LABELS.get(metric, metric)


def default_metrics(runs: Sequence[Any]) -> list[str]:
    """Fused accuracy, each modality's accuracy, balance and switches, where recorded."""
    names: list[str] = ["acc"]
    for run in runs:
        names += [ACC + m for m in run_modalities(run) if present(run.epochs, ACC + m)]
    if any(present(run.epochs, "balance") for run in runs):
        names.append("balance")
    names.append("switches")
    return list(dict.fromkeys(names))


def _data_options(run: Any) -> dict[str, str]:
    """The run's ``dataset_options`` as ``{key: compact JSON}``, without the split seed."""
    options = config_value(run, "dataset_options") or {}
    if not isinstance(options, Mapping):
        return {}
    return {
        str(k): json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)
        for k, v in options.items()
        if k != "seed"
    }


def ceiling_modality(run: Any) -> str | None:
    """``m`` for a run ``msam compare`` trained on modality ``m`` alone (its ``alone/<m>``
    group, one modality), else None: such a run is the ceiling of the multimodal runs beside
    it, compared within their dataset, not on a dataset of its own."""
    group = run_group(run, "method")
    modality = group[len("alone/") :] if group.startswith("alone/") else ""
    return modality if modality and run_modalities(run) == [modality] else None


def dataset_labels(runs: Any) -> list[str]:
    """The dataset each run is compared within, one label per run.

    Runs are only ever pooled within one label: the dataset's name, plus what tells runs of
    that name apart, when they differ: the modalities (``synthetic (audio+visual+text)``) and
    the ``dataset_options`` that differ (``synthetic (strengths=[8,1])``), so runs on
    different data never pass for seeds of one experiment.  A run that does not record its
    dataset is labelled ``unknown dataset``.  A ``msam compare`` run of one modality alone
    (:func:`ceiling_modality`) takes the label of the multimodal runs of the same data that
    hold its modality, when there is exactly one such label.
    """
    runs = as_run_list(runs)
    names = [run_dataset(run) or "unknown dataset" for run in runs]
    mods = ["+".join(run_modalities(run)) for run in runs]
    opts = [_data_options(run) for run in runs]
    alone = [ceiling_modality(run) for run in runs]
    members: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        members.setdefault(name, []).append(i)
    labels = list(names)
    for name, every in members.items():
        # the ceilings follow their multimodal runs; alone among themselves they are labelled
        # as any runs are
        idx = [i for i in every if alone[i] is None] or every
        keys = sorted({k for i in idx for k in opts[i]})
        differing = [k for k in keys if len({opts[i].get(k) for i in idx}) > 1]
        show_mods = len({mods[i] for i in idx}) > 1
        for i in idx:
            parts = [mods[i]] if show_mods else []
            parts += [f"{k}={opts[i].get(k, 'default')}" for k in differing]
            if parts:
                labels[i] = f"{name} ({', '.join(parts)})"
        for i in (i for i in every if i not in idx):
            hosts = {
                labels[j] for j in idx if opts[j] == opts[i] and alone[i] in run_modalities(runs[j])
            }
            labels[i] = hosts.pop() if len(hosts) == 1 else f"{name} ({mods[i]})"
    return labels


def ceiling_metric(run: Any, metric: str) -> bool:
    """Whether ``metric`` of ``run`` is drawn: a ceiling run (:func:`ceiling_modality`) shows
    only its accuracy (``acc`` and ``acc/<m>``); its balance and dominance say nothing."""
    modality = ceiling_modality(run)
    return modality is None or metric in ("acc", ACC + modality)


def runs_by_dataset(runs: Sequence[Any]) -> dict[str, list[Any]]:
    """Runs per dataset label, datasets in the order they first appear."""
    out: dict[str, list[Any]] = {}
    for run, label in zip(runs, dataset_labels(runs), strict=True):
        out.setdefault(label, []).append(run)
    return out


def metric_applies(metric: str, dataset_runs: Sequence[Any], all_runs: Sequence[Any]) -> bool:
    """False for ``acc/<m>`` of a modality that belongs to another dataset only (not missing
    from this one, just not part of it); every other metric applies to every dataset."""
    if not metric.startswith(ACC):
        return True
    modality = metric[len(ACC) :]
    if any(modality in run_modalities(run) for run in dataset_runs):
        return True
    return not any(modality in run_modalities(run) for run in all_runs)


def _epoch_row(run: Any, split: str, at: str) -> pd.Series | None:
    """The epoch record a run is summarised by: the last one, or the best-val-accuracy one.

    ``best`` always picks the epoch on validation accuracy (never on the reported split)."""
    epochs = run.epochs
    if epochs is None or epochs.empty or "epoch" not in epochs:
        return None
    rows = epochs.loc[epochs["split"] == split] if "split" in epochs else epochs
    if rows.empty:
        return None
    if at == "last":
        return rows.sort_values("epoch").iloc[-1]
    best_epoch = _best_epoch(run)
    if best_epoch is None:
        return rows.sort_values("epoch").iloc[-1]
    chosen = rows.loc[rows["epoch"] == best_epoch]
    return chosen.iloc[-1] if len(chosen) else None


def _best_epoch(run: Any) -> int | None:
    """The epoch training selected (``summary.json``'s ``best_epoch``, the one in ``best.pt``);
    for a run without one (still running, or older), the same rule on its records: highest
    validation accuracy, then lowest validation loss, then the earliest, never epoch 0."""
    summary = getattr(run, "summary", None) or {}
    if summary.get("best_epoch") is not None:
        return int(summary["best_epoch"])
    epochs = run.epochs
    val = epochs.loc[epochs["split"] == "val"] if "split" in epochs else epochs
    if not present(val, "acc"):
        return None
    return best_epoch(val.to_dict("records"))


COLUMNS = ["run", "dataset", "group", "seed", "metric", "value"]


def run_metrics(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    at: str = "last",
    by: str = "method",
) -> pd.DataFrame:
    """Tidy ``[run, dataset, group, seed, metric, value]``, one row per run and recorded metric.

    ``metrics``: epoch keys (``acc``, ``acc/<m>``, ``loss``, ``balance``, ``hessian/top_eig``)
    and the derived ``switches`` (dominance switches in the run) and ``sharpness`` (mean over
    the last epoch's steps).  ``at``: ``last`` epoch, or ``best`` by validation accuracy.
    ``by``: the config key that groups runs; only rows of one ``dataset`` (see
    :func:`dataset_labels`) and one group are seeds of the same thing.  ``run``: a label
    unique among ``runs`` (:func:`~msam_viz.figures._common.run_labels`).
    """
    runs = as_run_list(runs)
    if at not in AT_CHOICES:
        raise ValueError(f"at must be one of {AT_CHOICES}, got {at!r}")
    metrics = list(metrics) if metrics is not None else default_metrics(runs)
    records = []
    for run, label, dataset in zip(runs, run_labels(runs), dataset_labels(runs), strict=True):
        row = _epoch_row(run, split, at)
        group = run_group(run, by)
        for metric in metrics:
            if not ceiling_metric(run, metric):
                continue
            value = _metric_value(run, row, metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            records.append(
                {
                    "run": label,
                    "dataset": dataset,
                    "group": group,
                    "seed": config_value(run, "seed"),
                    "metric": metric,
                    "value": float(value),
                }
            )
    return pd.DataFrame(records, columns=COLUMNS)


def _metric_value(run: Any, row: pd.Series | None, metric: str) -> float | None:
    if metric == "switches":
        return float(len(dominant_switches(run))) if present(run.iterations, "step") else None
    if metric == "sharpness":
        frame = run.iterations
        if not present(frame, "sharpness") or "epoch" not in frame:
            return None
        last = frame.loc[frame["epoch"] == frame["epoch"].max(), "sharpness"]
        return float(last.mean())
    if row is None or metric not in row.index:
        return None
    value = row[metric]
    return None if pd.isna(value) else float(value)


def group_order(groups: Sequence[str]) -> list[str]:
    """Methods in the style's order (msam first, baselines after), then others alphabetically."""
    known = [m for m, _ in METHOD_COLORS]
    unique = list(dict.fromkeys(groups))
    return [g for g in known if g in unique] + sorted(g for g in unique if g not in known)


#: panels per row: one dataset, several datasets
MAX_COLS_ONE, MAX_COLS_MANY = 3, 5


def epoch_table(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    by: str = "method",
) -> pd.DataFrame:
    """Tidy per-epoch ``[run, dataset, group, seed, epoch, metric, value]`` of epoch keys on
    ``split`` (``run`` and ``dataset`` as in :func:`run_metrics`)."""
    runs = as_run_list(runs)
    metrics = list(metrics) if metrics is not None else None
    parts = []
    for run, label, dataset in zip(runs, run_labels(runs), dataset_labels(runs), strict=True):
        epochs = run.epochs
        if epochs is None or epochs.empty or "epoch" not in epochs:
            continue
        rows = epochs.loc[epochs["split"] == split] if "split" in epochs else epochs
        chosen = metrics or [m for m in default_metrics([run]) if m not in DERIVED]
        cols = [m for m in chosen if m in rows.columns and ceiling_metric(run, m)]
        if not cols:
            continue
        long = rows.melt(id_vars=["epoch"], value_vars=cols, var_name="metric").dropna()
        long.insert(0, "seed", config_value(run, "seed"))
        long.insert(0, "group", run_group(run, by))
        long.insert(0, "dataset", dataset)
        long.insert(0, "run", label)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "dataset", "group", "seed", "epoch", "metric", "value"])
    return pd.concat(parts, ignore_index=True)
