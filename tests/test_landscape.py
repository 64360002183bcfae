"""Landscapes: direction normalisation, grids against closed forms and the point loop, storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msam_core.landscape import (
    compute_landscape,
    evaluate_grid,
    evaluate_grid_loop,
    grid_axis,
    load_landscape,
    normalize_direction,
    pca_directions,
    random_direction,
    save_landscape,
)
from msam_core.param_groups import modality_parameter_names


class TinyLateFusion(nn.Module):
    """Image encoder (conv + batch norm), vector encoder (MLP), concat head with dropout."""

    def __init__(self, classes=3):
        super().__init__()
        self.modalities = ["image", "audio"]
        self.encoders = nn.ModuleDict(
            {
                "image": nn.Sequential(
                    nn.Conv2d(1, 3, 3),
                    nn.BatchNorm2d(3),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                ),
                "audio": nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh()),
            }
        )
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, classes))

    def forward(self, inputs, mask=None):
        return self.head(torch.cat([self.encoders[m](inputs[m]) for m in self.modalities], -1))


class LinearRegression(nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.modalities = ["x"]
        self.w = nn.Parameter(torch.randn(dim, dtype=torch.float64))

    def forward(self, inputs, mask=None):
        return inputs["x"] @ self.w


def _late(n=20, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = TinyLateFusion().to(dtype)
    # Non-trivial running statistics, so eval mode differs from batch statistics.
    model.encoders["image"][1].running_mean.fill_(0.3)
    model.encoders["image"][1].running_var.fill_(2.0)
    x = {"image": torch.randn(n, 1, 5, 5, dtype=dtype), "audio": torch.randn(n, 2, 3, dtype=dtype)}
    return model, x, torch.randint(0, 3, (n,))


def _grid(steps, span, dims=2):
    axis = torch.tensor(grid_axis(steps, span))
    if dims == 1:
        return axis[:, None]
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], 1)


# -- directions ------------------------------------------------------------------------------


def test_filter_normalised_direction_matches_each_weight_filter_norm():
    model, _, _ = _late()
    weights = dict(model.named_parameters())
    d = random_direction(model, seed=3)
    for name, w in weights.items():
        if w.ndim >= 2:
            d_norms = d[name].reshape(w.shape[0], -1).norm(dim=1)
            w_norms = w.detach().reshape(w.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(d_norms, w_norms, rtol=1e-5, atol=1e-7, msg=name)
            assert not torch.allclose(d[name], w), name  # a random direction, not the weights
        else:  # biases and batch-norm scale/shift are ignored by default
            assert torch.all(d[name] == 0), name


def test_layer_norm_and_ignore_none():
    model, _, _ = _late()
    weights = dict(model.named_parameters())
    raw = {n: torch.randn_like(w) for n, w in weights.items()}
    layer = normalize_direction(raw, weights, norm="layer", ignore="none")
    for name, w in weights.items():
        assert layer[name].norm().item() == pytest.approx(w.norm().item(), rel=1e-5), name
    none = normalize_direction(raw, weights, norm="none", ignore="biasbn")
    for name, w in weights.items():
        expected = raw[name] if w.ndim >= 2 else torch.zeros_like(w)
        assert torch.equal(none[name], expected), name


def test_directions_are_seeded_and_modality_blocks_are_restrictions():
    model, _, _ = _late()
    full = random_direction(model, seed=5)
    assert all(torch.equal(full[n], random_direction(model, seed=5)[n]) for n in full)
    assert any(not torch.equal(full[n], random_direction(model, seed=6)[n]) for n in full)
    names = modality_parameter_names(model)
    audio = random_direction(model, seed=5, modality="audio")
    for n in full:
        expected = full[n] if n in names["audio"] else torch.zeros_like(full[n])
        assert torch.equal(audio[n], expected), n


# -- grids -----------------------------------------------------------------------------------


def test_grid_centre_equals_model_loss_in_eval_mode():
    model, x, y = _late(dtype=torch.float64)
    model.train()
    result = compute_landscape(model, x, y, steps=5, span=0.5)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    expected = F.cross_entropy(logits, y).item()
    assert result.loss[2, 2] == pytest.approx(expected, rel=1e-12)
    assert result.center_loss == pytest.approx(expected, rel=1e-12)
    assert result.acc[2, 2] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert result.loss.shape == (5, 5) and result.alphas[2] == 0.0


def test_progress_bar_counts_the_grid_and_changes_nothing(capsys):
    model, x, y = _late(dtype=torch.float64)
    quiet = compute_landscape(model, x, y, steps=5, span=0.5)
    assert capsys.readouterr().err == ""
    for method in ("vmap", "loop"):
        shown = compute_landscape(model, x, y, steps=5, span=0.5, method=method, progress=True)
        err = capsys.readouterr().err
        assert "landscape" in err and "25/25" in err, err  # 5 x 5 points, one sample batch
        np.testing.assert_allclose(shown.loss, quiet.loss, rtol=1e-12)


def test_one_dimensional_curve_of_quadratic_loss_is_the_parabola():
    torch.manual_seed(0)
    model = LinearRegression()
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    d = {"w": torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)}
    result = compute_landscape(
        model, {"x": x}, y, steps=9, span=2.0, dims=1, directions=[d], loss_fn=F.mse_loss
    )
    # l(w + a d) = l(w) + a gᵀd + a² dᵀAd / 2 with g = 2Xᵀ(Xw - y)/N, A = 2XᵀX/N.
    w = model.w.detach()
    g, a_mat = 2 * x.T @ (x @ w - y) / 40, 2 * x.T @ x / 40
    alphas = torch.tensor(result.alphas)
    expected = (
        F.mse_loss(x @ w, y) + alphas * (g @ d["w"]) + alphas**2 * (d["w"] @ a_mat @ d["w"]) / 2
    )
    np.testing.assert_allclose(result.loss, expected.numpy(), rtol=1e-10)
    assert np.isnan(result.acc).all()  # regression targets: no accuracy
    assert result.betas.shape == (0,)


@pytest.mark.parametrize("method", ["inplace", "vmap"])
@pytest.mark.parametrize(
    ("affine_inputs", "chunk_size", "batch_size", "modality"),
    [
        (True, 7, None, None),
        (False, 50, 8, None),
        (True, 16, 6, "audio"),
        (True, 4, None, "image"),
        (True, 4, None, "fusion"),
    ],
)
def test_grid_paths_equal_point_by_point_loop(
    method, affine_inputs, chunk_size, batch_size, modality
):
    model, x, y = _late()
    dirs = [random_direction(model, s, modality=modality) for s in (0, 1)]
    coords = _grid(7, 1.0)
    loss, acc = evaluate_grid(
        model, x, y, dirs, coords, F.cross_entropy, chunk_size, batch_size, affine_inputs, method
    )
    ref_loss, ref_acc = evaluate_grid_loop(model, x, y, dirs, coords, batch_size=batch_size)
    np.testing.assert_allclose(loss.double().numpy(), ref_loss.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(acc.double().numpy(), ref_acc.numpy(), atol=1e-5)
    assert len(np.unique(ref_loss.numpy().round(6))) > 10  # the grid really varies


def test_grid_evaluation_leaves_weights_and_mode_alone():
    model, x, y = _late()
    model.train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    for method in ("auto", "inplace", "vmap", "loop"):
        compute_landscape(model, x, y, steps=3, method=method)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all("forward" not in m.__dict__ for m in model.modules())  # no patch left behind


def test_inplace_grid_restores_weights_when_the_loss_fails():
    model, x, y = _late()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    dirs = [random_direction(model, s) for s in (0, 1)]
    calls = []

    def failing(logits, targets):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return F.cross_entropy(logits, targets)

    with pytest.raises(RuntimeError, match="boom"):
        evaluate_grid(model, x, y, dirs, _grid(3, 1.0), failing, method="inplace")
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_grid_centre_is_exactly_the_model_loss_on_every_path():
    model, x, y = _late(n=33)
    for method in ("inplace", "vmap"):
        result = compute_landscape(model, x, y, steps=5, method=method, batch_size=None)
        assert result.loss[2, 2] == result.center_loss, method
        assert result.acc[2, 2] == result.center_acc, method


@pytest.mark.parametrize("method", ["inplace", "vmap"])
def test_modality_grid_runs_the_other_encoder_once_per_sample_batch(method):
    """The image encoder does not move and its input does not change: its layers run once in
    the structure probe and once per sample batch, never per point; the audio encoder's first
    (affine) layer likewise; the head runs per point (per chunk under vmap)."""
    model, x, y = _late(n=12)
    calls = {"image": 0, "first": 0, "head": 0}

    class CountingLinear(nn.Linear):
        def forward(self, inputs):
            calls["first"] += 1
            return super().forward(inputs)

    first = CountingLinear(6, 5)
    first.load_state_dict(model.encoders["audio"][1].state_dict())
    model.encoders["audio"][1] = first

    def count(key):
        def hook(module, args, output):
            calls[key] += 1

        return hook

    model.encoders["image"][0].register_forward_hook(count("image"))
    model.head[1].register_forward_hook(count("head"))
    dirs = [random_direction(model, s, modality="audio") for s in (0, 1)]
    loss, _ = evaluate_grid(
        model, x, y, dirs, _grid(5, 1.0), batch_size=4, chunk_size=25, method=method
    )
    batches = 3
    assert calls["image"] == 1 + batches
    assert calls["first"] == 1 + batches
    per_point = 25 if method == "inplace" else 1  # vmap: one call per chunk of 25 points
    assert calls["head"] == 1 + batches + batches * per_point
    ref, _ = evaluate_grid_loop(model, x, y, dirs, _grid(5, 1.0), batch_size=4)
    np.testing.assert_allclose(loss.double().numpy(), ref.numpy(), atol=1e-5, rtol=1e-5)


def test_grid_method_by_device_and_metrics_of_stacked_points():
    from msam_core.landscape import _points_metrics, grid_method

    assert grid_method("cpu") == "inplace" and grid_method("cuda") == "vmap"
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 50, 7, dtype=torch.float64), torch.randint(0, 7, (50,))
    soft = torch.softmax(torch.randn(50, 7, dtype=torch.float64), 1)
    for target in (targets, soft):
        loss, acc = _points_metrics(logits, target, F.cross_entropy)
        for q in range(3):
            assert loss[q].item() == pytest.approx(
                F.cross_entropy(logits[q], target).item(), rel=1e-14
            )
            assert loss[q] == _points_metrics(logits[q : q + 1], target, F.cross_entropy)[0][0]
    assert acc.isnan().all()  # soft targets: no accuracy
    _, acc = _points_metrics(logits, targets, F.cross_entropy)
    assert torch.equal(acc, (logits.argmax(-1) == targets).double().mean(1))
    loss, _ = _points_metrics(
        logits, targets, lambda out, t: out.sum()
    )  # any other loss: per point
    assert torch.equal(loss, logits.sum((1, 2)))


def test_bad_grid_arguments_are_named():
    model, x, y = _late()
    with pytest.raises(ValueError, match="span"):
        compute_landscape(model, x, y, span=0.0)
    with pytest.raises(ValueError, match="steps"):
        compute_landscape(model, x, y, steps=1)
    with pytest.raises(ValueError, match=r"unknown modality 'depth'.*'image', 'audio', 'fusion'"):
        compute_landscape(model, x, y, modality="depth")
    with pytest.raises(ValueError, match="dims"):
        compute_landscape(model, x, y, dims=3)
    with pytest.raises(ValueError, match="norm"):
        compute_landscape(model, x, y, norm="batch")
    with pytest.raises(ValueError, match="method"):
        compute_landscape(model, x, y, method="fast")
    with pytest.raises(ValueError, match="method"):
        evaluate_grid(model, x, y, [random_direction(model, 0)], _grid(3, 1.0, 1), method="loop")


# -- PCA -------------------------------------------------------------------------------------


def test_pca_recovers_a_planar_trajectory():
    torch.manual_seed(0)
    final = {"a": torch.randn(4, 3), "b": torch.randn(5)}
    u = {"a": torch.randn(4, 3), "b": torch.randn(5)}
    v = {"a": torch.randn(4, 3), "b": torch.randn(5)}
    steps = [(3.0, 1.0), (2.0, -0.5), (1.2, 0.4), (0.5, -0.2), (0.0, 0.0)]
    trajectory = [{n: final[n] + s * u[n] + t * v[n] for n in final} for s, t in steps]
    pca = pca_directions(trajectory, final, dims=2)
    assert pca.explained_variance.sum() == pytest.approx(1.0, abs=1e-6)  # a plane: all of it
    assert pca.explained_variance[0] >= pca.explained_variance[1]
    assert np.abs(pca.projection).max(0) == pytest.approx([1.0, 1.0])
    np.testing.assert_allclose(pca.projection[-1], [0.0, 0.0], atol=1e-7)
    for point, coords in zip(trajectory, pca.projection, strict=True):  # plane is reconstructed
        for n in final:
            rebuilt = final[n] + sum(
                float(c) * d[n] for c, d in zip(coords, pca.directions, strict=True)
            )
            torch.testing.assert_close(rebuilt, point[n], atol=1e-4, rtol=1e-4)


def test_pca_needs_enough_checkpoints_spanning_the_directions():
    final = {"a": torch.zeros(3)}
    with pytest.raises(ValueError, match="at least 3 checkpoints"):
        pca_directions([{"a": torch.ones(3)}, final], final, dims=2)
    line = [{"a": torch.full((3,), float(t))} for t in (3, 2, 1)]
    with pytest.raises(ValueError, match="lies on a line"):
        pca_directions(line, final, dims=2)
    # Without the final point in the list, it still counts as the trajectory's last point.
    one = pca_directions(line, final, dims=1)
    np.testing.assert_allclose(one.projection[:, 0], [-1.0, -2 / 3, -1 / 3], rtol=1e-6)
    assert one.explained_variance[0] == pytest.approx(1.0)


# -- storage ---------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    model, x, y = _late()
    result = compute_landscape(
        model, x, y, steps=3, seed=4, modality="image", epoch=2, step=30, split="val"
    )
    path = save_landscape(result, tmp_path)
    assert path == tmp_path / "landscapes" / "epoch0002_image_2d_seed4.npz"
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert set(data.files) >= {"alphas", "betas", "loss", "acc", "seeds", "subspace"}
    back = load_landscape(path)
    for key in ("alphas", "betas", "loss", "acc", "seeds"):
        np.testing.assert_array_equal(getattr(back, key), getattr(result, key))
    assert (back.subspace, back.norm, back.ignore, back.epoch, back.step, back.split) == (
        "image",
        "filter",
        "biasbn",
        2,
        30,
        "val",
    )
    assert back.seeds.tolist() == [4, 5] and back.trajectory is None
    unknown = save_landscape(compute_landscape(model, x, y, steps=3, dims=1), tmp_path, name="x")
    assert load_landscape(unknown).epoch is None


# -- from a run directory --------------------------------------------------------------------


def _fake_run(tmp_path, epochs=(0, 1, 2, 3), fusion="concat"):
    """A run directory with checkpoints along a short SGD trajectory (written as the loop does)."""
    from msam_core.config import TrainConfig
    from msam_core.train import build_dataset, build_run_model

    config = TrainConfig(
        dataset="synthetic",
        dataset_options={"n_train": 48, "n_val": 16, "n_test": 16, "dims": 6, "n_classes": 4},
        fusion=fusion,
        model_options={"feature_dim": 4},
    )
    dataset = build_dataset(config)
    model = build_run_model(config, dataset)
    x, y = dataset.train.inputs, dataset.train.targets
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for epoch in range(max(epochs) + 1):
        if epoch > 0:
            for _ in range(3):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
        if epoch in epochs:
            state = {"model": model.state_dict(), "config": config.to_dict(), "epoch": epoch}
            torch.save({**state, "step": 3 * epoch}, folder / f"epoch_{epoch:04d}.pt")
    return tmp_path / "run", model, dataset


def test_landscape_for_run_random_and_modality(tmp_path):
    from msam_core.landscape import landscape_for_run

    run, model, dataset = _fake_run(tmp_path)
    path = landscape_for_run(run, steps=3, span=0.5, n_eval=20)
    assert path == run / "landscapes" / "epoch0003_all_2d_span0.5.npz"
    # other settings are other surfaces: files of their own, none overwritten
    other = landscape_for_run(run, steps=3, n_eval=20, seed=1, norm="layer")
    assert other == run / "landscapes" / "epoch0003_all_2d_layer_seed1.npz"
    assert landscape_for_run(run, steps=3, n_eval=20) == run / "landscapes" / "epoch0003_all_2d.npz"
    assert path.is_file() and other.is_file()
    result = load_landscape(path)
    assert (result.epoch, result.step, result.n_eval, result.split) == (3, 9, 20, "train")
    # The centre is the final weights: the loss of the model trained above on that subset.
    subset = torch.randperm(48, generator=torch.Generator().manual_seed(0))[:20].sort().values
    with torch.no_grad():
        model.eval()
        expected = F.cross_entropy(
            model(dataset.train.take(subset)[0]), dataset.train.targets[subset]
        )
    assert result.loss[1, 1] == pytest.approx(expected.item(), rel=1e-5)
    name = dataset.modality_names[0]
    one = load_landscape(landscape_for_run(run, epoch=1, steps=4, modality=name, dims=1))
    assert (one.subspace, one.epoch, one.loss.shape) == (name, 1, (4,))


def test_landscape_for_run_pca(tmp_path):
    from msam_core.landscape import landscape_for_run

    run, _, _ = _fake_run(tmp_path)
    result = load_landscape(landscape_for_run(run, steps=3, pca=True, n_eval=16))
    assert result.subspace == "pca"
    assert result.trajectory.shape == (4, 2)
    assert result.trajectory_epochs.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(result.trajectory[-1], [0, 0], atol=1e-6)
    assert 0 < result.explained_variance.sum() <= 1 + 1e-9
    assert result.direction_scale.shape == (2,)


def test_landscape_for_run_bad_input(tmp_path):
    from msam_core.landscape import landscape_for_run

    run, _, dataset = _fake_run(tmp_path, epochs=(0, 2))
    with pytest.raises(ValueError, match=r"no checkpoint for epoch 5; available epochs: \[0, 2\]"):
        landscape_for_run(run, epoch=5)
    with pytest.raises(ValueError, match="unknown modality 'sound'; choose one of"):
        landscape_for_run(run, modality="sound")
    with pytest.raises(ValueError, match="span"):
        landscape_for_run(run, span=-1)
    with pytest.raises(ValueError, match="steps"):
        landscape_for_run(run, steps=1)
    with pytest.raises(
        ValueError, match=r"at least 3 checkpoints up to epoch 2; the run has \[0, 2\]"
    ):
        landscape_for_run(run, pca=True)
    with pytest.raises(ValueError, match="not both"):
        landscape_for_run(run, pca=True, modality=dataset.modality_names[0])
    with pytest.raises(FileNotFoundError, match="no run directory"):
        landscape_for_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no checkpoints"):
        landscape_for_run(tmp_path / "empty")


def test_modality_subspace_of_early_fusion_is_refused(tmp_path):
    from msam_core.landscape import landscape_for_run

    run, _, dataset = _fake_run(tmp_path, epochs=(0, 1), fusion="early")
    with pytest.raises(ValueError, match="per-modality encoders"):
        landscape_for_run(run, modality=dataset.modality_names[0], steps=3)


def test_msam_landscape_command(tmp_path, capsys):
    from msam_core.cli import main

    run, _, _ = _fake_run(tmp_path)
    assert main(["landscape", str(run), "--steps", "3", "--pca", "--n-eval", "16"]) == 0
    out, err = capsys.readouterr()
    assert "epoch0003_pca_2d.npz" in out and "explain" in out
    assert "landscape" in err and "9/9" in err  # the progress bar: 3 x 3 points
    assert main(["landscape", str(run), "--steps", "3", "--n-eval", "16", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert (run / "landscapes" / "epoch0003_pca_2d.npz").is_file()
    assert main(["landscape", str(run), "--epoch", "7"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"msam landscape: error: run {str(run)!r} has no checkpoint for epoch 7; "
        "available epochs: [0, 1, 2, 3]"
    )
    assert main(["landscape", str(run), "--span", "0"]) == 2
    assert "span must be > 0" in capsys.readouterr().err


class _TwoEncoders(nn.Module):
    """A late-fusion model of stock layers, with the encoders given."""

    def __init__(self, a: nn.Module, b: nn.Module, width: int) -> None:
        super().__init__()
        self.modalities = ["a", "b"]
        self.encoders = nn.ModuleDict({"a": a, "b": b})
        self.head = nn.Linear(width, 3)

    def forward(self, x, mask=None):
        return self.head(torch.cat([self.encoders[m](x[m]) for m in self.modalities], -1))


def _paths_agree_with_the_loop(model: nn.Module, modality: str | None = None) -> None:
    torch.manual_seed(3)
    x = {"a": torch.randn(40, 6), "b": torch.randn(40, 6)}
    y = torch.randint(0, 3, (40,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = compute_landscape(model, x, y, steps=5, method="loop", modality=modality)
    for method in ("inplace", "vmap"):
        fast = compute_landscape(model, x, y, steps=5, method=method, modality=modality)
        np.testing.assert_allclose(fast.loss, loop.loss, atol=1e-5, err_msg=method)
        assert fast.loss[2, 2] == pytest.approx(loop.loss[2, 2], abs=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("modality", [None, "a"])
def test_a_parameter_tied_between_encoders_moves_in_both(modality):
    # named_parameters() lists a tied parameter once: the second encoder's layer moves too
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(6, 5), nn.Tanh()), nn.Sequential(nn.Linear(6, 5), nn.Tanh())
    b[0].weight = a[0].weight
    _paths_agree_with_the_loop(_TwoEncoders(a, b, 10), modality)


@pytest.mark.parametrize("modality", [None, "a"])
def test_an_in_place_activation_after_a_frozen_layer_leaves_the_replayed_output_alone(modality):
    # the frozen layer's output is computed once; the in-place activation (one module, used
    # twice) must not rescale that kept output again at every point
    torch.manual_seed(0)
    act = nn.LeakyReLU(0.1, inplace=True)
    a = nn.Sequential(nn.Linear(6, 8), act, nn.Linear(8, 5), act)
    a[0].requires_grad_(False)
    _paths_agree_with_the_loop(
        _TwoEncoders(a, nn.Sequential(nn.Linear(6, 5), nn.Tanh()), 10), modality
    )


def test_batch_statistics_norm_layers_get_a_landscape():
    # batch norm without running statistics normalises with the batch's even in eval mode
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.ReLU())
    _paths_agree_with_the_loop(_TwoEncoders(a, nn.Sequential(nn.Linear(6, 5), nn.Tanh()), 10))
