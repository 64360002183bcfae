"""Models follow the model protocol (docs/design.md): shapes, masking, baselines, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.functional import cross_entropy

from msam_core.data import ModalitySpec, load_synthetic
from msam_core.masking import apply_input_mask
from msam_core.models import (
    EarlyFusionModel,
    GatedFusion,
    LateFusionModel,
    build_encoder,
    build_model,
    encoder_names,
    fusion_names,
    register_encoder,
)
from msam_core.models import encoders as encoder_module

LATE = ["concat", "sum", "gated", "film"]
SPECS = {
    "vector": ModalitySpec("audio", "vector", (12,)),
    "image": ModalitySpec("audio", "image", (1, 10, 9)),
    "spectrogram": ModalitySpec("audio", "spectrogram", (1, 8, 12)),
    "sequence": ModalitySpec("audio", "sequence", (3, 20)),
}
VISUAL = ModalitySpec("visual", "vector", (7,))


def _inputs(specs: list[ModalitySpec], batch: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {s.name: torch.randn(batch, *s.shape, generator=gen) for s in specs}


def _model(fusion: str, specs: list[ModalitySpec], seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(specs, num_classes=4, fusion=fusion, feature_dim=6, **options).eval()


def _with_mean_baselines(model: nn.Module, specs: list[ModalitySpec]) -> nn.Module:
    """Non-zero baselines, so tests tell baseline replacement apart from zeroing."""
    model.fit_baselines(_inputs(specs, batch=9, seed=7))
    return model


def test_fusion_names_are_the_ones_users_type() -> None:
    assert fusion_names() == ["early", "concat", "sum", "gated", "film", "shared"]
    assert {"auto", "mlp", "cnn", "cnn1d"} <= set(encoder_names())


@pytest.mark.parametrize("kind", sorted(SPECS))
@pytest.mark.parametrize("fusion", ["early", *LATE])
def test_every_fusion_and_encoder_kind_gives_logits(fusion: str, kind: str) -> None:
    specs = [SPECS[kind], VISUAL]
    model = _model(fusion, specs)
    x = _inputs(specs)
    assert model.modalities == ["audio", "visual"]
    assert model(x).shape == (5, 4)
    assert model(x, torch.tensor([True, False])).shape == (5, 4)
    if fusion != "early":
        features = model.encode(x)
        assert {m: tuple(h.shape) for m, h in features.items()} == {
            "audio": (5, 6),
            "visual": (5, 6),
        }


def test_auto_picks_the_encoder_by_kind() -> None:
    picked = {kind: type(build_encoder(spec, "auto", 6)).__name__ for kind, spec in SPECS.items()}
    assert picked == {
        "vector": "MLPEncoder",
        "image": "ConvEncoder2d",
        "spectrogram": "ConvEncoder2d",
        "sequence": "ConvEncoder1d",
    }


@pytest.mark.parametrize("fusion", LATE)
@pytest.mark.parametrize("mask", [[True, False], [False, True], [False, False], "per-sample"])
def test_forward_is_fuse_of_encode_of_masked_inputs(fusion: str, mask) -> None:
    specs = [SPECS["image"], VISUAL]
    model = _with_mean_baselines(_model(fusion, specs), specs)
    x = _inputs(specs)
    if mask == "per-sample":
        mask = torch.tensor(
            [[True, True], [True, False], [False, True], [False, False], [True, False]]
        )
    mask = torch.as_tensor(mask).bool()
    masked = apply_input_mask(x, mask, model.modalities, model.baselines)
    expected = model.fuse(model.encode(masked), mask)
    torch.testing.assert_close(model(x, mask), expected, rtol=0, atol=0)


@pytest.mark.parametrize("fusion", LATE)
def test_feature_masking_equals_input_masking(fusion: str) -> None:
    """Absent features replaced by the baseline's encoding give the input-masked logits."""
    specs = [SPECS["sequence"], VISUAL]
    model = _with_mean_baselines(_model(fusion, specs), specs)
    x = _inputs(specs)
    features, base = model.encode(x), model.baseline_features()
    mask = torch.tensor([False, True])
    fast = dict(features, audio=base["audio"].expand_as(features["audio"]))
    torch.testing.assert_close(model.fuse(fast, mask), model(x, mask), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fusion", ["early", *LATE])
def test_masked_modality_input_has_no_effect(fusion: str) -> None:
    specs = [SPECS["vector"], VISUAL]
    model = _with_mean_baselines(_model(fusion, specs), specs)
    x = _inputs(specs)
    changed = dict(x, visual=x["visual"] + 5.0)
    without_visual = torch.tensor([True, False])
    assert torch.equal(model(x, without_visual), model(changed, without_visual))
    # present, the same change moves the logits (so the check above can fail)
    assert not torch.allclose(model(x), model(changed))
    # per-sample mask: only the samples where visual is absent are unaffected
    per_sample = torch.tensor([[True, False], [True, True]]).repeat(3, 1)[:5]
    same = (model(x, per_sample) == model(changed, per_sample)).all(1)
    assert same.tolist() == (~per_sample[:, 1]).tolist()


@pytest.mark.parametrize("fusion", ["early", *LATE])
def test_mask_acts_only_through_the_inputs(fusion: str) -> None:
    specs = [SPECS["vector"], VISUAL]
    model = _with_mean_baselines(_model(fusion, specs), specs)
    x = _inputs(specs)
    mask = torch.tensor([False, True])
    masked = apply_input_mask(x, mask, model.modalities, model.baselines)
    assert torch.equal(model(x, mask), model(masked))


def test_baselines_default_to_zeros_and_fit_to_the_mean() -> None:
    specs = [SPECS["image"], VISUAL]
    model = _model("concat", specs)
    assert all(torch.count_nonzero(b) == 0 for b in model.baselines.values())
    data = _inputs(specs, batch=12, seed=3)
    # the mean over batches of unequal size is the mean over all samples
    batches = [{m: v[:5] for m, v in data.items()}, {m: v[5:] for m, v in data.items()}]
    model.fit_baselines(batches, kind="mean")
    for m in model.modalities:
        torch.testing.assert_close(model.baselines[m], data[m].mean(0))
    # the mean baseline is what an absent modality sees
    x = _inputs(specs)
    filled = dict(x, visual=data["visual"].mean(0).expand_as(x["visual"]))
    torch.testing.assert_close(model(x, torch.tensor([True, False])), model(filled))
    # baselines travel in the state dict, so a checkpoint restores them
    restored = _model("concat", specs)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.baselines["visual"], data["visual"].mean(0))
    model.fit_baselines(None, kind="zeros")
    assert all(torch.count_nonzero(b) == 0 for b in model.baselines.values())


