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

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from msam_core.batches import fetch_batch
from msam_core.coalitions import eval_mode
from msam_core.data import MultimodalDataset
from msam_core.layout import LANDSCAPES_DIR as LANDSCAPES_DIR
from msam_core.layout import epoch_checkpoints
from msam_core.param_groups import block_choices, modality_parameter_names

# the grid record and its npz storage live with the run directory's other files; importable
# from here as before
from msam_core.rundir import Landscape as Landscape
from msam_core.rundir import load_checkpoint, load_trained, save_landscape
from msam_core.rundir import load_landscape as load_landscape
from msam_core.rundir import load_landscapes as load_landscapes
from msam_core.suggest import did_you_mean

LossFn = Callable[[Tensor, Tensor], Tensor]
Direction = dict[str, Tensor]

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")
METHODS = ("vmap", "loop")


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


def _accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    if logits.ndim == 2 and not targets.is_floating_point():
        return (logits.argmax(-1) == targets).to(logits.dtype).mean()
    return torch.full((), float("nan"), dtype=logits.dtype, device=logits.device)


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


def _affine_input_layers(
    model: nn.Module, inputs: Mapping[str, Tensor], moving: Sequence[str]
) -> dict[str, nn.Module]:
    """Linear / conv modules, called once per forward, whose input depends on no parameter
    (e.g. each encoder's first layer) and whose own weights move.  Found with one probe
    forward on one sample: such an input does not require grad."""
    moving_set = set(moving)
    candidates = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, _AFFINE)
        and any(f"{name}.{p}" in moving_set for p, _ in mod.named_parameters(recurse=False))
    }
    calls: dict[str, int] = dict.fromkeys(candidates, 0)
    raw: dict[str, bool] = {}

    def make_hook(name: str):
        def hook(module, args):
            calls[name] += 1
            raw[name] = not args[0].requires_grad

        return hook

    handles = [mod.register_forward_pre_hook(make_hook(n)) for n, mod in candidates.items()]
    try:
        with eval_mode(model), torch.enable_grad():
            model({m: x[:1] for m, x in inputs.items()})
    finally:
        for h in handles:
            h.remove()
    return {n: candidates[n] for n in candidates if calls[n] == 1 and raw[n]}


