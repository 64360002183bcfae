"""``precision`` (fp32 | bf16 | fp16) and ``compile``: bf16 autocast on the CPU tracks fp32 (SAM's
second pass included), fp16 on the CPU is refused with what to use instead, and records stay
device-independent.  fp16's loss scaling is tested at the step level in test_loss_scaling.py."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msam_core.config import TrainConfig
from msam_core.optim import SAM
from msam_core.rundir import load_checkpoint
from msam_core.train import train

TINY = {
    "device": "cpu",
    "epochs": 1,
    "batch_size": 32,
    "dataset_options": {"n_train": 128, "n_val": 32, "n_test": 32},
    "model_options": {"dropout": 0.0},
}


def _iterations(run):
    return [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]


def test_bf16_autocast_on_cpu_tracks_fp32(tmp_path):
    full = _iterations(train(TINY, out=tmp_path / "fp32", quiet=True))
    half = _iterations(train({**TINY, "precision": "bf16"}, out=tmp_path / "bf16", quiet=True))
    assert len(full) == len(half) == 4
    for a, b in zip(full, half, strict=True):
        # bf16 keeps 8 bits of mantissa: the loss within 2 %, φ (accuracy of 32 samples per
        # coalition) within a few samples
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02)
        for m in ("audio", "visual"):
            assert b[f"phi/{m}"] == pytest.approx(a[f"phi/{m}"], abs=0.1)
    assert full != half  # autocast really ran in bf16
    weights = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "last.pt")["model"]
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    assert all(v.device.type == "cpu" for v in weights.values())


def test_the_perturbed_pass_under_autocast_runs_at_theta_plus_eps(tmp_path):
    """autocast caches half copies of the weights; SAM moves θ in place inside the step, so a
    cached copy made the second pass run at θ again (sharpness exactly 0 under bf16)."""
    full = _iterations(train({**TINY, "method": "sam"}, out=tmp_path / "fp32", quiet=True))
    half = _iterations(
        train({**TINY, "method": "sam", "precision": "bf16"}, out=tmp_path / "bf16", quiet=True)
    )
    for a, b in zip(full, half, strict=True):
        assert b["sharpness"] == pytest.approx(a["sharpness"], rel=0.05)
    # a user's own autocast (cache on): the SAM optimizer drops the cache when θ moves
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(3, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        F.cross_entropy(model(x), y).backward()
        before = F.cross_entropy(model(x), y)
        optimizer.first_step(zero_grad=True)
        after = F.cross_entropy(model(x), y)
        after.backward()
        optimizer.second_step()
    assert float(after) > float(before)


def test_fp16_on_cpu_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"fp16 needs a CUDA device.*--precision bf16"):
        train({**TINY, "precision": "fp16"}, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="precision='fp8' is not valid"):
        TrainConfig(precision="fp8")


def test_configs_written_before_precision_existed_still_load():
    assert TrainConfig.from_dict({"bf16": True}).precision == "bf16"
    assert TrainConfig.from_dict({"bf16": False}).precision == "fp32"


#: the periodic measures (Hessian included) and an end-of-epoch landscape
MEASURED = {"measure_every": 2, "landscape_epochs": [1], "landscape_options": {"steps": 3}}


@pytest.mark.slow  # compiling takes minutes on a small shared CPU
@pytest.mark.parametrize("method", ["msam", "mmpareto"])
def test_compiled_model_trains_the_same_run(tmp_path, method):
    """``compile`` compiles every encoder and the head, and methods that backpropagate through
    one graph twice (M-SAM's kept features, MMPareto's per-loss gradients) still train, with
    Hessian measures (a create_graph backward) and a landscape (run eagerly) on the way."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    plain = train({**TINY, "method": method, **MEASURED}, out=tmp_path / "plain", quiet=True)
    torch._dynamo.reset()  # compile afresh (not from an earlier test's cache), counted
    counters.clear()
    try:
        compiled = train(
            {**TINY, "method": method, "compile": True, **MEASURED},
            out=tmp_path / "compiled",
            quiet=True,
        )
    except Exception as err:  # torch.compile needs a working C++ toolchain for the CPU
        pytest.fail(f"torch.compile failed on this machine: {type(err).__name__}: {err}")
    assert counters["frames"]["ok"] >= 3  # two encoders and the head, at least
    for a, b in zip(_iterations(plain), _iterations(compiled), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["dominant"] == a["dominant"]
        assert ("hessian/top_eig" in b) == ("hessian/top_eig" in a)
    assert any("hessian/top_eig" in record for record in _iterations(compiled))
    assert list((compiled / "landscapes").glob("*.npz"))