def test_bad_baselines_are_refused() -> None:
    model = _model("sum", [SPECS["vector"], VISUAL])
    with pytest.raises(ValueError, match=r"modality 'visual' must have shape \[7\], got \[8\]"):
        model.set_baselines({"visual": torch.zeros(8)})
    with pytest.raises(KeyError, match="unknown modality 'text'"):
        model.set_baselines({"text": torch.zeros(7)})
    with pytest.raises(ValueError, match="choose one of"):
        model.fit_baselines({}, kind="median")


def test_hand_set_concat_and_sum_heads_give_closed_form_logits() -> None:
    specs = [ModalitySpec("a", "vector", (2,)), ModalitySpec("b", "vector", (2,))]
    h = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[3.0, -1.0]])}
    concat = build_model(specs, 2, fusion="concat", feature_dim=2)
    weight = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 1.0, 0.0]])
    concat.head.classifier[-1].weight.data.copy_(weight)
    concat.head.classifier[-1].bias.data.copy_(torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(concat.fuse(h), torch.tensor([[1.0 - 2.0 + 0.5, 2.0 + 3.0 - 0.5]]))
    summed = build_model(specs, 2, fusion="sum", feature_dim=2)
    summed.head.classifier[-1].weight.data.copy_(torch.eye(2))
    summed.head.classifier[-1].bias.data.zero_()
    torch.testing.assert_close(summed.fuse(h), torch.tensor([[4.0, 1.0]]))


def test_film_with_zero_modulation_passes_the_first_modality_through() -> None:
    specs = [SPECS["vector"], VISUAL, ModalitySpec("text", "vector", (4,))]
    model = _model("film", specs)
    assert model.head.target == "audio" and model.head.conditioners == ["visual", "text"]
    h = model.encode(_inputs(specs))
    model.head.film.weight.data.zero_()
    model.head.film.bias.data.zero_()
    torch.testing.assert_close(model.head.combine(h), h["audio"])
    other = dict(h, visual=h["visual"] + 1.0, text=h["text"] * 3.0)
    torch.testing.assert_close(model.fuse(other), model.fuse(h))


def test_gates_are_a_distribution_over_modalities() -> None:
    specs = [SPECS["vector"], VISUAL, ModalitySpec("text", "vector", (4,))]
    model = _model("gated", specs)
    assert isinstance(model.head, GatedFusion)
    gates = model.head.gates(model.encode(_inputs(specs)))
    assert gates.shape == (5, 3, 6)
    torch.testing.assert_close(gates.sum(1), torch.ones(5, 6))


def test_film_needs_two_modalities() -> None:
    with pytest.raises(ValueError, match="film fusion needs at least two modalities"):
        build_model([VISUAL], 3, fusion="film")


def test_single_modality_models_work() -> None:
    for fusion in ["early", "concat", "sum", "gated"]:
        model = _model(fusion, [VISUAL])
        assert model(_inputs([VISUAL])).shape == (5, 4)


def test_same_seed_same_weights() -> None:
    specs = [SPECS["image"], VISUAL]
    a, b, c = _model("gated", specs, 1), _model("gated", specs, 1), _model("gated", specs, 2)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())


def test_models_follow_the_dtype_and_device_they_are_moved_to() -> None:
    specs = [SPECS["sequence"], VISUAL]
    model = _with_mean_baselines(_model("concat", specs), specs).double()
    x = {m: v.double() for m, v in _inputs(specs).items()}
    assert model.baselines["visual"].dtype == torch.float64
    assert model(x, torch.tensor([True, False])).dtype == torch.float64


