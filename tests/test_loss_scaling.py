"""fp16's loss scaling at the step level, on the CPU (fp32 math, GradScaler("cpu")): with a
constant scale every method's step is its unscaled step; a non-finite gradient in either SAM
pass skips the step (θ unchanged, no optimizer state, the scale halved); the scaler's state
goes through a checkpoint and a resumed run continues bit for bit."""

from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msam_core.config import TrainConfig
from msam_core.data.base import ModalitySpec, TensorSplit
from msam_core.methods import Method, build_method, method_names
from msam_core.methods import registry as method_registry
from msam_core.models import build_model
from msam_core.optim import SAM
from msam_core.optim.scaling import LossScaling, loss_scaling
from msam_core.rundir import load_checkpoint, save_checkpoint
from msam_core.step import sam_step

train_module = importlib.import_module("msam_core.train")

SPECS = [ModalitySpec("m0", "vector", (3,)), ModalitySpec("m1", "vector", (4,))]


def config(method: str, **changes) -> TrainConfig:
    base = {"method": method, "lr": 0.1, "momentum": 0.9, "device": "cpu"}
    return TrainConfig.from_dict({**base, **changes})


def batch(size: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(3, (size,), generator=g)
    inputs = {s.name: torch.randn(size, *s.shape, generator=g) for s in SPECS}
    for i, s in enumerate(SPECS):  # the first modality leads
        inputs[s.name][:, :3] += (2.0 - i) * F.one_hot(targets, 3).float()
    return inputs, targets


def built(method: str, seed: int = 0, **changes):
    """A model and its method, ready to step (G-Blending's hold-out, PMR's prototypes)."""
    cfg = config(method, **changes)
    fusion = "shared" if method == "mla" else "concat"
    torch.manual_seed(seed)
    model = build_model(SPECS, 3, fusion=fusion, feature_dim=4)
    m = build_method(method, model, cfg)
    m.training_split(TensorSplit(*batch(60, seed=5)))
    m.set_epoch(1)
    return model, m


def scaling(scale: float = 2.0**10, growth_interval: int = 10**6) -> LossScaling:
    return LossScaling(
        torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=growth_interval)
    )


def state(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def steps(method, model, scaler: LossScaling | None, n: int = 3) -> list[dict]:
    records = []
    for i in range(n):
        torch.manual_seed(100 + i)  # OGM-GE's noise: the same draws with and without scaling
        with loss_scaling(scaler):
            records.append(method.step(model, *batch(seed=i)))
    return records


@pytest.mark.parametrize("name", method_names())
def test_a_constant_scale_gives_the_unscaled_step(name):
    model, method = built(name)
    twin, twin_method = built(name)
    scaler = scaling()
    scaled = steps(method, model, scaler)
    plain = steps(twin_method, twin, None)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    for a, b in zip(scaled, plain, strict=True):
        assert a.pop("loss_scale") == 2.0**10
        assert "loss_scale" not in b and "skipped" not in a
        a.pop("time/step_s"), b.pop("time/step_s")
        assert a.keys() == b.keys()
        for key, value in b.items():
            assert a[key] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-6))
    assert (scaler.steps, scaler.skipped) == (3, 0)


def _overflow_on(call: int):
    """A gradient hook that makes the ``call``-th gradient of its tensor infinite."""
    seen = []

    def hook(grad: torch.Tensor) -> torch.Tensor:
        seen.append(1)
        return grad * float("inf") if len(seen) == call else grad

    return hook


