"""Loss landscapes around the weights: directions, 1-D / 2-D grids, trajectory projection.

A landscape is the loss (and accuracy) of the model at ``θ + α·d₁ (+ β·d₂)`` over a grid of
``α`` (and ``β``) in ``[-span, span]``, on a fixed evaluation subset, with batch norm in eval
mode.  Directions (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"):

- random, filter-normalised: each filter (output row of a weight) of a Gaussian direction is
  rescaled to the norm of the same filter of the weights, so ``α = 1`` is a step as large as
  the weights themselves in every filter; biases and norm-layer parameters (1-D) are zeroed
  by default (``ignore="biasbn"``).  Seeded, so the seed and the weights give the direction;
- restricted to one modality's encoder (every other parameter's direction is zero);
- PCA of the checkpoint trajectory (``θ_epoch − θ_final``), scaled so the farthest checkpoint
  sits at coordinate ±1 on each axis, with the trajectory projected onto them.

Grid points are evaluated many at a time: ``torch.func.functional_call`` under ``torch.vmap``
over a chunk of parameter sets (parameters whose direction is zero stay unbatched, so e.g. the
other modalities' encoders run once per chunk).  :func:`evaluate_grid_loop` is the point-by-point
reference (load weights, evaluate) that loss-landscape tools use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from msam_core.batches import fetch_batch
from msam_core.coalitions import eval_mode
from msam_core.layout import LANDSCAPES_DIR as LANDSCAPES_DIR
from msam_core.layout import epoch_checkpoints
from msam_core.param_groups import block_choices, modality_parameter_names

# the grid record and its npz storage live with the run directory's other files; importable
# from here as before
from msam_core.rundir import Landscape as Landscape
from msam_core.rundir import load_checkpoint, load_trained, save_landscape
from msam_core.rundir import load_landscape as load_landscape
from msam_core.rundir import load_landscapes as load_landscapes
from msam_core.stacks import stack_forward
from msam_core.suggest import did_you_mean

if TYPE_CHECKING:  # the data package loads every dataset's loader
    from msam_core.data import MultimodalDataset

LossFn = Callable[[Tensor, Tensor], Tensor]
Direction = dict[str, Tensor]

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")
METHODS = ("auto", "inplace", "vmap", "loop")


# --------------------------------------------------------------------------------------------
# directions


def trainable_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the trainable parameters, in ``named_parameters`` order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        choices = list(choices)
        hint = did_you_mean(str(value), choices)
        raise ValueError(f"{key}={value!r} is not valid{hint}; choose one of {choices}")


def normalize_direction(
    direction: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    norm: str = "filter",
    ignore: str = "biasbn",
) -> Direction:
    """Scale a direction like the weights it perturbs (a new dict; inputs untouched).

    ``norm="filter"``: each filter ``d[i]`` (row ``i`` along the first axis of a weight with
    2+ dimensions) gets the norm of ``w[i]``; ``"layer"``: each tensor gets ``‖w‖``; ``"none"``:
    unchanged.  1-D parameters (biases, norm-layer scales) are zeroed when ``ignore="biasbn"``,
    else scaled as one filter.
    """
    _check_choice("norm", norm, NORMS)
    _check_choice("ignore", ignore, IGNORES)
    out: Direction = {}
    for name, d in direction.items():
        w = weights[name].detach().to(d)
        if d.ndim <= 1 and ignore == "biasbn":
            out[name] = torch.zeros_like(d)
        elif norm == "none":
            out[name] = d.clone()
        elif norm == "layer" or d.ndim <= 1:
            out[name] = d * (w.norm() / (d.norm() + 1e-10))
        else:
            d_rows, w_rows = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
            scale = w_rows.norm(dim=1) / (d_rows.norm(dim=1) + 1e-10)
            out[name] = (d_rows * scale[:, None]).reshape(d.shape)
    return out


def check_subspace(model: nn.Module, modality: str | None) -> None:
    """ValueError unless ``modality`` is None, ``"all"``, a modality of the model or
    ``"fusion"`` (and, for a block, the model has per-modality encoders)."""
    if modality is None or modality == "all":
        return
    choices = ["all", *block_choices(model)]
    if modality not in choices:
        hint = did_you_mean(modality, choices)
        raise ValueError(f"unknown modality {modality!r}{hint}; choose one of {choices}")
    modality_parameter_names(model)  # early fusion: no blocks, a clear error


def restrict_direction(
    direction: Mapping[str, Tensor], model: nn.Module, modality: str | None
) -> Direction:
    """Zero every entry outside ``modality``'s block (a modality name or ``"fusion"``).

    ``None`` or ``"all"`` keeps the direction whole.  Unknown names -> ValueError listing the
    choices.
    """
    if modality is None or modality == "all":
        return dict(direction)
    check_subspace(model, modality)
    keep = set(modality_parameter_names(model)[modality])
    return {n: d if n in keep else torch.zeros_like(d) for n, d in direction.items()}


def random_direction(
    model: nn.Module,
    seed: int,
    norm: str = "filter",
    ignore: str = "biasbn",
    modality: str | None = None,
) -> Direction:
    """Seeded Gaussian direction over the trainable parameters, normalised and restricted.

    Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (one tensor per parameter
    in ``named_parameters`` order, zeroed ones included), so the same seed gives the same
    direction on any device, and a modality-restricted direction equals the block of the
    unrestricted one.
    """
    _check_choice("norm", norm, NORMS)
    _check_choice("ignore", ignore, IGNORES)
    generator = torch.Generator().manual_seed(int(seed))
    weights = trainable_named_parameters(model)
    raw = {
        n: torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        for n, p in weights.items()
    }
    return restrict_direction(normalize_direction(raw, weights, norm, ignore), model, modality)


def flatten(tensors: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """Concatenate the named tensors into one flat vector ``[n]`` (in ``names`` order)."""
    return torch.cat([tensors[n].detach().reshape(-1) for n in names])


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> Direction:
    """Split a flat vector back into tensors shaped like ``like`` (in its order)."""
    sizes = [t.numel() for t in like.values()]
    pieces = torch.split(flat, sizes)
    return {n: piece.reshape(t.shape) for (n, t), piece in zip(like.items(), pieces, strict=True)}


@dataclass
class PCADirections:
    """PCA of a trajectory: directions, explained variance and the projected trajectory.

    ``directions[k]`` is the ``k``-th principal direction times ``scale[k]`` (parameter-space
    length of one grid unit); ``projection`` ``[T, dims]`` holds each checkpoint's coordinates
    in grid units (the final point is at 0); ``explained_variance`` ``[dims]`` is the fraction
    of the trajectory's variance each direction explains.
    """

    directions: list[Direction]
    explained_variance: np.ndarray
    projection: np.ndarray
    scale: np.ndarray


def pca_directions(
    trajectory: Sequence[Mapping[str, Tensor]], final: Mapping[str, Tensor], dims: int = 2
) -> PCADirections:
    """Principal directions of ``θ_t − θ_final`` over the trajectory (Li et al. 2018, §7).

    ``trajectory`` holds the parameters at each checkpoint (the final point may be included;
    it is part of the trajectory either way); only the names in ``final`` are used.  Needs
    ``dims + 1`` distinct points that span ``dims`` directions.  Memory: the trajectory as a
    ``[T, n]`` float64 matrix.
    """
    names = list(final)
    end = flatten(final, names).double()
    rows = torch.stack([flatten(t, names).to(end) - end for t in trajectory])
    points = rows
    if not bool((rows.abs().sum(1) == 0).any()):
        points = torch.cat([rows, torch.zeros_like(rows[:1])])  # the final point itself
    distinct = int((points.abs().sum(1) > 0).sum()) + 1
    if distinct < dims + 1:
        raise ValueError(
            f"PCA of the trajectory needs at least {dims + 1} checkpoints for {dims} "
            f"direction(s); got {distinct} distinct. Train with checkpoint_every=1 for more "
            "epochs, or use random directions"
        )
    centred = points - points.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    if not s[dims - 1] > 1e-9 * s[0]:
        raise ValueError(
            f"the trajectory spans fewer than {dims} directions (it lies on a line); use dims=1"
        )
    variance = (s**2) / (s**2).sum()
    components = vh[:dims]
    # Fix the sign so the trajectory starts on the negative side of each axis.
    coords = rows @ components.T
    signs = torch.where(coords[0] > 0, -1.0, 1.0).to(components)
    components, coords = components * signs[:, None], coords * signs
    scale = coords.abs().max(0).values
    like = {n: final[n] for n in names}
    directions = [
        {n: d.to(final[n]) for n, d in unflatten(components[k] * scale[k], like).items()}
        for k in range(dims)
    ]
    return PCADirections(
        directions=directions,
        explained_variance=variance[:dims].cpu().numpy(),
        projection=(coords / scale).cpu().numpy(),
        scale=scale.cpu().numpy(),
    )


# --------------------------------------------------------------------------------------------
# grid evaluation


def grid_axis(steps: int, span: float) -> np.ndarray:
    """``steps`` evenly spaced coordinates in ``[-span, span]``; the centre is exactly 0."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (points per axis), got {steps}")
    if not span > 0:
        raise ValueError(f"span must be > 0 (the grid covers [-span, span]), got {span}")
    axis = np.linspace(-span, span, steps)
    if steps % 2:
        axis[steps // 2] = 0.0
    return axis


def _points_metrics(logits: Tensor, targets: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor]:
    """Loss and accuracy of many points' logits at once: ``logits`` ``[Q, B, C]`` (one
    ``[B, C]`` per point) -> two ``[Q]`` tensors.

    ``F.cross_entropy`` runs as one call over all points, with the classes on dim 1 of a
    ``[Q, C, B]`` view: log-softmax then runs vectorised across samples, where over the last
    dim with C ≈ 10 it is a scalar loop (about 20× slower on a CPU, measured), and one call
    replaces Q calls' overhead.  A point's values do not depend on Q, so the centre computed
    alone equals the grid's centre exactly; against ``F.cross_entropy(model(x), y)`` itself
    it may differ by 1-2 float32 ulp (the per-sample losses are summed in another order).
    Any other loss runs per point.  Accuracy (first
    maximum = target) needs class-index targets, else it is NaN.
    """
    if loss_fn is F.cross_entropy and logits.ndim == 3 and targets.ndim in (1, 2):
        q = logits.shape[0]
        # hard targets [B] -> [Q, B]; soft ones [B, C] -> [Q, C, B], laid out like the logits
        target = targets.expand(q, -1) if targets.ndim == 1 else targets.T.expand(q, -1, -1)
        loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)
    else:
        loss = torch.stack([loss_fn(point, targets) for point in logits])
    if _classifies(logits[0], targets):
        return loss, _accuracy(logits, targets)
    return loss, torch.full_like(loss, float("nan"))


