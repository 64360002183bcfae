"""M-SAM under ``torch.distributed`` (DDP, gloo on the CPU): two ranks, each with half the batch,
must take the step one process takes on the whole batch.

DDP averages both SAM passes' gradients over the ranks and the step averages the coalition
values (weighted by batch size), so every rank sees the full batch's gradient and picks the
full batch's dominant modality.  With equal halves and no batch norm or dropout, the two-rank
run is the one-process run up to float summation order.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from msam_core.data.base import ModalitySpec
from msam_core.distributed import has_changing_buffers
from msam_core.models import build_model
from msam_core.optim import MSAM
from msam_core.step import msam_step

WORLD = 2
BATCH = 16  # 8 rows per rank
STEPS = 4
CLASSES = 3

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend",
)


def _setting() -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    """The same model and batch in every process: late concat fusion, a strong and a weak input."""
    specs = [ModalitySpec("audio", "vector", (6,)), ModalitySpec("visual", "vector", (5,))]
    torch.manual_seed(0)
    model = build_model(specs, CLASSES, fusion="concat", feature_dim=8)
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(CLASSES, (BATCH,), generator=generator)
    signal = torch.nn.functional.one_hot(targets, CLASSES).float()
    inputs = {
        "audio": torch.randn(BATCH, 6, generator=generator),
        "visual": torch.randn(BATCH, 5, generator=generator),
    }
    inputs["audio"][:, :CLASSES] += 2.0 * signal
    inputs["visual"][:, :CLASSES] += 0.5 * signal
    return model, inputs, targets


def _train(model, inputs, targets, perturb) -> dict[str, object]:
    optimizer = MSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    records = []
    for _ in range(STEPS):
        result = msam_step(model, optimizer, inputs, targets, perturb=perturb)
        records.append(
            (result.dominant, [float(p) for p in result.shapley.phi], result.dominant_weight)
        )
    core = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return {"records": records, "params": [p.detach().clone() for p in core.parameters()]}


def _in_group(rank: int, init_file: str, work) -> None:
    """Run ``work(rank)`` as one rank of a gloo group, then take the group down cleanly.

    ``work``'s locals (the DDP wrapper, its buckets) are gone before the group is destroyed,
    and every rank has finished its collectives (barrier): gloo threads still holding
    tensors at interpreter exit abort the process.
    """
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        work(rank)
        dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()


def _train_half_batch(rank: int, out_dir: str, perturb: str) -> None:
    model, inputs, targets = _setting()
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    local = {m: x[rows] for m, x in inputs.items()}
    torch.save(_train(ddp, local, targets[rows], perturb), Path(out_dir) / f"rank{rank}.pt")


def _rank_main(rank: int, init_file: str, out_dir: str, perturb: str) -> None:
    _in_group(rank, init_file, lambda r: _train_half_batch(r, out_dir, perturb))


@pytest.mark.slow
@pytest.mark.parametrize("perturb", ["dominant", "all"])  # the targeted default and the literal
def test_two_ranks_take_the_one_process_full_batch_step(tmp_path, perturb):
    mp.spawn(
        _rank_main,
        args=(str(tmp_path / "init"), str(tmp_path), perturb),
        nprocs=WORLD,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    model, inputs, targets = _setting()
    single = _train(model, inputs, targets, perturb)

    # every rank agrees with the others exactly: same dominant modality, φ and parameters
    assert ranks[0]["records"] == ranks[1]["records"]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)
    # and with one process on the whole batch
    for (dom, phi, weight), (dom1, phi1, weight1) in zip(
        ranks[0]["records"], single["records"], strict=True
    ):
        assert dom == dom1
        assert phi == pytest.approx(phi1, abs=1e-12)
        assert weight == pytest.approx(weight1, abs=1e-12)
    for a, b in zip(ranks[0]["params"], single["params"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    moved = any(
        not torch.equal(a, b)
        for a, b in zip(single["params"], _setting()[0].parameters(), strict=True)
    )
    assert moved, "the steps changed nothing: the comparison would be empty"


def _try_attributed(rank: int, out_dir: str) -> None:
    from msam_core.config import TrainConfig
    from msam_core.methods import build_method

    model, inputs, targets = _setting()
    config = TrainConfig(method="msam", method_options={"decomposition": "attributed"})
    method = build_method("msam", model, config)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    try:
        method.step(ddp, inputs, targets)
        message = "stepped"
    except ValueError as err:
        message = str(err)
    (Path(out_dir) / f"rank{rank}.txt").write_text(message, encoding="utf-8")


def _attributed_rank(rank: int, init_file: str, out_dir: str) -> None:
    _in_group(rank, init_file, lambda r: _try_attributed(r, out_dir))


@pytest.mark.slow
def test_attributed_decomposition_is_refused_across_ranks(tmp_path):
    # its gradients bypass DDP's all-reduce: the replicas would drift apart silently
    mp.spawn(_attributed_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        message = (tmp_path / f"rank{rank}.txt").read_text(encoding="utf-8")
        assert "decomposition=attributed" in message and "torch.distributed" in message


def test_only_changing_buffers_are_broadcast_before_each_forward():
    model, _, _ = _setting()
    assert not has_changing_buffers(model)  # the baselines alone: fitted once, never moved
    model.add_module("norm", torch.nn.BatchNorm1d(3))
    assert has_changing_buffers(model)