@pytest.mark.parametrize(
    ("name", "call"),
    [("sam", 1), ("sam", 2), ("msam", 1), ("msam", 2), ("ogm_ge", 1), ("mmpareto", 1)],
)
def test_a_non_finite_gradient_skips_the_step_and_halves_the_scale(name, call):
    model, method = built(name)
    before = state(model)
    # the first modality's encoder: msam's ascent moves it (it leads), so pass 2 follows ε
    weight = next(p for n, p in model.named_parameters() if n.startswith("encoders.m0"))
    handle = weight.register_hook(_overflow_on(call))
    scaler = scaling(growth_interval=2000)
    (record,) = steps(method, model, scaler, n=1)
    handle.remove()
    assert record["skipped"] is True and record["loss_scale"] == 2.0**10
    for p, theta in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, theta)  # unchanged (the ascent undone when pass 2 overflowed)
        assert p.grad is None
    optimizer = getattr(method.optimizer, "base_optimizer", method.optimizer)
    assert not optimizer.state  # the base optimizer never stepped: no momentum yet
    assert not getattr(method.optimizer, "perturbed", False)
    assert scaler.scaler.get_scale() == 2.0**9 and (scaler.steps, scaler.skipped) == (1, 1)
    # the next step is the unscaled step from the same θ
    twin, twin_method = built(name)
    torch.manual_seed(7)
    with loss_scaling(scaler):
        method.step(model, *batch(seed=3))
    torch.manual_seed(7)
    twin_method.step(twin, *batch(seed=3))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_the_scale_grows_after_growth_interval_clean_steps():
    model, method = built("sam")
    scaler = scaling(scale=4.0, growth_interval=2)
    records = steps(method, model, scaler, n=5)
    assert [r["loss_scale"] for r in records] == [4.0, 4.0, 8.0, 8.0, 16.0]


def test_the_scaler_state_goes_through_a_weights_only_checkpoint(tmp_path):
    model, method = built("msam")
    scaler = scaling(scale=4.0, growth_interval=3)
    steps(method, model, scaler, n=4)  # grown once, one clean step towards the next growth
    save_checkpoint({"scaler": scaler.state_dict()}, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")["scaler"]  # torch.load(weights_only=True)
    assert loaded == {**scaler.state_dict()} and loaded["_growth_tracker"] == 1
    again = scaling(scale=1.0, growth_interval=99)
    again.load_state_dict(loaded)
    assert again.state_dict() == scaler.state_dict()
    twin = copy.deepcopy(scaler)
    for s in (again, twin):
        other, other_method = built("sam")
        steps(other_method, other, s, n=2)
    assert again.state_dict() == twin.state_dict() and again.scaler.get_scale() == 16.0


def test_ascent_without_scaled_gradients_is_plain_sam():
    """Outside a loss_scaling block the steps are untouched (no scale recorded)."""
    model, _ = built("sam")
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    record = sam_step(model, optimizer, *batch()).to_record()
    assert "loss_scale" not in record and "skipped" not in record


TINY = {
    "device": "cpu",
    "epochs": 2,
    "batch_size": 32,
    "dataset_options": {"n_train": 128, "n_val": 32, "n_test": 32},
    "model_options": {"dropout": 0.0},
    "method": "msam",
}


def _iterations(run):
    return [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]


def test_an_fp16_run_resumes_bit_for_bit_with_its_scaler(tmp_path, monkeypatch):
    """The loop's fp16 path on the CPU (the CPU refusal is lifted here only: autocast and
    GradScaler work on the CPU, just slowly), with a scale that grows every 3 steps so the
    growth count must cross the resume."""
    monkeypatch.setattr(train_module, "check_precision", lambda precision, device: None)
    monkeypatch.setattr(
        train_module,
        "build_scaling",
        lambda precision, device: scaling(scale=2.0**8, growth_interval=3),
    )
    fp16 = {**TINY, "precision": "fp16"}
    whole = train_module.train(fp16, out=tmp_path / "whole", quiet=True)
    half = train_module.train({**fp16, "epochs": 1}, out=tmp_path / "half", quiet=True)
    stored = load_checkpoint(half / "checkpoints" / "last.pt")["scaler"]
    assert stored["scale"] == 2.0**9 and stored["_growth_tracker"] == 1  # 4 steps, grown once
    resumed = train_module.train(None, out=tmp_path / "half", resume=True, quiet=True, epochs=2)
    a, b = _iterations(whole), _iterations(resumed)
    for record in a + b:
        record.pop("time/step_s")
    assert a == b
    assert [r["loss_scale"] for r in a] == [256.0] * 3 + [512.0] * 3 + [1024.0] * 2
    last = [load_checkpoint(run / "checkpoints" / "last.pt") for run in (whole, resumed)]
    assert last[0]["scaler"] == last[1]["scaler"]
    for key, value in last[0]["model"].items():
        assert torch.equal(last[1]["model"][key], value)
    # fp32 tracks it: the autocast fp16 losses within 1 %
    full = _iterations(train_module.train(TINY, out=tmp_path / "fp32", quiet=True))
    for x, y in zip(full, a, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=0.01)


class _OwnBackward(Method):
    """A plug-in whose step takes its gradient outside the step skeleton."""

    name = "own_backward"

    def step(self, model, inputs, targets):
        self.optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss)}


