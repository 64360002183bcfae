"""How fast are loss-landscape grids (and the Hessian top eigenvalue)?

Setting (issue 14): a 2-D 41x41 grid around a 94,858-parameter late-fusion MLP (two 300-d
vector modalities, MLP encoders, concat head) trained briefly on the synthetic dataset, 1,024
evaluation samples, filter-normalised directions, one thread.

Timed in interleaved rounds (best and median printed), every side on the same model and data:
  peer         loss_landscapes.random_plane(model, Loss(F.cross_entropy, x, y), distance=1,
               steps=41, normalization="filter", deepcopy_model=True): the tool people use
               today.  Not a dependency of msam; to include it in the benchmark:
                   python -m pip install loss-landscapes
               Without it the peer is msam's own plain loop (evaluate_grid_loop: write each
               point's weights, one forward of all samples).
  msam         compute_landscape(model, x, y, steps=41): directions, grid and centre, on the
               path grid_method() picks for the device
  msam <m>     the same with modality=<m> (directions on one encoder's parameters)
  plain <m>    that modality landscape by the plain loop (the whole model at every point)
  vmap         compute_landscape(..., method="vmap"): the other path, to show the choice
The peer's grid is its own (uniform directions, off-centre by one step); the work per point
(one forward of 1,024 samples through the model) is the same.  Then the Hessian top eigenvalue
on a 256-sample probe: Lanczos (default) and power iteration, HVPs to reach tol 1e-4.

    OMP_NUM_THREADS=1 python benchmarks/landscape_speed.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from msam_core.data import load_dataset
from msam_core.hessian import hessian_top_eigenvalue
from msam_core.landscape import (
    compute_landscape,
    evaluate_grid,
    evaluate_grid_loop,
    grid_axis,
    grid_method,
    random_direction,
)
from msam_core.models import build_model

try:
    import loss_landscapes
    import loss_landscapes.metrics
except ImportError:  # not a dependency: the plain loop stands in
    loss_landscapes = None


def trained_model(samples: int):
    torch.manual_seed(0)
    data = load_dataset("synthetic", n_train=2048, n_val=16, n_test=16, dims=300, n_classes=10)
    model = build_model(data.modalities, data.num_classes, fusion="concat")
    x_train, y_train = data.train.inputs, data.train.targets
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):  # a briefly trained model: a realistic Hessian and landscape
        for idx in torch.randperm(2048, generator=torch.Generator().manual_seed(epoch)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model({m: x[idx] for m, x in x_train.items()}), y_train[idx]).backward()
            optimizer.step()
    model.eval()
    x = {m: t[:samples] for m, t in x_train.items()}
    return model, x, y_train[:samples], (x_train, y_train)


def grid(steps: int) -> torch.Tensor:
    axis = torch.tensor(grid_axis(steps, 1.0))
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=41, help="grid points per axis")
    parser.add_argument("--samples", type=int, default=1024, help="evaluation samples")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="small grid, for a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the model trains on cpu)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        args.steps, args.samples, args.rounds = 11, 256, 2

    model, x, y, (x_train, y_train) = trained_model(args.samples)
    model.to(device)
    x, y = {m: t.to(device) for m, t in x.items()}, y.to(device)
    x_train, y_train = {m: t.to(device) for m, t in x_train.items()}, y_train.to(device)
    modality = model.modalities[0]
    n_params = sum(p.numel() for p in model.parameters())
    coords = grid(args.steps)
    modality_dirs = [random_direction(model, s, modality=modality) for s in (0, 1)]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; grid path on this "
        f"device ({device}): {grid_method(device.type)}"
    )
    print(
        f"model: late-fusion MLP, {n_params} parameters; grid {args.steps}x{args.steps} = "
        f"{coords.shape[0]} points; {args.samples} evaluation samples"
    )

    if loss_landscapes is not None:
        peer_name = "loss_landscapes.random_plane"
        metric = loss_landscapes.metrics.Loss(F.cross_entropy, x, y)

        def peer(steps: int):
            return loss_landscapes.random_plane(
                model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True
            )
    else:
        peer_name = "msam's plain loop (pip install loss-landscapes to compare with that)"
        whole_dirs = [random_direction(model, s) for s in (0, 1)]

        def peer(steps: int):
            return evaluate_grid_loop(model, x, y, whole_dirs, grid(steps))

    sides = {
        "peer": peer,
        "msam": lambda steps: compute_landscape(model, x, y, steps=steps),
        f"msam {modality}": lambda steps: compute_landscape(
            model, x, y, steps=steps, modality=modality
        ),
        f"plain {modality}": lambda steps: evaluate_grid_loop(
            model, x, y, modality_dirs, grid(steps)
        ),
        "vmap": lambda steps: compute_landscape(model, x, y, steps=steps, method="vmap"),
    }
    names = list(sides)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for side in sides.values():  # warm-up
        side(3)
    for r in range(args.rounds):  # the order rotates each round
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            sides[name](args.steps)
            if device.type == "cuda":
                torch.cuda.synchronize()  # kernels run asynchronously: time them to the end
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

    def show(times: dict[str, list[float]], name: str) -> str:
        return f"{min(times[name]):6.2f} / {statistics.median(times[name]):6.2f}"

    def ratio(slow: str, fast: str) -> str:
        return "   ".join(
            f"{label} {min(t[slow]) / min(t[fast]):4.1f}x / "
            f"{statistics.median(t[slow]) / statistics.median(t[fast]):4.1f}x"
            for label, t in (("cpu", cpu), ("wall", wall))
        )

    print(
        f"{args.rounds} interleaved rounds; peer = {peer_name}\n"
        "seconds as best / median; cpu = this process's CPU time (on a shared machine the "
        "least disturbed by other processes; one thread), wall = elapsed"
    )
    for name in names:
        print(f"  {name:14s} cpu {show(cpu, name)}   wall {show(wall, name)}")
    plain, one = f"plain {modality}", f"msam {modality}"
    print(f"msam vs peer:                            {ratio('peer', 'msam')}   (goal >= 3x)")
    print(f"{one} vs whole model per point:    {ratio(plain, one)}   (goal >= 3x)")
    print(f"{one} vs msam whole model:         {ratio('msam', one)}")
    print(f"msam ({grid_method(device.type)}) vs vmap on this device: {ratio('vmap', 'msam')}")

    # agreement of the paths on the modality grid (the tests hold them to 1e-5 too)
    subset = coords[:: max(1, coords.shape[0] // 60)]
    reference, _ = evaluate_grid_loop(model, x, y, modality_dirs, subset)
    for method in ("inplace", "vmap"):
        loss, _ = evaluate_grid(model, x, y, modality_dirs, subset, method=method)
        diff = (loss.double() - reference).abs().max().item()
        print(f"max |loss({method}) - loss(plain loop)| on {len(subset)} points: {diff:.1e}")

    probe = ({m: t[:256] for m, t in x_train.items()}, y_train[:256])
    start = time.perf_counter()
    top, n_lanczos = hessian_top_eigenvalue(model, *probe, tol=1e-4)
    t_lanczos = time.perf_counter() - start
    start = time.perf_counter()
    top_power, n_power = hessian_top_eigenvalue(
        model, *probe, tol=1e-4, max_iter=500, method="power"
    )
    t_power = time.perf_counter() - start
    exact, n_exact = hessian_top_eigenvalue(
        model, *probe, tol=1e-10, max_iter=300, generator=torch.Generator().manual_seed(1)
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
            f"in {n_hvp:3d} HVPs, {seconds:.2f} s"
        )


if __name__ == "__main__":
    main()
