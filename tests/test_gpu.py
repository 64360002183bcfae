"""On a CUDA device: a run equals the CPU run, bf16 autocast steps, fp16 steps with their loss
scaling (every method), and DDP over NCCL on one GPU.

Marked ``gpu`` and skipped where CUDA is absent; ``benchmarks/gpu_check.sh`` runs them on a GPU
machine together with the CUDA benchmarks.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.distributed as dist

from msam_core.data.base import ModalitySpec
from msam_core.distributed import GradWeight, weighted_grad_hook
from msam_core.methods import method_names
from msam_core.models import build_model
from msam_core.rundir import load_checkpoint
from msam_core.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TINY = {
    "epochs": 2,
    "batch_size": 32,
    "dataset_options": {"n_train": 128, "n_val": 64, "n_test": 64},
    "model_options": {"dropout": 0.0},
}


def _iterations(run):
    return [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]


def test_a_cuda_run_is_the_cpu_run_and_loads_on_the_cpu(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 matmuls, as on the CPU
    torch.backends.cudnn.allow_tf32 = False
    cpu = train({**TINY, "device": "cpu"}, out=tmp_path / "cpu", quiet=True)
    gpu = train({**TINY, "device": "cuda"}, out=tmp_path / "cuda", quiet=True)
    for a, b in zip(_iterations(cpu), _iterations(gpu), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert b["dominant"] == a["dominant"]
    weights = load_checkpoint(gpu / "checkpoints" / "last.pt")["model"]  # onto the CPU
    reference = load_checkpoint(cpu / "checkpoints" / "last.pt")["model"]
    for key, value in reference.items():
        assert weights[key].device.type == "cpu"
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-3)


def test_bf16_autocast_on_cuda_tracks_fp32(tmp_path):
    full = _iterations(train({**TINY, "device": "cuda"}, out=tmp_path / "fp32", quiet=True))
    half = _iterations(
        train({**TINY, "device": "cuda", "precision": "bf16"}, out=tmp_path / "bf16", quiet=True)
    )
    for a, b in zip(full, half, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02)
        for m in ("audio", "visual"):
            assert b[f"phi/{m}"] == pytest.approx(a[f"phi/{m}"], abs=0.1)


@pytest.mark.parametrize("method", method_names())
def test_fp16_with_loss_scaling_on_cuda_tracks_fp32(tmp_path, method):
    cuda = {**TINY, "device": "cuda", "method": method}
    full = _iterations(train(cuda, out=tmp_path / "fp32", quiet=True))
    run = train({**cuda, "precision": "fp16"}, out=tmp_path / "fp16", quiet=True)
    half = _iterations(run)
    assert all(r["loss_scale"] >= 1 for r in half)
    assert sum(bool(r.get("skipped")) for r in half) <= 3  # a few overflows at first, then none
    for a, b in zip(full, half, strict=True):  # the same θ up to the first skipped step
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02)
        if "sharpness" in a:
            assert b["sharpness"] == pytest.approx(a["sharpness"], rel=0.1, abs=5e-3)
        if b.get("skipped"):
            break
    assert all(math.isfinite(r["loss"]) for r in half)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # weights-only, onto the CPU
    backoff = 0.5 if half[-1].get("skipped") else 1.0
    assert ckpt["scaler"]["scale"] == half[-1]["loss_scale"] * backoff
    resumed = train(None, out=run, resume=True, quiet=True, epochs=3)
    assert len(_iterations(resumed)) == len(half) * 3 // 2


def test_ddp_over_nccl_on_one_gpu_takes_the_plain_gradient(tmp_path):
    specs = [ModalitySpec("audio", "vector", (6,)), ModalitySpec("visual", "vector", (5,))]
    torch.manual_seed(0)
    model = build_model(specs, 3, fusion="concat", feature_dim=8).cuda()
    plain = copy.deepcopy(model)
    inputs = {
        "audio": torch.randn(16, 6, device="cuda"),
        "visual": torch.randn(16, 5, device="cuda"),
    }
    targets = torch.randint(3, (16,), device="cuda")
    init = f"file://{tmp_path / 'nccl-init'}"
    dist.init_process_group("nccl", init_method=init, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        ddp.register_comm_hook(GradWeight(), weighted_grad_hook)
        torch.nn.functional.cross_entropy(ddp(inputs), targets).backward()
        torch.nn.functional.cross_entropy(plain(inputs), targets).backward()
        for p, q in zip(model.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)
        del ddp
    finally:
        dist.destroy_process_group()
