"""MSAM / SAM optimizers against an independent implementation of docs/design.md's update."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TinyLateFusion, tiny_batch

from msam_core.optim import MSAM, SAM

DIMS = {"audio": 3, "video": 5}
STEPS = 20
BASES = {
    "sgd_momentum": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.01}),
}


def make_model(seed: int = 0, **kwargs) -> TinyLateFusion:
    torch.manual_seed(seed)
    return TinyLateFusion(DIMS, **kwargs)


def batches(n: int = STEPS):
    return [tiny_batch(DIMS, batch_size=12, seed=100 + i) for i in range(n)]


def loss_of(model, batch):
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same_params(a, b, atol=1e-6):
    for x, y in zip(params_of(a), params_of(b), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def reference_step(model, base, batch, rho, w, adaptive=False):
    """docs/design.md's step written from the formula, independently of msam_core.optim."""
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss_of(model, batch), params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    scaled = [(p.detach().abs() * g if adaptive else g) for p, g in pairs]
    norm = torch.sqrt(sum((s**2).sum() for s in scaled))
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in pairs:
            p.add_(rho * (p * p * g if adaptive else g) / norm)
    grads_at_eps = torch.autograd.grad(loss_of(model, batch), params, allow_unused=True)
    with torch.no_grad():
        for p, s, g, g_eps in zip(params, saved, grads, grads_at_eps, strict=True):
            p.copy_(s)
            p.grad = w * g_eps + (1 - w) * g
    base.step()
    base.zero_grad()


def plain_step(model, base, batch):
    base.zero_grad()
    loss_of(model, batch).backward()
    base.step()


def wrapper_step(model, opt, batch, w=None):
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.first_step(zero_grad=True)
    loss_of(model, batch).backward()
    if w is None:
        opt.second_step(zero_grad=True)
    else:
        opt.second_step(dominant_weight=w, zero_grad=True)


@pytest.mark.parametrize("base_name", BASES)
@pytest.mark.parametrize("w", [1.0, 0.3])
def test_msam_follows_the_update_rule(base_name, w):
    cls, kwargs = BASES[base_name]
    model, ref = make_model(), make_model()
    opt = MSAM(model.parameters(), cls, rho=0.05, **kwargs)
    ref_opt = cls(ref.parameters(), **kwargs)
    for batch in batches():
        wrapper_step(model, opt, batch, w)
        reference_step(ref, ref_opt, batch, rho=0.05, w=w)
    assert_same_params(model, ref)
    assert_same_params(model, make_model(), atol=float("inf"))  # shapes unchanged
    assert not torch.allclose(params_of(model)[0], params_of(make_model())[0])  # it trained


@pytest.mark.parametrize("base_name", BASES)
def test_dominant_weight_one_is_sam(base_name):
    cls, kwargs = BASES[base_name]
    msam_model, sam_model, ref = make_model(), make_model(), make_model()
    msam = MSAM(msam_model.parameters(), cls, rho=0.1, **kwargs)
    sam = SAM(sam_model.parameters(), cls, rho=0.1, **kwargs)
    ref_opt = cls(ref.parameters(), **kwargs)
    for batch in batches():
        wrapper_step(msam_model, msam, batch, 1.0)
        wrapper_step(sam_model, sam, batch)
        reference_step(ref, ref_opt, batch, rho=0.1, w=1.0)
    assert_same_params(msam_model, ref)
    assert_same_params(sam_model, ref)
    assert_same_params(msam_model, sam_model, atol=0)  # the same arithmetic, bit for bit


@pytest.mark.parametrize("base_name", BASES)
@pytest.mark.parametrize(("rho", "w"), [(0.0, 0.37), (0.05, 0.0)])
def test_rho_zero_or_weight_zero_is_the_base_optimizer(base_name, rho, w):
    cls, kwargs = BASES[base_name]
    model, base_model = make_model(), make_model()
    opt = MSAM(model.parameters(), cls, rho=rho, **kwargs)
    base = cls(base_model.parameters(), **kwargs)
    for batch in batches():
        wrapper_step(model, opt, batch, w)
        plain_step(base_model, base, batch)
    assert_same_params(model, base_model)


def test_adaptive_is_asam():
    cls, kwargs = BASES["sgd_momentum"]
    model, ref = make_model(), make_model()
    opt = MSAM(model.parameters(), cls, rho=0.5, adaptive=True, **kwargs)
    ref_opt = cls(ref.parameters(), **kwargs)
    for batch in batches(8):
        wrapper_step(model, opt, batch, 0.6)
        reference_step(ref, ref_opt, batch, rho=0.5, w=0.6, adaptive=True)
    assert_same_params(model, ref)


def test_per_group_rho_and_lr():
    model = make_model()
    encoders, head = list(model.encoders.parameters()), list(model.head.parameters())
    opt = MSAM(
        [{"params": encoders, "rho": 0.0}, {"params": head, "lr": 0.5}],
        torch.optim.SGD,
        rho=0.2,
        lr=0.1,
    )
    assert [g["rho"] for g in opt.param_groups] == [0.0, 0.2]
    assert [g["lr"] for g in opt.base_optimizer.param_groups] == [0.1, 0.5]
    batch = batches(1)[0]
    before = params_of(model)
    opt.zero_grad()
    loss_of(model, batch).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.first_step()
    moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)]
    n_enc = len(encoders)
    assert not any(moved[:n_enc]) and all(moved[n_enc:])  # rho = 0 group stays at θ
    # ε is normalised over every parameter with a gradient, encoder ones included
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    eps = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)][n_enc:]
    for e, g in zip(eps, grads[n_enc:], strict=True):
        torch.testing.assert_close(e, 0.2 * g / norm)
    loss_of(model, batch).backward()
    opt.second_step(0.5)
    assert opt.param_groups is opt.base_optimizer.param_groups


