"""MMPareto, MLA, PMR and G-Blending under ``torch.distributed`` (DDP, gloo on the CPU): two
ranks with half the batch each take the step one process takes on the whole batch.

These methods take their gradients with ``autograd.grad`` and average them over the ranks
themselves (DDP's hooks never run), so this checks that averaging, the ranks' agreement on
the scores and coefficients, and that the method-owned heads stay in step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed import _in_group

from msam_core.config import TrainConfig
from msam_core.data.base import ModalitySpec, TensorSplit
from msam_core.methods import build_method
from msam_core.models import build_model

WORLD = 2
BATCH = 16
STEPS = 3
METHODS = ["mmpareto", "mla", "pmr", "gblending"]

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend",
)


def _data(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(3, (n,), generator=generator)
    signal = torch.nn.functional.one_hot(targets, 3).float()
    inputs = {
        "audio": torch.randn(n, 6, generator=generator),
        "visual": torch.randn(n, 5, generator=generator),
    }
    inputs["audio"][:, :3] += 2.0 * signal
    inputs["visual"][:, :3] += 0.5 * signal
    return inputs, targets


def _setting(method: str):
    specs = [ModalitySpec("audio", "vector", (6,)), ModalitySpec("visual", "vector", (5,))]
    torch.manual_seed(0)
    fusion = "shared" if method == "mla" else "concat"
    model = build_model(specs, 3, fusion=fusion, feature_dim=8)
    cfg = TrainConfig.from_dict({"method": method, "lr": 0.1, "momentum": 0.9, "device": "cpu"})
    built = build_method(method, model, cfg)
    built.training_split(TensorSplit(*_data(40, seed=3)))
    built.set_epoch(1)
    return model, built, *_data(BATCH, seed=1)


def _train(method: str, rank: int | None) -> dict:
    model, built, inputs, targets = _setting(method)
    wrapped = model
    if rank is not None:
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        inputs = {m: x[rows] for m, x in inputs.items()}
        targets = targets[rows]
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    coefs = []
    for _ in range(STEPS):
        record = built.step(wrapped, inputs, targets)
        coefs.append({k: v for k, v in record.items() if k.startswith(("coef", "cos", "score"))})
    heads = getattr(built, "heads", None)
    params = [*model.parameters(), *(heads.parameters() if heads is not None else [])]
    return {"coefs": coefs, "params": [p.detach().clone() for p in params]}


def _work(rank: int, out_dir: str) -> None:
    results = {method: _train(method, rank) for method in METHODS}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    _in_group(rank, init_file, lambda r: _work(r, out_dir))


@pytest.mark.slow
def test_two_ranks_take_the_one_process_full_batch_step(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for method in METHODS:
        single = _train(method, None)
        assert ranks[0][method]["coefs"] == ranks[1][method]["coefs"], method
        for a, b in zip(ranks[0][method]["params"], ranks[1][method]["params"], strict=True):
            assert torch.equal(a, b), method
        for got, want in zip(ranks[0][method]["coefs"], single["coefs"], strict=True):
            assert got.keys() == want.keys()
            for key in got:
                assert got[key] == pytest.approx(want[key], abs=1e-5), (method, key)
        for a, b in zip(ranks[0][method]["params"], single["params"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=method)
        moved = any(
            not torch.equal(a, b)
            for a, b in zip(single["params"], _setting(method)[0].parameters(), strict=False)
        )
        assert moved, f"{method}: the steps changed nothing"
