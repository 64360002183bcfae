"""shapley_rows: coalition values on a seeded subset of a batch's rows, with φ's standard error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pandas.testing import assert_frame_equal

from msam_core.coalitions import VALUE_KINDS
from msam_core.config import TrainConfig
from msam_core.data.base import ModalitySpec
from msam_core.masking import coalition_masks
from msam_core.models import build_model
from msam_core.record import load_run
from msam_core.rows import row_subset
from msam_core.rundir import load_checkpoint
from msam_core.shapley import batch_shapley, exact_shapley
from msam_core.step import forward_pass
from msam_core.train import train

DIMS = {"a": 6, "b": 4, "c": 5}


def _setting(fusion: str, batch_size: int = 24, seed: int = 0):
    torch.manual_seed(seed)
    specs = [ModalitySpec(m, "vector", (d,)) for m, d in DIMS.items()]
    model = build_model(specs, 3, fusion=fusion)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = {m: torch.randn(batch_size, d, generator=generator) for m, d in DIMS.items()}
    targets = torch.randint(3, (batch_size,), generator=generator)
    return model, inputs, targets


def _row_values(model, inputs, targets, value):
    """Every row's value of every coalition, ``[2**M, B]`` float64, one forward per coalition."""
    out = []
    with torch.no_grad():
        model.eval()
        for mask in coalition_masks(len(model.modalities)):
            logits = model(inputs, mask).double()
            if value == "accuracy":
                out.append((logits.argmax(1) == targets).double())
            else:
                scores = logits.softmax(1) if value == "prob" else logits.log_softmax(1)
                out.append(scores[torch.arange(len(targets)), targets])
        model.train()
    return torch.stack(out)


def test_row_subset_is_seeded_by_seed_and_step():
    assert row_subset(32, None, 32, 0, 5) is None
    assert row_subset(32, 32, 32, 0, 5) is None  # every row: the full path, exactly
    rows = row_subset(32, 8, 32, seed=3, step=5)
    assert rows.dtype == torch.int64 and rows.shape == (8,)
    assert torch.equal(rows, rows.unique())  # sorted, no repeats
    assert torch.equal(rows, row_subset(32, 8, 32, seed=3, step=5))
    assert not torch.equal(rows, row_subset(32, 8, 32, seed=3, step=6))
    assert not torch.equal(rows, row_subset(32, 8, 32, seed=4, step=5))
    # a rank's half of the global batch, or a short last batch, takes the same fraction
    assert row_subset(16, 8, 32, 0, 0).shape == (4,)
    assert row_subset(5, 8, 32, 0, 0).shape == (2,)


@pytest.mark.parametrize("value", VALUE_KINDS)
@pytest.mark.parametrize("fusion", ["early", "concat"])
def test_every_row_gives_the_full_batch_values_exactly(fusion, value):
    model, inputs, targets = _setting(fusion)
    first = forward_pass(model, inputs, targets)
    full = batch_shapley(model, inputs, targets, first, value)
    every = batch_shapley(model, inputs, targets, first, value, rows=torch.arange(24))
    assert torch.equal(every.values, full.values) and torch.equal(every.phi, full.phi)
    assert full.stderr is None and torch.equal(every.stderr, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("value", VALUE_KINDS)
@pytest.mark.parametrize("fusion", ["early", "concat"])
def test_subset_phi_and_its_standard_error_match_numpy_on_the_rows(fusion, value):
    model, inputs, targets = _setting(fusion, seed=2)
    first = forward_pass(model, inputs, targets)
    rows = row_subset(24, 10, 24, seed=0, step=7)
    result = batch_shapley(model, inputs, targets, first, value, rows=rows)
    per_row = _row_values(model, inputs, targets, value)[:, rows]  # [8, 10]
    row_phi = np.stack([exact_shapley(per_row[:, i]).numpy() for i in range(10)])  # [10, 3]
    n, batch = 10, 24
    se = np.sqrt((1 - n / batch) * row_phi.var(0, ddof=1) / n)
    np.testing.assert_allclose(result.values.numpy(), per_row.mean(1).numpy(), atol=1e-6)
    np.testing.assert_allclose(result.phi.numpy(), row_phi.mean(0), atol=1e-6)
    np.testing.assert_allclose(result.stderr.numpy(), se, atol=1e-6)
    record = result.to_record()
    assert record["phi_stderr/a"] == pytest.approx(se[0], abs=1e-6)


def test_one_row_has_no_standard_error():
    model, inputs, targets = _setting("early")
    result = batch_shapley(model, inputs, targets, None, rows=torch.tensor([3]))
    assert result.stderr.isnan().all()


SMALL = {"n_train": 128, "n_val": 32, "n_test": 32}


def _config(**changes) -> TrainConfig:
    base = {
        "method": "msam",
        "fusion": "early",
        "epochs": 2,
        "dataset_options": SMALL,
        "batch_size": 32,
        "device": "cpu",
        "shapley_rows": 8,
        "probe": False,
    }
    return TrainConfig.from_dict({**base, **changes})


@pytest.mark.parametrize(
    ("rows", "needle"),
    [(0, "between 1 and batch_size"), (33, "between 1 and batch_size"), ("1.5", "as int")],
)
def test_bad_shapley_rows_are_refused_before_anything_is_written(tmp_path, rows, needle):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=needle):
        train(_config(epochs=1).to_dict() | {"shapley_rows": rows}, out=out, quiet=True)
    assert not out.exists()
    with pytest.raises(ValueError, match="whole number"):
        TrainConfig(shapley_rows=2.5)


