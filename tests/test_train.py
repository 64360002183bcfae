"""The training loop: a record per step, evaluation per epoch, selection on val, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from msam_core.config import TrainConfig
from msam_core.data import load_dataset
from msam_core.models import build_model
from msam_core.record import load_run
from msam_core.rundir import load_checkpoint
from msam_core.train import (
    TrainingControl,
    TrainingDiverged,
    build_dataset,
    build_run_model,
    train,
)

SMALL = {"n_train": 256, "n_val": 64, "n_test": 64}
STEPS_PER_EPOCH = 8  # 256 samples / batch 32


def small_config(**changes) -> TrainConfig:
    base = {"dataset_options": SMALL, "batch_size": 32, "epochs": 2, "device": "cpu"}
    return TrainConfig.from_dict({**base, **changes})


def test_msam_run_records_every_step_and_every_epoch(tmp_path):
    path = train(small_config(method="msam"), out=tmp_path / "run", quiet=True)
    run = load_run(path)
    modalities = ["audio", "visual"]
    assert run.modalities == modalities and run.method == "msam"

    steps = run.iterations
    assert list(steps["step"]) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert list(steps["epoch"]) == [1] * STEPS_PER_EPOCH + [2] * STEPS_PER_EPOCH
    for key in ("loss", "lr", "dominant", "sharpness", "time/step_s"):
        assert steps[key].notna().all(), key
    for m in modalities:
        assert steps[f"phi/{m}"].notna().all() and steps[f"weight/{m}"].notna().all()
    assert set(steps["dominant"]) <= set(modalities)
    weights = steps[[f"weight/{m}" for m in modalities]].sum(axis=1)
    assert weights.to_numpy() == pytest.approx(1.0)

    epochs = run.epochs
    assert len(epochs) == 3 * 3  # epochs 0 (initial weights), 1, 2 x train/val/test
    assert set(epochs["split"]) == {"train", "val", "test"}
    for key in (
        "loss",
        "acc",
        *(f"acc/{m}" for m in modalities),
        *(f"phi/{m}" for m in modalities),
    ):
        assert epochs[key].notna().all(), key

    names = sorted(p.name for p in (path / "checkpoints").glob("*.pt"))
    assert names == ["best.pt", "epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt", "last.pt"]
    # each with the checksum a resume verifies it by
    assert sorted(p.name for p in (path / "checkpoints").glob("*.sha256")) == [
        f"{name}.sha256" for name in names
    ]
    last = load_checkpoint(path / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "method_state", "rng", "epoch", "step", "config"):
        assert key in last
    assert last["epoch"] == 2 and last["step"] == 16 and "data_order" in last


def test_selection_uses_val_only(tmp_path):
    path = train(small_config(method="joint", epochs=3), out=tmp_path / "run", quiet=True)
    run = load_run(path)
    val = run.epochs[(run.epochs["split"] == "val") & (run.epochs["epoch"] > 0)]
    best = max(val.itertuples(), key=lambda r: (r.acc, -r.loss, -r.epoch))
    assert run.summary["best_epoch"] == best.epoch
    test_at_best = run.epochs[(run.epochs["split"] == "test") & (run.epochs["epoch"] == best.epoch)]
    assert run.summary["best"]["test"]["acc"] == test_at_best["acc"].item()
    assert run.summary["finished"] is True


def test_joint_records_contributions_but_no_free_sharpness(tmp_path):
    path = train(small_config(method="joint", epochs=1), out=tmp_path / "run", quiet=True)
    steps = load_run(path).iterations
    assert steps["phi/audio"].notna().all() and steps["dominant"].notna().all()
    assert "sharpness" not in steps.columns  # not measured: absent, never zero


def test_callback_sees_every_record_and_can_stop(tmp_path):
    seen = []

    def callback(record):
        seen.append(record)
        return not (record.get("step") == 5 and "split" not in record)

    path = train(small_config(method="joint"), out=tmp_path / "run", callback=callback, quiet=True)
    run = load_run(path)
    assert list(run.iterations["step"]) == [1, 2, 3, 4, 5]
    assert [r["step"] for r in seen if "split" not in r] == [1, 2, 3, 4, 5]
    assert sum("split" in r for r in seen) == 3  # the epoch-0 evaluation
    assert run.summary["finished"] is False and "step 5" in run.summary["stopped"]


def test_training_control_stop(tmp_path):
    control = TrainingControl()
    control.stop()
    path = train(small_config(method="joint"), out=tmp_path / "run", control=control, quiet=True)
    run = load_run(path)
    assert len(run.iterations) == 0 and run.summary["finished"] is False
    assert "stopped by the user" in run.summary["stopped"]


def test_stop_pressed_during_a_step_is_reported_as_the_users(tmp_path):
    control = TrainingControl()

    def press_stop_mid_step(record):  # the loop checks the switch after this step's record
        if record.get("step") == 3:
            control.stop()

    path = train(
        small_config(method="joint"),
        out=tmp_path / "run",
        control=control,
        callback=press_stop_mid_step,
        quiet=True,
    )
    run = load_run(path)
    assert list(run.iterations["step"]) == [1, 2, 3]
    assert run.summary["stopped"] == "stopped by the user at step 3"


@pytest.mark.parametrize(
    ("key", "value", "choice"),
    [("dataset", "nope", "synthetic"), ("method", "nope", "msam"), ("fusion", "nope", "concat")],
)
def test_unknown_names_list_the_choices_and_write_nothing(tmp_path, key, value, choice):
    with pytest.raises(ValueError, match=f"unknown {key} 'nope'.*{choice}"):
        train(small_config(**{key: value}), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("key", "typo", "listed"),
    [
        ("dataset_options", "nosie", "noise"),
        ("model_options", "hiden", "hidden"),
        ("method_options", "phi_emma", "phi_ema"),
    ],
)
def test_misspelt_options_are_named_with_the_valid_ones_and_write_nothing(
    tmp_path, key, typo, listed
):
    with pytest.raises(ValueError, match=rf"unknown {key}.*\['{typo}'\].*{listed}"):
        train(small_config(**{key: {typo: 0.5}}), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_an_empty_split_is_named_before_anything_is_written(tmp_path):
    import dataclasses

    from msam_core.data import TensorSplit

    dataset = load_dataset("synthetic", **SMALL)
    val = dataset.val
    empty = TensorSplit({m: x[:0] for m, x in val.inputs.items()}, val.targets[:0])
    with pytest.raises(ValueError, match="no val samples"):
        train(
            small_config(),
            out=tmp_path / "run",
            data=dataclasses.replace(dataset, val=empty),
            quiet=True,
        )
    assert not (tmp_path / "run").exists()


def test_one_config_may_carry_the_options_of_several_methods(tmp_path):
    # msam compare runs every method from one config: another method's option is not a typo
    options = {"ogm_alpha": 0.3, "phi_ema": 0.5}
    path = train(
        small_config(method="joint", method_options=options), out=tmp_path / "run", quiet=True
    )
    assert load_run(path).summary["finished"] is True


def test_model_and_data_modalities_must_agree(tmp_path):
    dataset = load_dataset("synthetic", **SMALL)
    other = load_dataset("synthetic", modalities=["audio", "text"], **SMALL)
    model = build_model(other.modalities, other.num_classes)
    with pytest.raises(ValueError, match=r"\['audio', 'text'\].*\['audio', 'visual'\]"):
        train(small_config(), out=tmp_path / "run", data=dataset, model=model, quiet=True)
    wider = load_dataset("synthetic", dims=[32, 16], **SMALL)
    model = build_model(wider.modalities, wider.num_classes)
    with pytest.raises(ValueError, match=r"'visual': dataset \[32\], model \[16\]"):
        train(small_config(), out=tmp_path / "run", data=dataset, model=model, quiet=True)
    assert not (tmp_path / "run").exists()


def test_diverged_loss_stops_and_keeps_records_and_last_good_checkpoint(tmp_path):
    # epoch 1 trains normally, then the step schedule multiplies lr by 1e8: divergence
    config = small_config(method="joint", epochs=3, schedule="step", step_epochs=1, step_gamma=1e8)
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+ \(epoch 2\)"):
        train(config, out=tmp_path / "run", quiet=True)
    run = load_run(tmp_path / "run")
    assert math.isnan(run.iterations["loss"].iloc[-1])  # the diverged step, written as null
    assert run.iterations["loss"].iloc[:STEPS_PER_EPOCH].notna().all()
    assert run.summary["finished"] is False and "non-finite" in run.summary["stopped"]
    assert run.summary["diverged"] is True
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    path = train(small_config(method="joint", epochs=1), out=tmp_path / "run", quiet=True)
    before = (path / "iterations.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_config(method="joint", epochs=1), out=path, quiet=True)
    assert (path / "iterations.jsonl").read_text() == before
    train(small_config(method="joint", epochs=1, seed=1), out=path, overwrite=True, quiet=True)
    assert json.loads((path / "config.json").read_text())["seed"] == 1


def test_unwritable_out_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="choose"):
        train(small_config(method="joint", epochs=1), out=blocker / "run", quiet=True)


def test_joint_training_leaves_the_weak_modality_behind(tmp_path):
    """The default synthetic imbalance: visual alone stays far below audio alone."""
    for seed in (0, 1, 2):
        config = TrainConfig(method="joint", epochs=3, seed=seed, device="cpu")
        run = load_run(train(config, out=tmp_path / f"seed{seed}", quiet=True))
        test = run.summary["best"]["test"]
        assert test["acc/audio"] - test["acc/visual"] > 0.25, (seed, test)
        assert test["phi/audio"] > test["phi/visual"]


def test_periodic_measures_every_k_steps_and_at_epoch_end(tmp_path):
    config = small_config(
        method="msam",
        epochs=1,
        measure_every=3,
        probe_size=32,
        measure_options={"max_iter": 5, "n_samples": 2},
        landscape_epochs=[1],
        landscape_options={"steps": 3, "dims": 1},
    )
    run = load_run(train(config, out=tmp_path / "run", quiet=True))
    steps = run.iterations.set_index("step")
    measured = [3, 6]
    assert steps["sharpness/audio"].dropna().index.tolist() == measured
    assert steps["hessian/top_eig"].dropna().index.tolist() == measured
    assert steps["sharpness"].notna().all()  # M-SAM measures its own at every step
    assert steps["sharpness/probe"].dropna().index.tolist() == measured  # the whole model
    train_rows = run.epochs[run.epochs["split"] == "train"]
    assert train_rows["sharpness/visual"].notna().all()  # epoch end, on the probe batch
    assert "sharpness/visual" not in run.epochs[run.epochs["split"] == "val"].dropna(axis=1)
    assert [p.name for p in run.landscapes] == ["epoch0001_all_1d.npz"]


def test_joint_batch_sharpness_matches_the_formula_and_probe_sharpness_keeps_its_own_key(
    tmp_path,
):
    from msam_viz import MissingRecordsWarning, sharpness_curves

    config = small_config(method="joint", epochs=1, measure_every=2, probe_size=32)
    plain = load_run(train(config, out=tmp_path / "a", quiet=True))
    assert "sharpness" not in plain.iterations  # no ascent step, no per-batch sharpness
    assert plain.iterations["sharpness/probe"].dropna().index.size == STEPS_PER_EPOCH // 2
    with pytest.warns(MissingRecordsWarning, match="per-batch sharpness"):
        names = [t.name for t in sharpness_curves(plain).data]
    assert "whole model" in names and "overall" not in names

    config = small_config(
        method="joint", epochs=1, method_options={"batch_sharpness": "true"}, rho=0.1
    )
    run = load_run(train(config, out=tmp_path / "b", quiet=True))
    first = run.iterations.iloc[0]
    # recompute step 1 by hand: the initial weights (epoch-0 checkpoint), the first batch of
    # the seeded data order, and the formula l(θ + ρ g/‖g‖) − l(θ)
    dataset = build_dataset(config)
    model_before = build_run_model(config, dataset)
    initial = load_checkpoint(run.path / "checkpoints" / "epoch_0000.pt")
    model_before.load_state_dict(initial["model"])
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(0))
    inputs, targets = dataset.train.take(order[:32])
    loss = F.cross_entropy(model_before(inputs), targets)
    grads = torch.autograd.grad(loss, list(model_before.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(model_before.parameters(), grads, strict=True):
            p.add_(0.1 * g / norm)
        perturbed = F.cross_entropy(model_before(inputs), targets)
    assert first["sharpness"] == pytest.approx(float(perturbed - loss.detach()), rel=1e-5, abs=1e-7)
    assert run.iterations["sharpness"].notna().all()
