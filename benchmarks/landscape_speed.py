"""How fast are loss-landscape grids and the Hessian top eigenvalue?

Setting (issue "Sharpness and loss-landscape measurement"): a 2-D 41x41 grid around a
~95k-parameter late-fusion MLP (two 300-d vector modalities, MLP encoders, concat head) trained
briefly on the synthetic dataset, 1024 evaluation samples, filter-normalised directions.

Compared, all in this run on this machine:
  vmap   msam_core.landscape.evaluate_grid: chunks of points per vmapped functional_call,
         input layers computed once per direction (what landscape_for_run uses)
  loop   evaluate_grid_loop: weights copied into the model per point, all samples in one batch
         (a tight point-by-point loop)
  tool   the loop loss-landscape tools run: per point, set the weights, then iterate a
         DataLoader (batch 128) and call .item() on each batch's loss and correct count
The loops are timed on an evenly spread subset of the grid and extrapolated to all points
(printed as such); vmap is timed on the full grid.  Then the Hessian top eigenvalue on a
256-sample probe: Lanczos (default) and power iteration, HVPs to reach tol 1e-4.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/landscape_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from msam_core.data import TensorSplit, load_dataset
from msam_core.hessian import hessian_top_eigenvalue
from msam_core.landscape import evaluate_grid, evaluate_grid_loop, grid_axis, random_direction
from msam_core.models import build_model


def tool_style_loop(model, split, directions, coords, batch_size=128):
    """Point-by-point evaluation as loss-landscape tools do it (Li et al. 2018 style)."""
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    base = [p.detach().clone() for p in params]
    dirs = [[d[n] for n in names] for d in directions]
    loader = DataLoader(split, batch_size=batch_size, shuffle=False)
    losses = []
    for row in coords.tolist():
        for i, p in enumerate(params):
            p.data = base[i] + sum(c * d[i] for c, d in zip(row, dirs, strict=True))
        model.eval()
        total, loss_sum, correct = 0, 0.0, 0
        with torch.no_grad():
            for inputs, targets in loader:
                out = model(inputs)
                loss_sum += F.cross_entropy(out, targets).item() * len(targets)
                correct += out.argmax(1).eq(targets).sum().item()
                total += len(targets)
        losses.append(loss_sum / total)
    for p, b in zip(params, base, strict=True):
        p.data = b
    return torch.tensor(losses)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=41, help="grid points per axis")
    parser.add_argument("--samples", type=int, default=1024, help="evaluation samples")
    parser.add_argument("--loop-points", type=int, default=120, help="points timed per loop")
    parser.add_argument("--quick", action="store_true", help="small grid, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.samples, args.loop_points = 11, 256, 20

    torch.manual_seed(0)
    data = load_dataset("synthetic", n_train=2048, n_val=16, n_test=16, dims=300, n_classes=10)
    model = build_model(data.modalities, data.num_classes, fusion="concat")
    n_params = sum(p.numel() for p in model.parameters())
    x_train, y_train = data.train.inputs, data.train.targets
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):  # a briefly trained model: a realistic Hessian and landscape
        for idx in torch.randperm(2048, generator=torch.Generator().manual_seed(epoch)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model({m: x[idx] for m, x in x_train.items()}), y_train[idx]).backward()
            optimizer.step()
    model.eval()
    x = {m: t[: args.samples] for m, t in x_train.items()}
    y = y_train[: args.samples]

    axis = torch.tensor(grid_axis(args.steps, 1.0))
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    coords = torch.stack([a.reshape(-1), b.reshape(-1)], 1)
    n_points = coords.shape[0]
    directions = [random_direction(model, s) for s in (0, 1)]
    subset = coords[torch.linspace(0, n_points - 1, min(args.loop_points, n_points)).long()]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(
        f"model: late-fusion MLP, {n_params} parameters; grid {args.steps}x{args.steps} = "
        f"{n_points} points; {args.samples} evaluation samples"
    )

    evaluate_grid(model, x, y, directions, coords[:32])  # warm-up
    (v_loss, _), t_vmap = timed(evaluate_grid, model, x, y, directions, coords)
    (_, _), t_plain = timed(evaluate_grid, model, x, y, directions, coords, affine_inputs=False)
    (l_loss, _), t_loop_sub = timed(evaluate_grid_loop, model, x, y, directions, subset)
    split = TensorSplit(x, y)
    tool_points = subset[:: max(1, len(subset) // 40)]
    _, t_tool_sub = timed(tool_style_loop, model, split, directions, tool_points)
    t_loop = t_loop_sub / len(subset) * n_points
    t_tool = t_tool_sub / len(tool_points) * n_points
    index = torch.linspace(0, n_points - 1, len(subset)).long()
    diff = (v_loss[index].double() - l_loss).abs().max().item()

    print(f"vmap (input layers once per direction): {t_vmap:8.2f} s  (full grid, measured)")
    print(f"vmap (every layer per point):           {t_plain:8.2f} s  (full grid, measured)")
    print(
        f"tight loop:  {t_loop:8.2f} s  (extrapolated from {len(subset)} points: "
        f"{t_loop_sub:.2f} s)"
    )
    print(
        f"tool loop:   {t_tool:8.2f} s  (extrapolated from {len(tool_points)} points: "
        f"{t_tool_sub:.2f} s)"
    )
    print(f"ratio vs tool loop:  {t_tool / t_vmap:6.1f}x   (goal >= 5x)")
    print(f"ratio vs tight loop: {t_loop / t_vmap:6.1f}x")
    print(f"max |loss(vmap) - loss(loop)| on the timed points: {diff:.2e}")

    probe = ({m: t[:256] for m, t in x_train.items()}, y_train[:256])
    (top, n_lanczos), t_lanczos = timed(hessian_top_eigenvalue, model, *probe, tol=1e-4)
    (top_power, n_power), t_power = timed(
        hessian_top_eigenvalue, model, *probe, tol=1e-4, max_iter=500, method="power"
    )
    (exact, n_exact), _ = timed(
        hessian_top_eigenvalue,
        model,
        *probe,
        tol=1e-10,
        max_iter=300,
        generator=torch.Generator().manual_seed(1),
    )
    print(
        f"Hessian top eigenvalue, probe of 256 samples (reference {exact:.6f}: Lanczos to "
        f"1e-10 in {n_exact} HVPs)"
    )
    for label, value, n_hvp, seconds in (
        ("Lanczos (default)", top, n_lanczos, t_lanczos),
        ("power iteration", top_power, n_power, t_power),
    ):
        print(
            f"  {label:18s} tol 1e-4: {value:.6f} (rel. error {abs(value - exact) / exact:.1e}) "
            f"in {n_hvp:3d} HVPs, {seconds:.2f} s   (goal <= 20 HVPs)"
        )


if __name__ == "__main__":
    main()
