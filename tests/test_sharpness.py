"""Sharpness: closed form on a quadratic loss, per-block restriction, and leaving no trace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msam_core.param_groups import (
    modality_parameter_groups,
    modality_parameter_names,
)
from msam_core.sharpness import modality_sharpness, periodic_measures, sharpness


class LinearRegression(nn.Module):
    """``f(x) = w·x`` on one modality; with MSE the loss is quadratic in ``w``."""

    def __init__(self, dim=4):
        super().__init__()
        self.modalities = ["x"]
        self.w = nn.Parameter(torch.randn(dim, dtype=torch.float64))

    def forward(self, inputs, mask=None):
        return inputs["x"] @ self.w


class TinyLateFusion(nn.Module):
    """Encoders with batch norm and dropout (state a measurement must not disturb)."""

    def __init__(self, hidden=4, classes=3):
        super().__init__()
        self.modalities = ["audio", "video"]
        self.encoders = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.Tanh())
                for m, d in (("audio", 3), ("video", 2))
            }
        )
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, inputs, mask=None):
        feats = [self.encoders[m](inputs[m]) for m in self.modalities]
        return self.head(self.drop(torch.cat(feats, -1)))


class TinyEarly(nn.Module):
    def __init__(self):
        super().__init__()
        self.modalities = ["audio", "video"]
        self.net = nn.Linear(5, 3)

    def forward(self, inputs, mask=None):
        return self.net(torch.cat([inputs["audio"], inputs["video"]], -1))


def _late(n=16, seed=0):
    torch.manual_seed(seed)
    model = TinyLateFusion().double()
    x = {"audio": torch.randn(n, 3).double(), "video": torch.randn(n, 2).double()}
    return model, x, torch.randint(0, 3, (n,))


def _snapshot(model):
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


def test_sharpness_matches_closed_form_on_quadratic_loss():
    torch.manual_seed(0)
    model = LinearRegression()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randn(32, dtype=torch.float64)
    rho = 0.05
    # l(w) = mean((Xw - y)^2): g = 2Xᵀ(Xw - y)/N, A = 2XᵀX/N, l(w+e) - l(w) = gᵀe + eᵀAe/2.
    w = model.w.detach()
    g = 2 * x.T @ (x @ w - y) / 32
    a = 2 * x.T @ x / 32
    unit = g / g.norm()
    expected = rho * g.norm() + 0.5 * rho**2 * unit @ a @ unit
    got = sharpness(model, {"x": x}, y, rho, loss_fn=F.mse_loss)
    assert got == pytest.approx(expected.item(), rel=1e-10)


def test_adaptive_sharpness_uses_asam_step():
    torch.manual_seed(1)
    model = LinearRegression()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    rho, w = 0.1, model.w.detach()
    g = 2 * x.T @ (x @ w - y) / 32
    eps = rho * w**2 * g / (w.abs() * g).norm()
    expected = F.mse_loss(x @ (w + eps), y) - F.mse_loss(x @ w, y)
    got = sharpness(model, {"x": x}, y, rho, loss_fn=F.mse_loss, adaptive=True)
    assert got == pytest.approx(expected.item(), rel=1e-10)


def test_measurement_leaves_parameters_buffers_grads_and_rng_unchanged():
    model, x, y = _late()
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = _snapshot(model)
    rng = torch.get_rng_state()
    modality_sharpness(model, x, y, rho=0.5, overall=True)
    sharpness(model, x, y, rho=0.5)
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.all(p.grad == 1) for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training


def test_modality_sharpness_moves_only_that_block():
    model, x, y = _late()
    model.eval()
    names = modality_parameter_names(model)
    original = dict(_snapshot(model))
    moved_per_forward: list[set[str]] = []

    def record_moved(module, args):
        moved = {n for n, p in module.named_parameters() if not torch.equal(p, original[n])}
        moved_per_forward.append(moved)

    model.register_forward_pre_hook(record_moved)
    out = modality_sharpness(model, x, y, rho=0.3, overall=True)
    # forward 0 at θ, then one forward per block (audio, video, fusion), then the overall one.
    assert moved_per_forward[0] == set()
    for block, moved in zip(["audio", "video", "fusion"], moved_per_forward[1:4], strict=True):
        assert moved == set(names[block]), block
    assert moved_per_forward[4] == set(original) - {n for n, _ in model.named_buffers()}
    assert set(out) == {"sharpness/audio", "sharpness/video", "sharpness/fusion", "sharpness"}


def test_modality_sharpness_equals_sharpness_over_that_block():
    model, x, y = _late()
    model.eval()
    out = modality_sharpness(model, x, y, rho=0.2, overall=True)
    for block, params in modality_parameter_groups(model).items():
        assert out[f"sharpness/{block}"] == pytest.approx(
            sharpness(model, x, y, 0.2, params=params), rel=1e-12
        )
    assert out["sharpness"] == pytest.approx(sharpness(model, x, y, 0.2), rel=1e-12)


def test_zero_radius_gives_zero_sharpness():
    model, x, y = _late()
    out = modality_sharpness(model, x, y, rho=0.0, overall=True)
    assert all(v == 0.0 for v in out.values())


def test_train_mode_sharpness_sees_same_dropout_mask_in_both_passes():
    model, x, y = _late()
    model.train()
    # ρ = 0: the two forwards differ only if their dropout masks (or BN statistics) differ.
    assert sharpness(model, x, y, rho=0.0) == 0.0


def test_periodic_measures_keys():
    model, x, y = _late()
    model.train()
    out = periodic_measures(model, x, y, rho=0.1, n_samples=4)
    blocks = ["audio", "video", "fusion"]
    expected = {f"sharpness/{b}" for b in blocks}
    for name in ("top_eig", "trace", "trace_se"):
        expected |= {f"hessian/{name}", *(f"hessian/{name}/{b}" for b in blocks)}
    assert set(out) == expected
    assert model.training
    again = periodic_measures(model, x, y, rho=0.1, n_samples=4)
    assert again == out


def test_periodic_measures_on_early_fusion_skip_modality_keys():
    torch.manual_seed(0)
    model = TinyEarly()
    x = {"audio": torch.randn(8, 3), "video": torch.randn(8, 2)}
    y = torch.randint(0, 3, (8,))
    out = periodic_measures(model, x, y, rho=0.1, overall=True, n_samples=4)
    assert set(out) == {"sharpness", "hessian/top_eig", "hessian/trace", "hessian/trace_se"}


def test_groups_of_early_fusion_model_raise_clear_error():
    with pytest.raises(ValueError, match="per-modality encoders"):
        modality_parameter_groups(TinyEarly())
    _, x, y = _late()
    with pytest.raises(ValueError, match="per-modality encoders"):
        modality_sharpness(TinyEarly().double(), x, y, 0.1)


def test_groups_partition_trainable_parameters():
    model, _, _ = _late()
    groups = modality_parameter_groups(model)
    assert list(groups) == ["audio", "video", "fusion"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(n.startswith("encoders.audio.") for n in modality_parameter_names(model)["audio"])


def test_negative_radius_is_rejected():
    model, x, y = _late()
    with pytest.raises(ValueError, match="rho"):
        sharpness(model, x, y, rho=-0.1)


def test_measure_options_are_the_measures_own_options():
    import inspect

    from msam_core.config import MEASURE_OPTIONS

    keyword = [
        name
        for name, p in inspect.signature(periodic_measures).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    set_by_the_loop = {"loss_fn", "adaptive", "overall", "progress"}  # progress: never in a run
    assert sorted(MEASURE_OPTIONS) == sorted(set(keyword) - set_by_the_loop)


def test_training_measures_with_the_chosen_eigen_solver_and_names_bad_options(tmp_path):
    from msam_core.config import TrainConfig
    from msam_core.record import load_run
    from msam_core.train import train

    base = {
        "dataset_options": {"n_train": 64, "n_val": 32, "n_test": 32},
        "batch_size": 32,
        "epochs": 1,
        "device": "cpu",
        "measure_every": 2,
    }
    for method in ("power", "lanczos"):
        config = TrainConfig.from_dict({**base, "measure_options": {"method": method}})
        run = load_run(train(config, out=tmp_path / method, quiet=True))
        eig = run.iterations["hessian/top_eig"].dropna()
        assert len(eig) == 1 and eig.iloc[0] > 0
    with pytest.raises(
        ValueError,
        match=r"unknown measure_options \['metod'\] \(did you mean 'method'\?\); choose from",
    ):
        TrainConfig.from_dict({**base, "measure_options": {"metod": "power"}})
    with pytest.raises(ValueError, match=r"measure_options.method='qr'.*'lanczos', 'power'"):
        TrainConfig.from_dict({**base, "measure_options": {"method": "qr"}})