def _affine_apply(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def evaluate_grid(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    directions: Sequence[Mapping[str, Tensor]],
    coords: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 32,
    batch_size: int | None = 256,
    affine_inputs: bool = True,
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy at ``θ + Σ_k coords[p, k]·directions[k]`` for every point ``p``.

    ``coords`` ``[P, K]``; returns two ``[P]`` tensors.  ``chunk_size`` points are evaluated
    per vmapped call and ``batch_size`` samples per call (None: all at once; the loss is the
    sample-weighted mean of batch means): memory grows with their product, and on a CPU a
    working set that fits the cache (the defaults) is fastest.

    ``affine_inputs``: a linear / conv layer fed by raw inputs is affine in its weights, so its
    output at every point is ``y(θ) + Σ_k c_k·y_k`` with ``y_k`` the layer applied with
    direction ``k``'s weights: ``1 + K`` products per sample batch instead of one per point
    (exact up to rounding).  The model is evaluated in eval mode; its weights are never
    written.
    """
    names = _check_directions(directions, model)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    params = trainable_named_parameters(model)
    # Parameters moved by no direction stay unbatched: vmap then computes what depends only
    # on them (e.g. another modality's encoder) once per chunk, not once per point.
    moving = [n for n in names if any(bool(d[n].abs().sum() > 0) for d in directions)]
    affine = _affine_input_layers(model, inputs, moving) if affine_inputs else {}
    affine_params = {
        f"{m}.{p}" for m, mod in affine.items() for p, _ in mod.named_parameters(recurse=False)
    }
    moving = [n for n in moving if n not in affine_params]
    fixed = {n: t.detach() for n, t in model.named_parameters() if n not in moving}
    fixed.update({n: b for n, b in model.named_buffers()})
    stacked = {n: torch.stack([d[n].detach() for d in directions]) for n in moving}  # [K, *shape]
    n_total = int(targets.shape[0])
    current: dict[str, Tensor] = {}  # the point's coordinates, set inside the vmapped call
    shifts: dict[str, Tensor] = {}  # per affine layer: [K, *out] for the current sample batch

    def shift_output(name: str, module: nn.Module):
        weights = [d[f"{name}.weight"].detach() for d in directions]
        biases = [
            d[f"{name}.bias"].detach() if module.bias is not None else None for d in directions
        ]

        def hook(mod, args, output):
            if name not in shifts:  # the layer's input is unbatched: computed once per batch
                shifts[name] = torch.stack(
                    [
                        _affine_apply(mod, args[0], w, b)
                        for w, b in zip(weights, biases, strict=True)
                    ]
                )
            return output + torch.tensordot(current["c"], shifts[name], dims=1)

        return hook

    def point(moved: dict[str, Tensor], c: Tensor, x: dict[str, Tensor], y: Tensor):
        current["c"] = c
        logits = functional_call(model, {**fixed, **moved}, (x,))
        return loss_fn(logits, y), _accuracy(logits, y)

    batched = torch.vmap(point, in_dims=(0, 0, None, None))
    ref = next(iter(params.values()))
    loss_total = torch.zeros(coords.shape[0], dtype=ref.dtype, device=ref.device)
    acc_total = torch.zeros_like(loss_total)
    handles = [mod.register_forward_hook(shift_output(n, mod)) for n, mod in affine.items()]
    try:
        with eval_mode(model), torch.no_grad():
            # Samples outer, points inner: the affine layers' shifts are computed once per
            # sample batch and reused by every chunk of points.
            for x, y in _sample_batches(inputs, targets, batch_size):
                shifts.clear()
                weight = y.shape[0] / n_total
                for start in range(0, coords.shape[0], chunk_size):
                    chunk = coords[start : start + chunk_size].to(
                        device=ref.device, dtype=ref.dtype
                    )
                    moved = {
                        n: params[n].detach()
                        + torch.tensordot(chunk.to(params[n]), stacked[n], dims=1)
                        for n in moving
                    }
                    loss, acc = batched(moved, chunk, x, y)
                    loss_total[start : start + chunk_size] += loss * weight
                    acc_total[start : start + chunk_size] += acc * weight
    finally:
        current.clear()
        shifts.clear()
        for h in handles:
            h.remove()
    return loss_total.cpu(), acc_total.cpu()


def evaluate_grid_loop(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    directions: Sequence[Mapping[str, Tensor]],
    coords: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    batch_size: int | None = None,
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
            for row in coords.tolist():
                for n in names:
                    step = sum(c * d[n] for c, d in zip(row, directions, strict=True))
                    params[n].copy_(saved[n] + step)
                loss_sum = correct = 0.0
                for x, y in _sample_batches(inputs, targets, batch_size):
                    logits = model(x)
                    loss_sum += float(loss_fn(logits, y)) * y.shape[0]
                    correct += float(_accuracy(logits, y)) * y.shape[0]
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
    method: str = "vmap",
    chunk_size: int = 32,
    batch_size: int | None = 256,
    epoch: int | None = None,
    step: int | None = None,
    split: str = "",
) -> Landscape:
    """Loss and accuracy of ``model`` on a ``steps``-per-axis grid in ``[-span, span]^dims``.

    Directions: ``directions`` if given (e.g. from :func:`pca_directions`), else random ones
    with seeds ``seed, seed + 1`` (:func:`random_direction` with ``norm``, ``ignore``,
    ``modality``).  ``method="vmap"`` evaluates ``chunk_size`` points per vectorised call;
    ``"loop"`` is the point-by-point reference.  Batch norm and dropout in eval mode.
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
    if method == "vmap":
        loss, acc = evaluate_grid(
            model, inputs, targets, directions, coords, loss_fn, chunk_size, batch_size
        )
    else:
        loss, acc = evaluate_grid_loop(
            model, inputs, targets, directions, coords, loss_fn, batch_size
        )
    shape = (steps,) * dims
    with eval_mode(model), torch.no_grad():
        logits = model(inputs)
        center_loss, center_acc = float(loss_fn(logits, targets)), float(_accuracy(logits, targets))
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
    batch_size: int | None = 256,
    device: str | torch.device = "cpu",
    name: str | None = None,
    model: nn.Module | None = None,
    data: MultimodalDataset | None = None,
) -> Path:
    """Compute a landscape of a run's checkpoint and save it in ``RUN/landscapes/``.

    Rebuilds the model from the checkpoint's config, loads ``checkpoints/epoch_XXXX.pt``
    (the latest if ``epoch`` is None), and evaluates on a fixed random subset of ``n_eval``
    samples of ``split`` (drawn with ``seed``).  ``modality`` restricts random directions to
    one encoder (or ``"fusion"``); ``pca`` uses the PCA of the checkpoints up to ``epoch``
    instead.  ``model`` / ``data``: a run of your own model or data needs them, as
    :func:`~msam_core.load_trained` does.  Returns the path of the ``.npz`` written.
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
    options = dict(steps=steps, span=span, dims=dims, chunk_size=chunk_size, batch_size=batch_size)
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
