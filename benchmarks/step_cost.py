"""What does M-SAM cost over SAM, and what does the batched coalition pass save?

Setting (issue "Foundation ... algorithm core"): M vector modalities of 256 values each, MLP
encoders (256 -> 128 -> 128) and a linear concat head (late fusion), or one MLP over the joined
inputs (early fusion); 10 classes, batch 256, SGD with momentum.

1. Step cost, all on the same model and batch, interleaved round by round (the order rotated
   each round), the best and the median of the rounds:
     plain  the base optimizer (one forward-backward), no Shapley record
     sam    SAM (two forward-backwards), no Shapley record
     msam   M-SAM: SAM + the coalition values of the batch + Shapley + weights
   for late and early fusion, M = 2 and 4.  Goals: msam/sam <= 1.10 late, <= 1.5 early (M = 2).
   Two ratios: of the best times, and the median of the per-round ratios (each round's msam and
   sam ran back to back, so drift on a shared machine cancels).
2. Coalition values for M = 6 (64 coalitions) on a late-fusion model: 64 separate forward
   passes (one per coalition) vs one batched pass (input masking, and the head-only feature
   masking).  Goal: batched >= 3x faster.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_cost.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from msam_core.coalitions import coalition_values, values_from_logits
from msam_core.data.base import ModalitySpec
from msam_core.masking import coalition_masks
from msam_core.models import build_model
from msam_core.optim import MSAM, SAM
from msam_core.step import msam_step, plain_step, sam_step

CLASSES = 10


def setting(n_modalities: int, fusion: str, args, device):
    specs = [ModalitySpec(f"m{i}", "vector", (args.dim,)) for i in range(n_modalities)]
    torch.manual_seed(0)
    model = build_model(specs, CLASSES, fusion=fusion, feature_dim=args.width).to(device)
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(CLASSES, (args.batch,), generator=generator)
    inputs = {s.name: torch.randn(args.batch, args.dim, generator=generator) for s in specs}
    # class signal of varying strength per modality, so the coalitions differ
    for i, s in enumerate(specs):
        inputs[s.name][:, :CLASSES] += (i + 1) * torch.nn.functional.one_hot(targets, CLASSES)
    return model, {m: x.to(device) for m, x in inputs.items()}, targets.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: dict[str, Callable[[], object]], rounds: int, device
) -> dict[str, list[float]]:
    """Seconds per call of each step in every round, the steps interleaved round by round.

    The order rotates each round, so no step always follows the same one (whose leftovers in
    cache or allocator would otherwise favour or hurt it); every step sees the same drift.
    """
    for step in steps.values():  # warm-up: allocator, kernels, caches
        step()
        step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def best(ts: list[float]) -> float:
    """The minimum (as ``timeit`` reports): the least noisy estimate of a step's own cost."""
    return min(ts)


def shown(ts: list[float], width: int = 7) -> str:
    """``best/median`` in milliseconds."""
    return f"{best(ts) * 1e3:>{width}.2f}/{statistics.median(ts) * 1e3:<6.2f}"


def ratios(num: list[float], den: list[float]) -> tuple[float, float]:
    """(ratio of the best times, median of the per-round ratios)."""
    return best(num) / best(den), statistics.median(a / b for a, b in zip(num, den, strict=True))


