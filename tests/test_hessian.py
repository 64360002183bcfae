"""Hessian measures against the exact Hessian of tiny networks (float64, built densely)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from msam_core.hessian import (
    HessianOperator,
    hessian_record,
    hessian_top_eigenvalue,
    hutchinson_trace,
)
from msam_core.param_groups import modality_parameter_names


class TinyLateFusion(nn.Module):
    """Two tanh encoders (one per modality) and a linear head on their concatenation."""

    def __init__(self, dims=(3, 2), hidden=4, classes=3):
        super().__init__()
        self.modalities = ["audio", "video"]
        self.encoders = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, hidden), nn.Tanh())
                for m, d in zip(self.modalities, dims, strict=True)
            }
        )
        self.head = nn.Linear(hidden * len(dims), classes)

    def forward(self, inputs, mask=None):
        return self.head(torch.cat([self.encoders[m](inputs[m]) for m in self.modalities], -1))


class TinyEarly(nn.Module):
    """Early fusion: one network on the concatenated inputs (no per-modality encoders)."""

    def __init__(self):
        super().__init__()
        self.modalities = ["audio", "video"]
        self.net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))

    def forward(self, inputs, mask=None):
        return self.net(torch.cat([inputs["audio"], inputs["video"]], -1))


def _problem(model_cls=TinyLateFusion, n=24, seed=0):
    torch.manual_seed(seed)
    model = model_cls().double()
    inputs = {"audio": torch.randn(n, 3, dtype=torch.float64), "video": torch.randn(n, 2).double()}
    targets = torch.randint(0, 3, (n,))
    return model, inputs, targets


def _exact_hessian(model, inputs, targets):
    """Dense Hessian of the mean cross-entropy over all parameters (named_parameters order)."""
    named = dict(model.named_parameters())
    names, shapes = list(named), [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]

    def loss(flat):
        pieces = torch.split(flat, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (inputs,)), targets)

    flat = torch.cat([p.detach().reshape(-1) for p in named.values()])
    return torch.autograd.functional.hessian(loss, flat), names, sizes


def _block_index(names, sizes, wanted):
    offsets = torch.cumsum(torch.tensor([0, *sizes]), 0)
    return torch.cat(
        [torch.arange(offsets[i], offsets[i + 1]) for i, n in enumerate(names) if n in wanted]
    )


def test_lanczos_top_eigenvalue_matches_eigvalsh():
    model, x, y = _problem()
    hess, _, _ = _exact_hessian(model, x, y)
    exact = torch.linalg.eigvalsh(hess).max().item()
    value, n_hvp = hessian_top_eigenvalue(model, x, y, tol=1e-6)
    assert value == pytest.approx(exact, rel=1e-3)
    assert 1 <= n_hvp <= hess.shape[0]


def test_power_iteration_finds_largest_magnitude_eigenvalue():
    model, x, y = _problem()
    hess, _, _ = _exact_hessian(model, x, y)
    eigs = torch.linalg.eigvalsh(hess)
    dominant = eigs[eigs.abs().argmax()].item()
    value, n_hvp = hessian_top_eigenvalue(model, x, y, tol=1e-9, max_iter=2000, method="power")
    assert value == pytest.approx(dominant, rel=1e-3)
    assert n_hvp > 1


class Quadratic(nn.Module):
    """``loss = ½ θᵀAθ`` through a model: ``logits`` are ignored by a loss that reads θ."""

    def __init__(self, a):
        super().__init__()
        self.modalities = ["x"]
        self.a = a
        self.theta = nn.Parameter(torch.randn(a.shape[0], dtype=torch.float64))

    def forward(self, inputs, mask=None):
        return 0.5 * self.theta @ self.a @ self.theta


def test_power_iteration_stops_on_the_residual_when_top_eigenvalues_are_close():
    """Top eigenvalues 10 and 9.9: λ moves by less than 1e-4 per step long before it is
    within 1e-4 of the top; the residual stop keeps going until it is."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    eigs = torch.cat([torch.tensor([10.0, 9.9], dtype=torch.float64), torch.rand(38) * 5])
    a = q @ torch.diag(eigs) @ q.T
    model = Quadratic(a)
    exact = torch.linalg.eigvalsh(a).max().item()

    def loss(value, targets):
        return value

    value, n_hvp = hessian_top_eigenvalue(
        model,
        {"x": torch.zeros(1, 1)},
        torch.zeros(1),
        tol=1e-4,
        max_iter=5000,
        method="power",
        loss_fn=loss,
    )
    # residual r ≤ tol·λ bounds |λ − λ_i| ≤ r for some i; here λ_1 − λ_2 = 0.1 > 1e-3
    assert abs(value - exact) <= 1e-4 * exact
    assert n_hvp > 50  # slow convergence, really iterated


