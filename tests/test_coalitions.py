"""Coalition values: batched pass == separate passes, input == feature masking, mode restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TinyEarlyFusion, TinyLateFusion, tiny_batch
from torch import nn

import msam_core.coalitions as coalitions_module
from msam_core.coalitions import (
    VALUE_KINDS,
    coalition_values,
    coalition_values_from_features,
    encode_baselines,
    masked_values,
)
from msam_core.data.base import ModalitySpec
from msam_core.masking import coalition_masks
from msam_core.models import build_model
from msam_core.shapley import ShapleyResult, modality_shapley

DIMS = {"audio": 3, "video": 5}
DIMS3 = {"a": 2, "b": 3, "c": 4}


def reference_values(model, inputs, targets, value):
    """One forward pass per coalition, the value computed by hand."""
    out = []
    with torch.no_grad():
        model.eval()
        for mask in coalition_masks(len(model.modalities)):
            logits = model(inputs, mask)
            if value == "accuracy":
                out.append((logits.argmax(1) == targets).double().mean())
            elif value == "prob":
                out.append(logits.softmax(1)[torch.arange(len(targets)), targets].double().mean())
            else:
                out.append(-F.cross_entropy(logits, targets).double())
    return torch.stack(out)


@pytest.mark.parametrize("value", VALUE_KINDS)
@pytest.mark.parametrize("make", [TinyLateFusion, TinyEarlyFusion])
def test_batched_pass_equals_one_pass_per_coalition(make, value):
    torch.manual_seed(0)
    model = make(DIMS3)
    inputs, targets = tiny_batch(DIMS3, seed=1)
    values = coalition_values(model, inputs, targets, value=value)
    assert values.shape == (8,) and values.dtype == torch.float64
    torch.testing.assert_close(
        values, reference_values(model, inputs, targets, value), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("value", VALUE_KINDS)
def test_input_and_feature_masking_agree_on_late_fusion(value):
    torch.manual_seed(1)
    model = TinyLateFusion(DIMS3)
    inputs, targets = tiny_batch(DIMS3, batch_size=32, seed=2)
    by_input = coalition_values(model, inputs, targets, value=value, masking="input")
    by_feature = coalition_values(model, inputs, targets, value=value, masking="feature")
    torch.testing.assert_close(by_feature, by_input, atol=1e-6, rtol=0)
    assert not torch.equal(by_input, by_input[:1].expand(8))  # the game is not constant


@pytest.mark.parametrize("fusion", ["concat", "gated", "film"])
def test_feature_masking_on_library_models_with_mean_baselines(fusion):
    specs = [ModalitySpec("audio", "vector", (6,)), ModalitySpec("video", "vector", (4,))]
    torch.manual_seed(2)
    model = build_model(specs, num_classes=3, fusion=fusion, feature_dim=8)
    inputs, targets = tiny_batch({"audio": 6, "video": 4}, batch_size=24, seed=3)
    model.fit_baselines(inputs, kind="mean")  # non-zero baselines: features of the mean input
    by_input = coalition_values(model, inputs, targets, value="prob", masking="input")
    by_feature = coalition_values(model, inputs, targets, value="prob", masking="auto")
    torch.testing.assert_close(by_feature, by_input, atol=1e-6, rtol=0)


def test_explicit_baselines_replace_absent_inputs_in_both_modes():
    torch.manual_seed(3)
    model = TinyLateFusion(DIMS)
    inputs, targets = tiny_batch(DIMS, seed=4)
    baselines = {"audio": torch.full((3,), 0.5), "video": torch.linspace(-1, 1, 5)}
    by_input = coalition_values(model, inputs, targets, "neg_loss", "input", baselines)
    by_feature = coalition_values(model, inputs, targets, "neg_loss", "feature", baselines)
    torch.testing.assert_close(by_feature, by_input, atol=1e-6, rtol=0)
    # the same baselines held by the model give the same numbers
    model.baselines = baselines
    torch.testing.assert_close(coalition_values(model, inputs, targets, "neg_loss"), by_input)
    zeros = coalition_values(TinyLateFusion(DIMS), inputs, targets, "neg_loss")
    assert not torch.allclose(zeros, by_input)


def test_values_from_features_reuse_a_forward_pass():
    torch.manual_seed(4)
    model = TinyLateFusion(DIMS3)
    inputs, targets = tiny_batch(DIMS3, seed=5)
    features = model.encode(inputs)  # with grad, as a training step's first pass
    base = encode_baselines(model, inputs)
    assert all(base[m].shape == (1, 4) for m in DIMS3)
    values = coalition_values_from_features(model, features, base, targets, "prob")
    torch.testing.assert_close(values, coalition_values(model, inputs, targets, "prob"))
    # per-sample baseline features [B, F] broadcast the same way
    wide = {m: b.expand(16, -1) for m, b in base.items()}
    torch.testing.assert_close(
        coalition_values_from_features(model, features, wide, targets, "prob"), values
    )


@pytest.mark.parametrize("value", VALUE_KINDS)
@pytest.mark.parametrize("masking", ["input", "feature"])
def test_ignored_modality_has_zero_shapley_value(value, masking):
    torch.manual_seed(5)
    model = TinyLateFusion(DIMS3, ignore=["b"])
    inputs, targets = tiny_batch(DIMS3, seed=6)
    result = modality_shapley(model, inputs, targets, value=value, masking=masking)
    assert result.phi[1].item() == 0.0
    assert result.phi.abs().sum() > 0
    assert result.weights[1].item() == 0.0 or result.weights.eq(1 / 3).all()


def test_modality_shapley_result():
    torch.manual_seed(6)
    model = TinyLateFusion(DIMS3)
    inputs, targets = tiny_batch(DIMS3, seed=7)
    result = modality_shapley(model, inputs, targets, value="prob")
    assert isinstance(result, ShapleyResult)
    assert result.modalities == list(DIMS3)
    values = result.values
    assert float(result.phi.sum()) == pytest.approx(float(values[-1] - values[0]), abs=1e-12)
    assert result.dominant == list(DIMS3)[int(result.phi.argmax())]
    assert float(result.weights.sum()) == pytest.approx(1.0)
    assert result.stderr is None
    record = result.to_record()
    assert set(record) == {
        "dominant",
        *(f"phi/{m}" for m in DIMS3),
        *(f"weight/{m}" for m in DIMS3),
    }


def test_many_modalities_are_sampled_and_still_efficient():
    dims = {f"m{i}": 1 for i in range(11)}
    torch.manual_seed(7)
    # float64 end to end: the identity is exact, so only double rounding may separate the sides
    model = TinyLateFusion(dims, feature_dim=2).double()
    inputs, targets = tiny_batch(dims, batch_size=8, seed=8)
    inputs = {m: x.double() for m, x in inputs.items()}
    result = modality_shapley(model, inputs, targets, value="prob", n_permutations=4)
    assert result.values is None and result.stderr.shape == (11,)
    full = masked_values(model, inputs, targets, torch.tensor([[True] * 11, [False] * 11]), "prob")
    # every permutation's marginals sum to v(N) - v(∅), so the estimate does too
    assert float(result.phi.sum()) == pytest.approx(float(full[0] - full[1]), abs=1e-9)


def test_chunked_passes_give_the_same_values():
    torch.manual_seed(8)
    model = TinyEarlyFusion(DIMS3)
    inputs, targets = tiny_batch(DIMS3, seed=9)
    whole = coalition_values(model, inputs, targets, "neg_loss")
    torch.testing.assert_close(
        coalition_values(model, inputs, targets, "neg_loss", chunk_size=3), whole
    )


def test_train_mode_and_batchnorm_statistics_are_left_alone():
    torch.manual_seed(9)
    model = TinyLateFusion(DIMS, batchnorm=True, dropout=0.5)
    model.train()
    model.encoders["video"].eval()  # a deliberately frozen submodule keeps its own flag
    flags = {name: module.training for name, module in model.named_modules()}
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, targets = tiny_batch(DIMS, seed=10)
    values = coalition_values(model, inputs, targets, "prob", masking="feature")
    assert {name: module.training for name, module in model.named_modules()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), k
    # eval mode: no dropout, running statistics -> the same numbers as separate eval passes
    torch.testing.assert_close(
        values, reference_values(model, inputs, targets, "prob"), atol=1e-6, rtol=0
    )


def test_modes_are_restored_when_the_model_raises():
    class Exploding(TinyEarlyFusion):
        def forward(self, inputs, mask=None):
            raise RuntimeError("boom")

    model = Exploding(DIMS)
    model.train()
    inputs, targets = tiny_batch(DIMS)
    with pytest.raises(RuntimeError, match="boom"):
        coalition_values(model, inputs, targets)
    assert all(module.training for module in model.modules())


# --------------------------------------------------------------------------------------------
# bad input


def test_missing_modality_key_is_named():
    model = TinyLateFusion(DIMS)
    inputs, targets = tiny_batch(DIMS)
    del inputs["video"]
    with pytest.raises(KeyError, match="video"):
        coalition_values(model, inputs, targets)


def test_wrong_mask_shape_is_named():
    model = TinyEarlyFusion(DIMS)
    inputs, targets = tiny_batch(DIMS)
    with pytest.raises(ValueError, match=r"\[K, M\] = \[K, 2\]"):
        masked_values(model, inputs, targets, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must have shape \[2\] or \[16, 2\]"):
        model(inputs, torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"value": "f1"}, ValueError, "accuracy"),
        ({"masking": "pixels"}, ValueError, "feature"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_bad_options_are_named(kwargs, error, needle):
    model = TinyLateFusion(DIMS)
    inputs, targets = tiny_batch(DIMS)
    with pytest.raises(error, match=needle):
        coalition_values(model, inputs, targets, **kwargs)


def test_feature_masking_needs_encode_and_fuse():
    model = TinyEarlyFusion(DIMS)
    inputs, targets = tiny_batch(DIMS)
    with pytest.raises(ValueError, match="masking='input'"):
        coalition_values(model, inputs, targets, masking="feature")


def test_bad_targets_are_named():
    model = TinyEarlyFusion(DIMS)
    inputs, targets = tiny_batch(DIMS)
    with pytest.raises(ValueError, match=r"shape \[B\] = \[16\]"):
        coalition_values(model, inputs, targets[:5])
    with pytest.raises(ValueError, match="integer class indices"):
        coalition_values(model, inputs, targets.float())


def test_model_without_protocol_is_named():
    with pytest.raises(ValueError, match="modalities"):
        coalition_values(torch.nn.Linear(2, 2), {"x": torch.zeros(2, 2)}, torch.zeros(2).long())


def test_one_pass_with_a_single_row_for_the_empty_coalition():
    model = TinyEarlyFusion(DIMS)
    inputs, targets = tiny_batch(DIMS)
    rows = []
    model.network.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    values = coalition_values(model, inputs, targets, "prob")
    assert rows == [3 * 16 + 1]  # {audio}, {video}, {audio, video}: B rows each; ∅: one row
    torch.testing.assert_close(values, reference_values(model, inputs, targets, "prob"))
    rows.clear()
    coalition_values(model, inputs, targets, "prob", chunk_size=2)
    assert rows == [16 + 1, 2 * 16]  # chunks {∅, {audio}} and {{video}, {audio, video}}


def test_cpu_passes_are_cache_sized_by_default():
    from msam_core.coalitions import CPU_ROWS_PER_PASS

    dims = {f"m{i}": 2 for i in range(5)}  # 32 coalitions
    model = TinyEarlyFusion(dims)
    batch_size = CPU_ROWS_PER_PASS // 4
    inputs, targets = tiny_batch(dims, batch_size=batch_size)
    rows = []
    model.network.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    values = coalition_values(model, inputs, targets, "prob")
    assert max(rows) <= CPU_ROWS_PER_PASS + 1 and sum(rows) == 31 * batch_size + 1
    rows.clear()
    torch.testing.assert_close(
        coalition_values(model, inputs, targets, "prob", chunk_size=32), values
    )
    assert rows == [31 * batch_size + 1]  # an explicit chunk size: all in one pass


# --------------------------------------------------------------------------------------------
# early fusion: the first layer's linearity


def _early_model(dims: dict[str, int], seed: int = 0):
    torch.manual_seed(seed)
    specs = [ModalitySpec(m, "vector", (d,)) for m, d in dims.items()]
    model = build_model(specs, 4, fusion="early")
    model.set_baselines({m: torch.randn(d) for m, d in dims.items()})  # non-zero baselines
    return model


def _coalition_logits(model, inputs, masking):
    """Every coalition's logits ``[2**M, B, C]`` by input masking or by the first-layer parts."""
    masks = coalition_masks(len(model.modalities))
    with torch.no_grad():
        if masking == "input":
            return torch.stack([model(inputs, mask) for mask in masks])
        parts = model.first_layer_parts(inputs)
        base = model.first_layer_parts({m: b.unsqueeze(0) for m, b in model.baselines.items()})
        out = []
        for mask in masks:
            z = sum(parts[m] if mask[i] else base[m] for i, m in enumerate(model.modalities))
            out.append(model.after_first_layer(z).expand(len(parts["a"]), -1))  # ∅: one row
        return torch.stack(out)


