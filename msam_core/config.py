"""Every knob of a training run in one dataclass, loadable from YAML/JSON and ``--key value``.

``TrainConfig`` is what ``config.json`` of a run directory holds (plus a ``"run"`` entry with
versions and data facts, ignored when a config is read back), so any run can be repeated with
``msam train --config RUN/config.json --out NEW``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from msam_core.suggest import did_you_mean

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step")
SHAPLEY_VALUES = ("accuracy", "prob", "neg_loss")  # msam_core.coalitions.VALUE_KINDS
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
BASELINES = ("zeros", "mean")
#: ``measure_options`` keys: the options of :func:`msam_core.sharpness.periodic_measures`
#: the loop does not set itself (a test keeps the two in step)
MEASURE_OPTIONS = ("hessian", "blocks", "tol", "max_iter", "n_samples", "seed", "method")
EIGEN_METHODS = ("lanczos", "power")
LOG_TARGETS = ("tensorboard",)  # msam_core.sinks.LOG_TARGETS
#: keys a run directory's config.json adds to the config; ignored when reading one back
RESERVED_KEYS = ("run",)


@dataclass
class TrainConfig:
    """One training run.  Units: ``lr`` per step; ``epochs``, ``checkpoint_every``,
    ``eval_every`` and ``landscape_epochs`` in epochs; ``measure_every`` in steps.

    Data: ``dataset`` (registry name) with ``dataset_options`` passed to its loader (a
    ``seed`` there defaults to ``seed``); ``modalities`` trains and evaluates on a subset of
    its modalities (same samples and splits; empty = all of them).  Model: ``fusion`` (early |
    concat | sum | gated | film | shared), ``encoder`` (``auto`` picks one per modality kind)
    and ``model_options`` passed to ``build_model`` (feature_dim, hidden, dropout); ``baseline``
    is what replaces an absent modality (zeros, or the per-value mean of the training
    inputs).  Method: ``method`` (joint | sam | msam | ...), ``rho`` and ``adaptive`` for the
    SAM family, ``method_options`` for anything method-specific.
    Measurement: every ``measure_every`` steps (and at each epoch end) per-modality sharpness
    and Hessian measures on a fixed probe batch of ``probe_size`` training samples
    (``measure_options`` go to :func:`msam_core.sharpness.periodic_measures`); a loss
    landscape at each epoch in ``landscape_epochs`` (``landscape_options`` go to
    :func:`msam_core.landscape.compute_landscape`).
    """

    # what to train on, with what
    dataset: str = "synthetic"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)  # subset to train on; empty = all
    method: str = "msam"
    method_options: dict[str, Any] = field(default_factory=dict)
    fusion: str = "concat"
    encoder: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    baseline: str = "zeros"  # absent-modality input: zeros, or the per-value train mean
    # base optimizer and schedule
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    step_epochs: int = 10  # schedule "step": multiply lr by step_gamma every step_epochs
    step_gamma: float = 0.1
    # SAM family
    rho: float | None = None  # None: the method's own default (Method.DEFAULT_RHO)
    adaptive: bool = False
    # Shapley: coalition value v(S)
    shapley_value: str = "accuracy"
    shapley_rows: int | None = None  # coalition values on this many rows of each batch
    # loop
    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only)
    compile: bool = False  # run the model through torch.compile
    num_workers: int = 0  # DataLoader processes reading file-backed items; 0 = main process
    # evaluation, checkpoints, measurement
    eval_every: int = 1
    eval_batch_size: int = 1024
    checkpoint_every: int = 1
    checkpoint_every_steps: int = 0  # also a mid-epoch last.pt every k steps; 0 = epoch ends
    keep_checkpoints: int = 0  # 0 keeps every epoch_XXXX.pt; n keeps the newest n
    measure_every: int = 0  # per-modality sharpness / Hessian every k steps; 0 = never
    measure_options: dict[str, Any] = field(default_factory=dict)
    probe_size: int = 256  # samples of the fixed train probe batch the measurements use
    # linear probes of the encoders (probe/<m>) at the best and last epochs, and every
    # probe_every epochs when > 0 (late fusion only)
    probe: bool = True
    probe_every: int = 0
    landscape_epochs: list[int] = field(default_factory=list)
    landscape_options: dict[str, Any] = field(default_factory=dict)
    # force each record to disk (~1 ms each); without it records are forced to disk at each
    # checkpoint, and checkpoints always are, so a power loss loses only redoable steps
    fsync: bool = False
    log_to: list[str] = field(default_factory=list)  # also write records to: tensorboard
    name: str | None = None

    # -- validation ------------------------------------------------------------------------

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges and fixed choices; ValueError names the key and the choices.

        Registry names (dataset, method, fusion) are checked when the run is built, against
        what is registered then.
        """
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("shapley_value", self.shapley_value, SHAPLEY_VALUES)
        _choice("baseline", self.baseline, BASELINES)
        _choice("precision", self.precision, PRECISIONS)
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device={self.device!r}; choose one of {list(DEVICES)} or 'cuda:N'")
        for key in ("batch_size", "eval_batch_size", "probe_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in (
            "epochs",
            "eval_every",
            "checkpoint_every",
            "checkpoint_every_steps",
            "keep_checkpoints",
            "num_workers",
            "probe_every",
        ):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.measure_every < 0:
            raise ValueError(f"measure_every must be >= 0 (0 = never), got {self.measure_every}")
        unknown = sorted(set(self.measure_options) - set(MEASURE_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown measure_options {unknown}{did_you_mean(unknown, MEASURE_OPTIONS)}; "
                f"choose from {list(MEASURE_OPTIONS)}"
            )
        _choice(
            "measure_options.method", self.measure_options.get("method", "lanczos"), EIGEN_METHODS
        )
        for target in self.log_to:
            _choice("log_to", target, LOG_TARGETS)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.rho is not None and not (math.isfinite(self.rho) and self.rho >= 0):
            raise ValueError(f"rho must be a finite number >= 0, got {self.rho}")
        _check_shapley_rows(self.shapley_rows, self.batch_size)

    # -- conversion ------------------------------------------------------------------------

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys -> KeyError listing the valid ones."""
        data = {k: v for k, v in data.items() if k not in RESERVED_KEYS}
        if "bf16" in data:  # config.json of runs written before `precision` existed
            data.setdefault("precision", "bf16" if data.pop("bf16") else "fp32")
        return with_overrides(cls(), data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a ``.yaml``/``.yml``/``.json`` file (a run's ``config.json`` works too)."""
        return cls.from_dict(read_config_file(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (coerced and validated like overrides)."""
        return with_overrides(self, changes)


#: one line per config key, for ``msam config`` and error messages (a test checks every key
#: of :class:`TrainConfig` has one)
DESCRIPTIONS: dict[str, str] = {
    "dataset": "dataset name: synthetic, mfeat, basic_motions, digits_halves, cremad, ...",
    "dataset_options": "keyword options of the dataset's loader (noise, views, data_root, ...)",
    "modalities": "train and evaluate on these modalities only (e.g. audio,visual); [] = all",
    "method": "training method: joint, sam, asam, ogm_ge, agm, mmpareto, mla, pmr, gblending, msam",
    "method_options": "options of the method (phi_ema, ogm_alpha, ...; see the README table)",
    "fusion": "early, or a late-fusion head: concat, sum, gated, film, shared",
    "encoder": "encoder per modality: auto (by kind), mlp, cnn, cnn1d, resnet18, ...",
    "model_options": "options of build_model: feature_dim (int, or one per modality), hidden, "
    "dropout",
    "baseline": "what replaces an absent modality's input: zeros, or the train mean",
    "optimizer": "base optimizer: sgd, adam, adamw",
    "lr": "learning rate per step",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay of the base optimizer",
    "schedule": "learning-rate schedule: none, cosine (to 0 over the run), step",
    "step_epochs": "schedule step: multiply lr by step_gamma every step_epochs epochs",
    "step_gamma": "schedule step: the factor",
    "rho": "ascent radius of the SAM family; unset = the method's own (msam 1.0, sam/asam 0.05)",
    "adaptive": "scale the ascent by |θ| (ASAM's form)",
    "shapley_value": "coalition value v(S) behind φ: accuracy, prob or neg_loss",
    "shapley_rows": "coalition values on this many seeded rows of each batch (phi_stderr/<m> "
    "records the precision lost); None = every row",
    "batch_size": "samples per optimisation step (the global batch)",
    "epochs": "passes over the training data",
    "seed": "seed of the data split, initial weights and data order",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "precision": "fp32, bf16 (autocast, CPU or CUDA) or fp16 (autocast + GradScaler, CUDA only)",
    "compile": "run the model through torch.compile (where this torch build supports it)",
    "num_workers": "DataLoader processes reading file-backed data; 0 = the main process",
    "eval_every": "evaluate train / val / test every k epochs (and at the last)",
    "eval_batch_size": "samples per evaluation pass",
    "checkpoint_every": "write checkpoints/epoch_XXXX.pt every k epochs; 0 = last.pt only",
    "checkpoint_every_steps": "also save last.pt every k steps, mid-epoch (resumable exactly)",
    "keep_checkpoints": "keep only the newest n epoch checkpoints; 0 = all",
    "measure_every": "per-modality sharpness and Hessian measures every k steps; 0 = never",
    "measure_options": "options of the measures: hessian, blocks, tol, max_iter, n_samples, ...",
    "probe_size": "training samples in the fixed probe batch the measures use",
    "probe": "linear probe of each encoder's features (probe/<m>) at the best and last epochs",
    "probe_every": "also probe every k epochs; 0 = only at the best and last epochs",
    "landscape_epochs": "epochs after which a loss landscape is computed and saved",
    "landscape_options": "options of compute_landscape: steps, span, dims, norm, ...",
    "fsync": "force every record to disk (records reach the disk at each checkpoint anyway)",
    "log_to": "also send the records to: tensorboard (RUN/tensorboard/; --tensorboard)",
    "name": "display name of the run (default: the directory name)",
}


# --------------------------------------------------------------------------------------------
# helpers


def as_stored(value: Any) -> Any:
    """``value`` after a JSON round trip (tuples as lists, keys and paths as strings), so a
    config asked for in Python compares equal to the same config read from ``config.json``."""
    return json.loads(json.dumps(value, default=str))


def _check_shapley_rows(rows: Any, batch_size: int) -> None:
    """``shapley_rows`` must be None or a whole number of rows in ``[1, batch_size]``
    (bools and fractions are refused, not rounded)."""
    if rows is None:
        return
    if isinstance(rows, bool) or not isinstance(rows, int):
        raise ValueError(
            f"shapley_rows must be a whole number of rows (1 to batch_size = {batch_size}) or "
            f"None for every row, got {rows!r} ({type(rows).__name__})"
        )
    if not 1 <= rows <= batch_size:
        raise ValueError(
            f"shapley_rows must be between 1 and batch_size = {batch_size} (or None for every "
            f"row), got {rows}"
        )


def _choice(key: str, value: Any, choices: Iterable[str]) -> None:
    if value not in choices:
        choices = list(choices)
        raise ValueError(
            f"{key}={value!r} is not valid{did_you_mean(str(value), choices)}; "
            f"choose one of {choices}"
        )


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_keys(keys: Iterable[str]) -> None:
    valid = TrainConfig.keys()
    unknown = [k for k in keys if k.split(".", 1)[0] not in valid]
    if unknown:
        hint = did_you_mean([k.split(".", 1)[0] for k in unknown], valid)
        raise KeyError(
            f"unknown config key(s) {unknown}{hint}; valid keys are {valid} "
            "(`msam config` describes each)"
        )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a YAML or JSON config file (FileNotFoundError / ValueError)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML/JSON: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}"
        )
    return data


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(key: str, value: Any, kind: Any) -> Any:
    """Convert ``value`` (often a command-line string) to the field type ``kind``.

    Handles ``int``, ``float``, ``bool`` (true/false/yes/no/on/off/1/0), ``str``, optional
    types (``none``/``null`` -> None), ``list[int]`` (``"1,2"`` or ``"[1, 2]"``) and ``dict``
    (YAML/JSON text).  ValueError names the key, the value and the expected type.
    """
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if isinstance(value, dict | list):
                raise ValueError
            return str(value)
        if origin is list:
            if isinstance(value, str):
                text = value.strip()
                parsed = yaml.safe_load(text) if text.startswith("[") else text.split(",")
                value = [] if text == "" else parsed
            if not isinstance(value, list | tuple):
                value = [value]
            return [coerce(key, v, args[0]) if args else v for v in value]
        if origin is dict or kind is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip() else {}
            if not isinstance(value, Mapping):
                raise ValueError
            return dict(value)
    except (ValueError, TypeError, yaml.YAMLError):
        pass
    else:
        return value
    name = getattr(kind, "__name__", str(kind))
    raise ValueError(f"config key {key!r}: cannot read {value!r} as {name}")


def _yaml_value(key: str, text: str) -> Any:
    """Command-line text read as YAML; ValueError (one line) naming the key when it is not."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(
            f"--{key} {text!r} is not a valid YAML value ({problem}); quote it or fix it, "
            f"e.g. --{key} '[1, 2]'"
        ) from err


def with_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A new config with ``overrides`` applied; values are coerced to the field types.

    Keys may use dashes (``batch-size``) and dotted paths into dict fields
    (``dataset_options.noise=0.5`` sets one option, its value read as YAML).
    """
    data = config.to_dict()
    hints = _field_types()
    normalised = {str(k).replace("-", "_"): v for k, v in overrides.items()}
    _check_keys(normalised)
    for key, value in normalised.items():
        if "." in key:
            top, sub = key.split(".", 1)
            if typing.get_origin(hints[top]) is not dict:
                raise KeyError(f"{top!r} is not a dict option; {key!r} cannot set a sub-key")
            data[top] = dict(data[top])
            # command-line text is read as YAML (numbers, lists, booleans); anything else
            # (a Path, a list) is taken as it is, in the form config.json stores
            data[top][sub] = _yaml_value(key, value) if isinstance(value, str) else as_stored(value)
        else:
            data[key] = coerce(key, value, hints[key])
    return TrainConfig(**data)


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """``["--lr", "0.1", "--adaptive", "--dataset_options.noise=0.3"]`` -> a dict of strings.

    A flag with no value (followed by another flag or the end) means ``true``.
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"expected --key value, got {token!r}")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value = tokens[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        out[key.replace("-", "_")] = value
    return out


def resolve_config(
    config: TrainConfig | Mapping[str, Any] | str | Path | None = None, **overrides: Any
) -> TrainConfig:
    """Any accepted config form (object, mapping, file path, None) plus overrides -> TrainConfig."""
    if config is None:
        base = TrainConfig()
    elif isinstance(config, TrainConfig):
        base = config
    elif isinstance(config, str | Path):
        base = TrainConfig.from_file(config)
    elif isinstance(config, Mapping):
        base = TrainConfig.from_dict(config)
    else:
        raise TypeError(
            f"config must be a TrainConfig, a mapping or a file path, got {type(config).__name__}"
        )
    return with_overrides(base, overrides) if overrides else base
