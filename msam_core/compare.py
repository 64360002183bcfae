"""Compare methods on one dataset, one loop and one set of seeds: ``msam compare``.

:func:`compare` trains every (method spec, seed) as its own run directory
``OUT/<spec>/seed<k>`` (each an ordinary run that ``msam_viz.load_run`` reads), then tabulates
them.  A spec is a method name with optional settings, ``msam[rho=0.5,perturb=all]``: each key is
a config key (``rho``) or one of the method's ``method_options`` (``perturb``), and each spec is
its own row, labelled by the spec.  Unless ``alone=False``, every modality is also trained alone
(``joint`` on ``modalities=[m]``, same seeds and config) in ``OUT/alone/<m>/seed<k>``: its test
accuracy is the modality's ceiling ``alone/<m>``, ``headroom/<m>`` is that ceiling minus joint's
unimodal accuracy ``acc/<m>``, and ``recovered/<m>`` = (spec's ``acc/<m>`` − joint's) / headroom
in % (``docs/design.md``, measuring balance; computed from the means over seeds, its sd from
the per-seed differences over the mean headroom).

``OUT/runs.csv``
    one row per run: the metrics of its best-val epoch (the epoch the loop selects on
    validation accuracy, never on test) and its mean seconds per step.
``OUT/results.csv`` and ``OUT/results.md``
    one row per method: mean and sample standard deviation over seeds of the test accuracy,
    each modality's unimodal test accuracy (``acc/<m>``: the others replaced by their
    baselines), each encoder's linear probe ``probe/<m>``, each modality's Shapley share on
    test (``share/<m>`` = max(φ_m, 0) / Σ_k max(φ_k, 0), equal shares when no φ is positive,
    as M-SAM weighs modalities), the balance measure (normalised entropy of those shares,
    :mod:`msam_core.evaluate`) and the seconds per optimisation step.
``OUT/compare.json``
    the request (dataset, methods, seeds, overrides), so the table can be reproduced.

Resuming: a run whose ``summary.json`` says it finished is reused as it is; a run that was
interrupted is resumed from its last checkpoint (``train(resume=True)``), one killed before
its first checkpoint is started again.  So re-running the same command after an interruption
trains only what is missing.  A stored run is reused only if its config is the one asked
for; a difference in any key that changes the result is an error naming the keys (choose
another ``out`` or pass ``overwrite=True``).  A larger ``epochs`` extends stored runs.
A run whose loss diverged counts as done: its best-val epoch before divergence enters the
table and the ``diverged`` column counts it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from msam_core.config import TrainConfig, as_stored, read_config_file, resolve_config
from msam_core.data.base import MultimodalDataset
from msam_core.data.subset import select_modalities
from msam_core.derived import shares
from msam_core.executors import Executor, Job, JobResult, start_workers
from msam_core.layout import CHECKPOINTS_DIR, LAST_CHECKPOINT, checkpoint_epochs
from msam_core.methods import build_method, get_method
from msam_core.record import CONFIG_FILE, SUMMARY_FILE, load_run, write_json_atomic
from msam_core.rundir import build_run_model
from msam_core.runlock import run_lock
from msam_core.train import (
    RESUMABLE_KEYS,
    TrainingDiverged,
    build_dataset,
    check_precision,
    resolve_device,
    train,
)

DEFAULT_METHODS = ("joint", "sam", "ogm_ge", "agm", "msam")
#: keys compare sets itself for every run
PER_RUN_KEYS = ("dataset", "method", "seed", "name")
REQUEST_FILE = "compare.json"
RUNS_CSV = "runs.csv"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"


# --------------------------------------------------------------------------------------------
# the request


@dataclass(frozen=True)
class MethodSpec:
    """One row of a comparison: ``label`` (what the user typed, normalised), the registered
    ``method`` and the config ``settings`` it changes (``method_options.<k>`` for a method
    option)."""

    label: str
    method: str
    settings: tuple[tuple[str, Any], ...] = ()

    def config(self, base: TrainConfig, seed: int) -> TrainConfig:
        """``base`` with this spec's method, settings and ``seed`` (name ``<label>/seed<k>``)."""
        return base.replace(
            method=self.method, seed=seed, name=f"{self.label}/seed{seed}", **dict(self.settings)
        )


