"""MMPareto, MLA, PMR and G-Blending: closed-form invariants, hand-computed pieces, records,
bad input and exact resume (their DDP checks are in test_distributed_methods.py)."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msam_core.config import TrainConfig
from msam_core.data.base import ModalitySpec, TensorSplit
from msam_core.methods import build_method
from msam_core.methods.gblending import blend_weights
from msam_core.methods.mla import update_projector
from msam_core.methods.mmpareto import integrate, pareto_weight
from msam_core.methods.pmr import prototype_logits, rebalance_coefficients
from msam_core.models import build_model
from msam_core.models.base import LateFusionModel
from msam_core.models.fusion import SharedFusion, SumFusion
from msam_core.record import load_run
from msam_core.train import train

NEW = ["mmpareto", "mla", "pmr", "gblending"]
SMALL = {"n_train": 64, "n_val": 32, "n_test": 32}


def config(method: str, **changes) -> TrainConfig:
    base = {"method": method, "optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "device": "cpu"}
    return TrainConfig.from_dict({**base, **changes})


def specs(n: int = 2, dim: int = 3) -> list[ModalitySpec]:
    return [ModalitySpec(f"m{i}", "vector", (dim + i,)) for i in range(n)]


def random_model(n: int = 2, fusion: str = "concat", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(specs(n), 3, fusion=fusion, feature_dim=4)


def batch(n_modalities: int = 2, size: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(3, (size,), generator=g)
    inputs = {s.name: torch.randn(size, *s.shape, generator=g) for s in specs(n_modalities)}
    for i, s in enumerate(specs(n_modalities)):
        inputs[s.name][:, :3] += (2.0 - i) * F.one_hot(targets, 3).float()
    return inputs, targets


def train_split(n_modalities: int = 2, size: int = 60) -> TensorSplit:
    inputs, targets = batch(n_modalities, size, seed=5)
    return TensorSplit(inputs, targets)


def grads(params) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


# -- MMPareto --------------------------------------------------------------------------------


def test_pareto_weight_and_integration_hand_computed():
    g, u = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]
    cos, alpha = pareto_weight(g, u)
    assert cos == pytest.approx(-1 / math.sqrt(2))
    assert alpha == pytest.approx(0.6)  # (u·u − g·u) / ‖g − u‖² = 3 / 5
    # the minimum-norm point 0.6 g + 0.4 u = (0.2, 0.4) is orthogonal to g − u
    point = alpha * g[0] + (1 - alpha) * u[0]
    assert float(point @ (g[0] - u[0])) == pytest.approx(0.0, abs=1e-6)
    # 2α g + 2(1 − α) u = (0.4, 0.8), scaled up to the sum's norm ‖(0, 1)‖ = 1, then γ
    out = integrate(g[0], u[0], alpha, gamma=1.5)
    expected = torch.tensor([0.4, 0.8]) / math.sqrt(0.8) * 1.5
    torch.testing.assert_close(out, expected)
    # no conflict: equal weights, the plain sum times γ
    assert pareto_weight([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])])[1] == 0.5
    torch.testing.assert_close(
        integrate(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), 0.5, 2.0),
        torch.tensor([4.0, 2.0]),
    )


def _sum_model() -> LateFusionModel:
    """Identity encoders, a sum head W(h_0 + h_1) + b: with m1's input at zero the fused
    prediction is m0's unimodal head's when that head is W, b too (no conflict anywhere)."""
    s = [ModalitySpec("m0", "vector", (2,)), ModalitySpec("m1", "vector", (2,))]
    encoders = {}
    for spec in s:
        layer = nn.Linear(2, 2)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
        encoders[spec.name] = layer
    head = SumFusion(["m0", "m1"], feature_dim=2, num_classes=2)
    with torch.no_grad():
        head.classifier[1].weight.copy_(torch.tensor([[1.0, -0.5], [0.3, 0.8]]))
        head.classifier[1].bias.copy_(torch.tensor([0.1, -0.2]))
    return LateFusionModel(s, 2, encoders, head, feature_dim=2)


def test_mmpareto_without_conflict_is_the_enhanced_sum():
    model = _sum_model()
    method = build_method("mmpareto", model, config("mmpareto"))
    for m in ("m0", "m1"):
        method.heads.heads[m].load_state_dict(model.head.classifier[1].state_dict())
    inputs = {"m0": torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.3]]), "m1": torch.zeros(3, 2)}
    targets = torch.tensor([0, 1, 1])
    # the expected gradients: the plain sum of the three losses, encoders times γ
    twin, heads = copy.deepcopy(model), copy.deepcopy(method.heads)
    features = twin.encode(inputs)
    logits = heads(features)
    total = F.cross_entropy(twin.fuse(features), targets)
    total = total + sum(F.cross_entropy(logits[m], targets) for m in ("m0", "m1"))
    total.backward()
    record = method.step(model, inputs, targets)
    assert record["cos/m0"] == pytest.approx(1.0) and record["cos/m1"] == pytest.approx(1.0)
    assert record["coef/m0"] == record["coef/m1"] == 0.5
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        scale = 1.5 if name.startswith("encoders.") else 1.0
        torch.testing.assert_close(p.grad, scale * q.grad, rtol=1e-6, atol=1e-7, msg=name)
    for p, q in zip(method.heads.parameters(), heads.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)


def test_mmpareto_applies_the_rule_to_every_encoder_of_three_modalities():
    model = random_model(3)
    method = build_method(
        "mmpareto", model, config("mmpareto", method_options={"mmpareto_gamma": 2.0})
    )
    inputs, targets = batch(3)
    twin, heads = copy.deepcopy(model), copy.deepcopy(method.heads)
    features = twin.encode(inputs)
    fused = F.cross_entropy(twin.fuse(features), targets)
    record = method.step(model, inputs, targets)
    conflicts = 0
    for m in twin.modalities:
        params = list(twin.encoders[m].parameters())
        g = torch.autograd.grad(fused, params, retain_graph=True)
        unimodal = F.cross_entropy(heads.heads[m](features[m]), targets)
        u = torch.autograd.grad(unimodal, params, retain_graph=True)
        cos, alpha = pareto_weight(list(g), list(u))
        conflicts += cos <= 0
        assert record[f"cos/{m}"] == pytest.approx(cos) and record[f"coef/{m}"] == pytest.approx(
            alpha
        )
        for p, gp, up in zip(model.encoders[m].parameters(), g, u, strict=True):
            torch.testing.assert_close(p.grad, integrate(gp, up, alpha, 2.0), rtol=1e-5, atol=1e-7)
        assert record[f"loss/{m}"] == pytest.approx(float(unimodal.detach()))
    assert conflicts >= 1, "the batch shows no conflict: the Pareto branch went untested"


# -- MLA ---------------------------------------------------------------------------------------


def test_mla_with_one_modality_is_plain_training():
    torch.manual_seed(0)
    model = build_model(specs(1), 3, fusion="shared", feature_dim=4)
    plain = copy.deepcopy(model)
    options = {"momentum": 0.9}
    mla = build_method("mla", model, config("mla", **options))
    joint = build_method("joint", plain, config("joint", **options))
    inputs, targets = batch(1)
    for _ in range(3):
        a = mla.step(model, inputs, targets)
        b = joint.step(plain, inputs, targets)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_shared_head_blends_by_uncertainty():
    head = SharedFusion(["a", "b"], feature_dim=2, num_classes=2)
    with torch.no_grad():
        head.classifier[1].weight.copy_(torch.eye(2))
        head.classifier[1].bias.zero_()
    # a is confident (logits 3, 0), b undecided (0, 0): entropy H_b = ln 2
    features = {"a": torch.tensor([[3.0, 0.0]]), "b": torch.zeros(1, 2)}
    p = torch.tensor([3.0, 0.0]).softmax(0)
    h_a = float(-(p * p.log()).sum())
    w_a = 1 / (1 + math.exp(h_a - math.log(2)))
    torch.testing.assert_close(head(features), torch.tensor([[3.0 * w_a, 0.0]]))


def test_mla_projector_update_and_gradient_modification_hand_computed():
    p = torch.eye(2)
    r = torch.tensor([1.0, 0.0])
    # k = r, P − k kᵀ / (a + rᵀk) = diag(1 − 1/1.1, 1), then divided by its Frobenius norm
    raw = torch.diag(torch.tensor([1 - 1 / 1.1, 1.0]))
    torch.testing.assert_close(update_projector(p, r, 0.1), raw / raw.norm())

    torch.manual_seed(0)
    model = build_model(specs(2), 3, fusion="shared", feature_dim=4)
    twin = copy.deepcopy(model)
    method = build_method("mla", model, config("mla"))  # SGD, lr 0.1, no momentum
    inputs, targets = batch(2)
    # by hand: m0's turn (the run's first sub-step, unmodified), then m1's with the projector
    features = twin.encode(inputs)
    weight, bias = twin.head.classifier[1].weight, twin.head.classifier[1].bias
    projector = torch.eye(4)
    for i, m in enumerate(twin.modalities):
        loss = F.cross_entropy(twin.head.classifier(features[m]), targets)
        g_w, g_b = torch.autograd.grad(loss, [weight, bias], retain_graph=True)
        if i > 0:
            projector = update_projector(projector, features[m].detach().mean(0), 0.1)
            g_w = g_w + g_w @ projector.T
        with torch.no_grad():
            weight -= 0.1 * g_w
            bias -= 0.1 * g_b
    method.step(model, inputs, targets)
    assert method.count == 2
    torch.testing.assert_close(method.projector, projector)
    torch.testing.assert_close(model.head.classifier[1].weight, weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model.head.classifier[1].bias, bias, rtol=1e-6, atol=1e-7)


# -- PMR ---------------------------------------------------------------------------------------


def test_pmr_coefficients_hand_computed():
    beta, gamma = rebalance_coefficients(torch.tensor([0.8, 0.2]))
    assert beta.tolist() == [0.0, 1.0] and gamma.tolist() == [1.0, 0.0]
    beta, gamma = rebalance_coefficients(torch.tensor([0.6, 0.5, 0.4]))
    torch.testing.assert_close(beta, torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64))
    torch.testing.assert_close(gamma, torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64))
    logits = prototype_logits(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    torch.testing.assert_close(logits, torch.tensor([[-5.0, -1.0]]))


def test_pmr_prototypes_are_class_means_then_a_momentum_average():
    torch.manual_seed(0)
    model = random_model(2)
    split = train_split(2)
    method = build_method(
        "pmr",
        model,
        config("pmr", method_options={"pmr_proto_fraction": 1.0, "pmr_momentum": 0.25}),
    )
    method.training_split(split)
    method.set_epoch(1)
    with torch.no_grad():
        features = model.encode(split.inputs)
    for i, m in enumerate(model.modalities):
        for c in range(3):
            mean = features[m][split.targets == c].mean(0)
            torch.testing.assert_close(method.prototypes[i, c], mean, rtol=1e-5, atol=1e-6)
    first = method.prototypes.clone()
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.add_(0.1)
        moved = model.encode(split.inputs)
    method.set_epoch(2)
    for i, m in enumerate(model.modalities):
        for c in range(3):
            new = moved[m][split.targets == c].mean(0)
            torch.testing.assert_close(
                method.prototypes[i, c], 0.75 * new + 0.25 * first[i, c], rtol=1e-5, atol=1e-6
            )


def test_pmr_with_its_weights_at_zero_is_joint():
    model = random_model(3)
    plain = copy.deepcopy(model)
    options = {"pmr_alpha": 0.0, "pmr_mu": 0.0}
    pmr = build_method("pmr", model, config("pmr", momentum=0.9, method_options=options))
    joint = build_method("joint", plain, config("joint", momentum=0.9))
    pmr.training_split(train_split(3))
    pmr.set_epoch(1)
    inputs, targets = batch(3)
    for _ in range(3):
        record = pmr.step(model, inputs, targets)
        joint.step(plain, inputs, targets)
    assert any(record[f"coef/{m}"] > 0 for m in model.modalities)  # the rule was live
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


# -- G-Blending --------------------------------------------------------------------------------


def test_blend_weights_hand_computed():
    before = torch.tensor([[1.0, 2.0, 1.5], [0.5, 1.0, 1.0]], dtype=torch.float64)
    after = torch.tensor([[0.8, 2.1, 1.4], [0.5, 0.9, 0.7]], dtype=torch.float64)
    weights, gain, overfit = blend_weights(before, after, torch.full((3,), 1 / 3))
    torch.testing.assert_close(gain, torch.tensor([0.2, -0.1, 0.1], dtype=torch.float64))
    torch.testing.assert_close(overfit, torch.tensor([-0.2, 0.2, 0.2], dtype=torch.float64))
    raw = torch.tensor([0.2 / 0.04, 0.0, 0.1 / 0.04], dtype=torch.float64)
    torch.testing.assert_close(weights, raw / raw.sum())
    kept = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    worse = before + 0.1
    assert torch.equal(blend_weights(before, worse, kept)[0], kept)  # nobody generalised better


def test_gblending_with_equal_weights_is_the_sum_of_the_losses():
    model = random_model(3)
    options = {"gb_weights": [1.0, 1.0, 1.0, 1.0]}
    method = build_method("gblending", model, config("gblending", method_options=options))
    inputs, targets = batch(3)
    twin, heads = copy.deepcopy(model), copy.deepcopy(method.heads)
    features = twin.encode(inputs)
    logits = heads(features)
    total = F.cross_entropy(twin.fuse(features), targets)
    total = total + sum(F.cross_entropy(logits[m], targets) for m in twin.modalities)
    total.backward()
    record = method.step(model, inputs, targets)
    assert record["coef_fused"] == 1.0
    for p, q in zip(
        [*model.parameters(), *method.heads.parameters()],
        [*twin.parameters(), *heads.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)


def test_gblending_holds_out_part_of_train_only():
    model = random_model(2)
    method = build_method(
        "gblending", model, config("gblending", method_options={"gb_holdout": 0.2})
    )
    split = train_split(2, size=50)
    trained = method.training_split(split)
    held = set(method.held_out.indices.tolist())
    kept = set(trained.indices.tolist())
    assert len(held) == 10 and len(kept) == 40 and not held & kept
    assert held | kept == set(range(50))
    assert set(method.train_sample.indices.tolist()) <= kept
    method.set_epoch(1)
    assert method.losses.shape == (2, 3) and torch.isfinite(method.losses).all()


# -- the loop: records, resume, bad input -------------------------------------------------------

KEYS = {
    "mmpareto": ("loss", "cos", "coef"),
    "mla": ("loss",),
    "pmr": ("score", "coef", "entropy_coef", "proto_loss"),
    "gblending": ("loss", "coef"),
}


@pytest.mark.parametrize("n_modalities", [2, 3])
@pytest.mark.parametrize("method", NEW)
def test_each_method_trains_and_records_its_keys(tmp_path, method, n_modalities):
    cfg = {
        "method": method,
        "dataset_options": {**SMALL, "modalities": n_modalities},
        "batch_size": 32,
        "epochs": 2,
        "device": "cpu",
    }
    run = load_run(train(TrainConfig.from_dict(cfg), out=tmp_path / "run", quiet=True))
    steps = run.iterations
    keys = ["loss", "lr", "dominant", *(f"phi/{m}" for m in run.modalities)]
    keys += [f"{k}/{m}" for k in KEYS[method] for m in run.modalities]
    for key in keys:
        assert key in steps and steps[key].notna().all(), key
    if method == "gblending":
        assert steps["coef_fused"].notna().all()
        weights = steps[["coef_fused", *(f"coef/{m}" for m in run.modalities)]].sum(axis=1)
        assert ((weights - 1).abs() < 1e-9).all()
    assert run.config["run"]["fusion"] == ("shared" if method == "mla" else "concat")
    for key in ["acc", *(f"acc/{m}" for m in run.modalities)]:
        assert run.epochs[key].notna().all(), key


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("method", NEW)
def test_resume_is_bit_for_bit(tmp_path, method):
    cfg = {
        "method": method,
        "dataset_options": SMALL,
        "batch_size": 16,
        "device": "cpu",
        "momentum": 0.9,
        "model_options": {"dropout": 0.2},
    }
    whole = train(TrainConfig.from_dict({**cfg, "epochs": 3}), out=tmp_path / "a", quiet=True)
    half = train(TrainConfig.from_dict({**cfg, "epochs": 1}), out=tmp_path / "b", quiet=True)
    train(out=half, resume=True, epochs=3, quiet=True)
    a, b = load_run(whole), load_run(half)
    timing = [c for c in a.iterations.columns if c.startswith("time/")]
    pd.testing.assert_frame_equal(
        a.iterations.drop(columns=timing), b.iterations.drop(columns=timing), rtol=0, atol=0
    )
    last_a = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)
    last_b = torch.load(half / "checkpoints" / "last.pt", weights_only=False)
    assert _same_state(last_a["method_state"], last_b["method_state"])
    for key, value in last_a["model"].items():
        assert torch.equal(value, last_b["model"][key]), key


@pytest.mark.parametrize("method", NEW)
def test_early_fusion_is_refused_saying_why(method):
    model = build_model(specs(2), 3, fusion="early")
    with pytest.raises(ValueError, match=r"cannot serve early fusion: it .*encoder"):
        build_method(method, model, config(method))


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("mmpareto", {"mmpareto_gamma": 0}, "mmpareto_gamma must be a positive"),
        ("mla", {"mla_alpha": -1}, "mla_alpha must be a positive"),
        ("pmr", {"pmr_momentum": 1.0}, r"pmr_momentum must be in \[0, 1\)"),
        ("pmr", {"pmr_alpha": -0.5}, "pmr_alpha must be a finite number >= 0"),
        ("gblending", {"gb_holdout": 1.5}, r"gb_holdout must be in \(0, 1\)"),
        ("gblending", {"gb_weights": [1, 1]}, "gb_weights must be 3 finite numbers"),
        ("gblending", {"gb_super_epoch": 0}, "gb_super_epoch must be at least 1"),
    ],
)
def test_bad_options_are_named(method, options, message):
    fusion = "shared" if method == "mla" else "concat"
    model = random_model(2, fusion=fusion)
    with pytest.raises(ValueError, match=message):
        build_method(method, model, config(method, method_options=options))


def test_mla_on_another_head_says_which_fusion_to_use():
    with pytest.raises(ValueError, match="--fusion shared"):
        build_method("mla", random_model(2, fusion="concat"), config("mla"))


def test_holdout_too_large_for_the_data_is_refused_before_training(tmp_path):
    cfg = {
        "method": "gblending",
        "method_options": {"gb_holdout": 0.001},
        "dataset_options": SMALL,
        "device": "cpu",
    }
    with pytest.raises(ValueError, match=r"gb_holdout=0\.001 of 64 training samples"):
        train(TrainConfig.from_dict(cfg), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_lightning_holds_out_the_same_part_of_train_as_msam_train(tmp_path):
    L = pytest.importorskip("lightning")
    import msam_core as mc
    from msam_core.lightning import MsamLightningModule
    from msam_core.rundir import build_dataset, build_run_model

    cfg = TrainConfig.from_dict(
        {"method": "gblending", "epochs": 2, "batch_size": 16, "dataset_options": SMALL}
    )
    native = load_run(train(cfg, out=tmp_path / "native", quiet=True)).iterations
    data = build_dataset(cfg)
    module = MsamLightningModule(build_run_model(cfg, data), data, tmp_path / "light", cfg)
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    light = mc.load_run(tmp_path / "light").iterations
    assert len(light) == len(native) == 2 * math.ceil((64 - 6) / 16)  # 6 of 64 held out
    for key in ["coef_fused", "coef/audio", "coef/visual", "loss/audio", "loss"]:
        assert (light[key] - native[key]).abs().max() <= 1e-6, key