def test_a_method_outside_the_step_skeleton_is_refused_under_fp16(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "check_precision", lambda precision, device: None)
    monkeypatch.setitem(method_registry._METHODS, "own_backward", _OwnBackward)
    fp16 = {**TINY, "precision": "fp16", "method": "own_backward", "epochs": 1}
    with pytest.raises(RuntimeError, match=r"outside msam_core\.step\.run_step.*precision bf16"):
        train_module.train(fp16, out=tmp_path / "run", quiet=True)


# -- two gloo ranks: every rank skips, or none ------------------------------------------------

WORLD = 2


def _ranked(name: str, rank: int | None) -> dict:
    """Three steps of ``name`` on rank ``rank``'s half of each batch (None: one process, the
    whole batch, unscaled), the first overflowing on rank 0 only (the ranks)."""
    model, method = built(name)
    wrapped, scaler = model, None
    if rank is not None:
        if name == "msam":  # its passes all-reduce through DDP; MMPareto averages itself
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
        scaler = scaling(growth_interval=2000)
    theta, skipped = state(model), []
    for i in range(3):
        inputs, targets = batch(size=16, seed=i)
        if rank is not None:
            rows = slice(rank * 8, (rank + 1) * 8)
            inputs, targets = {m: x[rows] for m, x in inputs.items()}, targets[rows]
        elif i == 0:
            continue  # the ranks skip their first step
        hook = None
        if rank == 0 and i == 0:
            weight = next(p for n, p in model.named_parameters() if n.startswith("encoders.m0"))
            hook = weight.register_hook(_overflow_on(1))
        with loss_scaling(scaler):
            record = method.step(wrapped, inputs, targets)
        if hook is not None:
            hook.remove()
        skipped.append(bool(record.get("skipped")))
        if i == 0:
            assert all(torch.equal(p, t) for p, t in zip(model.parameters(), theta, strict=True))
    scale = None if scaler is None else scaler.scaler.get_scale()
    return {"skipped": skipped, "scale": scale, "params": state(model)}


def _rank_work(rank: int, out_dir: str) -> None:
    results = {name: _ranked(name, rank) for name in ("msam", "mmpareto")}
    torch.save(results, f"{out_dir}/rank{rank}.pt")


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    from test_distributed import _in_group

    _in_group(rank, init_file, lambda r: _rank_work(r, out_dir))


@pytest.mark.slow
@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend",
)
def test_an_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    init, out = str(tmp_path / "init"), str(tmp_path)
    torch.multiprocessing.spawn(_rank_main, args=(init, out), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name in ("msam", "mmpareto"):
        single = _ranked(name, None)
        for result in ranks:
            assert result[name]["skipped"] == [True, False, False], name
            assert result[name]["scale"] == 2.0**9, name
            for a, b in zip(result[name]["params"], single["params"], strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
