"""What does M-SAM cost over SAM, and what does the batched coalition pass save?

1. Step cost, all on the same model and batch, interleaved round by round (the order rotated
   each round), best and median of the rounds, as CPU time of this process (the least
   disturbed measure on a shared machine; at 1 thread it is the step's time) and wall time:
     plain   the base optimizer (one forward-backward), no Shapley record
     sam     msam's SAM (two forward-backwards), no Shapley record
     ref     a reference-style two-phase SAM written out as users do (first_step /
             second_step around two backward calls, a closure-free loop): the user's
             alternative to msam's SAM
     msam    M-SAM: SAM + the coalition values of the batch + Shapley + weights + the
             targeted ascent and the weighted descent (its second pass reruns only the
             dominant modality's encoder on a late-fusion model)
   Settings: the issue's 101,642-parameter late-fusion MLP (modalities of 300 and 353 values,
   encoders d -> 128 -> 64, concat head, 10 classes, batch 256); the project's default model
   (the default synthetic dataset's two 32-d modalities, batch 64); M = 4 of the issue's
   encoders; early fusion at M = 2 and 4 (coalition values by first-layer masking, and also
   on a seeded subset of 64 of the 256 rows, ``shapley_rows``).  Goals (issue 14): msam/sam
   <= 1.05 late M = 2, <= 1.15 late M = 4, <= 1.25 early M = 2, <= 1.6 early M = 4.  Ratios:
   of the best times, then the median of the per-round ratios (msam and sam ran back to back
   in each round).
2. Coalition values for M = 6 (64 coalitions) on a late-fusion model: 64 separate forward
   passes (one per coalition) vs one batched pass (input masking, and the head-only feature
   masking).  Goal: batched >= 3x faster.

3. ``--profile-pass``: where M-SAM's extra time over SAM goes on the late-fusion settings:
   an M-SAM step given its coalition pass's result (everything else as in a step, the loss
   read included) against SAM, and the pass alone, with its pieces (encoding the baselines,
   the head over every coalition's rows).

    OMP_NUM_THREADS=1 python benchmarks/step_cost.py [--device cuda] [--quick]
    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --only late --skip-coalitions --profile-pass
    python benchmarks/step_cost.py --threads 0      # the default thread count
    python benchmarks/step_cost.py --only early --skip-coalitions   # early fusion's rows only
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

import msam_core.step as step_module
from msam_core.coalitions import (
    _own_baseline_inputs,
    all_coalitions,
    batch_values,
    coalition_values,
    eval_mode,
    values_from_logits,
)
from msam_core.data.base import ModalitySpec
from msam_core.masking import coalition_masks
from msam_core.models import build_model
from msam_core.optim import MSAM, SAM
from msam_core.rows import row_subset
from msam_core.step import msam_step, plain_step, sam_step

CLASSES = 10


def setting(dims: list[int], fusion: str, batch: int, device, classes: int = CLASSES):
    """A model over vector modalities of ``dims`` values (MLP encoders d -> 128 -> 64), a batch
    with a class signal of growing strength per modality (so the coalitions differ)."""
    specs = [ModalitySpec(f"m{i}", "vector", (d,)) for i, d in enumerate(dims)]
    torch.manual_seed(0)
    model = build_model(specs, classes, fusion=fusion).to(device)
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(classes, (batch,), generator=generator)
    inputs = {s.name: torch.randn(batch, s.shape[0], generator=generator) for s in specs}
    for i, s in enumerate(specs):
        inputs[s.name][:, :classes] += (i + 1) * torch.nn.functional.one_hot(targets, classes)
    return model, {m: x.to(device) for m, x in inputs.items()}, targets.to(device)


class ReferenceSAM(torch.optim.Optimizer):
    """SAM as the reference implementation's users run it: ``first_step`` moves each parameter
    by ``ρ·g/‖g‖`` (θ kept in the state), ``second_step`` restores θ and steps the base
    optimizer on the perturbed gradient."""

    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        norm = torch.norm(
            torch.stack(
                [
                    p.grad.norm(2)
                    for g in self.param_groups
                    for p in g["params"]
                    if p.grad is not None
                ]
            )
        )
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * scale.to(p))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


def reference_sam_step(model, optimizer: ReferenceSAM, inputs, targets) -> float:
    """The two-phase loop of the reference SAM's README."""
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    optimizer.first_step(zero_grad=True)
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    optimizer.second_step(zero_grad=True)
    return float(loss.detach())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: dict[str, Callable[[], object]], rounds: int, device, clock=time.process_time
) -> dict[str, list[float]]:
    """Seconds per call of each step in every round, the steps interleaved round by round.

    The order rotates each round, so no step always follows the same one (whose leftovers in
    cache or allocator would otherwise favour or hurt it); every step sees the same drift.
    ``clock``: ``time.process_time`` (CPU time of this process: at one thread the step's own
    time, least disturbed by other processes) or ``time.perf_counter`` (wall).
    """
    for step in steps.values():  # warm-up: allocator, kernels, caches
        step()
        step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = clock()
            steps[name]()
            sync(device)
            times[name].append(clock() - start)
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