def split_specs(text: str) -> list[str]:
    """``"joint,msam[rho=0.5,perturb=all]"`` -> ``["joint", "msam[rho=0.5,perturb=all]"]``:
    commas inside brackets belong to the spec."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"method specs {text!r}: ']' without '['")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError(f"method specs {text!r}: '[' without ']'")
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_spec(text: str) -> MethodSpec:
    """``msam`` or ``msam[rho=0.5,perturb=all]`` -> a checked :class:`MethodSpec`.

    ValueError naming the spec and the bad part: an unknown method (with the registered ones),
    a setting without ``=``, or a key that is neither a config key nor one of the method's
    options (with both lists).
    """
    text = text.strip()
    name, _, rest = text.partition("[")
    name = name.strip()
    if rest and not rest.endswith("]"):
        raise ValueError(f"method spec {text!r}: write settings as name[key=value,key=value]")
    cls = get_method(name)  # ValueError listing the registered methods
    config_keys = [k for k in TrainConfig.keys() if k not in (*PER_RUN_KEYS, "method_options")]
    settings: dict[str, Any] = {}
    for item in split_specs(rest[:-1]) if rest else []:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ValueError(f"method spec {text!r}: setting {item!r} is not key=value")
        parsed = yaml.safe_load(value.strip())
        if key in cls.OPTIONS:
            settings[f"method_options.{key}"] = parsed
        elif key in config_keys:
            settings[key] = parsed
        else:
            raise ValueError(
                f"method spec {text!r}: {key!r} is neither an option of {name!r} "
                f"({', '.join(cls.OPTIONS) or 'none'}) nor a config key ({', '.join(config_keys)})"
            )
    if settings:
        resolve_config(method=name, **settings)  # a bad value fails here, named by its key
    label = name + ("[" + ",".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items()) + "]")
    return MethodSpec(label if settings else name, name, tuple(settings.items()))


def parse_methods(methods: str | Sequence[str]) -> list[MethodSpec]:
    """``"joint,sam,msam[rho=0.5]"`` or a list of specs -> checked, de-duplicated specs."""
    texts = split_specs(methods) if isinstance(methods, str) else [str(m) for m in methods]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"no methods given; choose some of {list(DEFAULT_METHODS)} (comma list)")
    specs = [parse_spec(t) for t in texts]
    labels = [spec.label for spec in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"methods {duplicates} are listed more than once")
    return specs


def parse_seeds(seeds: int | str | Sequence[int]) -> list[int]:
    """Seeds to run: an integer ``N`` means ``0 .. N-1``; a list (or ``"4,7"``) means exactly those.

    A string without a comma is read as a count (``"3"`` -> 0, 1, 2).
    """
    if isinstance(seeds, str):
        text = seeds.strip()
        try:
            if "," in text:
                seeds = [int(s) for s in text.split(",") if s.strip()]
            else:
                seeds = int(text)
        except ValueError:
            raise ValueError(
                f"seeds={seeds!r}: give a count (3 -> seeds 0, 1, 2) or a comma list (0,5,7)"
            ) from None
    if isinstance(seeds, bool):
        raise ValueError(f"seeds must be a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int | np.integer):
        if seeds < 1:
            raise ValueError(f"need at least one seed, got seeds={seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("need at least one seed, got an empty list")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds {out} repeat a seed")
    return out


def run_path(out: str | os.PathLike, label: str, seed: int) -> Path:
    """Where the run of spec ``label`` with ``seed`` lives: ``OUT/<label>/seed<seed>``
    (``alone/<m>`` runs in ``OUT/alone/<m>/seed<seed>``)."""
    return Path(out).expanduser() / label / f"seed{seed}"


def alone_specs(modalities: Sequence[str]) -> list[MethodSpec]:
    """One ``alone/<m>`` spec per modality: ``joint`` trained on that modality only."""
    return [MethodSpec(f"alone/{m}", "joint", (("modalities", [m]),)) for m in modalities]


# --------------------------------------------------------------------------------------------
# one run: reuse, resume or train


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def run_state(path: str | os.PathLike) -> str:
    """``"missing"``, ``"finished"``, ``"diverged"``, ``"resumable"`` or ``"restart"``.

    ``restart``: the directory holds files but no checkpoint to resume from (killed before
    the first epoch ended).
    """
    path = Path(path)
    if not path.is_dir() or not any(path.iterdir()):
        return "missing"
    summary = _read_summary(path)
    if summary.get("finished"):
        return "finished"
    if summary.get("diverged"):
        return "diverged"
    has_checkpoint = (path / CHECKPOINTS_DIR / LAST_CHECKPOINT).is_file() or checkpoint_epochs(path)
    if has_checkpoint and (path / CONFIG_FILE).is_file():
        return "resumable"  # from last.pt, or the newest intact epoch checkpoint
    return "restart"


#: method options whose default changed after runs were first stored; a stored run that
#: records no resolved options and did not set one of these itself cannot be told apart
DEFAULTS_CHANGED = {"perturb": "msam's perturb defaulted to 'all' before it became 'dominant'"}


def _check_resolved_options(stored: Mapping[str, Any], wanted: Mapping[str, Any], path: Path):
    """ValueError unless the stored run resolved its method options as ``wanted``.  A run from
    before runs recorded them is reused unless an option whose default changed since
    (:data:`DEFAULTS_CHANGED`) was left to its default."""
    had = (stored.get("run") or {}).get("resolved_method_options")
    fix = "pass --overwrite to train it again, or choose another --out (nothing was deleted)"
    if had is None:
        explicit = stored.get("method_options") or {}
        unknown = [k for k in wanted if k in DEFAULTS_CHANGED and k not in explicit]
        if unknown:
            why = "; ".join(DEFAULTS_CHANGED[k] for k in unknown)
            raise ValueError(
                f"{str(path)!r} holds a run from before runs recorded their resolved method "
                f"options (config.json's run.resolved_method_options) and left {unknown} to its "
                f"default, so it cannot be told which it trained with ({why}); " + fix
            )
        return
    diff = {k: (had.get(k), v) for k, v in wanted.items() if had.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{str(path)!r} holds a run whose method resolved other options ({details}); " + fix
        )


def _config_differences(stored: Mapping[str, Any], wanted: TrainConfig) -> dict[str, tuple]:
    """Keys (other than resumable ones) whose stored value differs from the wanted one."""
    stored_cfg = as_stored(resolve_config(stored).to_dict())
    wanted_cfg = as_stored(wanted.to_dict())
    return {
        key: (stored_cfg[key], wanted_cfg[key])
        for key in wanted_cfg
        if key not in RESUMABLE_KEYS and stored_cfg.get(key) != wanted_cfg[key]
    }


def method_options(cfg: TrainConfig, data: MultimodalDataset) -> dict[str, Any]:
    """The method options ``cfg``'s run resolves, defaults filled in (what ``train`` records
    in ``config.json``'s ``run.resolved_method_options``), from its method built on its model;
    a bad option value or a model the method cannot take raises here."""
    if cfg.modalities:
        data = select_modalities(data, cfg.modalities)
    return build_method(cfg.method, build_run_model(cfg, data), cfg).resolved_options


def plan_run(
    cfg: TrainConfig,
    path: Path,
    *,
    overwrite: bool = False,
    options: Mapping[str, Any] | None = None,
) -> str:
    """What :func:`ensure_run` will do with ``path``, checked before anything is written.

    Returns ``"reuse"``, ``"diverged"``, ``"resume"`` or ``"train"``.  ValueError when the
    stored run's config differs from ``cfg``, it has more epochs than asked for or, given the
    run's resolved method ``options`` (:func:`method_options`), it resolved others or
    recorded none (a run from before they were recorded).  Nothing is deleted.
    """
    state = "missing" if overwrite else run_state(path)
    if state in ("finished", "diverged", "resumable"):
        stored = read_config_file(path / CONFIG_FILE)
        if options is not None:
            _check_resolved_options(stored, options, path)
        diff = _config_differences(stored, cfg)
        if diff:
            details = ", ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{str(path)!r} holds a run with a different config ({details}); choose "
                "another --out, or pass --overwrite to train it again"
            )
        stored_epochs = int(stored.get("epochs", cfg.epochs))
        if cfg.epochs < stored_epochs and state != "diverged":
            raise ValueError(
                f"{str(path)!r} holds a run of {stored_epochs} epochs but {cfg.epochs} are asked "
                "for; its best-val epoch may lie beyond that. Choose another --out, or pass "
                "--overwrite"
            )
        if state == "diverged":
            return "diverged"
        if state == "finished" and stored_epochs == cfg.epochs:
            return "reuse"
        return "resume"  # a finished run with fewer epochs is extended
    return "train"


def ensure_run(cfg: TrainConfig, path: Path, *, overwrite: bool = False, quiet: bool = True) -> str:
    """Make sure ``path`` holds the finished run of ``cfg``; return what was done.

    Returns ``"reused"``, ``"resumed"``, ``"trained"`` or ``"diverged"`` (the run stopped on
    a non-finite loss, now or before).
    """
    plan = plan_run(cfg, path, overwrite=overwrite)
    if plan == "diverged":
        return "diverged"
    if plan == "reuse":
        return "reused"
    try:
        if plan == "resume":
            resumable = {k: getattr(cfg, k) for k in RESUMABLE_KEYS if hasattr(cfg, k)}
            train(out=path, resume=True, quiet=quiet, **resumable)
            return "resumed"
        restart = overwrite or run_state(path) != "missing"
        train(cfg, out=path, overwrite=restart, quiet=quiet)
        return "trained"
    except TrainingDiverged as err:
        warnings.warn(f"{cfg.method} seed {cfg.seed}: {err}", RuntimeWarning, stacklevel=2)
        return "diverged"


def run_job(job: Job) -> str:
    """:func:`ensure_run` for one executor job (module level, so it travels to processes)."""
    return ensure_run(job.config, job.path, **job.options)


# --------------------------------------------------------------------------------------------
# tabulating


def run_row(path: str | os.PathLike) -> dict[str, Any]:
    """One run's line of ``runs.csv``: best-val epoch metrics on test, val accuracy, s/step."""
    path = Path(path)
    summary = _read_summary(path)
    best = summary.get("best") or {}
    if not best and not summary.get("diverged"):
        raise ValueError(
            f"{str(path)!r} has no evaluated epoch after training (summary.json lacks 'best'); "
            "train it for at least one epoch"
        )
    # a run that diverged before its first evaluation counts, with no metrics (NaN)
    modalities = list(summary.get("modalities") or [])
    test = best.get("test", {})
    val = best.get("val", {})
    row: dict[str, Any] = {
        "method": summary.get("method"),
        "seed": summary.get("seed"),
        "best_epoch": summary.get("best_epoch"),
        "epochs": summary.get("epochs_done"),
        "diverged": int(bool(summary.get("diverged"))),
        "val_acc": val.get("acc", np.nan),
        "test_acc": test.get("acc", np.nan),
    }
    for m in modalities:
        row[f"acc/{m}"] = test.get(f"acc/{m}", np.nan)
    for m in modalities:
        if f"probe/{m}" in test:
            row[f"probe/{m}"] = test[f"probe/{m}"]
    for name, limit in (summary.get("bayes_limits") or {}).items():
        row[f"bayes/{name}"] = limit["acc"]
    phi = [test.get(f"phi/{m}", np.nan) for m in modalities]
    for m, share in zip(modalities, shares(phi), strict=True):
        row[f"share/{m}"] = share
    row["balance"] = test.get("balance", np.nan)
    row["sec_per_step"] = _seconds_per_step(path, summary)
    row["path"] = str(path)
    return row