def time_steps(fusion: str, n_modalities: int, args, device) -> dict[str, list[float]]:
    """Seconds per plain / SAM / M-SAM step in each round, each on its own copy of one model."""
    model, inputs, targets = setting(n_modalities, fusion, args, device)
    plain_model, sam_model, msam_model = (copy.deepcopy(model) for _ in range(3))
    kw = {"lr": 0.01, "momentum": 0.9}
    plain_opt = torch.optim.SGD(plain_model.parameters(), **kw)
    sam_opt = SAM(sam_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    msam_opt = MSAM(msam_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    steps = {
        "plain": lambda: plain_step(plain_model, plain_opt, inputs, targets, value=None),
        "sam": lambda: sam_step(sam_model, sam_opt, inputs, targets, value=None),
        "msam": lambda: msam_step(msam_model, msam_opt, inputs, targets),
    }
    return time_interleaved(steps, args.rounds, device)


def step_costs(args, device) -> None:
    print(
        f"1. step cost (batch {args.batch}, {args.dim}-d modalities, width {args.width}, "
        f"{args.rounds} interleaved rounds; ms as best / median)"
    )
    print(
        f"   {'fusion':<7}{'M':>3} {'plain ms':>12}  {'sam ms':>12}  {'msam ms':>12}  "
        f"{'msam/sam best':>13}{'median':>8}{'goal':>7}"
    )
    for fusion, label, goal in (("concat", "late", "1.10"), ("early", "early", "1.50")):
        for n_modalities in (2, 4):
            t = time_steps(fusion, n_modalities, args, device)
            of_best, of_rounds = ratios(t["msam"], t["sam"])
            goal_shown = goal if n_modalities == 2 else "-"
            cells = "".join(shown(t[k]) for k in ("plain", "sam", "msam"))
            print(
                f"   {label:<7}{n_modalities:>3} {cells}"
                f"{of_best:>14.3f}{of_rounds:>8.3f}{goal_shown:>7}"
            )


def coalition_cost(args, device) -> None:
    n_modalities = 6
    model, inputs, targets = setting(n_modalities, "concat", args, device)
    model.eval()

    def separate() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    values_from_logits(model(inputs, mask), targets, 1, "accuracy")
                    for mask in coalition_masks(n_modalities, device)
                ]
            )

    def batched(masking: str, chunk_size: int | None) -> Callable[[], torch.Tensor]:
        return lambda: coalition_values(
            model, inputs, targets, masking=masking, chunk_size=chunk_size
        )

    variants = {
        "input, one pass": batched("input", 64),
        "input, default passes": batched("input", None),
        "feature, one pass": batched("feature", 64),
        "feature, default passes": batched("feature", None),
    }
    reference = separate()
    for fn in variants.values():  # the same numbers before timing them
        torch.testing.assert_close(fn(), reference, atol=1e-6, rtol=0)
    t = time_interleaved({"separate": separate, **variants}, max(3, args.rounds // 3), device)
    print(
        f"\n2. coalition values, M = 6 (64 coalitions), late fusion, batch {args.batch} "
        f"(ms as best / median; speed-up of the best times, then the median of the rounds)"
    )
    sep = t["separate"]
    print(f"   {'64 separate forward passes':<26}{shown(sep, 9)}")
    for name in variants:
        of_best, of_rounds = ratios(sep, t[name])
        print(
            f"   {name:<26}{shown(t[name], 9)}  speed-up {of_best:5.2f}x / {of_rounds:5.2f}x"
            "  (goal >= 3x)"
        )
    explain_input_masking(model, inputs, args, device)


def explain_input_masking(model, inputs, args, device) -> None:
    """Why batching cannot speed input masking up much where a forward is linear in rows.

    Input masking runs the whole model on every coalition's rows, so the batched pass does the
    same arithmetic as the separate passes (63·B + 1 rows against 64·B) and can only save the
    per-call overhead.  Measured here: one forward of 4·B rows against one of B rows.
    """
    k, n_modalities = 4, len(model.modalities)
    masks = coalition_masks(n_modalities, device)[1 : k + 1]
    repeated = {m: x.repeat(k, *([1] * (x.ndim - 1))) for m, x in inputs.items()}
    row_mask = masks.repeat_interleave(args.batch, dim=0)
    with torch.no_grad():
        t = time_interleaved(
            {"B": lambda: model(inputs, masks[0]), "kB": lambda: model(repeated, row_mask)},
            max(5, args.rounds),
            device,
        )
    scaling = best(t["kB"]) / best(t["B"])
    bound = 64 / (63 * scaling / k)  # 64 passes of B rows against 63·B rows at this scaling
    print(
        f"   input masking runs the whole model on every coalition's rows: 63·B + 1 rows in\n"
        f"   batches against 64·B in separate passes. Here one forward of {k}·B rows costs "
        f"{scaling:.2f}x\n"
        f"   one of B rows ({k}.00x = linear in rows), so batching can only save per-call "
        f"overhead:\n   at most ~{bound:.2f}x."
    )
    if device.type == "cpu":
        print(
            "   On the CPU a pass of B rows already keeps the core busy, so >= 3x is out of reach\n"
            "   for input masking (one pass of all 16k rows is slower still: its tensors leave\n"
            "   the caches and fault fresh pages). Feature masking meets the goal: each encoder\n"
            "   runs once on the batch and once on the baseline, only the head per coalition;\n"
            "   masking='auto' and every training step use it for models with encode/fuse, with\n"
            "   the same numbers (checked above)."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--width", type=int, default=256, help="hidden and feature width")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 5
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    step_costs(args, device)
    coalition_cost(args, device)


if __name__ == "__main__":
    main()