def test_parameters_without_gradients():
    """Params without a first-pass grad are not perturbed; without a second-pass grad they are
    still restored, and step on (1 − w)·g (SAM: not at all)."""
    a = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    b = torch.nn.Parameter(torch.tensor([0.5]))
    unused = torch.nn.Parameter(torch.tensor([3.0]))
    for cls, w in ((MSAM, 0.25), (SAM, 1.0)):
        with torch.no_grad():
            a.copy_(torch.tensor([1.0, -2.0]))
            b.copy_(torch.tensor([0.5]))
        a.grad = b.grad = None
        opt = cls([a, b, unused], torch.optim.SGD, rho=0.1, lr=1.0)
        ((a**2).sum() + 3 * b.sum()).backward()  # g_a = 2a, g_b = 3
        g_a, g_b = 2 * a.detach().clone(), torch.tensor([3.0])
        opt.first_step()
        assert torch.equal(unused.detach(), torch.tensor([3.0]))
        assert unused.grad is None
        torch.testing.assert_close(b.detach(), 0.5 + 0.1 * g_b / torch.cat([g_a, g_b]).norm())
        (a**2).sum().backward()  # b takes no part in the second pass
        g_a_eps = 2 * a.detach().clone()
        if cls is MSAM:
            opt.second_step(w)
        else:
            opt.second_step()
        torch.testing.assert_close(
            a.detach(), torch.tensor([1.0, -2.0]) - (w * g_a_eps + (1 - w) * g_a)
        )
        torch.testing.assert_close(b.detach(), 0.5 - (1 - w) * g_b)  # restored, then (1 − w)·g
        assert torch.equal(unused.detach(), torch.tensor([3.0]))
        assert not opt.perturbed


def test_closure_form_equals_the_two_phases():
    model, twin = make_model(), make_model()
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    twin_opt = MSAM(twin.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    for batch in batches(5):
        wrapper_step(twin, twin_opt, batch, 0.4)
        opt.zero_grad()
        loss_of(model, batch).backward()

        def closure(batch=batch):
            loss = loss_of(model, batch)
            loss.backward()
            return loss

        loss = opt.step(closure, dominant_weight=0.4)
        assert loss.ndim == 0
    assert_same_params(model, twin, atol=0)


@pytest.mark.parametrize("base_name", BASES)
def test_checkpoint_mid_way_and_resume_gives_identical_parameters(base_name):
    cls, kwargs = BASES[base_name]
    data = batches()
    model = make_model()
    opt = MSAM(model.parameters(), cls, rho=0.05, **kwargs)
    scheduler = torch.optim.lr_scheduler.StepLR(opt.base_optimizer, step_size=4, gamma=0.5)
    buffer = io.BytesIO()
    for i, batch in enumerate(data):
        if i == STEPS // 2:
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": scheduler.state_dict(),
                },
                buffer,
            )
        wrapper_step(model, opt, batch, 0.5 + 0.02 * i)
        scheduler.step()

    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed = make_model(seed=123)  # different initial weights: everything must come from disk
    opt2 = MSAM(resumed.parameters(), cls, rho=0.3, **kwargs)  # rho too: it is in the groups
    scheduler2 = torch.optim.lr_scheduler.StepLR(opt2.base_optimizer, step_size=4, gamma=0.5)
    resumed.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    scheduler2.load_state_dict(checkpoint["sched"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.param_groups[0]["rho"] == 0.05
    for i, batch in enumerate(data[STEPS // 2 :], start=STEPS // 2):
        wrapper_step(resumed, opt2, batch, 0.5 + 0.02 * i)
        scheduler2.step()
    assert_same_params(resumed, model, atol=0)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] < kwargs["lr"]


def test_state_dict_holds_the_base_state():
    model = make_model()
    opt = MSAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    wrapper_step(model, opt, batches(1)[0], 0.5)
    state = opt.state_dict()
    assert all("momentum_buffer" in s for s in state["state"].values())
    assert state["param_groups"][0]["rho"] == 0.05
    restored = copy.deepcopy(state)
    opt.load_state_dict(restored)
    assert opt.state_dict()["param_groups"] == state["param_groups"]


def test_misuse_is_named():
    model = make_model()
    opt = MSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="backward"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="without first_step"):
        opt.second_step(0.5)
    before = params_of(model)
    loss_of(model, batches(1)[0]).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="first_step called twice"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="restore"):
        opt.state_dict()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        opt.second_step(1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        opt.second_step(float("nan"))
    opt.restore()
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
    with pytest.raises(ValueError, match="rho"):
        MSAM(model.parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer class"):
        MSAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_add_param_group_reaches_the_base_optimizer():
    model = make_model()
    opt = SAM(model.encoders.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    opt.add_param_group({"params": list(model.head.parameters()), "lr": 0.01})
    assert len(opt.base_optimizer.param_groups) == 2
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert opt.param_groups[1]["rho"] == 0.1
