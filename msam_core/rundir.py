"""A run directory's binary artefacts: checkpoints, landscape grids, and the model rebuilt.

The JSON records (config, iterations, epochs, summary) are :mod:`msam_core.record`'s; the
names of every file are :mod:`msam_core.layout`'s.  This module writes and reads the rest:

- checkpoints (``checkpoints/epoch_XXXX.pt``, ``last.pt``, ``best.pt``): what the loop saves
  and a resumed run restores (:func:`save_checkpoint`, :func:`load_checkpoint`,
  :func:`save_loop_checkpoint`);
- landscape grids (``landscapes/<name>.npz``, plain arrays, no pickles): :class:`Landscape`,
  :func:`save_landscape`, :func:`load_landscape`;
- a trained model rebuilt from a run's config and one of its checkpoints, for analysis after
  training (:func:`build_dataset`, :func:`build_run_model`, :func:`load_trained`).

The training loop (:mod:`msam_core.train`) and the landscape math (:mod:`msam_core.landscape`)
both sit above this module, so neither needs the other to read a run.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from msam_core.integrity import RecordsCheck, check_records
from msam_core.layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LANDSCAPES_DIR,
    LAST_CHECKPOINT,
    NAMED_CHECKPOINTS,
    checkpoint_epochs,
    checkpoint_path,
    epoch_checkpoint_name,
    epoch_checkpoints,
)

# Rebuilding a run needs the config, data, model and record machinery (PyYAML, pandas, every
# dataset loader): imported where used, so importing this module (landscape.py keeps its record
# here) stays light.
if TYPE_CHECKING:
    from msam_core.config import TrainConfig
    from msam_core.data import MultimodalDataset

from msam_core.atomic import write_bytes_atomic, write_error
from msam_core.runlock import run_lock

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

#: version of the checkpoint dictionary the loop writes
CHECKPOINT_FORMAT = 1

# the layout's checkpoint helpers, importable from here too (one place for a run's files)
__all__ = [
    "CHECKPOINT_FORMAT",
    "NAMED_CHECKPOINTS",
    "SAFE_NUMPY_GLOBALS",
    "CheckpointError",
    "Landscape",
    "ResumePoint",
    "TrainedModel",
    "UnsafeCheckpointError",
    "build_dataset",
    "build_run_model",
    "checkpoint_epochs",
    "checkpoint_path",
    "checksum_file",
    "epoch_checkpoints",
    "find_resume_point",
    "load_checkpoint",
    "load_landscape",
    "load_landscapes",
    "load_trained",
    "save_checkpoint",
    "save_landscape",
    "save_loop_checkpoint",
    "serialize_checkpoint",
    "write_checkpoint_bytes",
]


# --------------------------------------------------------------------------------------------
# checkpoints


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, damaged, or needing code to load."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose loading would need more than msam ever stores (it could run code)."""


#: the only non-tensor types an msam checkpoint holds: numpy's RNG state (a uint32 array),
#: and a path in the config of checkpoints written before the config was stored as JSON
SAFE_NUMPY_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, _reconstruct, PosixPath]


def _global_name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def checksum_file(path: Path) -> Path:
    """``last.pt`` -> ``last.pt.sha256``: the checksum(s) stored when ``path`` was written
    (``sha256sum -c`` reads it)."""
    return path.with_name(path.name + ".sha256")


