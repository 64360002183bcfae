"""The training loop: one call per step to the method, records on disk, evaluation, resume.

Read top to bottom, :func:`train` does:

1. resolve the config (a :class:`TrainConfig`, a mapping or a file; a resumed run reads its
   own ``config.json``), and the device;
2. build the dataset (registry) and the model (``build_model``), and check they agree on
   modality names, order and shapes;
3. build the method (registry), which owns its optimizer, and the learning-rate schedule;
4. open the run directory; when resuming, restore everything from ``checkpoints/last.pt``
   and drop records written after it;
5. for each epoch: draw the data order from a seeded generator, call ``method.step`` once
   per batch and append its record, then evaluate train / val / test, write a checkpoint
   and the summary.

Resume is exact on CPU: the checkpoint holds parameters, optimizer and method state, the
learning-rate schedule, every RNG state and the data-order generator, all taken at the end
of an epoch after evaluation, so a resumed run replays the same steps with the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from msam_core.batches import fetch_batch, iterate_batches
from msam_core.config import (
    RESERVED_KEYS,
    TrainConfig,
    as_stored,
    read_config_file,
    resolve_config,
    with_overrides,
)
from msam_core.data import MultimodalDataset
from msam_core.data.subset import select_modalities
from msam_core.derived import SELECTION, default_run_dir, selection_key
from msam_core.distributed import (
    GradWeight,
    World,
    evaluation_shard,
    has_changing_buffers,
    join,
    leave,
    shard,
    weighted_grad_hook,
    weighted_mean,
)
from msam_core.evaluate import balance_entropy, evaluate_split
from msam_core.landscape import compute_landscape
from msam_core.layout import BEST_CHECKPOINT, SPLITS
from msam_core.methods import Method, build_method
from msam_core.optim.scaling import LossScaling, loss_scaling
from msam_core.record import CONFIG_FILE, RunWriter

# checkpoint I/O and model rebuilding live in msam_core.rundir; importable from here as before
from msam_core.rundir import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    ResumePoint,
    find_resume_point,
    run_fusion,
    save_checkpoint,
    save_landscape,
    save_loop_checkpoint,
)
from msam_core.rundir import build_dataset as build_dataset
from msam_core.rundir import build_run_model as build_run_model
from msam_core.rundir import load_checkpoint as load_checkpoint
from msam_core.sinks import Sink, check_log_targets, open_sinks

#: keys a resumed run may change; anything else would make it a different run
RESUMABLE_KEYS = (
    "epochs",
    "device",
    "num_workers",
    "eval_every",
    "eval_batch_size",
    "checkpoint_every",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "fsync",
    "name",
    "landscape_epochs",
    "landscape_options",
    "log_to",
    "probe",
    "probe_every",
)
Callback = Callable[[dict[str, Any]], "bool | None"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run directory keeps every record so far."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP stopped training; the summary says so and the message names
    the resume command.  ``signal``: the signal's name (``"SIGTERM"``)."""

    def __init__(self, signal_name: str, message: str) -> None:
        super().__init__(signal_name, message)
        self.signal = signal_name
        self.message = message

    def __str__(self) -> str:
        return self.message


