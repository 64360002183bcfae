"""The targeted M-SAM step (the default): ε on the dominant modality's parameters only.

Invariants (docs/design.md, "M-SAM step"), to 1e-6: ``perturb=all`` with ``w_d = 1`` is SAM;
ρ = 0 is the base optimizer for every variant; the targeted ε is zero outside the dominant
modality's parameters and has norm ρ; on early fusion it moves only that modality's columns.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TinyEarlyFusion, TinyLateFusion, tiny_batch

from msam_core.config import TrainConfig
from msam_core.data.base import ModalitySpec
from msam_core.methods import build_method
from msam_core.models import build_model
from msam_core.optim import MSAM, SAM
from msam_core.optim.ascent import ascent, combine
from msam_core.param_groups import modality_parameters
from msam_core.step import msam_step, sam_step
from msam_core.train import train

DIMS = {"audio": 3, "video": 5, "text": 2}
KW = {"lr": 0.1, "momentum": 0.9}


def late(seed=0):
    torch.manual_seed(seed)
    return TinyLateFusion(DIMS)


def early(seed=0):
    torch.manual_seed(seed)
    specs = [ModalitySpec(m, "vector", (d,)) for m, d in DIMS.items()]
    return build_model(specs, 3, fusion="early", feature_dim=4)


def displacement(model, before):
    return {n: (p.detach() - before[n]) for n, p in model.named_parameters()}


def gradients(model, inputs, targets):
    model.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("rho", [0.05, 0.7])
def test_targeted_epsilon_is_zero_outside_the_modality_and_has_norm_rho(rho):
    model = late()
    inputs, targets = tiny_batch(DIMS, 24)
    parts = modality_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for modality in DIMS:
        opt = MSAM(model.parameters(), torch.optim.SGD, rho=rho, **KW)
        grads = gradients(model, inputs, targets)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.first_step(only=parts[modality])
        moved = displacement(model, before)
        own = {names[id(p)] for p, _ in parts[modality]}
        assert own and all(n.startswith(f"encoders.{modality}.") for n in own)
        for n, e in moved.items():
            if n not in own:
                assert torch.equal(e, torch.zeros_like(e)), n
        norm = torch.sqrt(sum((moved[n] ** 2).sum() for n in own))
        assert float(norm) == pytest.approx(rho, abs=1e-6)
        g_norm = torch.sqrt(sum((grads[n] ** 2).sum() for n in own))
        for n in own:  # the direction is g_d / ‖g_d‖
            torch.testing.assert_close(moved[n], rho * grads[n] / g_norm, atol=1e-6, rtol=0)
        opt.restore()
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n]), n  # restored exactly


def test_early_fusion_moves_only_that_modalitys_columns():
    model = early()
    inputs, targets = tiny_batch(DIMS, 24)
    parts = modality_parameters(model)
    first = model.network.net[1].weight
    offsets = {"audio": (0, 3), "video": (3, 8), "text": (8, 10)}
    for modality, (lo, hi) in offsets.items():
        (weight, mask), *rest = parts[modality]
        assert weight is first and not rest
        assert mask[:, lo:hi].all() and int(mask.sum()) == first.shape[0] * (hi - lo)
        opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.3, **KW)
        grads = gradients(model, inputs, targets)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.first_step(only=parts[modality])
        moved = displacement(model, before)
        for n, e in moved.items():
            if n != "network.net.1.weight":
                assert torch.equal(e, torch.zeros_like(e)), n
        e = moved["network.net.1.weight"]
        outside = torch.ones_like(mask)
        outside[:, lo:hi] = False
        assert torch.equal(e[outside], torch.zeros_like(e[outside]))
        assert float(e.norm()) == pytest.approx(0.3, abs=1e-6)
        g = grads["network.net.1.weight"][:, lo:hi]
        torch.testing.assert_close(e[:, lo:hi], 0.3 * g / g.norm(), atol=1e-6, rtol=0)
        opt.restore()


@pytest.mark.parametrize("pinned", [None, *DIMS])
def test_msam_step_takes_the_targeted_ascent_on_the_dominant_modality(pinned):
    """The step's own ℓ(θ+ε) is that of ε = ρ·g_d/‖g_d‖ on the dominant encoder.  With an
    average (phi_ema) pinned to one modality, the dominant modality, its weight and the ascent
    all come from the average, not from the batch's φ."""
    model = late()
    twin = copy.deepcopy(model)
    inputs, targets = tiny_batch(DIMS, 24)
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.5, **KW)
    average = None
    if pinned is not None:
        one_hot = torch.tensor([float(m == pinned) for m in DIMS], dtype=torch.float64)
        average = lambda _: one_hot  # noqa: E731
    result = msam_step(model, opt, inputs, targets, average=average)
    dominant = result.to_record(list(DIMS))["dominant"]
    if pinned is not None:
        assert dominant == pinned and result.dominant_weight == 1.0
    loss = F.cross_entropy(twin(inputs), targets)
    params = list(twin.encoders[dominant].parameters())
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(0.5 * g / norm)
        expected = float(F.cross_entropy(twin(inputs), targets))
    assert result.loss_perturbed == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("make", [late, early])