def _stored_checksums(path: Path) -> list[str]:
    try:
        text = checksum_file(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return []
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _store_checksums(path: Path, digests: list[str]) -> None:
    text = "".join(f"{d}  {path.name}\n" for d in digests)
    write_bytes_atomic(checksum_file(path), text.encode("ascii"))


def write_checkpoint_bytes(data: bytes, path: Path) -> None:
    """Write serialized checkpoint ``data`` to ``path`` with its checksum, durably.

    The file goes through a temporary file (fsynced) and ``os.replace`` (the folder fsynced
    too): always, whatever the run's ``fsync`` option, because a checkpoint is written once
    per epoch (or every ``checkpoint_every_steps``) and is what a resume depends on; the cost
    is a few milliseconds against an epoch's seconds.  ``<name>.sha256`` lists the digest;
    while the new file replaces the old one it lists both, so a kill at any moment leaves a
    file that matches its checksum.
    """
    digest = hashlib.sha256(data).hexdigest()
    before = _stored_checksums(path)
    if digest not in before:
        _store_checksums(path, [*before[-1:], digest])
    write_bytes_atomic(path, data)
    if before != [digest]:
        _store_checksums(path, [digest])


def serialize_checkpoint(state: Mapping[str, Any]) -> bytes:
    """``torch.save`` of ``state`` into memory (written then by :func:`write_checkpoint_bytes`)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def save_checkpoint(state: Mapping[str, Any], path: Path) -> None:
    """Write ``state`` to ``path``: atomic, durable, with its checksum; never a half-written
    file (a full disk is a :class:`~msam_core.atomic.RunWriteError`)."""
    write_checkpoint_bytes(serialize_checkpoint(state), Path(path))


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, verify: bool = True
) -> dict[str, Any]:
    """Read a checkpoint msam wrote, safely: ``torch.load(weights_only=True)``.

    Only tensors, plain Python values and numpy's RNG state (:data:`SAFE_NUMPY_GLOBALS`) are
    accepted, so a crafted file cannot run code.  With ``verify``, the file must match the
    checksum stored beside it (files written before checksums existed are read as they are).
    Raises FileNotFoundError, or :class:`CheckpointError` naming the file and why.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    data = path.read_bytes()
    if verify:
        stored = _stored_checksums(path)
        if stored and hashlib.sha256(data).hexdigest() not in stored:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is damaged: its contents do not match the checksum "
                f"stored when it was written ({checksum_file(path).name})"
            )
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:
        raise _load_error(path, data, err) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(state).__name__}, not an msam checkpoint (a dict)"
        )
    return state