def _frame(path):
    frame = load_run(path).iterations
    return frame[[c for c in frame.columns if not c.startswith("time/")]]


def test_resume_with_shapley_rows_is_bit_for_bit(tmp_path):
    reference = train(_config(), out=tmp_path / "reference", quiet=True)
    stored = json.loads((reference / "config.json").read_text())
    assert stored["shapley_rows"] == 8
    frame = _frame(reference)
    se_columns = [c for c in frame.columns if c.startswith("phi_stderr/")]
    assert len(se_columns) == len(load_run(reference).modalities)
    se = frame[se_columns].to_numpy()
    assert np.isfinite(se).all() and (se >= 0).all() and (se > 0).any()

    path = train(_config(epochs=1), out=tmp_path / "run", quiet=True)
    train(out=path, resume=True, epochs=2, quiet=True)
    a = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(path / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert_frame_equal(_frame(reference), _frame(path), rtol=0, atol=0)
    # and the subset is really used: every row gives other φ and no phi_stderr
    full = _frame(train(_config(shapley_rows=None), out=tmp_path / "full", quiet=True))
    assert not any(c.startswith("phi_stderr/") for c in full.columns)
    assert not full.filter(like="phi/").equals(frame.filter(like="phi/"))


# --------------------------------------------------------------------------------------------
# two gloo ranks: the same φ and standard error on both, combined as the formula says


def _rank_rows(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model, inputs, targets = _setting("early", batch_size=16, seed=5)
        half = slice(rank * 8, (rank + 1) * 8)
        rows = row_subset(8, 8, 16, seed=0, step=rank)  # 4 of this rank's 8 rows
        local = {m: x[half] for m, x in inputs.items()}
        result = batch_shapley(model, local, targets[half], None, "prob", rows=rows)
        torch.save((result.phi, result.stderr), f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_share_phi_and_combine_standard_errors(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch build has no gloo backend")
    mp.spawn(_rank_rows, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    (phi0, se0), (phi1, se1) = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(phi0, phi1) and torch.equal(se0, se1)
    model, inputs, targets = _setting("early", batch_size=16, seed=5)
    locals_ = []
    for rank in range(2):
        half = slice(rank * 8, (rank + 1) * 8)
        rows = row_subset(8, 8, 16, seed=0, step=rank)
        local = {m: x[half] for m, x in inputs.items()}
        locals_.append(batch_shapley(model, local, targets[half], None, "prob", rows=rows))
    # equal row counts: φ is the mean of the ranks' φ, var = (4² var_0 + 4² var_1) / 8²
    torch.testing.assert_close(phi0, (locals_[0].phi + locals_[1].phi) / 2, atol=1e-12, rtol=0)
    expected = (locals_[0].stderr ** 2 + locals_[1].stderr ** 2).sqrt() / 2
    torch.testing.assert_close(se0, expected, atol=1e-12, rtol=0)