def test_unknown_fusion_and_encoder_list_the_choices() -> None:
    specs = [SPECS["vector"], VISUAL]
    with pytest.raises(ValueError, match=r"unknown fusion 'late'.*'early', 'concat', 'sum'"):
        build_model(specs, 3, fusion="late")
    with pytest.raises(ValueError, match=r"unknown encoder 'vit' for modality 'audio'.*'mlp'"):
        build_model(specs, 3, encoder="vit")
    with pytest.raises(ValueError, match=r"unknown encoder 'vit'; choose one of \['auto'"):
        build_encoder(VISUAL, "vit")
    with pytest.raises(ValueError, match=r"encoder 'cnn1d' takes \['sequence'\].*'visual'"):
        build_model(specs, 3, encoder={"visual": "cnn1d"})
    with pytest.raises(ValueError, match=r"\['text'\] that are not among"):
        build_model(specs, 3, encoder={"text": "mlp"})


@pytest.mark.parametrize("fusion", ["early", "concat"])
def test_missing_modality_names_both_lists(fusion: str) -> None:
    model = _model(fusion, [SPECS["vector"], VISUAL])
    with pytest.raises(KeyError, match=r"missing modalities \['visual'\].*'audio', 'visual'"):
        model({"audio": torch.zeros(2, 12), "video": torch.zeros(2, 7)})


@pytest.mark.parametrize("fusion", ["early", "gated"])
def test_wrong_shape_names_modality_expected_and_received(fusion: str) -> None:
    model = _model(fusion, [SPECS["image"], VISUAL])
    x = _inputs([SPECS["image"], VISUAL])
    x["audio"] = torch.zeros(5, 1, 9, 10)
    with pytest.raises(ValueError, match=r"'audio'.*\[B, 1, 10, 9\].*received \[5, 1, 9, 10\]"):
        model(x)


def test_a_registered_encoder_plugs_into_build_model() -> None:
    @register_encoder("mean_pool", kinds=("image",))
    def build_mean_pool(spec: ModalitySpec, feature_dim: int) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, feature_dim))

    @register_encoder("too_wide")
    def build_too_wide(spec: ModalitySpec, feature_dim: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(feature_dim + 1))

    try:
        specs = [SPECS["image"], VISUAL]
        model = _model("concat", specs, encoder={"audio": "mean_pool"})
        assert isinstance(model, LateFusionModel)
        assert model(_inputs(specs)).shape == (5, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_encoder("mean_pool")(lambda spec, feature_dim: nn.Identity())
        wrong = _model("sum", specs, encoder={"visual": "too_wide"})
        with pytest.raises(ValueError, match=r"'visual'.*shape \[5, 7\]; expected \[B, 6\]"):
            wrong(_inputs(specs))
    finally:
        encoder_module._ENCODERS.pop("mean_pool", None)
        encoder_module._ENCODERS.pop("too_wide", None)


def test_early_fusion_has_no_encode_or_fuse() -> None:
    model = _model("early", [SPECS["vector"], VISUAL])
    assert isinstance(model, EarlyFusionModel)
    assert not hasattr(model, "encode") and not hasattr(model, "fuse")


@pytest.mark.parametrize("seed", [0, 1])
def test_default_synthetic_data_shows_imbalance_under_joint_training(seed: int) -> None:
    """Concat + Adam, 5 epochs: visual (weak) unimodal accuracy stays far below audio's.

    Measured over seeds 0-2: audio 0.86, visual 0.50-0.53 in the joint model; visual trained
    alone 0.62-0.66 (chance 0.125). Margins here are about half the measured gaps.
    """
    data = load_synthetic(seed=seed)
    x_test, y_test = data.test.take(torch.arange(len(data.test)))

    def train(names: list[str]) -> nn.Module:
        torch.manual_seed(seed)
        specs = [s for s in data.modalities if s.name in names]
        model = build_model(specs, data.num_classes, fusion="concat")
        optim = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(5):
            for idx in torch.randperm(len(data.train)).split(64):
                x, y = data.train.take(idx)
                loss = cross_entropy(model({m: x[m] for m in names}), y)
                optim.zero_grad()
                loss.backward()
                optim.step()
        return model.eval()

    @torch.no_grad()
    def accuracy(model: nn.Module, mask: list[bool] | None = None) -> float:
        x = {m: x_test[m] for m in model.modalities}
        mask = None if mask is None else torch.tensor(mask)
        return (model(x, mask).argmax(1) == y_test).float().mean().item()

    joint = train(["audio", "visual"])
    audio, visual = accuracy(joint, [True, False]), accuracy(joint, [False, True])
    visual_alone = accuracy(train(["visual"]))
    assert accuracy(joint) > audio + 0.05  # fusing helps: visual owns a pair audio cannot see
    assert visual < audio - 0.2
    assert visual_alone > visual + 0.04
    assert visual_alone > 0.125 + 0.35
