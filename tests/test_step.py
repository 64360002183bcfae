"""One-call steps: M-SAM = Shapley weights + MSAM phases, BN frozen, NaN caught, records."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TinyEarlyFusion, TinyLateFusion, tiny_batch

from msam_core.coalitions import coalition_values
from msam_core.optim import MSAM, SAM
from msam_core.shapley import balance_weights, exact_shapley
from msam_core.step import (
    NonFiniteLossError,
    batch_shapley,
    forward_pass,
    frozen_batchnorm_stats,
    msam_step,
    plain_step,
    sam_step,
)

DIMS = {"audio": 3, "video": 5, "text": 2}
KW = {"lr": 0.1, "momentum": 0.9}


def make(kind="late", seed=0, **kwargs):
    torch.manual_seed(seed)
    return TinyLateFusion(DIMS, **kwargs) if kind == "late" else TinyEarlyFusion(DIMS, **kwargs)


def batch(seed=1, size=24):
    return tiny_batch(DIMS, batch_size=size, seed=seed)


def manual_msam(model, opt, inputs, targets, value):
    """The M-SAM step composed by hand from the public pieces."""
    values = coalition_values(model, inputs, targets, value, masking="input")
    phi = exact_shapley(values)
    w = float(balance_weights(phi)[int(phi.argmax())])
    opt.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(inputs), targets).backward()
    opt.second_step(w)
    return w, phi


@pytest.mark.parametrize("kind", ["late", "early"])
@pytest.mark.parametrize("value", ["accuracy", "prob"])
def test_msam_step_is_shapley_weights_plus_the_two_phases(kind, value):
    model, twin = make(kind), make(kind)
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.05, **KW)
    twin_opt = MSAM(twin.parameters(), torch.optim.SGD, rho=0.05, **KW)
    for step in range(4):
        inputs, targets = batch(seed=step)
        result = msam_step(model, opt, inputs, targets, value=value, perturb="all")
        w, phi = manual_msam(twin, twin_opt, inputs, targets, value)
        assert result.dominant_weight == pytest.approx(w, abs=1e-12)
        torch.testing.assert_close(result.phi, phi, atol=1e-6, rtol=0)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


def test_step_result_measures_what_it_says():
    model = make()
    reference = copy.deepcopy(model)
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.2, **KW)
    inputs, targets = batch()
    result = msam_step(model, opt, inputs, targets, value="prob", perturb="all")
    # ℓ(θ) and ℓ(θ+ε) recomputed independently on the untouched copy
    loss = F.cross_entropy(reference(inputs), targets)
    params = list(reference.parameters())
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(0.2 * g / norm)
        loss_eps = F.cross_entropy(reference(inputs), targets)
    assert result.loss == pytest.approx(float(loss.detach()), abs=1e-6)
    assert result.loss_perturbed == pytest.approx(float(loss_eps), abs=1e-6)
    assert result.sharpness == pytest.approx(result.loss_perturbed - result.loss)
    assert result.sharpness > 0  # an ascent step of a smooth loss goes up
    values = result.values
    assert float(result.phi.sum()) == pytest.approx(float(values[-1] - values[0]), abs=1e-12)
    assert result.dominant == list(DIMS)[int(result.phi.argmax())]
    assert result.dominant_weight == pytest.approx(float(result.weights.max()))
    assert result.time_s > 0


def test_records_have_the_design_keys():
    modalities = list(DIMS)
    shapley_keys = {"dominant", *(f"phi/{m}" for m in DIMS), *(f"weight/{m}" for m in DIMS)}
    inputs, targets = batch()
    model = make()
    opt = MSAM(model.parameters(), torch.optim.SGD, **KW)
    record = msam_step(model, opt, inputs, targets).to_record(modalities)
    assert set(record) == {"loss", "sharpness", "time/step_s", *shapley_keys}
    assert isinstance(record["dominant"], str) and isinstance(record["phi/audio"], float)
    plain = plain_step(model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, targets)
    assert set(plain.to_record(modalities)) == {"loss", "time/step_s", *shapley_keys}
    silent = plain_step(
        model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, targets, value=None
    )
    assert set(silent.to_record(modalities)) == {"loss", "time/step_s"}
    measured = plain_step(
        model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, targets, sharpness_rho=0.05
    )
    assert "sharpness" in measured.to_record()
    with pytest.raises(ValueError, match="modalities"):
        plain.to_record(["audio", "video"])


def test_plain_step_is_the_base_optimizer_and_sam_step_is_sam():
    inputs, targets = batch()
    model, twin = make(), make()
    opt, twin_opt = (
        torch.optim.SGD(model.parameters(), **KW),
        torch.optim.SGD(twin.parameters(), **KW),
    )
    for _ in range(3):
        plain_step(model, opt, inputs, targets, sharpness_rho=0.1)  # measuring leaves θ alone
        twin_opt.zero_grad()
        F.cross_entropy(twin(inputs), targets).backward()
        twin_opt.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-7, rtol=0)

    sam_model, msam_model = make(), make()
    sam = SAM(sam_model.parameters(), torch.optim.SGD, rho=0.1, **KW)
    msam = MSAM(msam_model.parameters(), torch.optim.SGD, rho=0.1, **KW)
    for _ in range(3):
        a = sam_step(sam_model, sam, inputs, targets)
        b = sam_step(msam_model, msam, inputs, targets)  # an MSAM at w = 1 is SAM
        assert a.dominant_weight == b.dominant_weight == 1.0
    for p, q in zip(sam_model.parameters(), msam_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_batchnorm_running_stats_are_frozen_in_the_second_pass():
    model = make(batchnorm=True)
    once = copy.deepcopy(model)
    inputs, targets = batch()
    once.train()
    once(inputs)  # exactly one training-mode forward: the first pass
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.5, **KW)
    model.train()
    msam_step(model, opt, inputs, targets)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, dict(once.named_buffers())[name]), name
    assert int(model.encoders["audio"][1].num_batches_tracked) == 1


def test_frozen_batchnorm_stats_restores_on_error():
    model = make(batchnorm=True)
    model.train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    inputs, _ = batch()
    with pytest.raises(RuntimeError, match="inside"), frozen_batchnorm_stats(model):
        model(inputs)
        raise RuntimeError("inside")
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name])


def test_reused_features_give_the_eval_mode_values_without_dropout_or_batchnorm():
    model = make()
    inputs, targets = batch()
    first = forward_pass(model, inputs, targets)
    assert first.features is not None and first.loss.requires_grad
    reused = batch_shapley(model, inputs, targets, first, value="neg_loss")
    fresh = batch_shapley(model, inputs, targets, first, value="neg_loss", reuse_first_pass=False)
    expected = coalition_values(model, inputs, targets, "neg_loss", masking="input")
    torch.testing.assert_close(reused.values, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(fresh.values, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# failures


def test_nan_loss_in_the_first_pass_is_named_and_changes_nothing():
    model = make()
    before = [p.detach().clone() for p in model.parameters()]
    opt = MSAM(model.parameters(), torch.optim.SGD, **KW)
    inputs, targets = batch()
    inputs["video"][3, 1] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"loss at θ \(first pass\) is nan") as info:
        msam_step(model, opt, inputs, targets)
    message = str(info.value)
    assert "['video']" in message and "lr" in message and "rho" in message
    assert isinstance(info.value, FloatingPointError)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert all(p.grad is None for p in model.parameters())


def test_the_first_loss_is_read_with_the_coalition_values():
    """A step with Shapley values reads ℓ(θ) in the values' transfer, not on its own."""
    model = make()
    inputs, targets = batch()
    first = forward_pass(model, inputs, targets, check=False)
    assert first.loss_value is None
    result = batch_shapley(model, inputs, targets, first)
    assert first.loss_value == float(first.loss.detach())
    assert result.values.device.type == "cpu" and result.values.shape == (8,)