def test_hutchinson_within_three_standard_errors_of_exact_trace():
    model, x, y = _problem()
    hess, _, _ = _exact_hessian(model, x, y)
    trace, se = hutchinson_trace(
        model, x, y, n_samples=64, generator=torch.Generator().manual_seed(1)
    )
    assert se > 0
    assert abs(trace - hess.trace().item()) <= 3 * se


def test_block_operator_equals_exact_diagonal_block():
    model, x, y = _problem()
    hess, names, sizes = _exact_hessian(model, x, y)
    params = dict(model.named_parameters())
    op = HessianOperator.from_loss(model, x, y)
    for block, block_names in modality_parameter_names(model).items():
        idx = _block_index(names, sizes, set(block_names))
        # Block parameters in named_parameters order, as the exact Hessian indexes them.
        block_op = op.block([params[n] for n in names if n in block_names])
        dense = block_op.matvec(torch.eye(len(idx), dtype=torch.float64))  # rows H e_i
        torch.testing.assert_close(dense, hess[idx][:, idx], rtol=1e-10, atol=1e-12, msg=block)


def test_record_blocks_match_exact_block_eigenvalues_and_traces():
    model, x, y = _problem()
    hess, names, sizes = _exact_hessian(model, x, y)
    record = hessian_record(model, x, y, tol=1e-8, n_samples=400)
    for block, block_names in modality_parameter_names(model).items():
        idx = _block_index(names, sizes, set(block_names))
        sub = hess[idx][:, idx]
        assert record[f"hessian/top_eig/{block}"] == pytest.approx(
            torch.linalg.eigvalsh(sub).max().item(), rel=1e-3
        )
        se = record[f"hessian/trace_se/{block}"]
        assert abs(record[f"hessian/trace/{block}"] - sub.trace().item()) <= 3 * se
    assert record["hessian/top_eig"] == pytest.approx(
        torch.linalg.eigvalsh(hess).max().item(), rel=1e-3
    )


def test_record_progress_bar_changes_nothing(capsys):
    model, x, y = _problem()
    quiet = hessian_record(model, x, y, generator=torch.Generator().manual_seed(3))
    assert capsys.readouterr().err == ""
    shown = hessian_record(model, x, y, generator=torch.Generator().manual_seed(3), progress=True)
    err = capsys.readouterr().err
    # whole model, two modality blocks and the fusion head: an eigenvalue and a trace each
    assert "Hessian" in err and f"/{2 * (1 + len(modality_parameter_names(model)))} " in err, err
    assert shown == quiet


def test_record_keeps_mode_and_grads_and_uses_eval_mode():
    model, x, y = _problem()
    model.encoders["audio"].append(nn.Dropout(0.9))  # would make the loss random in train mode
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    first = hessian_record(model, x, y, blocks=False, n_samples=4)
    second = hessian_record(model, x, y, blocks=False, n_samples=4)
    assert first == second
    assert all(m.training for m in model.modules())
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())


def test_early_fusion_records_whole_model_only():
    model, x, y = _problem(TinyEarly)
    record = hessian_record(model, x, y, n_samples=4)
    assert set(record) == {"hessian/top_eig", "hessian/trace", "hessian/trace_se"}


def test_bad_arguments_are_named():
    model, x, y = _problem()
    with pytest.raises(ValueError, match="tol"):
        hessian_top_eigenvalue(model, x, y, tol=0)
    with pytest.raises(ValueError, match="max_iter"):
        hessian_top_eigenvalue(model, x, y, max_iter=0)
    with pytest.raises(ValueError, match="lanczos"):
        hessian_top_eigenvalue(model, x, y, method="arnoldi")
    with pytest.raises(ValueError, match="n_samples"):
        hutchinson_trace(model, x, y, n_samples=1)
    with pytest.raises(ValueError, match="empty params"):
        hessian_top_eigenvalue(model, x, y, params=[])
