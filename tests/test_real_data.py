"""Shipped real data sets: offline loading, exact copies, stratified splits, train-only scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msam_core.data import basic_motions, digits_halves, mfeat
from msam_core.data.registry import dataset_names, load_dataset
from msam_core.data.shipped import load_arrays, shipped_path
from msam_core.data.splits import Standardizer, stratified_split


@pytest.fixture(scope="module")
def mfeat_all():
    return mfeat.load_mfeat()


@pytest.fixture(scope="module")
def mfeat_raw():
    return mfeat.load_mfeat(standardize=False)


def _all_targets(ds):
    return torch.cat([ds.train.targets, ds.val.targets, ds.test.targets])


# --- splits -------------------------------------------------------------------------------


def test_stratified_split_is_disjoint_complete_and_stratified():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    train, val, test = stratified_split(labels, (0.6, 0.2, 0.2), seed=3)
    together = np.concatenate([train, val, test])
    assert len(together) == len(labels) == len(np.unique(together))
    for part, frac in ((train, 0.6), (val, 0.2), (test, 0.2)):
        counts = np.bincount(labels[part], minlength=4)
        # Each class is cut by the fractions to within one sample.
        assert np.all(np.abs(counts - frac * np.array([50, 30, 20, 10])) <= 1)


def test_stratified_split_depends_only_on_seed():
    labels = np.repeat(np.arange(3), 40)
    first = stratified_split(labels, (0.5, 0.25, 0.25), seed=7)
    again = stratified_split(labels, (0.5, 0.25, 0.25), seed=7)
    other = stratified_split(labels, (0.5, 0.25, 0.25), seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_small_classes_appear_in_every_split():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    for seed in range(5):
        for part in stratified_split(labels, (0.8, 0.1, 0.1), seed=seed):
            assert set(labels[part]) == {0, 1}


@pytest.mark.parametrize(
    "fractions", [(0.5, 0.6), (0.7, -0.1, 0.4), (0.0, 0.5, 0.5), (0.8, 0.2, 0.0), (1.0,)]
)
def test_bad_fractions_are_rejected(fractions):
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(np.zeros(10), fractions)


def test_standardizer_uses_train_statistics_only():
    train = {"v": torch.tensor([[1.0, 5.0], [3.0, 5.0]]), "s": torch.arange(12.0).view(2, 2, 3)}
    scaler = Standardizer.fit(train, {"v": "vector", "s": "sequence"})
    # Per feature for vectors; the constant feature gets std 1 (zero after centring).
    assert torch.allclose(scaler.mean["v"], torch.tensor([[2.0, 5.0]]))
    assert torch.allclose(scaler.std["v"], torch.tensor([[1.0, 1.0]]))
    out = scaler({"v": torch.tensor([[5.0, 7.0]])})["v"]
    assert torch.allclose(out, torch.tensor([[3.0, 2.0]]))
    # Per channel for sequences: channel 0 holds {0,1,2,6,7,8}.
    assert torch.allclose(scaler.mean["s"].flatten(), torch.tensor([4.0, 7.0]))


# --- mfeat ----------------------------------------------------------------------------------


def test_mfeat_loads_offline_with_the_documented_views(mfeat_all):
    ds = mfeat_all
    assert ds.modality_names == ["fou", "fac", "kar", "pix", "zer", "mor"]
    assert [s.shape for s in ds.modalities] == [(76,), (216,), (64,), (240,), (47,), (6,)]
    assert all(s.kind == "vector" for s in ds.modalities)
    assert ds.num_classes == 10
    targets = _all_targets(ds)
    assert torch.equal(torch.bincount(targets), torch.full((10,), 200))
    # 0.6 / 0.2 / 0.2 of 200 per digit, in every split.
    for split, n in ((ds.train, 120), (ds.val, 40), (ds.test, 40)):
        assert torch.equal(torch.bincount(split.targets, minlength=10), torch.full((10,), n))
    assert "CC BY 4.0" in ds.info["license"]
    assert "10.24432/C5HC70" in ds.info["citation"]


def test_mfeat_copy_reproduces_the_published_values():
    arrays = load_arrays(mfeat.FILENAME)
    # First rows of mfeat-fou / mfeat-kar / mfeat-mor as printed in the UCI files.
    assert np.array_equal(arrays["fou"][0, :3], np.float32([0.065882, 0.19731, 0.10383]))
    assert np.array_equal(arrays["kar"][0, :3], np.float32([-10.297, -11.667, 11.561]))
    assert np.array_equal(arrays["mor"][0], np.float32([1, 0, 0, 133.15, 1.3117, 1620.2]))
    assert np.array_equal(arrays["labels"], np.repeat(np.arange(10), 200))


def test_mfeat_standardisation_is_fitted_on_train_only(mfeat_all, mfeat_raw):
    for view in ("fou", "pix"):
        raw_train, raw_val = mfeat_raw.train.inputs[view], mfeat_raw.val.inputs[view]
        mean = raw_train.double().mean(0)
        std = raw_train.double().std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        expected_val = ((raw_val.double() - mean) / std).float()
        assert torch.allclose(mfeat_all.val.inputs[view], expected_val, atol=1e-5)
        train = mfeat_all.train.inputs[view]
        assert train.mean(0).abs().max() < 1e-4
    # Same seed, same samples, whether standardised or not.
    assert torch.equal(mfeat_all.test.targets, mfeat_raw.test.targets)


def test_mfeat_view_subset_keeps_the_given_order():
    ds = mfeat.load_mfeat(views="pix,fou", seed=1)
    assert ds.modality_names == ["pix", "fou"]
    assert ds.train.inputs["pix"].shape == (1200, 240)


def test_mfeat_rejects_unknown_views_and_lists_the_choices():
    with pytest.raises(ValueError, match=r"'fou', 'fac'.*fou,pix"):
        mfeat.load_mfeat(views="fou,pixels")


def test_mfeat_split_changes_with_seed_only(mfeat_raw):
    same = mfeat.load_mfeat(views="mor", standardize=False)
    other = mfeat.load_mfeat(views="mor", standardize=False, seed=1)
    assert torch.equal(same.train.inputs["mor"], mfeat_raw.train.inputs["mor"])
    assert not torch.equal(other.train.inputs["mor"], mfeat_raw.train.inputs["mor"])


# --- basic_motions --------------------------------------------------------------------------


def test_basic_motions_two_sensors_stratified():
    ds = basic_motions.load_basic_motions()
    assert ds.modality_names == ["accelerometer", "gyroscope"]
    assert [(s.kind, s.shape) for s in ds.modalities] == [("sequence", (3, 100))] * 2
    assert ds.num_classes == 4 and ds.info["class_names"][0] == "Standing"
    for split, n in ((ds.train, 12), (ds.val, 4), (ds.test, 4)):
        assert torch.equal(torch.bincount(split.targets, minlength=4), torch.full((4,), n))
    assert ds.train.inputs["gyroscope"].shape == (48, 3, 100)


def test_basic_motions_copy_is_exact_and_channels_match_the_sensors():
    raw = load_arrays(basic_motions.FILENAME)
    first = raw["series"][0, 0, :3] * basic_motions.SCALE
    # First values of the archive's first TRAIN series (BasicMotions_TRAIN.arff).
    assert np.allclose(first, [0.079106, 0.079106, -0.903497], rtol=0, atol=1e-12)
    series = raw["series"] * basic_motions.SCALE
    time_means = np.abs(series.mean(axis=2))  # [80, 6]: |mean over the 10 s| per channel
    typical = np.percentile(time_means, 90, axis=0)  # per channel, over the 80 recordings
    # Angular rates average out over a recording; accelerations need not.
    assert typical[3:].max() < 0.5
    assert typical[:3].max() > 2.0


def test_basic_motions_archive_split_keeps_the_archive_test_fold():
    ds = basic_motions.load_basic_motions(archive_split=True, standardize=False)
    raw = load_arrays(basic_motions.FILENAME)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 8, 40)
    test_series = torch.as_tensor(raw["series"][raw["archive_fold"] == 1] * basic_motions.SCALE)
    assert torch.allclose(ds.test.inputs["accelerometer"].double(), test_series[:, :3], atol=1e-6)


# --- digits_halves --------------------------------------------------------------------------


def test_digits_halves_are_the_two_halves_of_each_digit():
    from sklearn.datasets import load_digits

    ds = digits_halves.load_digits_halves(standardize=False)
    assert [(s.kind, s.shape) for s in ds.modalities] == [("image", (1, 8, 4))] * 2
    whole = torch.cat([ds.test.inputs["left"], ds.test.inputs["right"]], dim=-1) * 16
    digits = load_digits()
    flat = torch.as_tensor(digits.images, dtype=torch.float32).flatten(1)
    # Every rebuilt test digit is one of sklearn's images with the same label.
    for x, y in zip(whole[:20], ds.test.targets[:20], strict=True):
        match = (flat == x.flatten()).all(1).nonzero().flatten()
        assert len(match) >= 1 and int(digits.target[match[0]]) == int(y)


def test_degrading_one_half_lowers_its_information_and_leaves_the_other_alone():
    from sklearn.linear_model import LogisticRegression

    clean = digits_halves.load_digits_halves(standardize=False)
    noisy = digits_halves.load_digits_halves(standardize=False, noise=1.0, blur=1.0)
    assert torch.equal(clean.train.inputs["left"], noisy.train.inputs["left"])

    def accuracy(ds, half):
        x_tr = ds.train.inputs[half].flatten(1).numpy()
        x_te = ds.test.inputs[half].flatten(1).numpy()
        clf = LogisticRegression(max_iter=300).fit(x_tr, ds.train.targets.numpy())
        return clf.score(x_te, ds.test.targets.numpy())

    assert accuracy(noisy, "right") < accuracy(clean, "right") - 0.2


def test_digits_halves_rejects_an_unknown_half():
    with pytest.raises(ValueError, match="left"):
        digits_halves.load_digits_halves(degraded="top")


# --- registry and shipped files -------------------------------------------------------------


def test_shipped_sets_are_registered_under_the_names_users_type():
    assert {"mfeat", "basic_motions", "digits_halves"} <= set(dataset_names())
    ds = load_dataset("mfeat", views="mor", seed=2)
    assert ds.modality_names == ["mor"]


@pytest.mark.parametrize(
    "filename", ["mfeat_LICENSE.txt", "basic_motions_LICENSE.txt", "CITATION.txt"]
)
def test_licence_and_citation_files_ship_with_the_data(filename):
    text = shipped_path(filename).read_text(encoding="utf-8")
    assert "cite" in text.lower()


# --- one training epoch through the loop ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "modalities"),
    [
        ("mfeat", {"views": "fou,pix"}, ["fou", "pix"]),
        ("basic_motions", {}, ["accelerometer", "gyroscope"]),
        ("digits_halves", {"noise": 0.5}, ["left", "right"]),
    ],
)
def test_one_msam_epoch_on_each_shipped_set(tmp_path, name, options, modalities):
    import json

    from msam_core.train import train

    run = train(
        dataset=name,
        dataset_options=options,
        method="msam",
        epochs=1,
        batch_size=64,
        out=tmp_path / "run",
        quiet=True,
    )
    steps = [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]
    assert all(f"phi/{m}" in steps[-1] for m in modalities)
    assert all(np.isfinite(s["loss"]) for s in steps)
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == name