def test_non_finite_perturbed_loss_restores_the_parameters():
    model = make()
    before = [p.detach().clone() for p in model.parameters()]
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=1e39, **KW)  # θ + ε overflows
    inputs, targets = batch()
    with pytest.raises(NonFiniteLossError, match=r"θ\+ε"):
        msam_step(model, opt, inputs, targets)
    assert not opt.perturbed
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs_are_named():
    model = make()
    opt = MSAM(model.parameters(), torch.optim.SGD, **KW)
    inputs, targets = batch()
    with pytest.raises(KeyError, match="text"):
        msam_step(model, opt, {k: v for k, v in inputs.items() if k != "text"}, targets)
    with pytest.raises(ValueError, match=r"shape \[B\] = \[24\]"):
        msam_step(model, opt, inputs, targets[:3])
    with pytest.raises(TypeError, match="sam_step"):
        msam_step(model, SAM(model.parameters(), torch.optim.SGD, lr=0.1), inputs, targets)
    with pytest.raises(ValueError, match="scalar"):
        plain_step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            inputs,
            targets,
            loss_fn=lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
        )
    with pytest.raises(ValueError, match="modalities"):
        forward_pass(torch.nn.Linear(2, 2), {"x": torch.zeros(2, 2)}, torch.zeros(2).long())


@pytest.mark.parametrize("kind", ["early", "late"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_the_first_pass_is_the_full_coalition_only_when_train_equals_eval(kind, batchnorm):
    model = make(kind, batchnorm=batchnorm)
    model.train()
    inputs, targets = batch()
    rows = []
    counted = model.network if kind == "early" else model.head
    counted.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    first = forward_pass(model, inputs, targets)
    result = batch_shapley(model, inputs, targets, first, value="prob")
    if not batchnorm:  # reused values are the eval-mode values
        expected = coalition_values(model, inputs, targets, "prob")
        torch.testing.assert_close(result.values, expected, atol=1e-6, rtol=0)
    # first pass B rows; then the coalitions: B per non-empty one, 1 for the empty one
    n_coalitions = 8 if batchnorm else 7  # with batch norm the full coalition is re-evaluated
    assert rows[:2] == [24, (n_coalitions - 1) * 24 + 1]
