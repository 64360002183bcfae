"""Your own model and loop, recorded with ``msam_core.Recorder``: the run directory it writes
is read by load_run, every figure, msam report, load_trained and landscapes like train()'s."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import msam_core as mc
import msam_viz as mv
from msam_core.batches import iterate_batches
from msam_core.cli import main
from msam_core.masking import apply_input_mask


class TwoTowers(nn.Module):
    """A user's model: encoders of different widths (32 and 8), a linear head on both."""

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = list(dims)
        widths = {"audio": 32, "visual": 8}
        self.encoders = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, widths[m]), nn.ReLU()) for m, d in dims.items()}
        )
        self.head = nn.Linear(sum(widths.values()), num_classes)

    def encode(self, inputs):
        return {m: self.encoders[m](inputs[m]) for m in self.modalities}

    def fuse(self, features, mask=None):
        return self.head(torch.cat([features[m] for m in self.modalities], dim=1))

    def forward(self, inputs, mask=None):
        return self.fuse(self.encode(apply_input_mask(inputs, mask, self.modalities)))


def _data():
    return mc.load_dataset("synthetic", n_train=96, n_val=48, n_test=48, dims=[12, 20])


def _own_loop(out, epochs=2, **options):
    data = _data()
    torch.manual_seed(0)
    model = TwoTowers({s.name: s.shape[0] for s in data.modalities}, data.num_classes)
    optimizer = mc.MSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    with mc.Recorder(
        out, model, data=data, method="msam", epochs=epochs, batch_size=32, **options
    ) as rec:
        rec.evaluate(model, epoch=0)
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(len(data.train), generator=order)
            for inputs, targets in iterate_batches(data.train, perm, 32, torch.device("cpu")):
                result = mc.msam_step(model, optimizer, inputs, targets)
                rec.log_step(result, epoch=epoch, lr=optimizer.param_groups[0]["lr"])
            rec.evaluate(model, epoch=epoch)
    return model, data


def test_the_run_directory_reads_like_trains(tmp_path):
    _own_loop(tmp_path / "run")
    run = mc.load_run(tmp_path / "run")
    assert run.modalities == ["audio", "visual"] and run.method == "msam"
    assert run.dataset == "synthetic" and run.config["run"]["custom_data"] is True
    assert run.config["run"]["model_class"].endswith("TwoTowers")
    assert list(run.iterations["step"]) == list(range(1, 7))  # 96 / 32 = 3 steps x 2 epochs
    for key in ("loss", "lr", "dominant", "phi/audio", "phi/visual", "weight/audio", "sharpness"):
        assert run.iterations[key].notna().all(), key
    shares = run.iterations[["weight/audio", "weight/visual"]].sum(axis=1)
    assert all(math.isclose(s, 1.0, abs_tol=1e-9) for s in shares)
    assert sorted(set(run.epochs["epoch"])) == [0, 1, 2]
    assert set(run.epochs["split"]) == {"train", "val", "test"}
    summary = run.summary
    assert summary["finished"] and summary["epochs_done"] == 2 and summary["steps"] == 6
    assert summary["best_epoch"] in (1, 2)
    files = {p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")}
    assert files == {"best.pt", "epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"}


def test_every_figure_and_the_report_draw_it(tmp_path, capsys):
    _own_loop(tmp_path / "run")
    run = mv.load_run(tmp_path / "run")
    for figure in (mv.shapley_shares, mv.dominance, mv.accuracy_curves):
        assert len(figure(run).data) > 0, figure.__name__
    # per-modality sharpness and Hessian were not measured in this loop: said, not faked
    with pytest.warns(mv.MissingRecordsWarning, match="sharpness/<modality>"):
        assert len(mv.sharpness_curves(run).data) > 0
    assert len(mv.compare_runs([run]).data) > 0
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")]) == 0
    assert "TwoTowers" not in capsys.readouterr().err
    assert (tmp_path / "r.html").stat().st_size > 0


def test_load_trained_and_landscapes_take_the_users_model(tmp_path):
    _, data = _own_loop(tmp_path / "run")
    with pytest.raises(ValueError, match="your own data"):
        mc.load_trained(tmp_path / "run")
    with pytest.raises(ValueError, match=r"your own model \(.*TwoTowers\)"):
        mc.load_trained(tmp_path / "run", data=data)
    fresh = TwoTowers({"audio": 12, "visual": 20}, data.num_classes)
    trained = mc.load_trained(tmp_path / "run", "best", model=fresh, data=data)
    best = mc.load_run(tmp_path / "run").summary["best_epoch"]
    assert trained.epoch == best
    again = mc.evaluate_split(trained.model, data.val)
    recorded = mc.load_run(tmp_path / "run").epochs
    row = recorded[(recorded["epoch"] == best) & (recorded["split"] == "val")].iloc[0]
    assert math.isclose(again["acc"], row["acc"]) and math.isclose(again["loss"], row["loss"])
    path = mc.landscape_for_run(
        tmp_path / "run", 2, steps=3, dims=1, n_eval=32, model=fresh, data=data
    )
    assert path.suffix == ".npz" and path.parent.name == "landscapes"


def test_a_loop_that_fails_leaves_an_unfinished_summary(tmp_path):
    data = _data()
    model = TwoTowers({"audio": 12, "visual": 20}, data.num_classes)
    with (
        pytest.raises(RuntimeError, match="boom"),
        mc.Recorder(tmp_path / "run", model, data=data) as rec,
    ):
        rec.log_step({"loss": 1.0}, epoch=1)
        raise RuntimeError("boom")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] is False and "boom" in summary["stopped"]
    assert summary["steps"] == 1


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    data = _data()
    with pytest.raises(ValueError, match="no `modalities` list"):
        mc.Recorder(tmp_path / "a", nn.Linear(2, 2), data=data)
    model = TwoTowers({"audio": 12, "visual": 20}, data.num_classes)
    with pytest.raises(KeyError, match="did you mean 'epochs'"):
        mc.Recorder(tmp_path / "b", model, data=data, epoch=3)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with mc.Recorder(tmp_path / "c", model, data=data) as rec, pytest.raises(TypeError):
        rec.log_step(3.0, epoch=1)


def test_tensorboard_and_the_ignored_mask_watch_work_in_your_loop(tmp_path, monkeypatch):
    import msam_core.sinks

    monkeypatch.setattr(msam_core.sinks, "IGNORED_MASK_STEPS", 2)
    data = _data()
    model = TwoTowers({"audio": 12, "visual": 20}, data.num_classes)
    same = {"loss": 1.0, "phi/audio": 0.0, "phi/visual": 0.0}
    with mc.Recorder(tmp_path / "run", model, data=data, log_to=["tensorboard"]) as rec:
        rec.log_step(same, epoch=1)
        with pytest.warns(RuntimeWarning, match="does not seem to depend on `mask`"):
            rec.log_step(same, epoch=1)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_the_landscape_explorer_takes_the_users_model(tmp_path):
    from msam_viz.widgets import LandscapeExplorer

    _, data = _own_loop(tmp_path / "run")
    fresh = TwoTowers({"audio": 12, "visual": 20}, data.num_classes)
    explorer = LandscapeExplorer(tmp_path / "run", steps=5, n_eval=32, model=fresh, data=data)
    assert explorer.epoch.options == (0, 1, 2)
    explorer.compute(wait=True)
    assert explorer.landscape.steps == 5 and explorer.landscape.epoch == 2
    assert explorer.path.parent == tmp_path / "run" / "landscapes"