def _load_error(path: Path, data: bytes, err: Exception) -> CheckpointError:
    """Why ``torch.load`` refused: a global outside the allow-list (unsafe), or damage."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:
        needed = []
    allowed = {_global_name(g) for g in SAFE_NUMPY_GLOBALS}
    unsafe = [name for name in needed if name not in allowed]
    if unsafe:
        return UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: it needs {', '.join(unsafe)}, which an msam "
            "checkpoint never holds (loading it could run code); it was not written by msam "
            "or was altered"
        )
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return CheckpointError(
        f"checkpoint {str(path)!r} is unreadable (cut short or damaged: {first[:120]})"
    )


def save_loop_checkpoint(
    state: Mapping[str, Any], folder: Path, epoch: int, *, keep_epoch_file: bool, keep: int
) -> None:
    """Write the loop's checkpoint of ``epoch`` as ``last.pt`` (what a resume reads).

    ``keep_epoch_file`` also keeps it as ``epoch_XXXX.pt`` (written first, so ``last.pt`` is
    never newer than the files a resume may fall back to), and ``keep > 0`` deletes all but
    the newest ``keep`` epoch files.
    """
    data = serialize_checkpoint(state)
    if keep_epoch_file:
        write_checkpoint_bytes(data, folder / epoch_checkpoint_name(epoch))
    write_checkpoint_bytes(data, folder / LAST_CHECKPOINT)
    if keep_epoch_file and keep:
        for old in sorted(folder.glob("epoch_*.pt"))[:-keep]:
            old.unlink()
            checksum_file(old).unlink(missing_ok=True)


def resume_candidates(run_dir: Path) -> list[Path]:
    """The checkpoints a resume may start from, newest first: ``last.pt``, then the epoch
    files from the latest back."""
    folder = run_dir / CHECKPOINTS_DIR
    return [folder / LAST_CHECKPOINT, *reversed(checkpoint_epochs(run_dir).values())]


@dataclass
class ResumePoint:
    """Where a resume starts: the checkpoint (path and contents), the checked records, and
    why each newer checkpoint was passed over."""

    path: Path
    state: dict[str, Any]
    check: RecordsCheck
    passed_over: list[str]


def _evaluated_epochs(config: Mapping[str, Any]) -> Callable[[int], bool]:
    """Which epochs the loop of ``config`` evaluates: 0, every ``eval_every``-th, the last."""
    every, last = config.get("eval_every") or 0, config.get("epochs")
    return lambda e: e == 0 or e == last or bool(every and e % every == 0)


def find_resume_point(run_dir: str | os.PathLike, map_location: Any = "cpu") -> ResumePoint:
    """The newest intact checkpoint of ``run_dir`` that its records reach.

    Tries ``last.pt``, then the epoch files newest first; a checkpoint is passed over when
    it is missing, damaged (checksum, truncation) or ahead of a gap in the records.  Warns
    (RuntimeWarning) saying which checkpoint it took and why, when that is not ``last.pt``
    or the records needed repair.  Raises :class:`CheckpointError` for a file that would
    need code to load, and ValueError when no checkpoint can be used; nothing is changed.
    """
    run_dir = Path(run_dir)
    check = check_records(run_dir)
    passed: list[str] = []
    for path in resume_candidates(run_dir):
        where = f"{CHECKPOINTS_DIR}/{path.name}"
        if not path.is_file():
            passed.append(f"{where} is missing")
            continue
        try:
            state = load_checkpoint(path, map_location)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as err:
            passed.append(str(err).replace(f"{str(path)!r}", where))
            continue
        loop = state.get("loop")
        if not isinstance(loop, dict) or "config" not in state:
            passed.append(f"{where} holds no loop state (weights only)")
            continue
        step, epoch = int(loop["step"]), int(loop["epoch"])
        missing = check.covers(step, epoch, _evaluated_epochs(state["config"]))
        if missing:
            passed.append(f"{where} (step {step}) is past a gap in the records: {missing}")
            continue
        notes = passed + check.problems + check.repaired
        if notes:
            redo = "" if path.name == LAST_CHECKPOINT else ", redoing the steps after it"
            warnings.warn(
                f"resuming {str(run_dir)!r} from {where} (epoch {epoch}, step {step}){redo}: "
                + "; ".join(notes),
                RuntimeWarning,
                stacklevel=3,
            )
        return ResumePoint(path, state, check, passed)
    steps = check.steps
    why = "; ".join(passed + check.problems) or "no checkpoint was written"
    raise ValueError(
        f"cannot resume {str(run_dir)!r}: no checkpoint it can continue from ({why}); "
        f"its {steps} step records stay readable with load_run; start a new run with "
        "another --out"
    )


# --------------------------------------------------------------------------------------------
# landscape grids: RUN/landscapes/<name>.npz (plain arrays, no pickles)


@dataclass
class Landscape:
    """One grid and everything needed to read or redo it.

    ``loss`` / ``acc``: ``[steps]`` (1-D) or ``[steps, steps]`` (2-D) with ``loss[i, j]`` at
    ``(alphas[i], betas[j])`` (``betas`` is empty for 1-D).  ``subspace``: ``"all"``, a
    modality name, ``"fusion"`` or ``"pca"``.  ``seeds``: the random directions' seeds (empty
    for PCA); ``random_direction(model, seed, norm, ignore, subspace)`` on the same weights
    (the checkpoint at ``epoch``) gives the directions again, exactly.  ``center_loss`` /
    ``center_acc``: the model itself on the evaluation subset.  PCA landscapes also hold
    ``trajectory`` ``[T, dims]`` (grid units) with its ``trajectory_epochs``,
    ``explained_variance`` and ``direction_scale`` (parameter-space length of one grid unit).
    ``epoch`` / ``step``: where the weights were taken, if known.
    """

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    acc: np.ndarray
    subspace: str = "all"
    norm: str = "filter"
    ignore: str = "biasbn"
    seeds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    span: float = 1.0
    center_loss: float = float("nan")
    center_acc: float = float("nan")
    n_eval: int = 0
    split: str = ""
    epoch: int | None = None
    step: int | None = None
    trajectory: np.ndarray | None = None
    trajectory_epochs: np.ndarray | None = None
    explained_variance: np.ndarray | None = None
    direction_scale: np.ndarray | None = None

    @property
    def dims(self) -> int:
        return int(self.loss.ndim)

    @property
    def steps(self) -> int:
        return int(self.alphas.shape[0])

    def default_name(self) -> str:
        """File stem: ``epoch0010_audio_2d`` (``<subspace>_<dims>d`` when the epoch is
        unknown), then each setting that differs from :func:`compute_landscape`'s defaults
        and picks another surface: ``_span0.5``, ``_layer`` (norm), ``_ignorenone``,
        ``_seed3``; so landscapes of one checkpoint in other settings get files of their own
        (the grid resolution does not change the surface, and keeps the name)."""
        where = f"epoch{self.epoch:04d}_" if self.epoch is not None else ""
        parts = [f"{where}{self.subspace}_{self.dims}d"]
        if self.span != 1.0:
            parts.append(f"span{self.span:g}")
        if self.subspace != "pca":
            if self.norm != "filter":
                parts.append(self.norm)
            if self.ignore != "biasbn":
                parts.append(f"ignore{self.ignore}")
            if self.seeds.size and int(self.seeds[0]) != 0:
                parts.append(f"seed{int(self.seeds[0])}")
        return "_".join(parts)


_REQUIRED = ("alphas", "betas", "loss", "acc", "subspace", "norm", "ignore", "seeds", "span")
_REQUIRED += ("center_loss", "center_acc", "n_eval", "split", "epoch", "step")
_OPTIONAL = ("trajectory", "trajectory_epochs", "explained_variance", "direction_scale")


def save_landscape(
    landscape: Landscape, run_dir: str | os.PathLike, name: str | None = None
) -> Path:
    """Write ``RUN/landscapes/<name>.npz`` atomically (default name from the landscape),
    holding the run directory's writer lock."""
    folder = Path(run_dir) / LANDSCAPES_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(folder, err) from err
    path = folder / f"{name or landscape.default_name()}.npz"
    arrays = {
        "alphas": landscape.alphas,
        "betas": landscape.betas,
        "loss": landscape.loss,
        "acc": landscape.acc,
        "seeds": np.asarray(landscape.seeds, dtype=np.int64),
        "subspace": np.array(landscape.subspace),
        "norm": np.array(landscape.norm),
        "ignore": np.array(landscape.ignore),
        "span": np.array(landscape.span),
        "dims": np.array(landscape.dims),
        "center_loss": np.array(landscape.center_loss),
        "center_acc": np.array(landscape.center_acc),
        "n_eval": np.array(landscape.n_eval),
        "split": np.array(landscape.split),
        # -1 marks "unknown" (npz holds no None)
        "epoch": np.array(-1 if landscape.epoch is None else landscape.epoch),
        "step": np.array(-1 if landscape.step is None else landscape.step),
    }
    for key in _OPTIONAL:
        value = getattr(landscape, key)
        if value is not None:
            arrays[key] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    # the run's writer lock: a training run may write its own landscapes (nested), but no
    # other process writes into a run directory another one is writing
    with run_lock(run_dir, "writing a landscape", nested_ok=True):
        write_bytes_atomic(path, buffer.getvalue())
    return path


