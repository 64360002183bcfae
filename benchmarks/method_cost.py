"""What does each training method cost per step, relative to joint training?

Setting as benchmarks/step_cost.py: M vector modalities of 256 values, MLP encoders
(256 -> 128 -> 128), a linear concat head (MLA: its shared head), 10 classes, batch 256, SGD
with momentum, every method built by the registry from one config and stepping through
``Method.step`` exactly as the training loop calls it (so every step also records the batch's
Shapley values, joint's included).  The methods run interleaved round by round (order rotated
each round) on their own copies of one model; printed for wall time and for this process's CPU
time: ms per step as best / median, and the ratio to joint (of the best times, and the median
of the per-round ratios).

PMR and G-Blending also work once per epoch (prototypes; the held-out losses): that is timed
separately, as ms per epoch on a 2,048-sample training split, and is not in the step ratio.

``--loss-scaling`` times instead what fp16's loss scaling (``msam_core.optim.scaling``) adds to
each method's step, M = 2: the step through a ``LossScaling`` of constant scale (fp32 math, so
only the scaling's own work differs: scaled backward, unscale and inf check of every pass, the
checks' host reads, the scale update) vs the same step without, interleaved; ratio as above.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/method_cost.py [--device cuda] [--quick]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/method_cost.py --loss-scaling
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from step_cost import best, ratios, shown, sync

from msam_core.config import TrainConfig
from msam_core.data.base import ModalitySpec, TensorSplit
from msam_core.methods import build_method
from msam_core.models import build_model
from msam_core.optim.scaling import LossScaling, loss_scaling

CLASSES = 10
METHODS = ["joint", "sam", "ogm_ge", "agm", "mmpareto", "mla", "pmr", "gblending", "msam"]


def data(n_modalities: int, n: int, dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(CLASSES, (n,), generator=generator)
    inputs = {f"m{i}": torch.randn(n, dim, generator=generator) for i in range(n_modalities)}
    for i, x in enumerate(inputs.values()):
        x[:, :CLASSES] += (i + 1) * torch.nn.functional.one_hot(targets, CLASSES)
    return inputs, targets


def time_interleaved(steps, rounds: int, device) -> tuple[dict, dict]:
    """Wall and process-CPU seconds per call of each step in every round, interleaved as
    step_cost's (order rotated each round).  On a shared machine the CPU time is the steadier
    measure of a step's own work (one thread: OMP_NUM_THREADS=1)."""
    for step in steps.values():  # warm-up
        step()
        step()
    names = list(steps)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def build(method: str, n_modalities: int, args, device, split: TensorSplit):
    specs = [ModalitySpec(f"m{i}", "vector", (args.dim,)) for i in range(n_modalities)]
    torch.manual_seed(0)
    fusion = "shared" if method == "mla" else "concat"
    model = build_model(specs, CLASSES, fusion=fusion, feature_dim=args.width).to(device)
    cfg = TrainConfig.from_dict(
        {"method": method, "lr": 0.01, "momentum": 0.9, "device": str(device), "rho": 0.05}
    )
    built = build_method(method, model, cfg)
    built.training_split(split)
    built.set_epoch(1)
    return model, built


def loss_scaling_cost(args, device) -> None:
    """Each method's step through a constant-scale LossScaling vs without (module docstring)."""
    inputs, targets = data(2, args.batch, args.dim, seed=1)
    inputs = {m: x.to(device) for m, x in inputs.items()}
    targets = targets.to(device)
    split = TensorSplit(*data(2, 512 if args.quick else 2048, args.dim, seed=2))
    steps = {}
    for name in METHODS:
        for scaled in (False, True):
            model, method = build(name, 2, args, device, split)
            scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10, growth_interval=10**9)
            scaling = LossScaling(scaler) if scaled else None

            def step(mo=model, me=method, sc=scaling):
                with loss_scaling(sc):
                    me.step(mo, inputs, targets)

            steps[(name, scaled)] = step
    wall, cpu = time_interleaved(steps, args.rounds, device)
    print(
        f"loss scaling's cost per step, M = 2 (batch {args.batch}, {args.rounds} interleaved "
        "rounds; ms as best / median; scaled ÷ unscaled as best and median of the rounds)"
    )
    print(f"  {'':<10}{'cpu ms':>13}  {'scaled':>13}  {'÷':>5}{'median':>7}   {'wall ÷':>6}")
    for name in METHODS:
        plain, scaled = cpu[(name, False)], cpu[(name, True)]
        c_best, c_rounds = ratios(scaled, plain)
        w_best, _ = ratios(wall[(name, True)], wall[(name, False)])
        print(
            f"  {name:<10}{shown(plain)}  {shown(scaled)}{c_best:>6.3f}{c_rounds:>7.3f}"
            f"   {w_best:>6.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="few rounds, small batch (a smoke)")
    parser.add_argument(
        "--loss-scaling", action="store_true", help="time fp16's loss scaling in each step"
    )
    args = parser.parse_args()
    args.dim, args.width = 256, 128
    args.batch, args.rounds = (64, 3) if args.quick else (256, 20)
    device = torch.device(args.device)
    if args.loss_scaling:
        loss_scaling_cost(args, device)
        return
    print(
        f"per-step cost relative to joint (batch {args.batch}, {args.dim}-d modalities, width "
        f"{args.width}, {args.rounds} interleaved rounds; ms as best / median)"
    )
    for n_modalities in (2, 3):
        inputs, targets = data(n_modalities, args.batch, args.dim, seed=1)
        inputs = {m: x.to(device) for m, x in inputs.items()}
        targets = targets.to(device)
        split = TensorSplit(*data(n_modalities, 512 if args.quick else 2048, args.dim, seed=2))
        built = {m: build(m, n_modalities, args, device, split) for m in METHODS}
        steps = {
            name: (lambda mo=model, me=method, x=inputs, y=targets: me.step(mo, x, y))
            for name, (model, method) in built.items()
        }
        wall, cpu = time_interleaved(steps, args.rounds, device)
        print(
            f"\n  M = {n_modalities}  {'wall ms':>13}  {'÷ joint':>7}{'median':>7}   "
            f"{'cpu ms':>13}  {'÷ joint':>7}{'median':>7}"
        )
        for name in METHODS:
            w_best, w_rounds = ratios(wall[name], wall["joint"])
            c_best, c_rounds = ratios(cpu[name], cpu["joint"])
            print(
                f"  {name:<10}{shown(wall[name])}{w_best:>8.2f}{w_rounds:>7.2f}   "
                f"{shown(cpu[name])}{c_best:>8.2f}{c_rounds:>7.2f}"
            )
        for name in ("pmr", "gblending"):
            _, method = built[name]
            epoch_times = []
            for epoch in range(2, 2 + (2 if args.quick else 5)):
                sync(device)
                start = time.perf_counter()
                method.set_epoch(epoch)
                sync(device)
                epoch_times.append(time.perf_counter() - start)
            print(
                f"  {name} per-epoch work: {best(epoch_times) * 1e3:.1f} / "
                f"{statistics.median(epoch_times) * 1e3:.1f} ms on {len(split)} training samples"
            )


if __name__ == "__main__":
    main()
