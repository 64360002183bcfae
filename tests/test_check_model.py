"""``check_model`` tells a model that follows the protocol from one that does not, and late
fusion takes encoders of different widths."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TinyEarlyFusion, TinyLateFusion, tiny_batch
from torch import nn

import msam_core.sinks
from msam_core import build_model, check_model, load_dataset, train
from msam_core.masking import apply_input_mask
from msam_core.shapley import modality_shapley

DIMS = {"audio": 3, "visual": 5}


class IgnoresMask(nn.Module):
    """Takes a mask and never uses it: every coalition has the same value."""

    def __init__(self) -> None:
        super().__init__()
        self.modalities = list(DIMS)
        self.net = nn.Linear(sum(DIMS.values()), 3)

    def forward(self, inputs, mask=None):
        return self.net(torch.cat([inputs[m] for m in self.modalities], dim=1))


class FuseDropsAbsent(TinyLateFusion):
    """fuse() zeroes an absent modality's features instead of using its baseline's encoding:
    not what input masking computes (tanh(W·0 + b) is not 0)."""

    def fuse(self, features, mask=None):
        if mask is not None:
            features = apply_input_mask(features, mask, self.modalities)
        return super().fuse(features, None)

    def forward(self, inputs, mask=None):  # input masking as the protocol says
        masked = apply_input_mask(inputs, mask, self.modalities)
        return super().fuse(self.encode(masked), None)


def test_a_protocol_model_passes_every_check(capsys):
    torch.manual_seed(0)
    result = check_model(TinyLateFusion(DIMS), tiny_batch(DIMS, batch_size=8))
    assert result.ok, str(result)
    assert [c.name for c in result.checks] == [
        "modalities",
        "shapes",
        "mask",
        "masking changes the output",
        "fast path",
        "modality parameters",
    ]
    printed = capsys.readouterr().out
    assert printed.startswith("TinyLateFusion follows the msam model protocol")
    assert "feature masking equals input masking on 4 coalitions" in printed


def test_an_early_fusion_model_passes_with_its_first_layer_path():
    data = load_dataset("synthetic", n_train=32, n_val=16, n_test=16)
    torch.manual_seed(0)
    model = build_model(data.modalities, data.num_classes, fusion="early")
    batch = data.train.take(torch.arange(16))
    result = check_model(model, batch, quiet=True)
    assert result.ok, str(result)
    fast = result.checks[-2]
    assert fast.passed and "first-layer masking equals input masking" in fast.detail
    # parts that keep the bias (counted once per modality) are caught
    parts = model.first_layer_parts
    model.first_layer_parts = lambda x: {
        m: p + model.first_layer().bias for m, p in parts(x).items()
    }
    bad = check_model(model, batch, quiet=True)
    assert bad.failures[0].name == "fast path" and "after_first_layer" in bad.failures[0].detail


def test_a_model_without_a_fast_path_uses_input_masking():
    tiny = check_model(TinyEarlyFusion(DIMS), tiny_batch(DIMS, batch_size=8), quiet=True)
    assert "input masking" in tiny.checks[-2].detail and tiny.checks[-2].passed is None
    # without modality_parameters() the targeted ascent has nothing to perturb: said so
    [failure] = tiny.failures
    assert failure.name == "modality parameters" and "modality_parameters()" in failure.detail


def test_a_model_ignoring_mask_fails_and_says_why():
    torch.manual_seed(0)
    result = check_model(IgnoresMask(), tiny_batch(DIMS, batch_size=8), quiet=True)
    assert not result.ok
    failure, parameters = result.failures
    assert parameters.name == "modality parameters" and "Ways out" in parameters.detail
    assert failure.name == "masking changes the output"
    assert "masking ['audio', 'visual'] does not change the output" in failure.detail
    assert "does NOT follow" in str(result)


def test_one_ignored_modality_is_named():
    torch.manual_seed(0)
    result = check_model(TinyLateFusion(DIMS, ignore=["visual"]), tiny_batch(DIMS), quiet=True)
    [failure] = result.failures
    assert "masking ['visual'] does not change" in failure.detail


def test_a_fast_path_unequal_to_input_masking_fails():
    torch.manual_seed(0)
    result = check_model(FuseDropsAbsent(DIMS), tiny_batch(DIMS, batch_size=8), quiet=True)
    [failure] = result.failures
    assert failure.name == "fast path" and "differs from input masking" in failure.detail


def test_wrong_shapes_and_missing_modalities_are_reported_not_raised():
    class Flat(IgnoresMask):
        def forward(self, inputs, mask=None):
            return super().forward(inputs).sum(1)  # [B], not [B, C]

    inputs, targets = tiny_batch(DIMS, batch_size=4)
    assert "must return logits [B, C] = [4, C], got [4]" in str(
        check_model(Flat(), (inputs, targets), quiet=True)
    )
    lacking = check_model(IgnoresMask(), {"audio": inputs["audio"]}, quiet=True)
    assert "the batch lacks ['visual']" in lacking.failures[0].detail
    with pytest.raises(TypeError, match="batch must be the inputs"):
        check_model(IgnoresMask(), [1, 2, 3])


# --------------------------------------------------------------------------------------------
# encoders of different widths


@pytest.mark.parametrize("fusion", ["concat", "gated", "film"])
def test_late_fusion_takes_encoders_of_different_widths(fusion):
    data = load_dataset("synthetic", n_train=32, n_val=16, n_test=16)
    torch.manual_seed(0)
    model = build_model(
        data.modalities, data.num_classes, fusion=fusion, feature_dim={"audio": 12, "visual": 5}
    )
    inputs, targets = data.train.take(torch.arange(16))
    features = model.encode(inputs)
    assert features["audio"].shape == (16, 12) and features["visual"].shape == (16, 5)
    assert model(inputs).shape == (16, data.num_classes)
    result = check_model(model, (inputs, targets), quiet=True)
    assert result.ok, str(result)
    # the fast path's Shapley values equal input masking's
    fast = modality_shapley(model, inputs, targets, value="prob", masking="feature")
    slow = modality_shapley(model, inputs, targets, value="prob", masking="input")
    torch.testing.assert_close(fast.phi, slow.phi, atol=1e-6, rtol=0)


def test_equal_widths_build_the_same_model_as_one_width():
    data = load_dataset("synthetic", n_train=32, n_val=16, n_test=16)
    for fusion in ("concat", "gated", "film", "sum"):
        torch.manual_seed(3)
        one = build_model(data.modalities, data.num_classes, fusion=fusion, feature_dim=8)
        torch.manual_seed(3)
        each = build_model(
            data.modalities, data.num_classes, fusion=fusion, feature_dim={"audio": 8, "visual": 8}
        )
        a, b = one.state_dict(), each.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_width_errors_name_the_problem():
    data = load_dataset("synthetic", n_train=32, n_val=16, n_test=16)
    specs, classes = data.modalities, data.num_classes
    with pytest.raises(ValueError, match="sum fusion adds the features element-wise"):
        build_model(specs, classes, fusion="sum", feature_dim={"audio": 4, "visual": 8})
    with pytest.raises(ValueError, match="early fusion has one network"):
        build_model(specs, classes, fusion="early", feature_dim={"audio": 4, "visual": 8})
    with pytest.raises(ValueError, match="feature_dim gives widths for \\['audio'\\]"):
        build_model(specs, classes, feature_dim={"audio": 4})


def test_training_with_different_widths_from_the_config(tmp_path):
    config = {
        "epochs": 1,
        "dataset_options": {"n_train": 64, "n_val": 32, "n_test": 32},
        "model_options": {"feature_dim": {"audio": 16, "visual": 4}},
    }
    out = train(config, out=tmp_path / "run", quiet=True)
    assert (out / "checkpoints" / "best.pt").is_file()


def test_training_a_model_that_ignores_mask_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(msam_core.sinks, "IGNORED_MASK_STEPS", 4)
    data = load_dataset(
        "synthetic", n_train=64, n_val=16, n_test=16, dims=[3, 5], n_classes=2, private_pairs=0
    )

    class Ignoring(IgnoresMask):
        num_classes = data.num_classes

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(sum(DIMS.values()), data.num_classes)

    with pytest.warns(RuntimeWarning, match="identical .* for 4 steps in a row"):
        train(
            {"epochs": 1, "batch_size": 16, "method": "sam"},
            out=tmp_path / "run",
            data=data,
            model=Ignoring(),
            quiet=True,
        )