def test_perturb_all_with_full_weight_is_sam(make):
    """``average`` pins φ to one modality, so w_d = 1: the literal step is then SAM."""
    model, twin = make(), make()
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.2, **KW)
    sam = SAM(twin.parameters(), torch.optim.SGD, rho=0.2, **KW)
    one_hot = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    for step in range(3):
        inputs, targets = tiny_batch(DIMS, 24, seed=step)
        a = msam_step(model, opt, inputs, targets, perturb="all", average=lambda _: one_hot)
        b = sam_step(twin, sam, inputs, targets)
        assert a.dominant_weight == 1.0
        assert a.loss_perturbed == pytest.approx(b.loss_perturbed, abs=1e-6)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


RHO_ZERO_CASES = [
    (late, {}),
    (late, {"perturb": "all"}),
    (late, {"decomposition": "attributed"}),
    (late, {"phi_ema": 0.9}),
    (early, {}),
    (early, {"perturb": "all"}),
]


@pytest.mark.parametrize(("make", "options"), RHO_ZERO_CASES)
def test_rho_zero_is_the_base_optimizer_for_every_variant(make, options):
    model = make()
    reference = copy.deepcopy(model)
    cfg = TrainConfig.from_dict(
        {"method": "msam", "rho": 0.0, "lr": 0.1, "momentum": 0.9, "method_options": options}
    )
    method = build_method("msam", model, cfg)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        inputs, targets = tiny_batch(DIMS, 24, seed=step)
        method.step(model, inputs, targets)
        sgd.zero_grad()
        F.cross_entropy(reference(inputs), targets).backward()
        sgd.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_a_model_without_modality_parameters_is_refused_naming_the_ways_out(tmp_path):
    model = TinyEarlyFusion(DIMS)  # no encoders, no modality_parameters()
    cfg = TrainConfig.from_dict({"method": "msam"})
    with pytest.raises(ValueError, match="modality_parameters") as err:
        build_method("msam", model, cfg)
    for way in ("--fusion concat", "--fusion early", "perturb all"):
        assert way in str(err.value)
    # the literal form needs no partition
    build_method("msam", model, cfg.replace(method_options={"perturb": "all"}))


def test_train_refuses_before_writing_anything(tmp_path):
    from msam_core.data.registry import load_dataset

    data = load_dataset("synthetic", n_train=32, n_val=16, n_test=16)
    dims = {s.name: int(torch.tensor(s.shape).prod()) for s in data.modalities}
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="Ways out"):
        train({"method": "msam", "epochs": 1}, out=out, data=data, model=TinyEarlyFusion(dims))
    assert not out.exists()


def test_a_declared_partition_is_used_and_checked():
    class Declared(TinyEarlyFusion):
        def modality_parameters(self):
            weight = self.network[0].weight
            parts, start = {}, 0
            for m, d in DIMS.items():
                mask = torch.zeros_like(weight, dtype=torch.bool)
                mask[:, start : start + d] = True
                parts[m], start = [(weight, mask)], start + d
            return parts

    model = Declared(DIMS)
    parts = modality_parameters(model)
    assert [m for m in parts] == list(DIMS) and parts["video"][0][1][:, 3:8].all()

    class Wrong(TinyEarlyFusion):
        def modality_parameters(self):
            return {"audio": [(self.network[0].weight, torch.ones(2, 2, dtype=torch.bool))]}

    with pytest.raises(ValueError, match="one entry per modality"):
        modality_parameters(Wrong(DIMS))

    class Copied(TinyEarlyFusion):  # a copy of the weight: the model never trains it
        def modality_parameters(self):
            copy = torch.nn.Parameter(self.network[0].weight.detach().clone())
            return {m: [copy] for m in DIMS}

    with pytest.raises(ValueError, match="not a parameter of the model"):  # when built
        build_method("msam", Copied(DIMS), TrainConfig.from_dict({"method": "msam"}))


