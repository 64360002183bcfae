"""M-SAM inside PyTorch Lightning records what ``msam train`` records.

A 2-epoch Lightning fit of :class:`msam_core.lightning.MsamLightningModule` on synthetic data
and ``msam_core.train`` with the same config and seed: the same steps with the same φ,
weights, dominant modality and loss, and the same final parameters.  Tolerance: φ, weights and
the dominant modality exactly (they come from counted accuracies); loss, sharpness and every
parameter to 1e-6 absolute (measured: 0, both run the same method object's step on the same
batches in the same order).
"""

from __future__ import annotations

from importlib.metadata import requires, version

import lightning as L
import pytest
import torch
from packaging.requirements import Requirement

import msam_core as mc
from msam_core.lightning import MsamLightningModule
from msam_core.rundir import build_dataset, build_run_model

CONFIG = {
    "method": "msam",
    "epochs": 2,
    "batch_size": 32,
    "seed": 3,
    "dataset_options": {"n_train": 96, "n_val": 48, "n_test": 48},
}


def _lightning_run(out, **changes):
    precision = changes.pop("precision", "32-true")
    cfg = mc.TrainConfig.from_dict({**CONFIG, **changes})
    data = build_dataset(cfg)
    model = build_run_model(cfg, data)  # torch.manual_seed(seed) first, as train() does
    module = MsamLightningModule(model, data, out, cfg)
    _trainer(cfg.epochs, out.parent, precision).fit(module)
    return model


def _trainer(epochs: int, root, precision: str = "32-true") -> L.Trainer:
    """A quiet one-CPU Trainer: no logger, no Lightning checkpoints, no progress bar."""
    return L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        precision=precision,
    )


def test_a_lightning_fit_records_the_native_loops_steps(tmp_path):
    native_dir = mc.train(CONFIG, out=tmp_path / "native", quiet=True)
    model = _lightning_run(tmp_path / "lightning")
    native, light = mc.load_run(native_dir), mc.load_run(tmp_path / "lightning")
    a, b = native.iterations, light.iterations
    assert len(a) == len(b) == 6  # 96 / 32 = 3 steps x 2 epochs
    exact = ["step", "epoch", "dominant", "phi/audio", "phi/visual", "weight/audio", "lr"]
    assert a[exact].equals(b[exact])
    for key in ("loss", "sharpness"):
        assert (a[key] - b[key]).abs().max() <= 1e-6, key
    splits = ["epoch", "split", "acc", "acc/audio", "acc/visual", "phi/audio", "phi/visual"]
    assert native.epochs[splits].equals(light.epochs[splits])
    # the same final weights (the native loop's last checkpoint)
    saved = mc.load_trained(native_dir, "last").model.state_dict()
    gap = max((v - saved[k]).abs().max().item() for k, v in model.state_dict().items())
    assert gap <= 1e-6
    assert light.summary["finished"] and light.summary["best_epoch"] == native.summary["best_epoch"]
    assert light.modalities == native.modalities and light.method == "msam"


@pytest.mark.parametrize("method", ["sam", "mla"])
def test_a_bf16_mixed_fit_takes_the_native_loops_bf16_steps(tmp_path, method):
    """Lightning's autocast runs the step without its cast cache, as msam train's does: SAM's
    second pass and MLA's later sub-steps see the weights as moved within the step."""
    native_dir = mc.train(
        {**CONFIG, "method": method, "precision": "bf16"}, out=tmp_path / "native", quiet=True
    )
    _lightning_run(tmp_path / "lightning", method=method, precision="bf16-mixed")
    a, b = mc.load_run(native_dir).iterations, mc.load_run(tmp_path / "lightning").iterations
    keys = ["loss", "sharpness"] if method == "sam" else ["loss", "loss/audio", "loss/visual"]
    for key in keys:
        assert (a[key] - b[key]).abs().max() <= 1e-6
    if method == "sam":
        assert (b["sharpness"] > 0).all()


def test_installing_lightning_leaves_the_pinned_torch_alone():
    # lightning's own torch requirement admits the build the Makefile pins
    torch_reqs = [Requirement(r) for r in requires("lightning") or []]
    pinned = version("torch").split("+")[0]
    assert any(r.name == "torch" for r in torch_reqs)
    assert all(r.specifier.contains(pinned) for r in torch_reqs if r.name == "torch")
    assert torch.__version__.startswith("2.13.0")


def test_a_fit_that_raises_leaves_a_summary_saying_why(tmp_path):
    cfg = mc.TrainConfig.from_dict(CONFIG)
    data = build_dataset(cfg)
    module = MsamLightningModule(build_run_model(cfg, data), data, tmp_path / "run", cfg)

    def fail(*_):
        raise RuntimeError("disk on fire")

    module.method.step = fail
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, devices=1)
    with pytest.raises(RuntimeError, match="disk on fire"):
        trainer.fit(module)
    summary = mc.load_run(tmp_path / "run").summary
    assert summary["finished"] is False and "disk on fire" in summary["stopped"]


def test_lightnings_own_loggers_see_phi_weights_and_accuracies(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = mc.TrainConfig.from_dict({**CONFIG, "epochs": 1})
    data = build_dataset(cfg)
    module = MsamLightningModule(build_run_model(cfg, data), data, tmp_path / "run", cfg)
    logger = TensorBoardLogger(tmp_path / "tb", name="msam")
    trainer = L.Trainer(
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,  # Lightning's default writes every 50th step's logs
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module)
    [events] = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "phi/audio", "phi/visual", "weight/audio", "val/acc", "val/acc/visual"} <= tags
    recorded = mc.load_run(tmp_path / "run").iterations["phi/audio"]
    assert [e.value for e in acc.Scalars("phi/audio")] == pytest.approx(list(recorded), abs=1e-7)


def test_a_fit_resumed_from_a_lightning_checkpoint_is_refused_before_it_writes(tmp_path):
    """A Lightning checkpoint lacks the run's step count, data order, schedule and method
    state: resuming from one would record wrong steps, so it is refused, naming the way out,
    and the refused fit writes no run directory."""
    cfg = mc.TrainConfig.from_dict({**CONFIG, "epochs": 1})
    data = build_dataset(cfg)
    first = MsamLightningModule(build_run_model(cfg, data), data, tmp_path / "first", cfg)
    trainer = _trainer(1, tmp_path)
    trainer.fit(first)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    fresh = build_run_model(cfg, data)
    torch.manual_seed(99)  # other initial weights than the checkpoint's
    for p in fresh.parameters():
        p.data.normal_()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    second = MsamLightningModule(fresh, data, tmp_path / "second", cfg)
    with pytest.raises(ValueError, match="msam train --resume"):
        _trainer(2, tmp_path).fit(second, ckpt_path=tmp_path / "last.ckpt")
    assert not (tmp_path / "second").exists()
    after = fresh.state_dict()  # the refusal came before the checkpoint's weights were loaded
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(mc.load_run(tmp_path / "first").iterations) == 3  # the first run is untouched
