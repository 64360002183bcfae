"""The method protocol: a small object plugged into the one training loop.

A :class:`Method` is built from the model and the training config, owns its optimizer (the
base optimizer, or a SAM-family wrapper around it) and any state of its own (running
averages, EMAs), and performs exactly one optimisation step per :meth:`Method.step` call,
returning that step's record (docs/design.md, "Methods and steps").  The loop never needs to
know which method it runs; resume is exact because :meth:`Method.state_dict` carries the
method's own state next to the optimizer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from msam_core.record import to_jsonable
from msam_core.rows import row_subset
from msam_core.suggest import did_you_mean

OPTIMIZERS = ("sgd", "adam", "adamw")


def _get(config: Any, key: str, default: Any = None) -> Any:
    """Read a config knob from a TrainConfig-like object or a plain mapping."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def base_optimizer_factory(config: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The base optimizer class and its keyword arguments from ``config``.

    Knobs: ``optimizer`` (sgd | adam | adamw), ``lr``, ``momentum`` (SGD only),
    ``weight_decay`` (the base optimizer's, as docs/design.md, "M-SAM step", prescribes).
    """
    name = str(_get(config, "optimizer", "sgd")).lower()
    lr = float(_get(config, "lr", 0.01))
    weight_decay = float(_get(config, "weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD, {
            "lr": lr,
            "momentum": float(_get(config, "momentum", 0.9)),
            "weight_decay": weight_decay,
        }
    if name == "adam":
        return torch.optim.Adam, {"lr": lr, "weight_decay": weight_decay}
    if name == "adamw":
        return torch.optim.AdamW, {"lr": lr, "weight_decay": weight_decay}
    hint = did_you_mean(name, OPTIMIZERS)
    raise ValueError(f"unknown optimizer {name!r}{hint}; choose one of {list(OPTIMIZERS)}")


def build_base_optimizer(params: Iterable[Tensor], config: Any) -> torch.optim.Optimizer:
    """The plain base optimizer over ``params`` (see :func:`base_optimizer_factory`)."""
    cls, kwargs = base_optimizer_factory(config)
    return cls(params, **kwargs)


def config_rho(config: Any, default: float) -> float:
    """The config's ``rho``, or ``default`` (the method's own) when it is unset (None)."""
    rho = _get(config, "rho", None)
    return float(default if rho is None else rho)


def sharpness_aware_optimizer(
    cls: type[torch.optim.Optimizer], model: nn.Module, config: Any, default_rho: float = 0.05
) -> torch.optim.Optimizer:
    """``cls`` (:class:`~msam_core.optim.SAM` or :class:`~msam_core.optim.MSAM`) around the
    configured base optimizer, with the config's ``rho`` (``default_rho`` when unset) and
    ``adaptive``."""
    base_cls, kwargs = base_optimizer_factory(config)
    rho, adaptive = config_rho(config, default_rho), bool(_get(config, "adaptive", False))
    return cls(model.parameters(), base_cls, rho=rho, adaptive=adaptive, **kwargs)


def check_modality_count(cls: type[Method], modalities: list[str]) -> None:
    """ValueError when method ``cls`` needs more modalities than ``modalities`` holds."""
    if len(modalities) < cls.MIN_MODALITIES:
        raise ValueError(
            f"method {cls.name!r} needs at least {cls.MIN_MODALITIES} modalities but the run has "
            f"{modalities}: {cls.MIN_MODALITIES_REASON}; train it on more modalities (the "
            "modalities key) or use joint, sam, asam or msam"
        )


class Method:
    """Base class of every training method (joint, sam, msam, ...).

    Subclasses implement :meth:`step` and, when they need another optimizer than the base
    one, override :meth:`build_optimizer` (called once, by ``__init__``).  ``optimizer`` must
    be a ``torch.optim.Optimizer`` whose ``param_groups`` carry ``lr``, so the loop's
    learning-rate scheduler drives it, and whose ``state_dict`` round-trips (the loop
    checkpoints it under ``"optimizer"``).

    Attributes: ``name`` (the registry name), ``model``, ``config``, ``modalities``
    (``model.modalities`` order), ``optimizer``.
    """

    name: ClassVar[str] = ""
    #: the ``method_options`` keys this method reads (through :meth:`option`)
    OPTIONS: ClassVar[tuple[str, ...]] = ()
    #: the fewest modalities the method is defined for, and why (a ``modalities`` subset with
    #: fewer is refused before anything is written)
    MIN_MODALITIES: ClassVar[int] = 1
    #: ``rho`` when the config leaves it unset: the ascent radius of a SAM-family step, and
    #: the radius of the loop's sharpness measurements for every method
    DEFAULT_RHO: ClassVar[float] = 0.05
    MIN_MODALITIES_REASON: ClassVar[str] = ""
    #: True when :meth:`step` measures ``sharpness`` (l(θ+ε) − l(θ)) as a by-product.
    measures_sharpness: bool = False
    #: the fusion head the method's model must have (None: any).  The loop builds the run's
    #: model with it unless the run asks for early fusion, which such a method refuses (MLA's
    #: shared head is its architecture, not an option).
    fusion: ClassVar[str | None] = None
    #: optimisation steps taken before the current one; the loop sets it before each step (a
    #: resumed run continues the count), and it seeds the step's ``shapley_rows`` subset
    step_index: int = 0

    def __init__(self, model: nn.Module, config: Any) -> None:
        self.model = model
        self.config = config
        self.modalities: list[str] = list(model.modalities)
        self.optimizer: torch.optim.Optimizer = self.build_optimizer(model, config)

    def build_optimizer(self, model: nn.Module, config: Any) -> torch.optim.Optimizer:
        """The method's optimizer over ``model``'s parameters: the base optimizer
        (:func:`build_base_optimizer`); the SAM family overrides it to wrap that optimizer."""
        return build_base_optimizer(model.parameters(), config)

    @property
    def rho(self) -> float:
        """The run's ``rho``: the config's, else this method's :attr:`DEFAULT_RHO`."""
        return config_rho(self.config, type(self).DEFAULT_RHO)

    def option(self, key: str, default: Any = None) -> Any:
        """A method-specific knob: ``config.method_options[key]``, else ``config.<key>``.

        ``key`` must be one of the class's :attr:`OPTIONS`, which is how a misspelt option
        in a config is told from another method's option (see ``build_method``).
        """
        if key not in type(self).OPTIONS:
            raise KeyError(
                f"{type(self).__name__} reads option {key!r} but does not declare it in OPTIONS"
            )
        options = _get(self.config, "method_options", None) or {}
        value = options[key] if key in options else _get(self.config, key, default)
        self.__dict__.setdefault("_options_read", {})[key] = value
        return value

    @property
    def resolved_options(self) -> dict[str, Any]:
        """The options read so far, each with the value used (defaults filled in) as a JSON
        value.  Right after construction it is what ``config.json`` records as the run's
        ``run.resolved_method_options``: ``method_options: {}`` alone cannot tell which
        defaults a run trained with once a default changes (msam's ``perturb``)."""
        return to_jsonable(self.__dict__.get("_options_read", {}))

    def shapley_rows(self, targets: Tensor) -> Tensor | None:
        """The rows of this step's batch to compute coalition values on: None (every row)
        unless the config sets ``shapley_rows`` (:func:`msam_core.rows.row_subset`, seeded by
        the config's ``seed`` and :attr:`step_index`)."""
        rows = _get(self.config, "shapley_rows", None)
        if rows is None:
            return None
        global_batch = int(_get(self.config, "batch_size", targets.shape[0]))
        seed = int(_get(self.config, "seed", 0))
        n = int(targets.shape[0])
        return row_subset(n, int(rows), global_batch, seed, self.step_index, targets.device)

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop before the first step of each epoch (1-based), also after a resume.

        Methods whose behaviour depends on the epoch (e.g. a modulation window) override it.
        """

    def training_split(self, train: Dataset) -> Dataset:
        """Called once by the loop, before training, with the training split; returns the part
        the loop trains on.  A method that holds part of train out for itself (G-Blending) or
        reads train between epochs (PMR's prototypes) keeps what it needs here."""
        return train

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        """One optimisation step on one batch; returns the step's record.

        The record holds at least ``loss`` (the fused loss at θ before the update, float) and,
        for every modality m, ``phi/<m>``, ``weight/<m>`` and ``dominant`` where the method
        computes them; methods that measure it add ``sharpness``.  The loop adds ``step``,
        ``epoch``, ``lr`` and ``time/step_s``.
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The method's own state besides the optimizer (EMAs, running averages)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the base has no state and accepts only ``{}``."""
        if state:
            raise ValueError(
                f"method {self.name!r} keeps no state but the checkpoint has keys {sorted(state)}"
            )

    def per_modality_state(
        self, state: Mapping[str, Any], keys: tuple[str, ...], vector: str
    ) -> Tensor:
        """Check a stored state has exactly ``keys`` and that ``state[vector]`` holds one float64
        value per modality; return that vector.  ValueError naming what the checkpoint holds."""
        if set(state) != set(keys):
            raise ValueError(
                f"{self.name} state must hold {sorted(keys)}, got keys {sorted(state)}"
            )
        values = torch.as_tensor(state[vector], dtype=torch.float64)
        if values.shape != (len(self.modalities),):
            raise ValueError(
                f"{self.name} state has {list(values.shape)} values of {vector!r} for modalities "
                f"{self.modalities}; was the checkpoint written for another model?"
            )
        return values

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, optimizer={type(self.optimizer).__name__})"
        )