class TrainingControl:
    """Thread-safe pause / stop switches the loop checks between steps.

    Made for notebooks: run :func:`train` in a thread with ``control=TrainingControl()`` and
    let widget buttons call :meth:`pause`, :meth:`unpause` and :meth:`stop`.  A stopped run
    keeps its records; its last checkpoint is the last finished epoch, from which
    ``train(out=RUN, resume=True)`` continues.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake a paused loop so it can stop

    def pause(self) -> None:
        self._running.clear()

    def unpause(self) -> None:
        self._running.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait(self) -> bool:
        """Block while paused; return True when the loop should go on, False to stop."""
        self._running.wait()
        return not self._stop.is_set()


# --------------------------------------------------------------------------------------------
# set-up helpers


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r} but MPS is not available here; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    # the legacy global numpy RNG is the one user and third-party code draws from
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_splits_have_samples(dataset: MultimodalDataset) -> None:
    """ValueError naming an empty split, before any file is written: the loop trains on train,
    selects the model on val and reports test, every epoch."""
    for name in SPLITS:
        if len(dataset.split(name)) == 0:
            raise ValueError(
                f"dataset {dataset.name!r} has no {name} samples; the loop trains on train, "
                f"selects on val and reports test, so each needs some (see its "
                f"dataset_options, e.g. fractions)"
            )


def first_non_finite(inputs: Mapping[str, torch.Tensor]) -> tuple[int, str, str] | None:
    """``(row, modality, "NaN" | "inf")`` of the first sample whose input holds a non-finite
    value, or None.  Rows are the leading dimension; integer inputs are always finite."""
    for modality, x in inputs.items():
        if not torch.is_floating_point(x):
            continue
        finite = torch.isfinite(x.reshape(len(x), -1)).all(1) if len(x) else x.new_ones(0)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0, 0])
            what = "NaN" if bool(torch.isnan(x[row]).any()) else "inf"
            return row, modality, what
    return None


def check_inputs_finite(dataset: MultimodalDataset) -> None:
    """ValueError naming split, sample and modality when an in-memory split holds NaN or
    inf, before anything is written (the loss would diverge, and not for the learning rate's
    sake).  Splits read from files are checked batch by batch as they are trained on."""
    for name in SPLITS:
        split = dataset.split(name)
        inputs = getattr(split, "inputs", None)
        if not isinstance(inputs, Mapping):
            continue
        found = first_non_finite(inputs)
        if found is not None:
            row, modality, what = found
            raise ValueError(
                f"dataset {dataset.name!r}, {name} split, sample {row}, modality {modality!r}: "
                f"its input holds {what}; clean or drop that sample before training (its loss "
                "cannot be finite)"
            )


def check_model_matches_data(model: nn.Module, dataset: MultimodalDataset) -> None:
    """Modality names (in order), per-sample shapes and class count must agree.

    Raises ValueError naming what the dataset gives and what the model expects.
    """
    data_names = dataset.modality_names
    model_names = list(getattr(model, "modalities", None) or [])
    if model_names != data_names:
        how = "in a different order" if sorted(model_names) == sorted(data_names) else ""
        raise ValueError(
            f"the model's modalities {model_names} do not match dataset "
            f"{dataset.name!r}'s modalities {data_names} {how}".rstrip()
            + "; build the model from dataset.modalities (coalition bit m is modality m)"
        )
    data_shapes = {s.name: tuple(s.shape) for s in dataset.modalities}
    sample, _ = fetch_batch(dataset.train, torch.arange(min(2, len(dataset.train))))
    for m in data_names:
        got = tuple(sample[m].shape[1:])
        if got != data_shapes[m]:
            raise ValueError(
                f"dataset {dataset.name!r}, modality {m!r}: its spec says shape "
                f"{list(data_shapes[m])} but its samples have shape {list(got)}"
            )
    specs = getattr(model, "modality_specs", None)
    if specs:
        bad = {
            m: (list(data_shapes[m]), list(specs[m].shape))
            for m in data_names
            if tuple(specs[m].shape) != data_shapes[m]
        }
        if bad:
            detail = "; ".join(f"{m!r}: dataset {d}, model {e}" for m, (d, e) in bad.items())
            raise ValueError(f"per-sample shapes differ between dataset and model: {detail}")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and int(num_classes) != int(dataset.num_classes):
        raise ValueError(
            f"dataset {dataset.name!r} has {dataset.num_classes} classes but the model "
            f"outputs {num_classes}"
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate factor: none (1), cosine to 0 over the run, or step decay."""
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        if config.schedule == "step":
            return config.step_gamma ** ((step // steps_per_epoch) // max(1, config.step_epochs))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# the loop


def train(
    config: TrainConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callback: Callback | None = None,
    control: TrainingControl | None = None,
    quiet: bool = False,
    data: MultimodalDataset | None = None,
    model: nn.Module | None = None,
    **overrides: Any,
) -> Path:
    """Train one run and record it in ``out``; return the run directory.

    Args:
        config: a :class:`TrainConfig`, a mapping of its keys, or a YAML/JSON file; ignored
            when resuming (the run's own ``config.json`` is used).
        out: run directory (default ``runs/<method>_<dataset>_seed<seed>``).
        resume: continue the run in ``out`` from ``checkpoints/last.pt``.  Records written
            after that checkpoint (a killed epoch) are dropped and redone.  Only
            :data:`RESUMABLE_KEYS` may be overridden (``epochs`` extends a run).
        overwrite: replace an existing run directory in ``out``.
        callback: called with every record as it is written (step records, then one per
            split at each evaluation, those carrying ``"split"``); returning False stops the
            run after the current step.
        control: a :class:`TrainingControl` to pause or stop the loop from another thread.
        quiet: no progress bar and no per-epoch lines.
        data, model: a :class:`MultimodalDataset` and a model following the protocol, used
            instead of building them from the config (your own data or architecture); pass
            them again when resuming.
        **overrides: config keys to change, e.g. ``epochs=3, lr=0.1``.

    Raises:
        TrainingDiverged: the loss became NaN/inf; records so far and the last checkpoint
            stay in the run directory.
        ValueError / KeyError / FileExistsError / PermissionError: bad input, before any file
            is written.
    """
    # 1. config and device; a resumed run is locked first, then read: its newest intact
    # checkpoint and that checkpoint's config
    resumed: RunWriter | None = None
    if resume:
        if out is None:
            raise ValueError("resume=True needs out=<the run directory to continue>")
        if not (Path(out) / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"cannot resume {str(out)!r}: no run there (no {CONFIG_FILE}); "
                "start it without --resume"
            )
        # rank 0 alone writes (torchrun sets RANK): the others only read the checkpoint
        if int(os.environ.get("RANK", "0")) == 0:
            resumed = RunWriter(out, resume=True)
    try:
        with _signals_stop_training():
            return _train(
                config,
                out,
                resume,
                resumed,
                overwrite,
                callback,
                control,
                quiet,
                data,
                model,
                overrides,
            )
    finally:
        if resumed is not None:
            resumed.close()


def _train(
    config: Any,
    out: str | os.PathLike | None,
    resume: bool,
    resumed: RunWriter | None,
    overwrite: bool,
    callback: Callback | None,
    control: TrainingControl | None,
    quiet: bool,
    data: MultimodalDataset | None,
    model: nn.Module | None,
    overrides: dict[str, Any],
) -> Path:
    """:func:`train`'s body; ``resumed`` is the locked writer of the run to continue (on
    rank 0; None on the other ranks of a resumed run, which only read it)."""
    if resume:
        point = find_resume_point(Path(out))
        cfg = _resume_config(Path(out), point, overrides)
    else:
        cfg = resolve_config(config, **overrides)
    device = resolve_device(cfg.device)
    check_log_targets(cfg.log_to)  # a missing tensorboard package is said before any file
    check_precision(cfg.precision, device)
    group_here = not torch.distributed.is_initialized()
    world = join(device.type)
    if world.active:
        check_world(world, cfg, callback, control)
        if device.type == "cuda":  # one GPU per process, the launcher's local rank
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
    seed_everything(cfg.seed)

    # 2. data and model
    if data is not None:
        dataset = select_modalities(data, cfg.modalities)
    else:
        dataset = build_dataset(cfg)
    if data is not None and cfg.dataset != dataset.name:
        # the run is named after the data it saw (config.json, load_run, figures, compare)
        cfg = with_overrides(cfg, {"dataset": dataset.name})
    model = model if model is not None else build_run_model(cfg, dataset)
    check_model_matches_data(model, dataset)
    check_splits_have_samples(dataset)
    check_inputs_finite(dataset)
    if cfg.baseline == "mean":
        model.fit_baselines(_all_inputs(dataset.train, cfg.eval_batch_size, cfg.num_workers))
    if world.active and any(isinstance(m, _BatchNorm) for m in model.modules()):
        # batch statistics over the global batch, as one process computes them
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    modalities = list(model.modalities)

    # 3. method (owns the optimizer) and the learning-rate schedule
    method = build_method(cfg.method, model, cfg)
    resolved_options = method.resolved_options  # before training reads any more
    # the part of train the loop trains (and evaluates "train") on: all of it unless the method
    # holds some out for itself (G-Blending)
    dataset = dataclasses.replace(dataset, train=method.training_split(dataset.train))
    n_train = len(dataset.train)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    # SAM-family wrappers share param_groups with their base optimizer, whose step() is the
    # one that runs: the scheduler follows it (so torch's step-order check holds)
    scheduled = getattr(method.optimizer, "base_optimizer", method.optimizer)
    scheduler = build_scheduler(scheduled, cfg, steps_per_epoch)
    data_generator = torch.Generator().manual_seed(cfg.seed)
    probe = _probe_batch(dataset.train, cfg.probe_size, device)
    scaling = build_scaling(cfg.precision, device)

    # 4. the run directory: fresh, or restored from the last checkpoint
    if out is None:
        out = default_run_dir(cfg.method, dataset.name, cfg.seed)
    if resumed is not None:  # rank 0 of a resumed run: its writer is open and locked
        writer = resumed
        writer.fsync = cfg.fsync
    elif resume:  # another rank of a resumed run: rank 0 alone writes
        writer = None
    else:
        writer = _open_on_rank_zero(world, out, overwrite=overwrite, fsync=cfg.fsync)
    run_dir = Path(out)
    state = _LoopState()
    epoch_order = None
    if resume:
        ckpt = point.state
        stored_world = int(ckpt.get("world_size", 1))
        if stored_world != world.size and world.main:
            warnings.warn(
                f"resuming a run trained on {stored_world} process(es) with {world.size}: the "
                "global batches and their order stay the same, but float summation, dropout "
                "masks and batch-norm statistics are per process, so the continuation is not "
                "bit-for-bit what the original world size would have given",
                stacklevel=2,
            )
        try:
            model.load_state_dict(ckpt["model"])
            method.optimizer.load_state_dict(ckpt["optimizer"])
            method.load_state_dict(ckpt["method_state"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaling is not None:  # the loss scale and its growth count continue exactly
                scaling.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint {str(point.path)!r} does not fit the run its config builds "
                f"({str(err).strip().splitlines()[0][:160]}); was it copied from another run?"
            ) from err
        data_generator.set_state(ckpt["data_order"]["generator"])
        epoch_order = ckpt["data_order"].get("epoch_order")
        _set_rng_state(ckpt["rng"])
        state = _LoopState.from_dict(ckpt["loop"])
        if writer is not None:
            writer.truncate_after(step=state.step, epoch=state.epoch, check=point.check)
        if cfg.schedule == "cosine" and ckpt["config"].get("epochs") != cfg.epochs and world.main:
            warnings.warn(
                "resuming a cosine schedule with a different number of epochs changes the "
                "learning rate of the remaining steps",
                stacklevel=2,
            )
    stepper, grad_weight = _wrap_for_steps(model, world, device, cfg.compile)
    if writer is not None:
        writer.write_config(
            cfg.to_dict(),
            run_info={
                "device": str(device),
                "world_size": world.size,
                "modalities": modalities,
                "fusion": run_fusion(cfg),
                "num_classes": int(dataset.num_classes),
                "dataset_name": dataset.name,
                # what train(data=..., model=...) was given: such a run is rebuilt with
                # load_trained(run, model=..., data=...), not from its config
                "custom_data": data is not None,
                "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
                "n_train": n_train,
                "steps_per_epoch": steps_per_epoch,
                "dataset_info": dataset.info,
                "resolved_method_options": resolved_options,
            },
        )

    sinks = open_sinks(cfg.log_to, run_dir, modalities) if world.main else []
    loop = _Loop(
        sinks=sinks,
        cfg=cfg,
        device=device,
        world=world,
        stepper=stepper,
        grad_weight=grad_weight,
        dataset=dataset,
        model=model,
        method=method,
        scheduler=scheduler,
        scaling=scaling,
        data_generator=data_generator,
        probe=probe,
        writer=writer,
        state=state,
        resumed=resume,
        epoch_order=epoch_order,
        callback=callback,
        control=control,
        quiet=quiet,
    )
    try:
        loop.run()
    finally:
        if writer is not None and resumed is None:
            writer.close()
        for sink in sinks:
            sink.close()
    if group_here:  # after a failure the process just ends: a barrier would wait for the dead
        leave(world)
    return run_dir


def check_precision(precision: str, device: torch.device) -> None:
    """fp16 (autocast with a loss scaler) runs on CUDA only; bf16 and fp32 run anywhere.
    ValueError saying what to use instead."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision fp16 needs a CUDA device (the device is {device.type}); on the CPU use "
            "--precision bf16 (autocast) or fp32"
        )


def build_scaling(precision: str, device: torch.device) -> LossScaling | None:
    """fp16's loss scaling (a ``torch.amp.GradScaler`` with torch's defaults, through every
    backward pass of a step: :mod:`msam_core.optim.scaling`); None for fp32 and bf16, whose
    range needs none."""
    if precision != "fp16":
        return None
    return LossScaling(torch.amp.GradScaler(device.type))


def check_world(
    world: World, cfg: TrainConfig, callback: Callback | None, control: TrainingControl | None
) -> None:
    """What one run on several processes cannot do, refused before anything is written."""
    if callback is not None or control is not None:
        raise ValueError(
            "callback and control stop one process's loop; under torch.distributed every rank "
            "must stop together, so train on one process to use them"
        )
    if cfg.batch_size < world.size:
        raise ValueError(
            f"batch_size {cfg.batch_size} (the global batch) is smaller than the {world.size} "
            "processes sharing it; give every process at least one sample"
        )


def _open_on_rank_zero(world: World, out: Any, **options: Any) -> RunWriter | None:
    """Rank 0 opens (and checks) the run directory; the others wait for its verdict and raise
    the same error, so a bad --out stops every rank before anything is written."""
    writer, error = None, None
    if world.main:
        try:
            writer = RunWriter(out, **options)
        except Exception as err:
            error = err
    if world.active:
        verdict = [None if error is None else (type(error), str(error))]
        torch.distributed.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None and error is None:
            kind, message = verdict[0]
            raise kind(message)
    if error is not None:
        raise error
    return writer


def _compiled_units(model: nn.Module) -> list[nn.Module]:
    """The modules ``compile`` compiles: each child of the model, and each member of a child
    container (``encoders`` is an ``nn.ModuleDict`` whose own forward is never called, so
    compiling it would leave every encoder eager)."""
    containers = (nn.ModuleDict, nn.ModuleList)
    units = []
    for child in model.children():
        units.extend(child.children() if isinstance(child, containers) else [child])
    return units


def _wrap_for_steps(model: nn.Module, world: World, device: torch.device, compile: bool):
    """The module the method's steps run: the model, in DDP across ranks, compiled if asked.

    DDP's all-reduce is the sample-weighted mean of the ranks' gradients (their batch shares
    may differ in a last, smaller batch), so a step equals the one-process step.
    ``compile`` compiles the model's submodules (encoders and fusion head) in place, so the
    feature path (``encode`` / ``fuse``) is compiled too and checkpoints keep their keys.
    """
    if compile:
        for module in _compiled_units(model):
            module.compile()
    weight = GradWeight()
    if not world.active:
        return model, weight
    ids = [device.index] if device.type == "cuda" else None
    moving = has_changing_buffers(model)  # not the fixed baselines: no broadcast per forward
    # buffers are equal on every rank at the start (one seed), so syncing them then is harmless
    ddp_type = nn.parallel.DistributedDataParallel
    renamed = "forward_sync_buffers" in inspect.signature(ddp_type.__init__).parameters
    sync = {"forward_sync_buffers" if renamed else "broadcast_buffers": moving}  # torch >= 2.13
    ddp = ddp_type(model, device_ids=ids, **sync)
    ddp.register_comm_hook(weight, weighted_grad_hook)
    return ddp, weight


def _resume_config(run_dir: Path, point: ResumePoint, overrides: Mapping[str, Any]) -> TrainConfig:
    """The config a resumed run continues with: the checkpoint's own (what it trained with),
    with the :data:`RESUMABLE_KEYS` of ``config.json`` (a previous ``--resume --epochs``) and
    then ``overrides`` applied.

    An edited ``config.json`` is an error listing each changed key with both values: going
    on silently with the checkpoint's values would ignore the edit, and going on with the
    edited ones would record values the run never trained with.
    """
    trained = TrainConfig.from_dict(point.state["config"])
    config_file = run_dir / CONFIG_FILE
    try:
        stored = read_config_file(config_file)
    except ValueError as err:
        warnings.warn(
            f"{err}; continuing with the config stored in {point.path.name} "
            f"({CONFIG_FILE} is rewritten from it)",
            RuntimeWarning,
            stacklevel=3,
        )
        stored = as_stored(trained.to_dict())
    stored = {k: v for k, v in stored.items() if k not in RESERVED_KEYS}
    before = as_stored(trained.to_dict())
    edited = [
        k for k in before if k not in RESUMABLE_KEYS and stored.get(k, before[k]) != before[k]
    ]
    if edited:
        detail = "; ".join(
            f"{k}: {stored[k]!r} in {CONFIG_FILE}, {before[k]!r} trained" for k in edited
        )
        raise ValueError(
            f"cannot resume {str(run_dir)!r}: {CONFIG_FILE} was edited after the run started "
            f"({detail}); a run continues with the values it trained with (stored in "
            f"{point.path.name}): undo the edit, or train a new run with the new values"
        )
    base = with_overrides(trained, {k: stored[k] for k in RESUMABLE_KEYS if k in stored})
    cfg = with_overrides(base, overrides) if overrides else base
    # repeating the original command with --resume is fine: only real changes count
    after = as_stored(cfg.to_dict())
    changed = [k for k in before if k not in RESUMABLE_KEYS and before[k] != after[k]]
    if changed:
        raise ValueError(
            f"cannot change {changed} when resuming (the run would no longer be one run); "
            f"resumable keys are {list(RESUMABLE_KEYS)}; start a new run instead"
        )
    return cfg


@contextlib.contextmanager
def _signals_stop_training():
    """SIGTERM and SIGHUP stop training as Ctrl-C (SIGINT) does: the loop's clean-up marks
    the summary stopped and the error names the resume command (main thread only: Python
    delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _all_inputs(split: Dataset, batch_size: int, num_workers: int = 0):
    """Every sample's inputs, as one dict (in-memory splits) or batch by batch."""
    if hasattr(split, "inputs"):
        return split.inputs
    order = torch.arange(len(split))
    cpu = torch.device("cpu")
    return (x for x, _ in iterate_batches(split, order, batch_size, cpu, num_workers))


def _probe_batch(
    split: Dataset, size: int, device: torch.device
) -> tuple[dict[str, Tensor], Tensor]:
    """The first ``size`` training samples: a fixed batch for periodic measurements."""
    indices = torch.arange(min(size, len(split)))
    inputs, targets = fetch_batch(split, indices)
    return {m: x.to(device) for m, x in inputs.items()}, targets.to(device)


class _LoopState:
    """Counters the loop carries across epochs (and checkpoints)."""

    def __init__(self) -> None:
        self.epoch = 0  # last finished epoch (0 = before training)
        self.step = 0  # optimisation steps done
        self.batch = 0  # batches done in the epoch under way (> 0 in a mid-epoch checkpoint)
        self.best_epoch: int | None = None
        self.best_key: tuple[float, float] | None = None
        self.best_metrics: dict[str, dict[str, Any]] = {}
        self.sharpness_sum = 0.0
        self.sharpness_count = 0
        self.train_time_s = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _LoopState:
        state = cls()
        for key, value in data.items():
            setattr(state, key, tuple(value) if key == "best_key" and value else value)
        return state


@dataclass
class _Loop:
    """The epoch/step loop of :func:`train` (a class only to share its many locals)."""

    cfg: TrainConfig
    device: torch.device
    world: World  # this process's rank; rank 0 alone writes
    stepper: nn.Module  # what the method steps: the model, or its DDP wrapper
    grad_weight: GradWeight  # this rank's share of the global batch, read by DDP's hook
    dataset: MultimodalDataset
    model: nn.Module
    method: Method
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaling: LossScaling | None  # fp16's loss scaling, through every pass of a step
    data_generator: torch.Generator
    probe: tuple[dict[str, Tensor], Tensor]  # the fixed batch of the periodic measures
    writer: RunWriter | None  # None on ranks other than 0
    state: _LoopState
    resumed: bool
    epoch_order: Tensor | None  # the epoch's data order of a mid-epoch checkpoint resumed
    callback: Callback | None
    control: TrainingControl | None
    quiet: bool
    sinks: list[Sink]

    def __post_init__(self) -> None:
        self.modalities = list(self.model.modalities)
        self.stop_reason: str | None = None
        self.diverged = False  # the loss became NaN/inf: summary.json says so explicitly
        self.epoch_metrics: dict[int, dict[str, dict[str, Any]]] = {}
        self.main = self.world.main
        self.best_improved = False  # this epoch's evaluation is the best so far: write best.pt
        self.last_checkpoint_step: int | None = self.state.step if self.resumed else None
        self.epoch_started = 0.0
        self.current_order: Tensor | None = None  # the data order of the epoch under way

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        cfg, state = self.cfg, self.state
        total = cfg.epochs * self._steps_per_epoch()
        if self.resumed and not self.quiet:
            where = self.writer.path
            if state.epoch >= cfg.epochs:
                tqdm.write(
                    f"{where}: already complete ({state.epoch} of {cfg.epochs} epochs); "
                    "pass --epochs (epochs=) to extend it"
                )
            else:
                tqdm.write(f"{where}: resuming from epoch {state.epoch} of {cfg.epochs}")
        bar = tqdm(
            total=total,
            initial=state.step,
            disable=self.quiet or not self.main,
            desc=f"{cfg.method}",
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )
        try:
            if not self.resumed and state.epoch == 0 and state.step == 0:
                # evaluate and checkpoint the initial weights (a run resumed from that
                # checkpoint has both already)
                self._end_of_epoch(0)
            for epoch in range(state.epoch + 1, cfg.epochs + 1):
                if not self._train_epoch(epoch, bar):
                    break
                self._end_of_epoch(epoch)
            if state.epoch >= cfg.epochs and self.stop_reason is None:
                self._probe_best()
        except KeyboardInterrupt as err:
            how = err.args[0] if err.args and str(err.args[0]).startswith("SIG") else "SIGINT"
            self.stop_reason = f"interrupted ({how}) at step {state.step}"
            self._summary_after(err)
            raise TrainingInterrupted(how, self._interrupted_message(how)) from err
        except BaseException as err:
            self._summary_after(err)
            raise
        else:
            self._write_summary()
        finally:
            bar.close()

    def _summary_after(self, err: BaseException) -> None:
        """Update summary.json after ``err`` stopped the run, never hiding ``err`` (a full
        disk fails this write too)."""
        try:
            self._write_summary()
        except Exception as second:
            err.add_note(f"summary.json was not updated either: {second}")

    def _interrupted_message(self, how: str) -> str:
        ckpt = self.last_checkpoint_step
        kept = f"its checkpoint at step {ckpt}" if ckpt is not None else "no checkpoint yet"
        path = self.writer.path if self.writer is not None else "RUN"  # (ranks other than 0)
        nproc = f" --nproc {self.world.size}" if self.world.size > 1 else ""
        return (
            f"stopped by {how} at step {self.state.step}; the records and {kept} are kept in "
            f"{str(path)!r}; continue with: msam train --resume {path}{nproc}"
        )

    def _compile_settings(self):
        """Under ``compile``, compile the step's graphs without donated buffers: they let a
        compiled backward free its saved tensors, which is right for one backward per graph,
        but SAM-family methods, MMPareto and MLA backpropagate through one graph more than
        once (``retain_graph``) and would fail at their first step.  Scoped to the step, so
        the process's other compiled code keeps torch's default."""
        if not self.cfg.compile:
            return contextlib.nullcontext()
        from torch._functorch import config as functorch_config

        return functorch_config.patch(donated_buffer=False)

    def _eager(self):
        """Under ``compile``, run the block eagerly: Hessian measures backpropagate with
        ``create_graph`` (which compiled graphs cannot take) and landscapes replay the
        modules' own functions by parameter name; both are occasional, so eager costs little."""
        if not self.cfg.compile:
            return contextlib.nullcontext()
        return torch.compiler.set_stance("force_eager")

    def _autocast(self):
        if self.cfg.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
            # no cast cache: a step changes weights in place (SAM's θ+ε, MLA's sub-steps), and
            # a cached half copy of θ would make the second pass run at θ again
            return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)
        return contextlib.nullcontext()

    def _scaled_step(self, inputs: Mapping[str, Tensor], targets: Tensor) -> dict[str, Any]:
        """``method.step`` under the run's autocast and loss scaling (fp16).  A method whose
        step takes its gradients outside the step skeleton (``msam_core.step.run_step``) would
        train fp16 unscaled: refused at its first step."""
        scaling = self.scaling
        before = None if scaling is None else scaling.steps
        with self._autocast(), loss_scaling(scaling), self._compile_settings():
            out = self.method.step(self.stepper, inputs, targets)
        if scaling is not None and scaling.steps == before:
            raise RuntimeError(
                f"method {self.cfg.method!r} took its gradients outside msam_core.step.run_step, "
                "so fp16's loss scaling never saw them; build its step on run_step (and "
                "msam_core.optim.scaling.grad for gradients of its own), or use --precision bf16"
            )
        return out

    def _steps_per_epoch(self) -> int:
        return math.ceil(len(self.dataset.train) / self.cfg.batch_size)

    def _train_epoch(self, epoch: int, bar: tqdm) -> bool:
        """One pass over the training data; False when the run must stop."""
        cfg, state, model, method = self.cfg, self.state, self.model, self.method
        if self.epoch_order is not None:  # resumed from a checkpoint taken mid-epoch
            order, self.epoch_order = self.epoch_order, None
        else:
            order = torch.randperm(len(self.dataset.train), generator=self.data_generator)
            state.batch = 0
        self.current_order = order
        method.set_epoch(epoch)
        model.train()
        self.epoch_started = time.perf_counter()
        rows = (lambda n: shard(n, self.world)) if self.world.active else None
        first = state.batch * cfg.batch_size  # > 0 when resumed from a mid-epoch checkpoint
        seen = first  # samples of the epoch's order taken so far (by every rank together)
        for inputs, targets in iterate_batches(
            self.dataset.train, order[first:], cfg.batch_size, self.device, cfg.num_workers, rows
        ):
            if self.control is not None and not self.control.wait():
                self.stop_reason = f"stopped by the user at step {state.step}"
                return False
            lr = method.optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            n_local = int(targets.shape[0])
            if self.world.active:  # this rank's share of the global batch, for DDP's hook
                n_global = min(cfg.batch_size, len(order) - seen)
                self.grad_weight.share = n_local / n_global
                seen += n_global
            method.step_index = state.step  # seeds the step's shapley_rows subset
            try:
                out = self._scaled_step(inputs, targets)
            except Exception as err:
                if not _is_non_finite_error(err):
                    raise
                out = {"loss": float("nan")}
            step_s = time.perf_counter() - t0
            if self.world.active:
                out = _global_batch_record(out, n_local, self.world)
            state.step += 1
            state.batch += 1
            record: dict[str, Any] = {"step": state.step, "epoch": epoch, "lr": lr, **out}
            record["time/step_s"] = step_s
            if not _finite(record.get("loss")):
                self._log(record)
                self._blame_inputs(inputs, order, epoch)
                self._diverged(record)
            self.scheduler.step()
            if cfg.measure_every and state.step % cfg.measure_every == 0:
                # the probe batch's overall sharpness gets its own key: "sharpness" in an
                # iteration record is always the training batch's (one meaning per key)
                probe = self._measure(overall=True)
                probe["sharpness/probe"] = probe.pop("sharpness")
                record.update(probe)
            if _finite(record.get("sharpness")) and method.measures_sharpness:
                state.sharpness_sum += record["sharpness"]
                state.sharpness_count += 1
            if not self._log(record):
                # a stop pressed while this step ran is the user's, not the callback's
                who = "user" if self.control is not None and self.control.stopped else "callback"
                self.stop_reason = f"stopped by the {who} at step {state.step}"
                return False
            bar.update(1)
            if state.step % 10 == 0 or bar.n == bar.total:
                bar.set_postfix(
                    epoch=epoch, loss=f"{record['loss']:.3f}", dominant=record.get("dominant", "-")
                )
            every = cfg.checkpoint_every_steps
            if every and state.step % every == 0 and state.batch < self._steps_per_epoch():
                self._checkpoint(state.epoch, mid_epoch=True)
        state.train_time_s += time.perf_counter() - self.epoch_started
        state.batch = 0
        return True

    def _blame_inputs(self, inputs: Mapping[str, torch.Tensor], order, epoch: int) -> None:
        """A non-finite loss from non-finite inputs is the data's fault, not lr's or rho's:
        ValueError naming the training sample and modality."""
        found = first_non_finite(inputs)
        if found is None:
            return
        row, modality, what = found
        index = int(order[(self.state.batch - 1) * self.cfg.batch_size + row])
        raise ValueError(
            f"dataset {self.dataset.name!r}, train split, sample {index}, modality "
            f"{modality!r}: its input holds {what} (found at step {self.state.step}, epoch "
            f"{epoch}); clean or drop that sample: the loss cannot be finite with it"
        )

    def _log(self, record: dict[str, Any]) -> bool:
        """Write one record, hand it to the callback; False if the callback asks to stop.
        Only rank 0 writes."""
        if not self.main:
            return True
        if "split" in record:
            self.writer.log_epoch(record)
            for sink in self.sinks:
                sink.log_epoch(record)
        else:
            self.writer.log_iteration(record)
            for sink in self.sinks:
                sink.log_iteration(record)
        if self.callback is not None and self.callback(record) is False:
            return False
        return not (self.control is not None and self.control.stopped)

    def _diverged(self, record: Mapping[str, Any]) -> None:
        last = self.state.epoch
        self.diverged = True
        self.stop_reason = f"non-finite loss ({record.get('loss')}) at step {record['step']}"
        self._write_summary()
        folder = self.writer.path if self.writer is not None else "the run directory"
        raise TrainingDiverged(
            f"the loss became {record.get('loss')} at step {record['step']} (epoch "
            f"{record['epoch']}); the run stopped. Records so far and the last good checkpoint "
            f"(epoch {last}, checkpoints/last.pt) are kept in {str(folder)!r}. "
            f"Try a smaller lr (now {self.cfg.lr}) or rho (now {self.method.rho})."
        )

    def _measure(self, overall: bool) -> dict[str, float]:
        """Per-modality sharpness and Hessian measures on the fixed probe batch."""
        from msam_core.sharpness import periodic_measures

        t0 = time.perf_counter()
        inputs, targets = self.probe
        with self._eager():
            out = periodic_measures(
                self.model,
                inputs,
                targets,
                self.method.rho,
                adaptive=self.cfg.adaptive,
                overall=overall,
                **self.cfg.measure_options,
            )
        out["time/measure_s"] = time.perf_counter() - t0
        return out

    # -- end of epoch: evaluate, select on val, checkpoint, summary ------------------------

    def _end_of_epoch(self, epoch: int) -> None:
        cfg, state = self.cfg, self.state
        state.epoch = epoch
        last = epoch == cfg.epochs
        if epoch == 0 or last or (cfg.eval_every and epoch % cfg.eval_every == 0):
            self._evaluate(epoch)
        if epoch in cfg.landscape_epochs:
            self._landscape(epoch)
        self._checkpoint(epoch)
        if self.best_improved and self.main:
            # after last.pt: a kill between the two leaves a best.pt no newer than last.pt,
            # and the resumed run rewrites it when it evaluates this epoch again
            save_checkpoint(
                {"model": self.model.state_dict(), "epoch": epoch, "step": self.state.step},
                self.writer.checkpoints_dir / BEST_CHECKPOINT,
            )
            self.best_improved = False
        self._write_summary()

    def _probes(self) -> dict[str, dict[str, float]]:
        """``{split: {"probe/<m>": acc}}`` of the model as it is (empty for early fusion)."""
        from msam_core.probe import probe_model

        splits = {name: self.dataset.split(name) for name in SPLITS}
        return probe_model(
            self.model,
            splits,
            int(self.dataset.num_classes),
            batch_size=self.cfg.eval_batch_size,
            device=self.device,
            num_workers=self.cfg.num_workers,
        )

    def _probe_best(self) -> None:
        """Add the probes of the best-val epoch's weights to its summary metrics (once).

        Rank 0 alone: the summary is its to write, best.pt is in its run directory (which
        another node may not see), and a probe is one process's fit with no collectives."""
        state = self.state
        if not self.cfg.probe or not state.best_metrics or not self.main:
            return
        if any(k.startswith("probe/") for k in state.best_metrics.get("test", {})):
            return  # probed when it was evaluated
        last = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        best = torch.load(
            self.writer.checkpoints_dir / "best.pt", map_location=self.device, weights_only=True
        )
        self.model.load_state_dict(best["model"])
        try:
            for split, values in self._probes().items():
                state.best_metrics[split] = {**state.best_metrics[split], **values}
        finally:
            self.model.load_state_dict(last)

    def _evaluate(self, epoch: int) -> None:
        metrics: dict[str, dict[str, Any]] = {}
        extra = self._measure(overall=True) if self.cfg.measure_every else {}
        extra.pop("time/measure_s", None)
        every = self.cfg.probe_every
        probing = self.cfg.probe and epoch > 0
        probing = probing and (epoch == self.cfg.epochs or (every > 0 and epoch % every == 0))
        probes = self._probes() if probing else {}
        for split in SPLITS:
            result = self._evaluate_split(self.dataset.split(split))
            record = {"epoch": epoch, "split": split, "step": self.state.step, **result}
            record.update(probes.get(split, {}))
            if split == "train":
                record.update(extra)  # measured on the train probe batch
            metrics[split] = record
            self._log(record)
        self.epoch_metrics[epoch] = metrics
        val = metrics["val"]
        # model selection on val only: higher accuracy, then lower loss, then earlier epoch
        key = selection_key(val)
        if epoch > 0 and (self.state.best_key is None or key > tuple(self.state.best_key)):
            self.state.best_key = key
            self.state.best_epoch = epoch
            self.state.best_metrics = metrics
            self.best_improved = True  # best.pt is written after last.pt (_end_of_epoch)
        if not self.quiet and self.main:
            self._print_epoch(epoch, metrics)

    def _evaluate_split(self, split: Dataset) -> dict[str, Any]:
        """:func:`evaluate_split` on every sample; across ranks each takes a shard and the
        sample-weighted means are reduced (φ is linear in the coalition values, so the
        reduced φ is the whole split's; the balance is recomputed from it)."""
        options = {
            "batch_size": self.cfg.eval_batch_size,
            "value": self.cfg.shapley_value,
            "device": self.device,
            "num_workers": self.cfg.num_workers,
        }
        if not self.world.active:
            return evaluate_split(self.model, split, **options)
        part = evaluation_shard(split, self.world)
        local = evaluate_split(self.model, part, **options) if len(part) else {"n": 0}
        keys = ["loss", "acc", *(f"{k}/{m}" for k in ("acc", "phi") for m in self.modalities)]
        errors = [f"phi_stderr/{m}" for m in self.modalities]
        n = int(local["n"])
        means = [float(local.get(k, 0.0)) for k in keys]
        squares = [(n * float(local.get(k, 0.0))) ** 2 for k in errors]  # var of the sum
        reduced = weighted_mean([*means, *squares], float(n), self.world)
        total = len(split)
        record: dict[str, Any] = {"n": total}
        record.update({k: float(v) for k, v in zip(keys, reduced[: len(keys)], strict=True)})
        if any(k in local for k in errors) or (n == 0 and len(self.modalities) > 10):
            var = reduced[len(keys) :] * total  # weighted_mean divided the sum by total
            record.update({k: float(v.sqrt()) / total for k, v in zip(errors, var, strict=True)})
        balance = balance_entropy([record[f"phi/{m}"] for m in self.modalities])
        if balance is not None:
            record["balance"] = balance
        return record

    def _print_epoch(self, epoch: int, metrics: Mapping[str, Mapping[str, Any]]) -> None:
        val = metrics["val"]
        uni = ", ".join(f"{m} {val.get(f'acc/{m}', float('nan')):.3f}" for m in self.modalities)
        # epoch 0 is the evaluation of the initial weights, before any step
        name = f"epoch {epoch:>3}" if epoch else "initial evaluation"
        tqdm.write(
            f"{name}: train loss {metrics['train'].get('loss', float('nan')):.4f}  "
            f"val acc {val.get('acc', float('nan')):.3f} ({uni})  "
            f"balance {val.get('balance', float('nan')):.2f}"
        )

    def _landscape(self, epoch: int) -> None:
        if not self.main:
            return
        options = {"steps": 21, "dims": 2, "seed": self.cfg.seed, **self.cfg.landscape_options}
        inputs, targets = self.probe
        with self._eager():
            landscape = compute_landscape(
                self.model,
                inputs,
                targets,
                epoch=epoch,
                step=self.state.step,
                split="train",
                **options,
            )
        save_landscape(landscape, self.writer.path)

    def _checkpoint(self, epoch: int, *, mid_epoch: bool = False) -> None:
        """Save everything a resume needs.  ``mid_epoch`` (``checkpoint_every_steps``): also
        the epoch's data order and how many of its batches are done; only ``last.pt``."""
        if not self.main:
            return
        cfg = self.cfg
        if mid_epoch:  # the time trained so far this epoch goes into the checkpoint
            now = time.perf_counter()
            self.state.train_time_s += now - self.epoch_started
            self.epoch_started = now
        # every record up to this checkpoint reaches the disk before the checkpoint does
        self.writer.sync()
        order = {"generator": self.data_generator.get_state()}
        if mid_epoch:
            order["epoch_order"] = self.current_order
        state = {
            "world_size": self.world.size,
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.method.optimizer.state_dict(),
            "method_state": self.method.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            **({} if self.scaling is None else {"scaler": self.scaling.state_dict()}),
            "data_order": order,
            "epoch": epoch,
            "step": self.state.step,
            # JSON form: plain values a weights-only load accepts (a Path would not be)
            "config": as_stored(cfg.to_dict()),
            "loop": self.state.to_dict(),
        }
        keep_epoch_file = (
            not mid_epoch
            and bool(cfg.checkpoint_every)
            and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs)
        )
        save_loop_checkpoint(
            state,
            self.writer.checkpoints_dir,
            epoch,
            keep_epoch_file=keep_epoch_file,
            keep=cfg.keep_checkpoints,
        )
        self.last_checkpoint_step = self.state.step

    def _write_summary(self) -> None:
        if self.main:
            self.writer.write_summary(build_summary(self))


def _global_batch_record(out: dict[str, Any], n_local: int, world: World) -> dict[str, Any]:
    """A step record of the whole global batch: ``loss`` and ``sharpness`` are per-rank batch
    means, so their sample-weighted mean over the ranks; φ, weights and the dominant modality
    are reduced inside the step already."""
    # every rank joins the same all-reduce: a key a rank lacks (not measured, or non-finite
    # and so left out of its record) is NaN there and stays out of the global record
    keys = ("loss", "sharpness")
    local = [float(out.get(k, math.nan)) for k in keys]
    values = weighted_mean(local, float(n_local), world)
    record = {k: v for k, v in out.items() if k not in keys}
    for key, value in zip(keys, values.tolist(), strict=True):
        if math.isfinite(value) or key == "loss":
            record[key] = value
    return record


def _is_non_finite_error(err: Exception) -> bool:
    """True for the step helpers' NonFiniteLossError (imported lazily: engine-agnostic)."""
    try:
        from msam_core.step import NonFiniteLossError
    except ImportError:  # pragma: no cover - the step module ships with msam_core
        return False
    return isinstance(err, NonFiniteLossError)


def build_summary(loop: _Loop) -> dict[str, Any]:
    """What ``summary.json`` holds: the best-val epoch's metrics, progress, mean sharpness."""
    cfg, state = loop.cfg, loop.state
    best = state.best_metrics
    summary: dict[str, Any] = {
        "name": cfg.name or loop.writer.path.name,
        "method": cfg.method,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "modalities": loop.modalities,
        "epochs": cfg.epochs,
        "epochs_done": state.epoch,
        "steps": state.step,
        "finished": state.epoch >= cfg.epochs and loop.stop_reason is None,
        "stopped": loop.stop_reason,
        "diverged": loop.diverged,
        "selection": SELECTION,
        "best_epoch": state.best_epoch,
        "best": {split: dict(best[split]) for split in best},
        "train_time_s": state.train_time_s,
    }
    limits = loop.dataset.info.get("bayes_limits")
    if limits:  # a dataset that knows its generative model knows its ceilings
        summary["bayes_limits"] = limits
    if state.sharpness_count:
        summary["mean_sharpness"] = state.sharpness_sum / state.sharpness_count
    return summary