def load_landscape(path: str | os.PathLike) -> Landscape:
    """Read a landscape written by :func:`save_landscape`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no landscape file at {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            a = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is not a landscape file msam can read ({type(err).__name__}: {err}); "
            "it is truncated or not msam's: delete it and compute the landscape again"
        ) from err
    missing = [k for k in _REQUIRED if k not in a]
    if missing:
        raise ValueError(f"{path} is not a landscape msam wrote: it lacks {missing}")

    def known(key: str) -> int | None:
        value = int(a[key])
        return None if value < 0 else value

    return Landscape(
        alphas=a["alphas"],
        betas=a["betas"],
        loss=a["loss"],
        acc=a["acc"],
        subspace=str(a["subspace"]),
        norm=str(a["norm"]),
        ignore=str(a["ignore"]),
        seeds=a["seeds"],
        span=float(a["span"]),
        center_loss=float(a["center_loss"]),
        center_acc=float(a["center_acc"]),
        n_eval=int(a["n_eval"]),
        split=str(a["split"]),
        epoch=known("epoch"),
        step=known("step"),
        **{k: a.get(k) for k in _OPTIONAL},
    )


def load_landscapes(run_dir: str | os.PathLike) -> dict[str, Landscape]:
    """Every ``RUN/landscapes/*.npz`` by file stem (sorted)."""
    folder = Path(run_dir) / LANDSCAPES_DIR
    return {p.stem: load_landscape(p) for p in sorted(folder.glob("*.npz"))}


# --------------------------------------------------------------------------------------------
# the trained model, rebuilt


def build_dataset(config: TrainConfig) -> MultimodalDataset:
    """The configured dataset, restricted to ``config.modalities`` (all when empty); its
    ``seed`` option defaults to the run's seed."""
    from msam_core.data import load_dataset
    from msam_core.data.subset import select_modalities

    options = {"seed": config.seed, **config.dataset_options}
    return select_modalities(load_dataset(config.dataset, **options), config.modalities)


def run_fusion(config: TrainConfig) -> str:
    """The fusion the run's model is built with: ``config.fusion``, unless the method needs its
    own head (MLA's shared classifier); early fusion stays, for such a method to refuse."""
    from msam_core.methods import get_method

    needed = get_method(config.method).fusion
    return needed if needed and config.fusion != "early" else config.fusion


def build_run_model(config: TrainConfig, dataset: MultimodalDataset) -> nn.Module:
    """``build_model`` from the dataset's modality specs, initialised from ``config.seed``."""
    from msam_core.models import build_model
    from msam_core.options import check_options

    check_options(
        build_model,
        config.model_options,
        "model_options",
        set_elsewhere=("modalities", "num_classes", "fusion", "encoder"),
    )
    torch.manual_seed(config.seed)
    return build_model(
        dataset.modalities,
        dataset.num_classes,
        fusion=run_fusion(config),
        encoder=config.encoder,
        **config.model_options,
    )


@dataclass(frozen=True)
class TrainedModel:
    """The model (eval mode) with a checkpoint's weights, the data it was trained on, and where
    the weights came from."""

    model: nn.Module
    dataset: MultimodalDataset
    config: TrainConfig
    epoch: int | None
    step: int | None
    checkpoint: Path


def load_trained(
    run: Any,
    which: str | int = "best",
    device: str | torch.device = "cpu",
    *,
    model: nn.Module | None = None,
    data: MultimodalDataset | None = None,
) -> TrainedModel:
    """Rebuild ``run``'s model with the weights of checkpoint ``which`` (see
    :func:`checkpoint_path`), and its dataset, from the run's config.

    ``run`` is a run directory or anything with a ``.path`` (a :class:`~msam_core.Run`).
    The model is returned in eval mode on ``device``.  A run trained on your own model or data
    (``train(model=..., data=...)``, :class:`~msam_core.Recorder`) cannot be rebuilt from its
    config: pass them again, ``model`` (a fresh instance of the same architecture, whose
    weights are replaced) and ``data``; the error says which is needed.
    """
    from msam_core.config import TrainConfig

    run_dir = Path(getattr(run, "path", run))
    path = checkpoint_path(run_dir, which)
    state = load_checkpoint(path, map_location="cpu")
    if "config" in state:
        config = TrainConfig.from_dict(state["config"])
    else:  # best.pt holds the weights only; the run's config.json has the rest
        config = TrainConfig.from_file(run_dir / CONFIG_FILE)
    own = _own_parts(run_dir)
    if data is None and own["data"]:
        raise ValueError(
            f"run {str(run_dir)!r} was trained on your own data (dataset {config.dataset!r}, not "
            "a registered name); pass it again: load_trained(run, data=..., model=...)"
        )
    dataset = data if data is not None else build_dataset(config)
    if model is None and own["model"]:
        raise ValueError(
            f"run {str(run_dir)!r} was trained on your own model ({own['model']}); pass a fresh "
            "instance of it: load_trained(run, model=..., data=...)"
        )
    what = (
        f"the model given ({type(model).__name__})"
        if model is not None
        else f"the model its config builds ({config.fusion} fusion, encoder {config.encoder!r})"
    )
    model = model if model is not None else build_run_model(config, dataset)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(
            f"the weights in {str(path)!r} do not fit {what}; pass the architecture the run "
            f"trained: load_trained(run, model=...) ({str(err).splitlines()[0]})"
        ) from err
    model.to(device).eval()
    return TrainedModel(model, dataset, config, state.get("epoch"), state.get("step"), path)


#: the model classes msam builds from a config (anything else is the user's own)
_BUILT_MODELS = (
    "msam_core.models.base.LateFusionModel",
    "msam_core.models.early.EarlyFusionModel",
)


def _own_parts(run_dir: Path) -> dict[str, Any]:
    """What the run's config.json says was the user's own: ``{"data": bool, "model": class
    name or None}`` (runs written before these facts were recorded: neither)."""
    import json

    try:
        info = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("run") or {}
    except (OSError, ValueError, AttributeError):
        info = {}
    model_class = info.get("model_class")
    own_model = model_class if model_class and model_class not in _BUILT_MODELS else None
    return {"data": bool(info.get("custom_data", False)), "model": own_model}