def test_early_fusion_first_layer_parts_equal_input_masking():
    dims = {"a": 7, "b": 5, "c": 9}
    model = _early_model(dims)
    inputs, _ = tiny_batch(dims, batch_size=16, seed=3)
    torch.testing.assert_close(
        _coalition_logits(model, inputs, "first_layer"),
        _coalition_logits(model, inputs, "input"),
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("value", VALUE_KINDS)
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_first_layer_masking_equals_input_masking(value, chunk_size):
    dims = {"a": 7, "b": 5, "c": 9}
    model = _early_model(dims, seed=1)
    inputs, targets = tiny_batch(dims, batch_size=24, seed=4)
    fast = coalition_values(model, inputs, targets, value, "first_layer", chunk_size=chunk_size)
    slow = coalition_values(model, inputs, targets, value, "input")
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    auto = coalition_values(model, inputs, targets, value, "auto", chunk_size=chunk_size)
    torch.testing.assert_close(auto, fast, atol=0, rtol=0)  # auto picks the first-layer path
    given = {m: torch.full((d,), 0.5) for m, d in dims.items()}  # explicit baselines too
    torch.testing.assert_close(
        coalition_values(model, inputs, targets, value, "first_layer", given),
        coalition_values(model, inputs, targets, value, "input", given),
        atol=1e-6,
        rtol=0,
    )


def test_first_layer_masking_needs_the_pair():
    model = TinyEarlyFusion(DIMS)
    inputs, targets = tiny_batch(DIMS)
    with pytest.raises(ValueError, match="first_layer_parts"):
        coalition_values(model, inputs, targets, masking="first_layer")


def test_first_layer_masking_on_chosen_coalitions_in_any_order():
    dims = {"a": 7, "b": 5, "c": 9}
    model = _early_model(dims, seed=2)
    inputs, targets = tiny_batch(dims, batch_size=12, seed=5)
    masks = torch.tensor(
        [[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool
    )  # the empty coalition twice, mid-chunk and last
    for chunk_size in (None, 2):
        fast = masked_values(model, inputs, targets, masks, "prob", "first_layer", None, chunk_size)
        slow = masked_values(model, inputs, targets, masks, "prob", "input", None, chunk_size)
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)


def test_values_and_loss_are_packed_in_their_own_dtype_before_the_transfer():
    """The one transfer of the coalition values and the loss packs them in their common dtype
    (float32 here) and widens on the host: a device without float64 (Apple's MPS) can pack
    them, and nothing is rounded on the way (float32 -> float64 is exact)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from msam_core.coalitions import mean_values

    widened = []

    class Widening(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sources = [a for a in args if isinstance(a, torch.Tensor)]
            if (
                isinstance(out, torch.Tensor)
                and out.dtype == torch.float64
                and sources
                and all(a.dtype == torch.float32 for a in sources)
            ):
                widened.append(tuple(out.shape))
            return out

    sums = [torch.tensor([3.0, 5.0, 7.0, 8.0])]
    loss = torch.tensor(0.123456789)
    with Widening():
        values = mean_values(sums, [0, 1, 2, 3], batch_size=8, scalar=loss)
    assert widened == [(5,)]  # one widening, of the packed values and loss together
    assert values.dtype == torch.float64
    assert values[-1].item() == float(loss)
    assert values[:-1].tolist() == pytest.approx(
        mean_values(sums, [0, 1, 2, 3], batch_size=8).tolist()
    )


def test_the_cached_baseline_rows_follow_a_data_assignment():
    """``buffer.data = ...`` keeps the tensor and its version but swaps its storage: the cached
    baseline rows must not outlive it."""
    from msam_core.coalitions import _own_baseline_inputs

    torch.manual_seed(0)
    specs = [ModalitySpec("a", "vector", (3,)), ModalitySpec("b", "vector", (2,))]
    model = build_model(specs, 2, fusion="concat", feature_dim=4)
    inputs = {"a": torch.randn(4, 3), "b": torch.randn(4, 2)}
    before = _own_baseline_inputs(model, inputs)["a"].clone()
    model.baselines["a"].data = torch.full((3,), 7.0)
    after = _own_baseline_inputs(model, inputs)["a"]
    assert not torch.equal(before, after)
    assert torch.equal(after, torch.full_like(after, 7.0))


def test_counts_packed_with_a_bf16_loss_stay_exact():
    """Accuracy counts (int64) packed beside a bf16 loss are packed in float32 at least: bf16
    holds whole numbers exactly only up to 256, and φ would come from rounded counts."""
    from msam_core.coalitions import mean_values

    counts = [torch.tensor([301, 257, 511, 0])]
    values = mean_values(counts, [0, 1, 2, 3], 512, scalar=torch.tensor(0.5, dtype=torch.bfloat16))
    assert (values[:-1] * 512).round().tolist() == [301, 257, 511, 0]
    assert values[-1].item() == 0.5


@pytest.mark.parametrize("rows", [None, "half"])
def test_a_step_reuses_train_mode_features_only_where_they_are_the_eval_mode_ones(rows):
    # batch norm in an encoder, in training mode: the first pass normalised with the batch's
    # statistics, so its features are not the eval-mode ones the values are defined with
    from msam_core.shapley import batch_shapley
    from msam_core.step import forward_pass

    torch.manual_seed(0)
    dims = {"a": 6, "b": 4, "c": 5}
    specs = [ModalitySpec(m, "vector", (d,)) for m, d in dims.items()]
    model = build_model(specs, 3, fusion="concat", dropout=0.3)  # head dropout: features still kept
    for encoder in model.encoders.values():
        encoder.net.insert(2, torch.nn.BatchNorm1d(128))
    generator = torch.Generator().manual_seed(1)
    y = torch.randint(3, (96,), generator=generator)
    x = {
        m: torch.randn(96, d, generator=generator) + (i + 1) * y[:, None]
        for i, (m, d) in enumerate(dims.items())
    }
    subset = None if rows is None else torch.arange(0, 96, 2)
    first = forward_pass(model, x, y)
    kept = batch_shapley(model, x, y, first, "neg_loss", rows=subset)
    fresh = batch_shapley(model, x, y, first, "neg_loss", reuse_first_pass=False, rows=subset)
    torch.testing.assert_close(kept.values, fresh.values, rtol=0, atol=1e-12)
    # and where they are the eval-mode ones they are kept: the encoders do not run again
    for encoder in model.encoders.values():
        encoder.net[2].eval()
    first = forward_pass(model, x, y)
    calls = []
    hook = model.encoders["a"].register_forward_hook(lambda *_: calls.append(1))
    try:
        batch_shapley(model, x, y, first, "neg_loss", rows=subset)
    finally:
        hook.remove()
    assert len(calls) == 1  # the baseline's encoding alone


@pytest.mark.parametrize("fusion", ["concat", "sum"])
@pytest.mark.parametrize("hidden", [None, 16])
def test_a_linear_heads_coalitions_from_its_first_layer_terms_equal_the_head_per_coalition(
    fusion, hidden, monkeypatch
):
    """Concat and sum heads are linear up to their first layer: coalition values from each
    modality's term of it equal the head run on every coalition's rows, which a hook (or
    dropout in training mode) brings back."""
    dims = {"a": 6, "b": 4, "c": 5}
    specs = [ModalitySpec(m, "vector", (d,)) for m, d in dims.items()]
    torch.manual_seed(5)
    model = build_model(specs, 3, fusion=fusion, feature_dim=8, hidden=hidden, dropout=0.3)
    model.fit_baselines(tiny_batch(dims, batch_size=24, seed=7)[0], kind="mean")
    model.eval()
    inputs, targets = tiny_batch(dims, batch_size=24, seed=6)
    features = model.encode(inputs)
    parts = model.fusion_parts(features)
    assert parts is not None and list(parts) == list(dims)
    joined = model.after_fusion_parts(sum(parts.values()))
    torch.testing.assert_close(joined, model.fuse(features), atol=1e-6, rtol=0)
    calls = []
    summed = coalitions_module._summed_parts

    def counted(*args, **kwargs):
        calls.append(1)
        return summed(*args, **kwargs)

    monkeypatch.setattr(coalitions_module, "_summed_parts", counted)
    fast = coalition_values(model, inputs, targets, "prob", masking="feature")
    assert calls == [1]  # the terms' path was taken
    handle = model.head.classifier[1].register_forward_hook(lambda *args: None)
    assert model.fusion_parts(features) is None  # a hook is never skipped
    slow = coalition_values(model, inputs, targets, "prob", masking="feature")
    handle.remove()
    assert calls == [1]  # the head ran on every coalition's rows
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    assert not torch.equal(fast, fast[:1].expand(8))
    assert model.train().fusion_parts(features) is None  # dropout would be skipped


def test_heads_that_are_not_linear_in_the_features_offer_no_terms():
    specs = [ModalitySpec("audio", "vector", (6,)), ModalitySpec("video", "vector", (4,))]
    features = {"audio": torch.randn(5, 8), "video": torch.randn(5, 8)}
    for fusion in ("gated", "film"):
        model = build_model(specs, 3, fusion=fusion, feature_dim=8).eval()
        assert model.fusion_parts(features) is None, fusion
    model = build_model(specs, 3, fusion="concat", feature_dim=8).eval()
    assert model.fusion_parts(features) is not None
    model.fuse = lambda feats, mask=None: model.head(feats, mask)  # fuse replaced: not trusted
    assert model.fusion_parts(features) is None
    # anything else replaced or hooked in the head, or a classifier not as built
    head = build_model(specs, 3, fusion="concat", feature_dim=8).eval().head
    changes = [
        lambda: head.classifier.register_forward_hook(lambda module, args, out: out / 5),
        lambda: setattr(head, "combine", lambda feats: torch.cat(list(feats.values()), 1) / 2),
        lambda: setattr(head.classifier, "forward", lambda x: x),
        lambda: setattr(head, "classifier", nn.Linear(16, 3)),
        lambda: setattr(head, "classifier", nn.Sequential(nn.Dropout(0.0), nn.ReLU())),
    ]
    for change in changes:
        head = build_model(specs, 3, fusion="concat", feature_dim=8).eval().head
        assert head.first_layer_parts(features) is not None
        change()
        assert head.first_layer_parts(features) is None
    # a first layer without a bias is still a sum of terms
    head = build_model(specs, 3, fusion="concat", feature_dim=8).eval().head
    head.classifier[1] = nn.Linear(16, 3, bias=False)
    z = sum(head.first_layer_parts(features).values())
    torch.testing.assert_close(head.after_first_layer(z), head(features), atol=1e-6, rtol=0)
