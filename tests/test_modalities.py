"""The ``modalities`` key: a run on a subset of a dataset's modalities, and its bad input."""

from __future__ import annotations

import pytest
import torch

from msam_core.cli import main
from msam_core.config import TrainConfig
from msam_core.data import ModalitySpec, MultimodalDataset, load_dataset
from msam_core.data.subset import select_modalities
from msam_core.record import load_run
from msam_core.train import build_dataset, train

SMALL = {"n_train": 128, "n_val": 32, "n_test": 32}


def small_config(**changes) -> TrainConfig:
    base = {"dataset_options": SMALL, "batch_size": 32, "epochs": 1, "device": "cpu"}
    return TrainConfig.from_dict({**base, **changes})


def test_a_subset_keeps_the_same_samples_and_labels():
    full = load_dataset("synthetic", seed=3, **SMALL)
    part = build_dataset(small_config(seed=3, modalities=["visual"]))
    assert part.modality_names == ["visual"]
    for split in ("train", "val", "test"):
        a, b = full.split(split), part.split(split)
        assert torch.equal(a.inputs["visual"], b.inputs["visual"])
        assert torch.equal(a.targets, b.targets)
        assert set(b.inputs) == {"visual"}


def test_the_subset_follows_the_dataset_order_whatever_the_order_typed():
    full = load_dataset("synthetic", modalities=3, **SMALL)
    part = select_modalities(full, ["text", "audio"])
    assert part.modality_names == ["audio", "text"]
    assert select_modalities(full, []) is full


def test_a_file_backed_split_keeps_only_the_chosen_modalities():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"a": torch.full((2,), float(i)), "b": torch.zeros(4)}, i

    specs = [ModalitySpec("a", "vector", (2,)), ModalitySpec("b", "vector", (4,))]
    files = MultimodalDataset("files", specs, 3, Items(), Items(), Items())
    part = select_modalities(files, ["b"])
    inputs, label = part.train[2]
    assert set(inputs) == {"b"} and label == 2 and len(part.train) == 3


def test_training_on_one_modality_records_only_it(tmp_path):
    run = load_run(train(small_config(method="joint", modalities=["visual"]), out=tmp_path / "v"))
    assert run.modalities == ["visual"]
    assert "acc/visual" in run.epochs and "acc/audio" not in run.epochs
    assert run.config["modalities"] == ["visual"]


def test_cli_takes_a_comma_list(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "msam", "--epochs", "1", "--device", "cpu", "--quiet"]
    small = ["--dataset_options", "{n_train: 64, n_val: 32, n_test: 32}", "--batch_size", "32"]
    assert main([*args, *small, "--modalities", "visual", "--out", str(out)]) == 0
    assert load_run(out).modalities == ["visual"]


def test_an_unknown_modality_lists_the_valid_ones_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"\['video'\].*'audio', 'visual'"):
        train(small_config(modalities=["video"]), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["ogm_ge", "agm"])
def test_a_method_needing_two_modalities_refuses_one_with_the_reason(tmp_path, method):
    with pytest.raises(ValueError, match=r"needs at least 2 modalities.*one modality alone"):
        train(small_config(method=method, modalities=["audio"]), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