def _seconds_per_step(path: Path, summary: Mapping[str, Any]) -> float:
    """Mean of the recorded ``time/step_s``; else training time over steps."""
    iterations = load_run(path).iterations
    if "time/step_s" in iterations.columns and iterations["time/step_s"].notna().any():
        return float(iterations["time/step_s"].mean())
    steps = summary.get("steps") or 0
    return float(summary.get("train_time_s", np.nan)) / steps if steps else np.nan


def failed_row(method: str, seed: int, path: str | os.PathLike, error: str) -> dict[str, Any]:
    """The ``runs.csv`` line of a run that raised: no metrics, ``failed`` 1 and the error."""
    return {"method": method, "seed": seed, "failed": 1, "error": error, "path": str(path)}


def collect_runs(
    out: str | os.PathLike,
    labels: Sequence[str | MethodSpec],
    seeds: Sequence[int],
    failures: Mapping[tuple[str, int], str] | None = None,
) -> pd.DataFrame:
    """The per-run table (``runs.csv``) of the runs in ``out``, specs in order; the ``method``
    column holds each spec's label.

    ``failures`` maps ``(label, seed)`` of runs that raised to their error; they get a row
    without metrics (``failed`` 1, ``error``) instead of stopping the table.
    """
    failures = dict(failures or {})
    names = [x.label if isinstance(x, MethodSpec) else str(x) for x in labels]
    rows = []
    for m in names:
        for s in seeds:
            path = run_path(out, m, s)
            if (m, s) in failures:
                rows.append(failed_row(m, s, path, failures[(m, s)]))
            else:
                rows.append({**run_row(path), "method": m, "failed": 0})
    runs = pd.DataFrame(rows)
    for column, empty in (("failed", 0), ("diverged", 0), ("error", "")):
        if column not in runs:  # every run failed (no metrics at all), or none did
            runs[column] = empty
    return runs.fillna({"failed": 0, "diverged": 0, "error": ""})


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The numeric columns aggregated over seeds, in table order."""
    first = ["test_acc", "val_acc"]
    per_modality = [c for c in runs.columns if c.startswith(("acc/", "probe/"))]
    shares = [c for c in runs.columns if c.startswith("share/")]
    return [c for c in [*first, *per_modality, *shares, "balance", "sec_per_step"] if c in runs]


def add_ceilings(summary: pd.DataFrame, runs: pd.DataFrame, modalities: Sequence[str]) -> None:
    """Add ``alone/<m>``, ``headroom/<m>`` and ``recovered/<m>`` (mean and sd) to ``summary``
    in place, from the ``alone/<m>`` and ``joint`` rows of ``runs``; absent without them."""
    joint = runs.loc[runs["method"] == "joint"].set_index("seed")
    for m in modalities:
        alone = runs.loc[runs["method"] == f"alone/{m}"].set_index("seed")
        if alone.empty:
            continue
        ceiling = alone["test_acc"].astype(float)
        summary[f"alone/{m}_mean"] = ceiling.mean()
        summary[f"alone/{m}_std"] = ceiling.std(ddof=1) if len(ceiling) > 1 else np.nan
        if joint.empty or f"acc/{m}" not in joint:
            continue
        inside = joint[f"acc/{m}"].astype(float)
        headroom = (ceiling - inside).dropna()
        room = headroom.mean()
        summary[f"headroom/{m}_mean"] = room
        summary[f"headroom/{m}_std"] = headroom.std(ddof=1) if len(headroom) > 1 else np.nan
        means, sds = [], []
        for label in summary["method"]:
            part = runs.loc[runs["method"] == label].set_index("seed")
            gain = (part[f"acc/{m}"].astype(float) - inside).dropna()  # paired by seed
            ok = len(gain) and room > 0
            means.append(100.0 * gain.mean() / room if ok else np.nan)
            sds.append(100.0 * gain.std(ddof=1) / room if ok and len(gain) > 1 else np.nan)
        summary[f"recovered/{m}_mean"] = means
        summary[f"recovered/{m}_std"] = sds


def weak_modality(out: str | os.PathLike, seeds: Sequence[int], modalities: Sequence[str]) -> str:
    """The modality joint training leaves weakest: the lowest mean validation unimodal accuracy
    ``acc/<m>`` of the runs ``OUT/joint/seed<k>`` at their best-val epochs (ties: the first in
    ``modalities``).  Read on validation, so choosing it reads no test number; the M-SAM study's
    rule (README, "Ceilings, headroom and the M-SAM study").

    ValueError when no joint run in ``out`` records a validation unimodal accuracy.
    """
    means: dict[str, float] = {}
    for m in modalities:
        values = [
            ((_read_summary(run_path(out, "joint", s)).get("best") or {}).get("val") or {}).get(
                f"acc/{m}"
            )
            for s in seeds
        ]
        found = [float(v) for v in values if v is not None and math.isfinite(v)]
        if found:
            means[m] = float(np.mean(found))
    if not means:
        raise ValueError(
            f"no joint run in {str(out)!r} (seeds {list(seeds)}) records a validation unimodal "
            f"accuracy acc/<m> for {list(modalities)}; compare needs 'joint' among its methods"
        )
    return min(means, key=means.__getitem__)


def summarise(runs: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method: ``seeds``, ``diverged`` and ``<metric>_mean`` / ``<metric>_std`` columns.

    Standard deviations are sample deviations (ddof 1) over seeds, NaN for a single seed.
    """
    order = list(methods) if methods is not None else list(dict.fromkeys(runs["method"]))
    columns = metric_columns(runs)
    rows = []
    for method in order:
        part = runs.loc[runs["method"] == method]
        failed = int(part["failed"].sum()) if "failed" in part else 0
        row: dict[str, Any] = {
            "method": method,
            "seeds": len(part) - failed,
            "diverged": int(part["diverged"].sum()),
            "failed": failed,
        }
        for c in columns:
            values = part[c].astype(float)
            row[f"{c}_mean"] = values.mean()
            row[f"{c}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    if math.isfinite(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def markdown_table(summary: pd.DataFrame) -> str:
    """``summary`` (from :func:`summarise`) as a Markdown table of ``mean ± std`` cells."""
    stems = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    labels = {
        "test_acc": "test acc",
        "val_acc": "val acc",
        "balance": "balance",
        "sec_per_step": "ms / step",
    }

    def label(stem: str) -> str:
        if stem in labels:
            return labels[stem]
        if stem.startswith("recovered/"):
            return f"recovered {stem.split('/', 1)[1]} (%)"
        return stem.replace("/", " ", 1)

    header = ["method", "seeds", *[label(s) for s in stems]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        seeds = str(row["seeds"])
        for what in ("diverged", "failed"):
            if row.get(what):
                seeds += f" ({row[what]} {what})"
        cells = [str(row["method"]), seeds]
        for s in stems:
            if s == "sec_per_step":
                cells.append(_pm(row[f"{s}_mean"], row[f"{s}_std"], scale=1000.0, digits=2))
            elif s.startswith("recovered/"):
                cells.append(_pm(row[f"{s}_mean"], row[f"{s}_std"], digits=1))
            else:
                cells.append(_pm(row[f"{s}_mean"], row[f"{s}_std"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline(summary: pd.DataFrame, modality: str) -> pd.DataFrame:
    """Per method of ``summary`` (from :func:`compare` with its alone runs), as ``mean ± sd``
    text over seeds: fused test accuracy (%), ``modality``'s accuracy inside the model (%), the
    share of its headroom recovered (%), ms per optimisation step and that cost over joint's.

    KeyError naming the missing column when ``summary`` has no ceilings for ``modality``
    (``compare(alone=False)``, or no ``joint`` row).
    """
    needed = [f"recovered/{modality}_mean", f"acc/{modality}_mean", "sec_per_step_mean"]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise KeyError(
            f"the summary has no {missing}: compare needs 'joint' and its alone runs "
            f"(alone=True) for the recovered share of {modality!r}"
        )
    joint = summary.loc[summary["method"] == "joint", "sec_per_step_mean"]
    joint_step = float(joint.iloc[0]) if len(joint) else math.nan
    rows = []
    for _, row in summary.iterrows():
        step = row["sec_per_step_mean"]
        rows.append(
            {
                "method": row["method"],
                "seeds": row["seeds"],
                "test acc (%)": _pm(row["test_acc_mean"], row["test_acc_std"], 100.0, 1),
                f"{modality} inside (%)": _pm(
                    row[f"acc/{modality}_mean"], row[f"acc/{modality}_std"], 100.0, 1
                ),
                f"recovered {modality} (%)": _pm(
                    row[f"recovered/{modality}_mean"], row[f"recovered/{modality}_std"], 1.0, 1
                ),
                "ms / step": _pm(step, row["sec_per_step_std"], 1000.0, 2),
                "× joint": f"{step / joint_step:.2f}" if joint_step > 0 else "–",
            }
        )
    return pd.DataFrame(rows).set_index("method")


def write_results(
    out: str | os.PathLike, runs: pd.DataFrame, summary: pd.DataFrame, header: str = ""
) -> None:
    """Write ``runs.csv``, ``results.csv`` and ``results.md`` into ``out``."""
    out = Path(out)
    runs.to_csv(out / RUNS_CSV, index=False)
    summary.to_csv(out / RESULTS_CSV, index=False)
    (out / RESULTS_MD).write_text(header + markdown_table(summary), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# the entry point


def check_writable(out: Path) -> None:
    """Create ``out`` and write a file there, or raise PermissionError saying so (a shared
    folder mounted read-only, or owned by someone else), before any run starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"cannot write into the comparison folder {str(out)!r} ({err.strerror or err}); "
            "choose an --out you can write (with Ray: a folder every node can write)"
        ) from None


def compare(
    dataset: str | None = None,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    seeds: int | str | Sequence[int] = 3,
    out: str | os.PathLike = "runs/compare",
    *,
    config: TrainConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    alone: bool = True,
    overwrite: bool = False,
    quiet: bool = True,
    progress: bool = False,
    jobs: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    gpus_per_run: float = 0.0,
    **overrides: Any,
) -> pd.DataFrame:
    """Train (or reuse) every (method, seed) run in ``out`` and tabulate them.

    Args:
        dataset: registered dataset name; None takes it from ``config`` (default synthetic).
        methods: method specs, a list or a comma string (default joint, sam, ogm_ge, agm,
            msam); a spec may carry settings, ``msam[rho=0.5,perturb=all]``.
        seeds: a count ``N`` (seeds 0 .. N-1) or the seeds themselves.
        out: the comparison folder; run ``(m, k)`` lives in ``out/m/seed<k>``.
        config: base config shared by every run (object, mapping or YAML/JSON file).
        alone: also train each modality alone (``alone/<m>`` runs and the ceiling columns).
        overwrite: train every run again even if ``out`` holds it.
        quiet: no progress bar or epoch lines from the training loop.
        progress: one overall progress bar (runs done / total, the run in progress) and a
            line per run saying what was done with it.
        jobs: runs at once: local worker processes (CPU threads shared out between them),
            or the CPU count of a local Ray instance.
        executor: ``"local"`` (this machine) or ``"ray"`` (each run a Ray task; ``out`` must
            then be a folder every Ray node sees).
        ray_address: the Ray cluster to use; None starts a local instance.
        gpus_per_run: GPUs each Ray task asks for.
        **overrides: config keys for every run, e.g. ``epochs=5, lr=0.1``.

    Returns:
        The per-spec summary (the content of ``results.csv``): ``method`` (the spec's label),
        ``seeds``, ``diverged`` and ``<metric>_mean`` / ``<metric>_std`` for test_acc, val_acc,
        ``acc/<m>``, ``probe/<m>``, ``share/<m>``, balance, sec_per_step and, with the alone
        runs, ``alone/<m>``, ``headroom/<m>`` and ``recovered/<m>``.  The per-run table is
        ``OUT/runs.csv`` (:func:`collect_runs` rebuilds it).

    A run that raises is tabulated with ``failed`` 1 and its error, without metrics, and
    the others go on; re-running the command retries it.

    Raises:
        ValueError / KeyError: unknown method, dataset or config key, bad seeds, a stored
            run whose config differs from the one asked for, an executor that cannot run
            (Ray missing or unreachable), all before anything is written.
        PermissionError: ``out`` cannot be written.
    """
    forbidden = sorted(k for k in overrides if k.replace("-", "_") in PER_RUN_KEYS)
    if forbidden:
        raise ValueError(
            f"compare sets {forbidden} for every run itself; pass the dataset, methods and seeds "
            "as arguments instead"
        )
    specs = parse_methods(methods)
    seed_list = parse_seeds(seeds)
    start_workers(executor, jobs, preload=[__name__])  # their imports overlap the checks below
    base = resolve_config(config, **overrides)
    if dataset is not None:
        base = base.replace(dataset=dataset)
    data = build_dataset(base)  # also checks dataset and modalities
    if executor == "local":  # a Ray task's device is its node's, not this machine's
        # fp16 on a CPU is refused here, once, not by every run after the folder is written
        check_precision(base.precision, resolve_device(base.device))
    modalities = data.modality_names
    extra = alone_specs(modalities) if alone and len(modalities) > 1 else []
    # each spec's method on its model: a bad option value (msam[perturb=bogus]) or too few
    # modalities is refused here, not once per run after the others have trained; and the
    # options it resolves are what a stored run must have trained with to be reused
    resolved = {spec.label: method_options(spec.config(base, seed_list[0]), data) for spec in specs}
    resolved.update({spec.label: method_options(spec.config(base, 0), data) for spec in extra})
    out = Path(out).expanduser()
    if (out / CONFIG_FILE).exists():
        raise ValueError(
            f"{str(out)!r} is a single run directory; give compare a folder of its own"
        )
    options = {"overwrite": overwrite, "quiet": quiet}
    # seeds outermost: an interrupted sequential comparison has every method
    every = [*specs, *extra]  # the alone/<m> runs are ordinary jobs too
    pairs = [(spec.label, seed) for seed in seed_list for spec in every]
    by_label = {spec.label: spec for spec in every}
    job_list = [
        Job(
            f"{label} seed {seed}",
            by_label[label].config(base, seed),
            run_path(out, label, seed),
            options,
        )
        for label, seed in pairs
    ]
    spec_of = {job.path: pair for job, pair in zip(job_list, pairs, strict=True)}
    # config clashes are refused before anything is written; stored runs need no worker
    plans = [
        plan_run(job.config, job.path, overwrite=overwrite, options=resolved[spec_of[job.path][0]])
        for job in job_list
    ]
    stored = {"reuse": "reused", "diverged": "diverged"}
    todo = [job for job, plan in zip(job_list, plans, strict=True) if plan not in stored]
    where = {"ray_address": ray_address, "gpus_per_run": gpus_per_run, "preload": [__name__]}
    with contextlib.ExitStack() as held:
        runner = held.enter_context(Executor(executor, jobs, **where))
        check_writable(out)
        # one comparison per folder: a second one would find the first one's runs locked and
        # tabulate them as failed (their records stay safe under their own locks either way)
        held.enter_context(run_lock(out, "comparing"))
        request = {
            "dataset": base.dataset,
            "methods": [spec.label for spec in specs],
            "alone": bool(extra),
            "seeds": seed_list,
            "overrides": {k: v for k, v in overrides.items()},
            "config": base.to_dict(),
        }
        write_json_atomic(out / REQUEST_FILE, request)

        finished: list[JobResult] = []
        # One overall bar: runs done / total, the runs in progress, a line per finished run.
        bar = tqdm(total=len(job_list), disable=not progress, desc="runs", unit="run")
        running = [job.label for job in todo]

        def report(result: JobResult, *_: int) -> None:
            finished.append(result)
            if result.job.label in running:
                running.remove(result.job.label)
            bar.update(1)
            now = "running " + ", ".join(running[: max(jobs, 1)]) if running else "all done"
            bar.set_postfix_str(now, refresh=True)
            if progress:
                what = f"failed: {result.error}" if result.failed else result.action
                count = f"[{len(finished)}/{len(job_list)}]"
                bar.write(f"{count} {result.job.label}: {what} ({result.job.path})")

        for job, plan in zip(job_list, plans, strict=True):
            if plan in stored:
                report(JobResult(job, stored[plan]))
        if running:
            bar.set_postfix_str("running " + ", ".join(running[: max(jobs, 1)]), refresh=True)
        try:
            runner.run(run_job, todo, on_done=report)
        finally:
            bar.close()
        failures = {spec_of[r.job.path]: r.error or "failed" for r in finished if r.failed}

        runs = collect_runs(out, every, seed_list, failures)
        summary = summarise(runs, [spec.label for spec in specs])
        add_ceilings(summary, runs, modalities)
        header = (
            f"Dataset `{base.dataset}`, {len(seed_list)} seed(s) {seed_list}, "
            f"{base.epochs} epochs. "
            "Test metrics at the best-validation epoch; mean ± sample sd over seeds. `alone` is "
            "each modality trained alone, `headroom` that minus joint's unimodal accuracy, "
            "`recovered` the share of it a method gains (%).\n\n"
        )
        write_results(out, runs, summary, header)
    return summary