def _classifies(logits: Tensor, targets: Tensor) -> bool:
    """Whether one point's ``logits`` / ``targets`` are ``[B, C]`` / class indices ``[B]``."""
    return logits.ndim == 2 and targets.ndim == 1 and not targets.is_floating_point()


def _accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of samples whose first maximum is the target: ``[..., B, C]`` -> ``[...]``."""
    return (logits.argmax(-1) == targets).to(logits.dtype).mean(-1)


def _check_directions(directions: Sequence[Mapping[str, Tensor]], model: nn.Module) -> list[str]:
    names = list(trainable_named_parameters(model))
    if not 1 <= len(directions) <= 2:
        raise ValueError(f"need 1 or 2 directions, got {len(directions)}")
    for k, d in enumerate(directions):
        missing = [n for n in names if n not in d]
        if missing:
            raise KeyError(f"direction {k} lacks parameters {missing[:5]} (of {len(missing)})")
    return names


def _sample_batches(inputs: Mapping[str, Tensor], targets: Tensor, batch_size: int | None):
    n = int(targets.shape[0])
    size = n if batch_size is None else int(batch_size)
    for start in range(0, n, size):
        yield {m: x[start : start + size] for m, x in inputs.items()}, targets[start : start + size]


_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _tensors_in(obj: object) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [t for item in obj for t in _tensors_in(item)]
    return []


def _prefixed(name: str, local: str) -> str:
    return f"{name}.{local}" if name else local


@dataclass
class _Structure:
    """What a grid leaves unchanged, found once per grid (see :func:`_grid_structure`).

    ``affine``: linear / conv modules whose own weights move but whose input does not (e.g.
    each encoder's first layer): their output is linear in the grid coordinates.
    ``constant``: modules whose parameters do not move and whose input does not either (e.g.
    the encoder of a modality the directions leave alone): their output is the same at every
    point.  Both are called once per forward.
    """

    affine: dict[str, nn.Module]
    constant: dict[str, nn.Module]

    def affine_parameters(self) -> set[str]:
        return {
            _prefixed(n, p)
            for n, mod in self.affine.items()
            for p, _ in mod.named_parameters(recurse=False)
        }


def _grid_structure(
    model: nn.Module, inputs: Mapping[str, Tensor], moving: Sequence[str], affine_inputs: bool
) -> _Structure:
    """One probe forward on one sample with only the moving parameters requiring grad: a
    module input that does not require grad is the same at every grid point."""
    moving_set = set(moving)
    modules = dict(model.named_modules())
    calls: dict[str, int] = dict.fromkeys(modules, 0)
    fixed_input: dict[str, bool] = {}
    tensor_output: dict[str, bool] = {}

    def before(name: str):
        def hook(module, args, kwargs):
            calls[name] += 1
            fixed_input[name] = not any(t.requires_grad for t in _tensors_in((args, kwargs)))

        return hook

    def after(name: str):
        def hook(module, args, output):
            tensor_output[name] = isinstance(output, Tensor)

        return hook

    handles = [m.register_forward_pre_hook(before(n), with_kwargs=True) for n, m in modules.items()]
    handles += [m.register_forward_hook(after(n)) for n, m in modules.items()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in moving_set)
        with eval_mode(model), torch.enable_grad():  # two samples: batch statistics need them
            model({m: x[:2] for m, x in inputs.items()})
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for h in handles:
            h.remove()
    once = {n for n, count in calls.items() if count == 1 and fixed_input[n]}
    # by identity: a parameter tied between modules is listed under one name only, and the
    # other module holding it moves too
    named = dict(model.named_parameters())
    moving_ids = {id(p) for n, p in named.items() if n in moving_set}
    # a direction is per name, so a tied layer has no shifts of its own: no affine layers then
    tied = sum(1 for _ in model.named_parameters(remove_duplicate=False)) > len(named)
    affine: dict[str, nn.Module] = {}
    constant: dict[str, nn.Module] = {}
    for name, mod in modules.items():
        if name not in once:
            continue
        own_moves = any(id(p) in moving_ids for p in mod.parameters(recurse=False))
        if affine_inputs and not tied and isinstance(mod, _AFFINE) and own_moves:
            affine[name] = mod
        elif (
            tensor_output[name]
            and not any(id(p) in moving_ids for p in mod.parameters())
            and not any(c == "" or name.startswith(f"{c}.") for c in constant)  # top-most only
        ):
            constant[name] = mod
    return _Structure(affine, constant)


def _affine_apply(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def _capture(
    model: nn.Module,
    structure: _Structure,
    directions: Sequence[Mapping[str, Tensor]],
    x: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """One forward at θ on a sample batch: each constant module's output, and each affine
    layer's output ``y₀`` with its shifts ``[K, *out]`` (the layer applied with direction k's
    weight and bias), so a point's output is ``y₀ + Σ_k c_k·shift_k``."""
    constants: dict[str, Tensor] = {}
    affine: dict[str, tuple[Tensor, Tensor]] = {}

    def keep_constant(name: str):
        def hook(module, args, output):
            # a copy: an in-place op later in this same forward may write into the output
            constants[name] = output.clone()

        return hook

    def keep_affine(name: str):
        def hook(module, args, output):
            shifts = [
                _affine_apply(
                    module,
                    args[0],
                    d[_prefixed(name, "weight")].detach(),
                    None if module.bias is None else d[_prefixed(name, "bias")].detach(),
                )
                for d in directions
            ]
            affine[name] = (output.clone(), torch.stack(shifts))  # a copy, as above

        return hook

    handles = [m.register_forward_hook(keep_constant(n)) for n, m in structure.constant.items()]
    handles += [m.register_forward_hook(keep_affine(n)) for n, m in structure.affine.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return constants, affine


@contextmanager
def _replayed(
    model: nn.Module,
    structure: _Structure,
    constants: Mapping[str, Tensor],
    affine: Mapping[str, tuple[Tensor, Tensor]],
    point: dict[str, object],
):
    """Within the block, constant modules return their captured output and affine layers
    ``y₀ + Σ_k c_k·shift_k`` for ``c = point["c"]`` (a list of floats: one pass per point
    into one buffer per layer, the sum up to ``K − 1`` kept per grid row; a tensor under
    vmap: batched).  Every plain ``nn.Sequential`` then runs as one function
    (:func:`~msam_core.stacks.stack_forward`: no module calls, activations in place)."""
    patched: list[tuple[nn.Module, object]] = []

    def constant_forward(output: Tensor):
        # a later in-place op (an in-place activation module called twice) may write into the
        # captured output: it is put back before it is handed out again
        kept, version = output.clone(), [output._version]

        def forward(*args, **kwargs):
            if output._version != version[0]:
                with torch.no_grad():
                    output.copy_(kept)
                version[0] = output._version
            return output

        return forward

    def affine_forward(base: Tensor, shifts: Tensor):
        buffer = torch.empty_like(base)
        row: dict[str, object] = {"key": None}

        def forward(*args, **kwargs):
            c = point["c"]
            if isinstance(c, Tensor):
                return base + torch.tensordot(c.to(shifts), shifts, dims=1)
            # y₀ + Σ_{k<K-1} c_k·shift_k changes once per grid row: one pass per point
            if row["key"] != c[:-1]:
                partial = base
                for k in range(len(c) - 1):
                    partial = torch.add(partial, shifts[k], alpha=c[k])
                row["key"], row["partial"] = c[:-1], partial
            return torch.add(row["partial"], shifts[-1], alpha=c[-1], out=buffer)

        return forward

    forwards = {n: constant_forward(constants[n]) for n in structure.constant}
    forwards.update({n: affine_forward(*affine[n]) for n in structure.affine})
    modules = {**structure.constant, **structure.affine}
    replaced = {modules[n]: (fn, n in structure.affine) for n, fn in forwards.items()}
    stacks = {}
    for name, mod in model.named_modules():
        fn = None if mod in replaced else stack_forward(mod, replaced)
        if fn is not None:
            stacks[name], modules[name] = fn, mod
    forwards.update(stacks)
    try:
        for name, fn in forwards.items():
            patched.append((modules[name], modules[name].__dict__.get("forward")))
            modules[name].forward = fn  # an instance attribute shadows the class's forward
        yield
    finally:
        for mod, previous in patched:
            if previous is None:
                del mod.forward
            else:
                mod.forward = previous


GRID_METHODS = ("auto", "inplace", "vmap")
#: samples per vmapped call when ``batch_size`` is None (the working set of a chunk of points)
VMAP_BATCH = 256


def grid_method(device: torch.device | str) -> str:
    """The grid path that is fastest on ``device``: ``"inplace"`` on a CPU, where one point's
    matrix products already keep the core busy and vmap only adds the cost of building every
    point's weights (benchmarks/landscape_speed.py measures both); ``"vmap"`` on an
    accelerator, where one call over a chunk of points saves a kernel launch per layer and
    point."""
    return "inplace" if torch.device(device).type == "cpu" else "vmap"


def evaluate_grid(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    directions: Sequence[Mapping[str, Tensor]],
    coords: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 32,
    batch_size: int | None = None,
    affine_inputs: bool = True,
    method: str = "auto",
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy at ``θ + Σ_k coords[p, k]·directions[k]`` for every point ``p``.

    ``coords`` ``[P, K]``; returns two ``[P]`` tensors.  ``batch_size`` samples per forward
    (the loss is then the sample-weighted mean of batch means); None: all samples at once on
    the in-place path (fastest on a CPU, measured), :data:`VMAP_BATCH` under vmap, whose
    memory grows with ``chunk_size × batch_size``.  The
    structure of the grid is used, found by one probe forward:

    - modules that no direction moves and whose input no direction changes (a modality's
      encoder when the directions move another) are evaluated once per sample batch;
    - a linear / conv layer fed by such an input is affine in its weights, so its output at
      every point is ``y(θ) + Σ_k c_k·y_k`` with ``y_k`` the layer applied with direction
      ``k``'s weights: ``1 + K`` products per sample batch instead of one per point
      (``affine_inputs=False`` turns this off; exact up to rounding);
    - the rest is evaluated per point, by ``method``: ``"inplace"`` writes each point's
      weights into the model's own parameter tensors (no allocation per point) and restores
      them bit for bit afterwards; ``"vmap"`` evaluates ``chunk_size`` points per vectorised
      ``functional_call`` and never writes the model; ``"auto"`` picks by device
      (:func:`grid_method`).  Either way plain ``nn.Sequential`` stacks run as one function
      (:func:`~msam_core.stacks.stack_forward`), and the loss and accuracy of ``chunk_size``
      points are one call on their stacked logits (:func:`_points_metrics`).

    At a point with all coordinates 0 the weights are θ exactly.  Evaluated in eval mode.
    ``progress``: a progress bar counting point evaluations (points x sample batches).
    """
    names = _check_directions(directions, model)
    _check_choice("method", method, GRID_METHODS)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    params = trainable_named_parameters(model)
    ref = next(iter(params.values()))
    if method == "auto":
        method = grid_method(ref.device)
    if method == "vmap" and batch_size is None:
        batch_size = VMAP_BATCH
    moving = [n for n in names if any(bool(d[n].abs().sum() > 0) for d in directions)]
    structure = _grid_structure(model, inputs, moving, affine_inputs)
    # Parameters of affine layers are handled by their shifts; the rest move per point.
    rest = [n for n in moving if n not in structure.affine_parameters()]
    coords = coords.to(device=ref.device, dtype=ref.dtype)
    n_total = int(targets.shape[0])
    loss_total = torch.zeros(coords.shape[0], dtype=ref.dtype, device=ref.device)
    acc_total = torch.zeros_like(loss_total)
    point: dict[str, object] = {}
    n_batches = math.ceil(n_total / (batch_size or n_total))
    bar = tqdm(total=coords.shape[0] * n_batches, disable=not progress, desc="landscape", unit="pt")
    with eval_mode(model), torch.no_grad(), bar:
        for x, y in _sample_batches(inputs, targets, batch_size):
            constants, affine = _capture(model, structure, directions, x)
            with _replayed(model, structure, constants, affine, point):
                if method == "inplace":
                    loss, acc = _points_inplace(
                        model,
                        params,
                        rest,
                        directions,
                        coords,
                        x,
                        y,
                        point,
                        loss_fn,
                        chunk_size,
                        bar,
                    )
                else:
                    loss, acc = _points_vmap(
                        model,
                        params,
                        rest,
                        directions,
                        coords,
                        x,
                        y,
                        point,
                        loss_fn,
                        chunk_size,
                        bar,
                    )
            weight = y.shape[0] / n_total
            loss_total += loss * weight
            acc_total += acc * weight
    return loss_total.cpu(), acc_total.cpu()


def _points_inplace(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    rest: Sequence[str],
    directions: Sequence[Mapping[str, Tensor]],
    coords: Tensor,
    x: Mapping[str, Tensor],
    y: Tensor,
    point: dict[str, object],
    loss_fn: LossFn,
    chunk_size: int,
    bar: tqdm,
) -> tuple[Tensor, Tensor]:
    """Per point: ``θ + Σ_k c_k·d_k`` written into the parameters with foreach ops (two
    calls, no allocation: ``θ + Σ_{k<K-1} c_k·d_k`` is kept per grid row), one forward into
    a stack of ``chunk_size`` points' logits, whose loss and accuracy are one call
    (:func:`_points_metrics`); θ restored exactly afterwards."""
    moved = [params[n] for n in rest]
    saved = [p.detach().clone() for p in moved]
    row_base = [p.clone() for p in saved]
    steps = [[d[n].detach() for n in rest] for d in directions]
    losses, accs = [], []
    row_key, stack, filled = None, None, 0

    def flush() -> None:
        loss, acc = _points_metrics(stack[:filled], y, loss_fn)
        losses.append(loss)
        accs.append(acc)

    try:
        for row in coords.tolist():
            point["c"] = row
            if moved:
                if row[:-1] != row_key:
                    torch._foreach_copy_(row_base, saved)
                    for c, step in zip(row[:-1], steps[:-1], strict=True):
                        if c != 0.0:
                            torch._foreach_add_(row_base, step, alpha=c)
                    row_key = row[:-1]
                torch._foreach_copy_(moved, row_base)
                if row[-1] != 0.0:
                    torch._foreach_add_(moved, steps[-1], alpha=row[-1])
            logits = model(x)
            if stack is None:
                stack = logits.new_empty((chunk_size, *logits.shape))
            stack[filled].copy_(logits)  # a copy: a model may return a buffer it reuses
            filled += 1
            if filled == chunk_size:
                flush()
                filled = 0
            bar.update(1)
        if filled:
            flush()
    finally:
        if moved:
            torch._foreach_copy_(moved, saved)
    return torch.cat(losses), torch.cat(accs)


def _points_vmap(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    rest: Sequence[str],
    directions: Sequence[Mapping[str, Tensor]],
    coords: Tensor,
    x: Mapping[str, Tensor],
    y: Tensor,
    point: dict[str, object],
    loss_fn: LossFn,
    chunk_size: int,
    bar: tqdm,
) -> tuple[Tensor, Tensor]:
    """``chunk_size`` points per vmapped ``functional_call`` (parameters no direction moves
    stay unbatched, so what depends only on them is computed once per chunk)."""
    fixed = {n: t.detach() for n, t in model.named_parameters() if n not in rest}
    fixed.update(dict(model.named_buffers()))
    stacked = {n: torch.stack([d[n].detach() for d in directions]) for n in rest}  # [K, *shape]

    def one(moved: dict[str, Tensor], c: Tensor):
        point["c"] = c
        return functional_call(model, {**fixed, **moved}, (x,))

    batched = torch.vmap(one)
    losses, accs = [], []
    for start in range(0, coords.shape[0], chunk_size):
        chunk = coords[start : start + chunk_size]
        moved = {
            n: params[n].detach() + torch.tensordot(chunk.to(params[n]), stacked[n], dims=1)
            for n in rest
        }
        loss, acc = _points_metrics(batched(moved, chunk), y, loss_fn)
        losses.append(loss)
        accs.append(acc)
        bar.update(chunk.shape[0])
    return torch.cat(losses), torch.cat(accs)


def evaluate_grid_loop(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    directions: Sequence[Mapping[str, Tensor]],
    coords: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Point-by-point reference for :func:`evaluate_grid`: write each point's weights into
    the model, evaluate, move on (as loss-landscape tools do); weights restored afterwards."""
    names = _check_directions(directions, model)
    params = trainable_named_parameters(model)
    saved = {n: params[n].detach().clone() for n in names}
    n_total = int(targets.shape[0])
    losses, accs = [], []
    try:
        with eval_mode(model), torch.no_grad():
            for row in tqdm(coords.tolist(), disable=not progress, desc="landscape", unit="pt"):
                for n in names:
                    step = sum(c * d[n] for c, d in zip(row, directions, strict=True))
                    params[n].copy_(saved[n] + step)
                loss_sum = correct = 0.0
                for x, y in _sample_batches(inputs, targets, batch_size):
                    logits = model(x)
                    loss_sum += float(loss_fn(logits, y)) * y.shape[0]
                    hit = _accuracy(logits, y) if _classifies(logits, y) else float("nan")
                    correct += float(hit) * y.shape[0]
                losses.append(loss_sum / n_total)
                accs.append(correct / n_total)
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accs, dtype=torch.float64)


def compute_landscape(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    *,
    steps: int = 41,
    span: float = 1.0,
    dims: int = 2,
    seed: int = 0,
    norm: str = "filter",
    ignore: str = "biasbn",
    modality: str | None = None,
    directions: Sequence[Mapping[str, Tensor]] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    method: str = "auto",
    chunk_size: int = 32,
    batch_size: int | None = None,
    epoch: int | None = None,
    step: int | None = None,
    split: str = "",
    progress: bool = False,
) -> Landscape:
    """Loss and accuracy of ``model`` on a ``steps``-per-axis grid in ``[-span, span]^dims``.

    Directions: ``directions`` if given (e.g. from :func:`pca_directions`), else random ones
    with seeds ``seed, seed + 1`` (:func:`random_direction` with ``norm``, ``ignore``,
    ``modality``).  ``method``: ``"auto"`` (the fastest path for the device), ``"inplace"``
    or ``"vmap"`` (see :func:`evaluate_grid`), or ``"loop"``, the point-by-point reference.
    Batch norm and dropout in eval mode.  ``progress``: a progress bar over the grid.
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    _check_choice("method", method, METHODS)
    axis = grid_axis(steps, span)
    if directions is None:
        seeds = np.arange(seed, seed + dims, dtype=np.int64)
        directions = [random_direction(model, int(s), norm, ignore, modality) for s in seeds]
        subspace = modality or "all"
    else:
        if len(directions) != dims:
            raise ValueError(f"dims={dims} but {len(directions)} directions were given")
        seeds = np.zeros(0, dtype=np.int64)
        subspace = modality or "custom"
    if dims == 1:
        coords = torch.tensor(axis)[:, None]
    else:
        a, b = torch.meshgrid(torch.tensor(axis), torch.tensor(axis), indexing="ij")
        coords = torch.stack([a.reshape(-1), b.reshape(-1)], 1)
    if method != "loop":
        loss, acc = evaluate_grid(
            model,
            inputs,
            targets,
            directions,
            coords,
            loss_fn,
            chunk_size,
            batch_size,
            method=method,
            progress=progress,
        )
    else:
        loss, acc = evaluate_grid_loop(
            model, inputs, targets, directions, coords, loss_fn, batch_size, progress=progress
        )
    shape = (steps,) * dims
    with eval_mode(model), torch.no_grad():
        logits = model(inputs)
        center_loss, center_acc = (
            float(t) for t in _points_metrics(logits[None], targets, loss_fn)
        )
    return Landscape(
        alphas=axis,
        betas=axis.copy() if dims == 2 else np.zeros(0),
        loss=loss.double().numpy().reshape(shape),
        acc=acc.double().numpy().reshape(shape),
        subspace=subspace,
        norm=norm,
        ignore=ignore,
        seeds=seeds,
        span=float(span),
        center_loss=center_loss,
        center_acc=center_acc,
        n_eval=int(targets.shape[0]),
        split=split,
        epoch=epoch,
        step=step,
    )


# --------------------------------------------------------------------------------------------
# from a run directory


def _evaluation_subset(split, n_eval: int, seed: int):
    """A fixed random subset of ``n_eval`` samples (all if the split is smaller), in order."""
    n = len(split)
    if n_eval >= n:
        indices = torch.arange(n)
    else:
        indices = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_eval]
        indices = indices.sort().values
    return fetch_batch(split, indices)


def _parameters_of(state_dict: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    return {n: state_dict[n] for n in names}


def landscape_for_run(
    run_dir: str | os.PathLike,
    epoch: int | None = None,
    steps: int = 41,
    span: float = 1.0,
    modality: str | None = None,
    pca: bool = False,
    dims: int = 2,
    *,
    seed: int = 0,
    norm: str = "filter",
    ignore: str = "biasbn",
    split: str = "train",
    n_eval: int = 1024,
    chunk_size: int = 32,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    name: str | None = None,
    model: nn.Module | None = None,
    data: MultimodalDataset | None = None,
    progress: bool = False,
) -> Path:
    """Compute a landscape of a run's checkpoint and save it in ``RUN/landscapes/``.

    Rebuilds the model from the checkpoint's config, loads ``checkpoints/epoch_XXXX.pt``
    (the latest if ``epoch`` is None), and evaluates on a fixed random subset of ``n_eval``
    samples of ``split`` (drawn with ``seed``).  ``modality`` restricts random directions to
    one encoder (or ``"fusion"``); ``pca`` uses the PCA of the checkpoints up to ``epoch``
    instead.  ``model`` / ``data``: a run of your own model or data needs them, as
    :func:`~msam_core.load_trained` does.  ``progress``: a progress bar over the grid.
    Returns the path of the ``.npz`` written.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {str(run_dir)!r}")
    grid_axis(steps, span)  # bad steps / span fail before any loading
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    if pca and modality not in (None, "all"):
        raise ValueError("choose either pca or a modality subspace, not both")
    available = epoch_checkpoints(run_dir, purpose="get landscapes of")
    if epoch is None:
        epoch = max(available)
    trained = load_trained(run_dir, epoch, device, model=model, data=data)
    model, dataset = trained.model, trained.dataset
    check_subspace(model, modality)
    inputs, targets = _evaluation_subset(dataset.split(split), n_eval, seed)
    inputs = {m: x.to(device) for m, x in inputs.items()}
    targets = targets.to(device)
    options = dict(
        steps=steps,
        span=span,
        dims=dims,
        chunk_size=chunk_size,
        batch_size=batch_size,
        progress=progress,
    )
    where = dict(epoch=epoch, step=trained.step, split=split)
    if not pca:
        landscape = compute_landscape(
            model,
            inputs,
            targets,
            seed=seed,
            norm=norm,
            ignore=ignore,
            modality=modality,
            **options,
            **where,
        )
    else:
        names = list(trainable_named_parameters(model))
        earlier = [e for e in available if e <= epoch]
        if len(earlier) < dims + 1:
            raise ValueError(
                f"PCA directions need at least {dims + 1} checkpoints up to epoch {epoch}; "
                f"the run has {earlier}. Train with checkpoint_every=1 (and keep_checkpoints=0)"
            )
        trajectory = [
            _parameters_of(load_checkpoint(available[e])["model"], names) for e in earlier
        ]
        final = {n: p.detach().cpu() for n, p in trainable_named_parameters(model).items()}
        found = pca_directions(trajectory, final, dims)
        directions = [{n: d[n].to(device) for n in d} for d in found.directions]
        landscape = compute_landscape(
            model, inputs, targets, directions=directions, **options, **where
        )
        landscape.subspace, landscape.norm, landscape.ignore = "pca", "none", "none"
        landscape.trajectory = found.projection
        landscape.trajectory_epochs = np.asarray(earlier, dtype=np.int64)
        landscape.explained_variance = found.explained_variance
        landscape.direction_scale = found.scale
    return save_landscape(landscape, run_dir, name)