def test_combine_and_ascent_ends_are_exact():
    g2, g1 = torch.randn(5), torch.randn(5)
    assert combine([g2.clone()], [g1.clone()], 1.0, 0.0)[0].equal(g2)
    assert combine([g2.clone()], [g1.clone()], 0.0, 1.0)[0].equal(g1)
    assert combine([None], [None], 0.5) == [None]
    torch.testing.assert_close(combine([g2.clone()], [None], 0.25)[0], 0.25 * g2)
    torch.testing.assert_close(combine([None], [g1.clone()], 0.25)[0], 0.75 * g1)
    mixed = combine([g2.clone(), None, g2.clone()], [g1.clone(), g1.clone(), None], 0.25)
    torch.testing.assert_close(mixed[0], 0.25 * g2 + 0.75 * g1)
    torch.testing.assert_close(mixed[1], 0.75 * g1)
    torch.testing.assert_close(mixed[2], 0.25 * g2)
    params, grads = [torch.randn(3)], [torch.zeros(3)]
    assert ascent(params, grads, 0.5)[0].equal(torch.zeros(3))  # zero gradient: no move
    mask = torch.tensor([True, False, True])
    grads = [torch.tensor([3.0, 100.0, 4.0])]
    torch.testing.assert_close(
        ascent(params, grads, 1.0, masks=[mask])[0], torch.tensor([0.6, 0, 0.8])
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_early_fusion_method_built_before_the_model_moves_to_the_gpu():
    """Lightning builds the method in __init__ and moves the model afterwards: the early-fusion
    column masks were made on the CPU and must follow the weights."""
    model = early()
    cfg = TrainConfig.from_dict({"method": "msam", "rho": 0.3, "lr": 0.1})
    method = build_method("msam", model, cfg)
    model.cuda()
    inputs, targets = tiny_batch(DIMS, 24)
    inputs, targets = {m: x.cuda() for m, x in inputs.items()}, targets.cuda()
    record = method.step(model, inputs, targets)
    assert math.isfinite(record["sharpness"]) and record["dominant"] in DIMS


def stock_late(seed=0, **kwargs):
    torch.manual_seed(seed)
    specs = [ModalitySpec(m, "vector", (d,)) for m, d in DIMS.items()]
    return build_model(specs, 3, fusion="concat", feature_dim=4, **kwargs)


@pytest.mark.parametrize("value", ["accuracy", "prob"])
def test_the_second_pass_keeps_the_unmoved_encoders_features_and_changes_nothing(
    value, monkeypatch
):
    """The targeted second pass runs only the dominant encoder (the others' first-pass
    features and graph are kept): the steps are bit-identical to running the whole model."""
    import msam_core.step as step_module

    model = stock_late()
    twin = copy.deepcopy(model)
    opt = MSAM(model.parameters(), torch.optim.SGD, rho=0.5, **KW)
    twin_opt = MSAM(twin.parameters(), torch.optim.SGD, rho=0.5, **KW)
    calls = dict.fromkeys(DIMS, 0)
    names = {id(model.encoders[m]): m for m in DIMS}
    plain_forward = type(model.encoders["audio"]).forward

    def counted(self, x):  # counts without a hook: a hook turns the reuse off
        if id(self) in names:
            calls[names[id(self)]] += 1
        return plain_forward(self, x)

    monkeypatch.setattr(type(model.encoders["audio"]), "forward", counted)
    assert step_module.reusable_encoders(model, modality_parameters(model)) is not None
    records = []
    for step in range(3):
        inputs, targets = tiny_batch(DIMS, 24, seed=step)
        before = dict(calls)
        records.append(msam_step(model, opt, inputs, targets, value=value).to_record())
        dominant = records[-1]["dominant"]
        # first pass, baseline encoding, and the second pass for the dominant encoder only
        assert {m: calls[m] - before[m] for m in DIMS} == {
            m: 3 if m == dominant else 2 for m in DIMS
        }
    monkeypatch.setattr(step_module, "reusable_encoders", lambda *_: None)
    monkeypatch.setattr(type(model.encoders["audio"]), "forward", plain_forward)
    for step, record in enumerate(records):
        inputs, targets = tiny_batch(DIMS, 24, seed=step)
        twin_record = msam_step(twin, twin_opt, inputs, targets, value=value).to_record()
        twin_record["time/step_s"] = record["time/step_s"]
        assert twin_record == record
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_encoder_dropout_or_perturb_all_runs_the_whole_second_pass():
    """A second pass would draw new dropout masks, and perturb=all moves every encoder: the
    first pass's features are not kept then."""
    from msam_core.step import reusable_encoders

    model = stock_late()
    assert reusable_encoders(model, None) is None
    model.encoders["audio"].net.insert(2, torch.nn.Dropout(0.3))
    assert reusable_encoders(model, modality_parameters(model)) is None
    model.eval()  # dropout off: the features would be the same
    assert reusable_encoders(model, modality_parameters(model)) is not None


class _FunctionalDropoutEncoder(torch.nn.Module):
    """Draws dropout inside forward (F.dropout): no Dropout module shows it."""

    def __init__(self, encoder):
        super().__init__()
        self.inner = encoder

    def forward(self, x):
        return torch.nn.functional.dropout(self.inner(x), 0.5, self.training)


def _reusable(model):
    from msam_core.step import reusable_encoders

    return reusable_encoders(model, modality_parameters(model))


def test_an_encoder_the_reuse_cannot_vouch_for_runs_the_whole_second_pass():
    """Reuse is exact only when rerunning an encoder gives the same features: an encoder type
    with its own forward (F.dropout inside), attention with dropout, a random activation, a
    spectral-norm hook or any hook, or a compiled encoder all turn it off."""
    assert _reusable(stock_late()) is not None
    model = stock_late()
    model.encoders["audio"] = _FunctionalDropoutEncoder(model.encoders["audio"])
    assert _reusable(model) is None
    model = stock_late()
    model.encoders["audio"].net.append(torch.nn.RReLU())
    assert _reusable(model) is None
    model = stock_late()
    torch.nn.utils.spectral_norm(model.encoders["audio"].net[1])
    assert _reusable(model) is None
    model = stock_late()
    handle = model.encoders["video"].net[1].register_forward_pre_hook(lambda *_: None)
    assert _reusable(model) is None
    handle.remove()
    assert _reusable(model) is not None
    model.encoders["video"].compile()
    assert _reusable(model) is None
    model = stock_late()  # the head too: the first backward runs through it with the graph kept
    model.head.compile()
    assert _reusable(model) is None
    model = stock_late()  # a forward set on an instance (feature noise, a library's wrapper)
    net = model.encoders["audio"].net
    net.forward = lambda x, net=net: torch.nn.Sequential.forward(net, x) + torch.randn(1)
    assert _reusable(model) is None
    model = stock_late()
    model.forward = lambda inputs, mask=None: type(model).forward(model, inputs, mask)
    assert _reusable(model) is None


def test_a_model_subclass_or_hook_or_global_hook_runs_the_whole_second_pass():
    """The kept features bypass ``model.__call__``: a subclass's own forward, a hook on the
    model, or a global module hook would be skipped by them, so none keeps features."""
    base = stock_late()

    class Noisy(type(base)):
        def forward(self, inputs, mask=None):
            return super().forward(inputs, mask) + 0.01 * torch.randn(1)

    model = stock_late()
    model.__class__ = Noisy
    assert _reusable(model) is None
    model = stock_late()
    handle = model.register_forward_hook(lambda *_: None)
    assert _reusable(model) is None
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    try:
        assert _reusable(stock_late()) is None
    finally:
        handle.remove()
    assert _reusable(stock_late()) is not None


def test_a_feature_the_head_wrote_into_is_not_kept():
    """A head that changes a feature in place (inplace dropout) leaves the first pass's tensor
    changed: the second pass must compute that modality's features again."""
    from msam_core.step import forward_pass, kept_features, reusable_encoders

    model = stock_late()
    parts = modality_parameters(model)
    encoders = reusable_encoders(model, parts)
    inputs, targets = tiny_batch(DIMS, 8, seed=0)
    first = forward_pass(model, inputs, targets)
    moved = next(iter(DIMS))
    kept = kept_features(first, encoders, parts[moved])
    assert sorted(kept) == sorted(m for m in DIMS if m != moved)
    other = next(iter(kept))
    with torch.no_grad():
        first.features[other].mul_(1.0)  # an in-place write, as an inplace head would make
    assert sorted(kept_features(first, encoders, parts[moved])) == sorted(set(kept) - {other})
