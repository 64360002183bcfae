"""The balancing baselines and M-SAM's variants: coefficients by hand, invariants, records.

A two-modality model with identity encoders and a hand-set linear head makes every readout
known in closed form: logit 0 is audio's first value, logit 1 visual's second.
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msam_core.config import TrainConfig
from msam_core.data.base import ModalitySpec
from msam_core.methods import build_method, method_names
from msam_core.methods import registry as method_registry
from msam_core.methods.base import base_optimizer_factory
from msam_core.methods.msam import MsamMethod, attributed_losses
from msam_core.methods.ogm_ge import OgmGeMethod
from msam_core.models import build_model
from msam_core.models.base import LateFusionModel
from msam_core.models.fusion import ConcatFusion
from msam_core.optim import MSAM
from msam_core.record import load_run
from msam_core.rundir import load_checkpoint
from msam_core.step import msam_step
from msam_core.train import train

LN3 = math.log(3.0)
SMALL = {"n_train": 64, "n_val": 32, "n_test": 32}
STEPS_PER_EPOCH = 2  # 64 samples / batch 32


def hand_model() -> LateFusionModel:
    """Identity encoders; logits = [x_audio[0], x_visual[1]] (no bias)."""
    specs = [ModalitySpec("audio", "vector", (2,)), ModalitySpec("visual", "vector", (2,))]
    encoders = {}
    for spec in specs:
        layer = nn.Linear(2, 2)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
        encoders[spec.name] = layer
    head = ConcatFusion(["audio", "visual"], feature_dim=2, num_classes=2)
    with torch.no_grad():
        linear = head.classifier[1]
        linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
        linear.bias.zero_()
    return LateFusionModel(specs, 2, encoders, head, feature_dim=2)


def hand_batch():
    """Audio readout: p(y=0) = 0.75 and 0.5; visual readout: 0.5 and 0.5 (targets 0, 0)."""
    inputs = {
        "audio": torch.tensor([[LN3, 0.0], [0.0, 0.0]]),
        "visual": torch.zeros(2, 2),
    }
    return inputs, torch.tensor([0, 0])


def config(method: str, **changes) -> TrainConfig:
    base = {"method": method, "optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "device": "cpu"}
    return TrainConfig.from_dict({**base, **changes})


# -- OGM-GE ----------------------------------------------------------------------------------


def test_ogm_ge_coefficient_hand_computed():
    model = hand_model()
    method = build_method("ogm_ge", model, config("ogm_ge", method_options={"ogm_alpha": 2.0}))
    inputs, targets = hand_batch()
    scores, ratios, coefs = method.coefficients(model, inputs, targets)
    assert torch.allclose(scores, torch.tensor([1.25, 1.0]))
    assert torch.allclose(ratios, torch.tensor([1.25, 0.8]))
    assert torch.allclose(coefs, torch.tensor([1.0 - math.tanh(2.0 * 0.25), 1.0]))


def test_ogm_scales_only_the_leading_encoder_and_leaves_the_head_alone():
    model = hand_model()
    options = {"ogm_alpha": 2.0, "ogm_ge": False}
    method = build_method("ogm_ge", model, config("ogm_ge", method_options=options))
    inputs, targets = hand_batch()
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(inputs), targets).backward()
    expected = {n: p.grad.clone() for n, p in reference.named_parameters()}
    k_audio = 1.0 - math.tanh(0.5)
    record = method.step(model, inputs, targets)
    assert record["coef/audio"] == pytest.approx(k_audio) and record["coef/visual"] == 1.0
    for name, p in model.named_parameters():
        factor = k_audio if name.startswith("encoders.audio.") else 1.0
        assert torch.allclose(p.grad, expected[name] * factor), name


def test_ogm_ge_adds_noise_with_each_gradients_spread():
    model = hand_model()
    method = build_method("ogm_ge", model, config("ogm_ge", method_options={"ogm_alpha": 2.0}))
    inputs, targets = hand_batch()
    F.cross_entropy(model(inputs), targets).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    coefs = torch.tensor([0.25, 1.0])
    torch.manual_seed(3)
    method.modulate(coefs)
    torch.manual_seed(3)
    for m, k in (("audio", 0.25), ("visual", 1.0)):
        for name in (f"encoders.{m}.weight", f"encoders.{m}.bias"):
            g = grads[name]
            noise = torch.randn(g.shape) * g.std()
            got = dict(model.named_parameters())[name].grad
            assert torch.allclose(got, k * g + noise), name
    head = dict(model.named_parameters())["head.classifier.1.weight"]
    assert torch.equal(head.grad, grads["head.classifier.1.weight"])


def test_ogm_unimodal_readout_works_for_every_late_fusion_head():
    specs = [ModalitySpec(m, "vector", (3,)) for m in ("a", "b", "c")]
    inputs = {m: torch.randn(5, 3) for m in "abc"}
    targets = torch.tensor([0, 1, 2, 0, 1])
    for fusion in ("concat", "sum", "gated", "film"):
        torch.manual_seed(0)
        model = build_model(specs, 3, fusion=fusion, feature_dim=4)
        method = build_method("ogm_ge", model, config("ogm_ge"))
        scores, _, coefs = method.coefficients(model, inputs, targets)
        # the readout of modality m is the model with every other input at its baseline
        with torch.no_grad():
            for i in range(3):
                mask = torch.tensor([j == i for j in range(3)])
                probs = model.eval()(inputs, mask).softmax(1)
                assert scores[i] == pytest.approx(float(probs[range(5), targets].sum()), abs=1e-5)
        assert coefs.shape == (3,) and bool((coefs <= 1).all())


def test_ogm_window_gates_the_modulation():
    model = hand_model()
    options = {"ogm_alpha": 2.0, "ogm_start": 3, "ogm_ge": False}
    method = build_method("ogm_ge", model, config("ogm_ge", method_options=options))
    inputs, targets = hand_batch()
    with pytest.raises(RuntimeError, match="set_epoch"):
        method.step(model, inputs, targets)
    method.set_epoch(2)
    assert method.step(model, inputs, targets)["coef/audio"] == 1.0
    method.set_epoch(3)
    assert method.step(model, inputs, targets)["coef/audio"] < 1.0


# -- AGM -------------------------------------------------------------------------------------


def test_agm_coefficient_hand_computed_and_running_target():
    model = hand_model()
    method = build_method("agm", model, config("agm", method_options={"agm_alpha": 0.5}))
    inputs, targets = hand_batch()
    # additive head without bias: the Shapley responses are the unimodal readouts
    s_audio = (-math.log(0.75) - math.log(0.5)) / 2
    s_visual = math.log(2.0)
    scores = method.scores(model, inputs, targets)
    assert torch.allclose(scores, torch.tensor([s_audio, s_visual], dtype=torch.float64))
    ratios, target, coefs = method.update(scores)
    ratio_audio = math.exp(s_visual - s_audio)
    assert ratios[0].item() == pytest.approx(ratio_audio)
    assert torch.allclose(target, torch.ones(2, dtype=torch.float64))  # first step: averages 0
    assert coefs[0].item() == pytest.approx(math.exp(0.5 * (1.0 - ratio_audio)))
    assert coefs[1].item() == pytest.approx(math.exp(0.5 * (1.0 - 1.0 / ratio_audio)))
    # after one step the running average is this batch's score: the same batch is on target
    _, target2, coefs2 = method.update(scores)
    assert torch.allclose(target2, ratios) and torch.allclose(coefs2, torch.ones(2).double())


def test_agm_scales_each_encoder_by_its_coefficient():
    model = hand_model()
    method = build_method("agm", model, config("agm", method_options={"agm_alpha": 0.5}))
    inputs, targets = hand_batch()
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(inputs), targets).backward()
    expected = {n: p.grad.clone() for n, p in reference.named_parameters()}
    record = method.step(model, inputs, targets)
    assert record["coef/audio"] < 1.0 < record["coef/visual"]
    for name, p in model.named_parameters():
        block = name.split(".")[1] if name.startswith("encoders.") else None
        factor = record[f"coef/{block}"] if block else 1.0
        assert torch.allclose(p.grad, expected[name] * factor, atol=1e-7), name


def test_agm_state_round_trips():
    model = hand_model()
    method = build_method("agm", model, config("agm"))
    inputs, targets = hand_batch()
    method.step(model, inputs, targets)
    state = method.state_dict()
    fresh = build_method("agm", hand_model(), config("agm"))
    fresh.load_state_dict(state)
    assert fresh.count == 1 and torch.equal(fresh.score_mean, method.score_mean)
    with pytest.raises(ValueError, match="score_mean"):
        fresh.load_state_dict({"count": 1})


# -- ASAM ------------------------------------------------------------------------------------


def test_asam_is_sam_with_the_adaptive_ascent():
    model = hand_model()
    method = build_method("asam", model, config("asam", adaptive=False))
    assert all(group["adaptive"] for group in method.optimizer.param_groups)
    assert method.config.adaptive and method.measures_sharpness


# -- M-SAM variants --------------------------------------------------------------------------


def variant(model, rho=0.05, **options) -> MsamMethod:
    return MsamMethod(model, config("msam", rho=rho, method_options=options))


def synthetic_batch(n_modalities=2, n=16, seed=0):
    torch.manual_seed(seed)
    specs = [ModalitySpec(f"m{i}", "vector", (4,)) for i in range(n_modalities)]
    model = build_model(specs, 3, fusion="concat", feature_dim=4)
    inputs = {s.name: torch.randn(n, 4) for s in specs}
    targets = torch.randint(0, 3, (n,))
    return model, inputs, targets


def test_attributed_losses_split_the_gradient_exactly():
    model, inputs, targets = synthetic_batch(3)
    from msam_core.methods._readouts import all_masks, coalition_logits

    logits = coalition_logits(model, inputs, all_masks(3), grad=True)
    params = list(model.parameters())
    loss = F.cross_entropy(model(inputs), targets)
    full = torch.autograd.grad(loss, params)
    for d in range(3):
        loss_d, loss_s, fused = attributed_losses(logits, targets, d)
        assert loss_d.item() == pytest.approx(loss.item(), abs=1e-6)
        assert fused.item() == pytest.approx(loss.item(), abs=1e-6)
        g_d = torch.autograd.grad(loss_d, params, retain_graph=True, allow_unused=True)
        g_s = torch.autograd.grad(loss_s, params, retain_graph=True, allow_unused=True)
        for a, b, g in zip(g_d, g_s, full, strict=True):
            a = torch.zeros_like(g) if a is None else a
            b = torch.zeros_like(g) if b is None else b
            assert torch.allclose(a + b, g, atol=1e-6)


VARIANT_OPTIONS = [
    {"decomposition": "attributed"},
    {"perturb": "dominant_encoder"},
    {"phi_ema": 0.9},
]


@pytest.mark.parametrize("options", VARIANT_OPTIONS)
def test_variants_with_rho_zero_are_the_base_optimizer(options):
    model, inputs, targets = synthetic_batch()
    reference = copy.deepcopy(model)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    F.cross_entropy(reference(inputs), targets).backward()
    sgd.step()
    variant(model, rho=0.0, **options).step(model, inputs, targets)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_default_options_are_the_targeted_msam_step():
    """One msam class: no options is the targeted step of msam_step (perturb=dominant)."""
    model, inputs, targets = synthetic_batch()
    twin = copy.deepcopy(model)
    method = variant(model)
    assert (method.perturb, method.decomposition, method.phi_ema) == ("dominant", "weighted", 0)
    a = method.step(model, inputs, targets)
    base, kwargs = base_optimizer_factory(config("msam"))
    optimizer = MSAM(twin.parameters(), base, rho=0.05, **kwargs)
    b = msam_step(twin, optimizer, inputs, targets).to_record(twin.modalities)
    assert a["loss"] == b["loss"] and a["sharpness"] == b["sharpness"]
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_dominant_encoder_perturbation_moves_only_that_encoder():
    model, inputs, targets = synthetic_batch()
    twin = copy.deepcopy(model)
    record = variant(model, rho=0.5, perturb="dominant_encoder").step(model, inputs, targets)
    d = record["dominant"]
    # the sharpness the step saw is l(θ + ε) − l(θ) with ε on the dominant encoder only
    loss = F.cross_entropy(twin(inputs), targets)
    params = list(twin.encoders[d].parameters())
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(0.5 * g / norm)
        expected = F.cross_entropy(twin(inputs), targets).item() - loss.item()
    assert record["sharpness"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_phi_ema_hand_computed_with_bias_correction():
    model, _, _ = synthetic_batch()
    method = variant(model, phi_ema=0.5)
    first = method.averaged_phi(torch.tensor([1.0, 0.0]))
    assert torch.allclose(first, torch.tensor([1.0, 0.0], dtype=torch.float64))
    second = method.averaged_phi(torch.tensor([0.0, 1.0]))
    assert torch.allclose(second, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    fresh = variant(synthetic_batch()[0], phi_ema=0.5)
    fresh.load_state_dict(method.state_dict())
    assert fresh.ema_steps == 2 and torch.equal(fresh.ema, method.ema)


@pytest.mark.parametrize("options", VARIANT_OPTIONS)
def test_variants_run_on_batch_norm_models_and_keep_the_first_pass_statistics(options):
    specs = [ModalitySpec("audio", "image", (3, 8, 8)), ModalitySpec("visual", "image", (3, 8, 8))]
    torch.manual_seed(0)
    model = build_model(specs, 3, encoder="resnet18", feature_dim=8)  # 1x1 maps at the end
    inputs = {m: torch.randn(8, 3, 8, 8) for m in ("audio", "visual")}
    targets = torch.randint(0, 3, (8,))
    twin = copy.deepcopy(model)
    twin(inputs)  # the statistics one training forward leaves
    record = variant(model, **options).step(model, inputs, targets)
    assert math.isfinite(record["loss"]) and math.isfinite(record["sharpness"])
    for (name, a), b in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("options", VARIANT_OPTIONS)
def test_variants_leave_frozen_parameters_alone(options):
    model, inputs, targets = synthetic_batch()
    frozen = next(model.encoders["m0"].parameters())  # its first weight matrix
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    others = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    variant(model, rho=0.1, **options).step(model, inputs, targets)
    assert torch.equal(frozen, before)
    assert any(not torch.equal(p, others[n]) for n, p in model.named_parameters() if n in others)


def test_ascent_takes_one_norm_over_every_parameter_whatever_the_groups():
    from msam_core.optim.ascent import ascent as ascent_steps

    torch.manual_seed(0)
    params = [torch.randn(3), torch.randn(2, 2)]
    grads = [torch.randn(3), torch.randn(2, 2)]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    eps = ascent_steps(params, grads, [0.1, 0.1], [False, False])
    for e, g in zip(eps, grads, strict=True):
        assert torch.allclose(e, 0.1 * g / norm)
    eps = ascent_steps(params, grads, [0.1, 0.3], [False, False])  # per-group rho: same norm
    assert torch.allclose(eps[1], 0.3 * grads[1] / norm)


# -- every method in the loop, M = 2 and M = 3 -----------------------------------------------

OWN_METHODS = ["asam", "ogm_ge", "agm"]
VARIANTS = [
    {"decomposition": "attributed"},
    {"phi_ema": 0.9},
    {"perturb": "dominant_encoder"},
]
SHARP = {"asam", "msam"}
COEFFICIENTS = {"ogm_ge": ("score", "ratio", "coef"), "agm": ("score", "ratio", "target", "coef")}


def _cases():
    cases = [(m, {}) for m in OWN_METHODS] + [("msam", opts) for opts in VARIANTS]
    return [(m, opts, n) for m, opts in cases for n in (2, 3)]


@pytest.mark.parametrize(("method", "options", "n_modalities"), _cases())
def test_every_method_trains_two_epochs_and_records_design_keys(
    tmp_path, method, options, n_modalities
):
    dataset_options = {**SMALL, "modalities": n_modalities}
    cfg = TrainConfig.from_dict(
        {
            "method": method,
            "method_options": options,
            "dataset_options": dataset_options,
            "batch_size": 32,
            "epochs": 2,
            "device": "cpu",
        }
    )
    run = load_run(train(cfg, out=tmp_path / "run", quiet=True))
    modalities = run.modalities
    assert len(modalities) == n_modalities
    steps = run.iterations
    assert list(steps["step"]) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    keys = ["loss", "lr", "dominant", "time/step_s"]
    keys += [f"{k}/{m}" for k in ("phi", "weight") for m in modalities]
    if method in SHARP:
        keys.append("sharpness")
    keys += [f"{k}/{m}" for k in COEFFICIENTS.get(method, ()) for m in modalities]
    if "phi_ema" in options:
        keys += [f"phi_ema/{m}" for m in modalities]
    for key in keys:
        assert key in steps and steps[key].notna().all(), key
    assert set(steps["dominant"]) <= set(modalities)
    assert ((steps[[f"weight/{m}" for m in modalities]].sum(axis=1) - 1).abs() < 1e-9).all()
    epochs = run.epochs
    assert set(epochs["split"]) == {"train", "val", "test"}
    for key in ["acc", *[f"acc/{m}" for m in modalities], *[f"phi/{m}" for m in modalities]]:
        assert epochs[key].notna().all(), key


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ogm_ge", "agm"])
def test_modulation_methods_refuse_early_fusion_saying_why(method):
    specs = [ModalitySpec("a", "vector", (3,)), ModalitySpec("b", "vector", (3,))]
    model = build_model(specs, 3, fusion="early")
    with pytest.raises(ValueError, match="early fusion"):
        build_method(method, model, config(method))


def test_bad_options_name_the_choices():
    model = hand_model()
    with pytest.raises(ValueError, match="attributed"):
        variant(model, decomposition="shapley")
    with pytest.raises(ValueError, match="dominant_encoder"):
        variant(model, perturb="head")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        variant(model, phi_ema=1.0)
    with pytest.raises(ValueError, match="continuous"):
        OgmGeMethod(model, config("ogm_ge", method_options={"ogm_form": "paper"}))
    with pytest.raises(ValueError, match="before it starts"):
        OgmGeMethod(model, config("ogm_ge", method_options={"ogm_start": 5, "ogm_end": 2}))


# -- resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options"),
    [("agm", {}), ("ogm_ge", {}), ("msam", {"phi_ema": 0.9, "decomposition": "attributed"})],
)
def test_resume_continues_method_state_bit_for_bit(tmp_path, method, options):
    """AGM's running averages, GE's noise (global RNG) and the φ EMA survive a resume."""
    cfg = {
        "method": method,
        "method_options": options,
        "dataset_options": SMALL,
        "batch_size": 32,
        "device": "cpu",
    }
    whole = train(TrainConfig.from_dict({**cfg, "epochs": 2}), out=tmp_path / "a", quiet=True)
    half = train(TrainConfig.from_dict({**cfg, "epochs": 1}), out=tmp_path / "b", quiet=True)
    train(out=half, resume=True, epochs=2, quiet=True)
    a, b = load_run(whole), load_run(half)
    timing = [c for c in a.iterations.columns if c.startswith("time/")]
    pd.testing.assert_frame_equal(
        a.iterations.drop(columns=timing), b.iterations.drop(columns=timing), rtol=0, atol=0
    )
    last_a = load_checkpoint(whole / "checkpoints" / "last.pt")
    last_b = load_checkpoint(half / "checkpoints" / "last.pt")
    assert last_a["method_state"] == last_b["method_state"]
    for key, value in last_a["model"].items():
        assert torch.equal(value, last_b["model"][key]), key


def test_msam_name_runs_the_variant_class_so_options_reach_users():
    method_names()
    assert method_registry.get_method("msam") is MsamMethod


def test_loop_reports_epochs_so_a_modulation_window_applies_from_its_start_epoch(tmp_path):
    cfg = {
        "method": "ogm_ge",
        "method_options": {"ogm_alpha": 2.0, "ogm_start": 2, "ogm_ge": False},
        "dataset_options": SMALL,
        "batch_size": 32,
        "epochs": 2,
        "seed": 0,
    }
    its = load_run(train(cfg, out=tmp_path / "run", quiet=True)).iterations
    coefs = its[[c for c in its.columns if c.startswith("coef/")]]
    assert (coefs[its["epoch"] == 1] == 1.0).all().all()
    assert (coefs[its["epoch"] == 2] < 1.0).any().any()
