"""The synthetic dataset: deterministic, shaped as declared, and imbalanced as documented."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from msam_core.data import (
    ModalitySpec,
    MultimodalDataset,
    TensorSplit,
    dataset_names,
    load_dataset,
    load_synthetic,
)


def _all(split: TensorSplit) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return split.take(torch.arange(len(split)))


def _lda_accuracy(
    data: MultimodalDataset, modality: str, classes: list[int] | None = None
) -> float:
    """Test accuracy of LDA fitted on one modality alone (optionally on a subset of classes)."""
    fitted = {}
    for split in ("train", "test"):
        x, y = _all(data.split(split))
        x = x[modality].reshape(len(y), -1).numpy()
        y = y.numpy()
        if classes is not None:
            keep = torch.isin(torch.as_tensor(y), torch.tensor(classes)).numpy()
            x, y = x[keep], y[keep]
        fitted[split] = (x, y)
    lda = LinearDiscriminantAnalysis().fit(*fitted["train"])
    return float(lda.score(*fitted["test"]))


def test_registered_under_its_name() -> None:
    assert "synthetic" in dataset_names()
    data = load_dataset("synthetic", n_train=16, n_val=8, n_test=8)
    assert isinstance(data, MultimodalDataset)
    assert data.modality_names == ["audio", "visual"]
    assert data.num_classes == 8


def test_same_seed_same_tensors_other_seed_other_tensors() -> None:
    a = load_synthetic(seed=3, n_train=40, n_val=10, n_test=10)
    b = load_synthetic(seed=3, n_train=40, n_val=10, n_test=10)
    c = load_synthetic(seed=4, n_train=40, n_val=10, n_test=10)
    for split in ("train", "val", "test"):
        xa, ya = _all(a.split(split))
        xb, yb = _all(b.split(split))
        xc, _ = _all(c.split(split))
        assert torch.equal(ya, yb)
        for m in a.modality_names:
            assert torch.equal(xa[m], xb[m])
            assert not torch.equal(xa[m], xc[m])


def test_split_sizes_and_class_balance() -> None:
    data = load_synthetic(n_train=80, n_val=24, n_test=40, n_classes=8)
    for split, n in (("train", 80), ("val", 24), ("test", 40)):
        x, y = _all(data.split(split))
        assert len(data.split(split)) == n
        assert all(v.shape[0] == n for v in x.values())
        assert y.dtype == torch.long
        assert torch.bincount(y, minlength=8).tolist() == [n // 8] * 8


def test_changing_train_size_keeps_val_and_test() -> None:
    small = load_synthetic(seed=1, n_train=50, n_val=20, n_test=20)
    large = load_synthetic(seed=1, n_train=90, n_val=20, n_test=20)
    for split in ("val", "test"):
        xs, ys = _all(small.split(split))
        xl, yl = _all(large.split(split))
        assert torch.equal(ys, yl)
        assert all(torch.equal(xs[m], xl[m]) for m in xs)


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        ("vector", [(32,), (32,)]),
        ("image", [(1, 16, 16), (1, 16, 16)]),
        ("sequence", [(2, 32), (2, 32)]),
        (["vector", "image"], [(32,), (1, 16, 16)]),
    ],
)
def test_tensor_shapes_match_modality_specs(kinds, expected: list[tuple[int, ...]]) -> None:
    data = load_synthetic(n_train=10, n_val=5, n_test=5, kinds=kinds)
    assert [spec.shape for spec in data.modalities] == expected
    for spec in data.modalities:
        assert isinstance(spec, ModalitySpec)
        x, _ = data.train[0]
        assert tuple(x[spec.name].shape) == spec.shape
        assert x[spec.name].dtype == torch.float32


def test_class_means_and_noise_follow_the_generative_model() -> None:
    """Class means have norm s_m and are orthogonal; residuals have std sigma_m per value."""
    n = 8 * 1000
    data = load_synthetic(
        n_train=n, n_val=1, n_test=1, strengths=(3.0, 1.0), noise=(0.5, 2.0), private_pairs=0
    )
    x, y = _all(data.train)
    for name, s, sigma in (("audio", 3.0, 0.5), ("visual", 1.0, 2.0)):
        means = torch.stack([x[name][y == k].mean(0) for k in range(8)])  # [K, D]
        # the mean of 1000 samples carries noise of norm ~ sigma * sqrt(D / 1000)
        tol = 4 * sigma * math.sqrt(32 / 1000)
        assert torch.allclose(means.norm(dim=1), torch.full((8,), s), atol=tol)
        gram = means @ means.T / s**2
        off_diagonal = gram - torch.diag(torch.diagonal(gram))
        assert off_diagonal.abs().max() < 2 * tol / s
        residual = x[name] - means[y]
        assert residual.std().item() == pytest.approx(sigma, rel=0.02)


def test_private_pair_is_invisible_to_the_other_modality() -> None:
    """Classes 2 and 3 (visual's pair) have the same audio distribution, and vice versa."""
    data = load_synthetic(seed=0, n_train=2000, n_test=2000)
    assert data.info["private_pairs"] == {"audio": [[0, 1]], "visual": [[2, 3]]}
    assert data.info["shared_classes"] == [4, 5, 6, 7]
    # a non-owner can only guess between the two classes of a pair: about 50 %
    assert _lda_accuracy(data, "audio", [2, 3]) < 0.6
    assert _lda_accuracy(data, "visual", [0, 1]) < 0.6
    # the owner separates them (closed form: Phi(s / sigma / sqrt 2) = 0.92 for visual)
    assert _lda_accuracy(data, "visual", [2, 3]) > 0.85
    assert _lda_accuracy(data, "audio", [0, 1]) > 0.95


@pytest.mark.parametrize("seed", [0, 1])
def test_strength_knob_orders_unimodal_separability(seed: int) -> None:
    """Default: audio alone beats visual alone, and visual alone is far above chance (1/8)."""
    data = load_synthetic(seed=seed, n_train=2000, n_test=1000)
    audio, visual = _lda_accuracy(data, "audio"), _lda_accuracy(data, "visual")
    assert audio > visual + 0.1
    assert visual > 0.125 + 0.3
    # swapping the strengths swaps the order
    swapped = load_synthetic(seed=seed, n_train=2000, n_test=1000, strengths=(2.0, 4.0))
    assert _lda_accuracy(swapped, "visual") > _lda_accuracy(swapped, "audio") + 0.1


@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_structured_kinds_carry_a_smooth_signal(kind: str) -> None:
    """Image / sequence prototypes are low-frequency: neighbouring values of a class mean agree."""
    data = load_synthetic(n_train=800, n_val=1, n_test=1, kinds=kind, noise=0.05)
    x, y = _all(data.train)
    mean = x["audio"][y == 4].mean(0)  # a shared class, shape [1, H, W] or [C, T]
    a, b = mean[..., :-1].reshape(-1), mean[..., 1:].reshape(-1)
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.6
    assert mean.norm().item() == pytest.approx(4.0, rel=0.05)


def test_modality_count_and_names() -> None:
    three = load_synthetic(n_train=24, n_val=6, n_test=6, modalities=3, n_classes=6)
    assert three.modality_names == ["audio", "visual", "text"]
    assert [three.info["strengths"][m] for m in three.modality_names] == [4.0, 3.0, 2.0]
    named = load_synthetic(n_train=8, n_val=4, n_test=4, modalities=["left", "right"])
    assert named.modality_names == ["left", "right"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kinds": "graph"}, "choose one of"),
        ({"strengths": (1.0, 2.0, 3.0)}, "strengths has 3 entries"),
        ({"modalities": 3, "n_classes": 4}, "n_classes >= 6"),
        ({"dims": 4}, "at least 8 values"),
        ({"noise": 0.0}, "noise > 0"),
        ({"modalities": ["a", "a"]}, "unique"),
        ({"n_val": 0}, "n_val"),
    ],
)
def test_bad_options_say_what_to_change(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_synthetic(**{"n_train": 8, "n_val": 4, "n_test": 4, **options})