#: (label, fusion, modality dims, batch, goal of msam/sam)
SETTINGS = (
    ("late, issue MLP", "concat", [300, 353], 256, 1.05),
    ("late, default", "concat", [32, 32], 64, 1.05),
    ("late, M = 4", "concat", [300, 353, 300, 353], 256, 1.15),
    ("early, M = 2", "early", [300, 353], 256, 1.25),
    ("early, M = 4", "early", [300, 353, 300, 353], 256, 1.6),
)


def time_steps(fusion: str, dims, batch: int, args, device, clock) -> dict[str, list[float]]:
    """Seconds per plain / SAM / reference SAM / M-SAM step in each round, each on its own
    copy of one model."""
    model, inputs, targets = setting(dims, fusion, batch, device)
    plain_model, sam_model, ref_model, msam_model = (copy.deepcopy(model) for _ in range(4))
    kw = {"lr": 0.01, "momentum": 0.9}
    plain_opt = torch.optim.SGD(plain_model.parameters(), **kw)
    sam_opt = SAM(sam_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    ref_opt = ReferenceSAM(ref_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    msam_opt = MSAM(msam_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    steps = {
        "plain": lambda: plain_step(plain_model, plain_opt, inputs, targets, value=None),
        "sam": lambda: sam_step(sam_model, sam_opt, inputs, targets, value=None),
        "ref": lambda: reference_sam_step(ref_model, ref_opt, inputs, targets),
        "msam": lambda: msam_step(msam_model, msam_opt, inputs, targets),
    }
    if fusion == "early" and args.shapley_rows:  # M-SAM with coalition values on a subset
        rows_model = copy.deepcopy(model)
        rows_opt = MSAM(rows_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
        count = iter(range(10**9))  # the step index seeds each step's rows, as in a run

        def msam_rows() -> object:
            rows = row_subset(batch, args.shapley_rows, batch, 0, next(count), device)
            return msam_step(rows_model, rows_opt, inputs, targets, rows=rows)

        steps["rows"] = msam_rows
    return time_interleaved(steps, args.rounds, device, clock)


def step_costs(args, device) -> None:
    clocks = (("cpu", time.process_time), ("wall", time.perf_counter))
    if torch.get_num_threads() > 1:  # CPU time sums the threads: wall only
        clocks = clocks[1:]
    print(
        f"1. step cost ({args.rounds} interleaved rounds; ms as best / median; ratios of the "
        "best times / median of per-round ratios)"
    )
    for label, fusion, dims, batch, goal in SETTINGS:
        if args.only and not label.startswith(args.only):
            continue
        for clock_name, clock in clocks:
            t = time_steps(fusion, dims, batch, args, device, clock)
            of_best, of_rounds = ratios(t["msam"], t["sam"])
            ref_best, ref_rounds = ratios(t["msam"], t["ref"])
            cells = "  ".join(f"{k} {shown(t[k])}" for k in ("plain", "sam", "ref", "msam"))
            print(
                f"   {label:<16} {clock_name:<4} {cells}\n"
                f"{'':>22}msam/sam {of_best:.3f} / {of_rounds:.3f} (goal <= {goal})   "
                f"msam/ref {ref_best:.3f} / {ref_rounds:.3f}   sam/ref "
                f"{ratios(t['sam'], t['ref'])[0]:.3f}"
            )
            if "rows" in t:
                rows_best, rows_rounds = ratios(t["rows"], t["sam"])
                print(
                    f"{'':>22}shapley_rows {args.shapley_rows}: msam {shown(t['rows'])}  "
                    f"msam/sam {rows_best:.3f} / {rows_rounds:.3f} (goal <= {goal})"
                )


def given_pass(model, optimizer, inputs, targets) -> Callable[[], object]:
    """An M-SAM step whose coalition pass returns a result computed once beforehand: the
    step's cost without the pass (its loss is still read, as the pass would)."""
    result = {}
    real = step_module.batch_shapley

    def cached(model, inputs, targets, first, *args, **kwargs):
        if "shapley" not in result:
            result["shapley"] = real(model, inputs, targets, first, *args, **kwargs)
        first.loss_value = float(first.loss.detach())
        return result["shapley"]

    def run() -> object:
        step_module.batch_shapley = cached
        try:
            return msam_step(model, optimizer, inputs, targets)
        finally:
            step_module.batch_shapley = real

    return run


def profile_pass(args, device) -> None:
    """Part 3: M-SAM given its pass vs SAM, and the pass and its pieces alone (CPU time)."""
    print(f"\n3. where M-SAM's time over SAM goes ({args.rounds} rounds; ms as best / median)")
    for label, fusion, dims, batch, _ in SETTINGS:
        if fusion == "concat" and (not args.only or label.startswith(args.only)):
            print(f"   {label}")
            profile_setting(dims, batch, args, device)


def profile_setting(dims: list[int], batch: int, args, device) -> None:
    """Part 3 on one late-fusion setting."""
    model, inputs, targets = setting(dims, "concat", batch, device)
    sam_model, msam_model, given_model = (copy.deepcopy(model) for _ in range(3))
    kw = {"lr": 0.01, "momentum": 0.9}
    sam_opt = SAM(sam_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    msam_opt = MSAM(msam_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    given_opt = MSAM(given_model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    with torch.no_grad():
        features = model.encode(inputs)
        logits = model.fuse(features, None)
        base_inputs = _own_baseline_inputs(model, inputs)
        # the head's rows in the pass: every coalition but the empty and the full one, then one
        # row for the empty one (the first sample stands in for the baselines: same cost)
        coalitions = all_coalitions(len(dims))[1:-1]
        stacked = {
            m: torch.cat(
                [
                    features[m] if c[i] else features[m][:1].expand_as(features[m])
                    for c in coalitions
                ]
                + [features[m][:1]]
            )
            for i, m in enumerate(model.modalities)
        }

    def in_eval(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad(), eval_mode(model):
                return fn()

        return run

    rows = stacked[model.modalities[0]].shape[0]
    steps = {
        "sam": lambda: sam_step(sam_model, sam_opt, inputs, targets, value=None),
        "msam": lambda: msam_step(msam_model, msam_opt, inputs, targets),
        "msam, pass given": given_pass(given_model, given_opt, inputs, targets),
        "the pass alone": lambda: batch_values(
            model, inputs, targets, logits=logits, features=features
        ),
        "  baselines' encoding": in_eval(lambda: model.encode(base_inputs)),
    }
    if len(dims) == 2:  # from 3 modalities on the pass sums the head's per-modality terms
        steps[f"  head on {rows} rows"] = in_eval(lambda: model.fuse(stacked, None))
    t = time_interleaved(steps, args.rounds, device)
    for name, ts in t.items():
        extra = ""
        if name.startswith("msam"):
            of_best, of_rounds = ratios(ts, t["sam"])
            extra = f"  /sam {of_best:.3f} / {of_rounds:.3f}"
        print(f"     {name:<24}{shown(ts)}{extra}")


def coalition_cost(args, device) -> None:
    n_modalities = 6
    model, inputs, targets = setting([args.dim] * n_modalities, "concat", args.batch, device)
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
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--only", default="", help="settings whose label starts with this")
    parser.add_argument("--skip-coalitions", action="store_true", help="step costs only")
    parser.add_argument(
        "--shapley-rows",
        type=int,
        default=64,
        help="early fusion: also time M-SAM with coalition values on this many rows (0: off)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (0: torch's default count)"
    )
    parser.add_argument(
        "--profile-pass",
        action="store_true",
        help="also time M-SAM given its coalition pass, and the pass's pieces (late fusion)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds = 5
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    step_costs(args, device)
    if args.profile_pass:
        profile_pass(args, device)
    if not args.skip_coalitions:
        coalition_cost(args, device)


if __name__ == "__main__":
    main()
