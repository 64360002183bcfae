"""What users hit first: misspelt names get a "did you mean", `msam config` describes every
key, and a broken run file is an error naming the file (and the line), never a traceback."""

from __future__ import annotations

import json

import pytest

from msam_core import TrainConfig, build_model, load_dataset, load_run
from msam_core.cli import main
from msam_core.config import DESCRIPTIONS
from msam_core.methods import get_method
from msam_core.methods.registry import check_method_options
from msam_core.suggest import close_matches, did_you_mean


def test_did_you_mean_suggests_close_names_only():
    assert close_matches("synthtic", ["mfeat", "synthetic", "ave"]) == ["synthetic"]
    assert did_you_mean("msma", ["joint", "msam", "sam"]) == " (did you mean 'msam'?)"
    assert did_you_mean("zzz", ["joint", "msam"]) == ""
    # several names: one guess each, saying which is which
    text = did_you_mean(["epcohs", "zzz", "lrr"], ["epochs", "lr", "seed"])
    assert text == " (did you mean 'epochs' for 'epcohs', 'lr' for 'lrr'?)"
    assert close_matches("SGD", ["sgd", "adam"]) == ["sgd"]  # case does not hide a match


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda: load_dataset("synthtic"),
            "unknown dataset 'synthtic' (did you mean 'synthetic'?)",
        ),
        (lambda: get_method("msma"), "unknown method 'msma' (did you mean 'msam'?)"),
        (
            lambda: TrainConfig(optimizer="sgdd"),
            "optimizer='sgdd' is not valid (did you mean 'sgd'?)",
        ),
        (lambda: TrainConfig.from_dict({"epcohs": 3}), "(did you mean 'epochs'?)"),
        (lambda: check_method_options({"phiema": 0.9}), "(did you mean 'phi_ema'?)"),
        (
            lambda: load_dataset("synthetic", nosie=0.1),
            "unknown dataset_options of 'synthetic' ['nosie'] (did you mean 'noise'?)",
        ),
        (
            lambda: build_model(load_dataset("synthetic", n_train=8).modalities, 4, fusion="gatd"),
            "unknown fusion 'gatd' (did you mean 'gated'?)",
        ),
    ],
)
def test_misspelt_names_get_a_suggestion(call, expected):
    with pytest.raises((ValueError, KeyError)) as info:
        call()
    assert expected in str(info.value)


def test_cli_suggests_commands_options_and_config_keys(capsys, tmp_path):
    assert main(["landscpe"]) == 2
    assert "unknown command 'landscpe' (did you mean 'landscape'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["landscape", str(tmp_path), "--stpes", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --stpes 3 (did you mean '--steps'" in capsys.readouterr().err
    assert main(["train", "--epcohs", "1", "--out", str(tmp_path / "r")]) == 2
    assert "(did you mean 'epochs'?)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_every_config_key_has_a_description():
    assert set(DESCRIPTIONS) == set(TrainConfig.keys())
    assert all(text and "\n" not in text for text in DESCRIPTIONS.values())


def test_msam_config_prints_every_key_default_and_description(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[1:] if line.strip() and not line[0].isupper()}
    defaults = TrainConfig().to_dict()
    for key, default in defaults.items():
        assert key in rows, key
        assert json.dumps(default) in rows[key] and DESCRIPTIONS[key] in rows[key]
    assert main(["config", "lr", "rho"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["lr", "rho"]
    assert main(["config", "rhoo"]) == 2
    assert "(did you mean 'rho'?)" in capsys.readouterr().err


def test_msam_config_yaml_is_a_config_file_train_accepts(capsys, tmp_path):
    assert main(["config", "--yaml"]) == 0
    path = tmp_path / "defaults.yaml"
    path.write_text(capsys.readouterr().out)
    assert TrainConfig.from_file(path) == TrainConfig()


# --------------------------------------------------------------------------------------------
# broken run files


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "msam", "run": {}}))
    good = {"step": 1, "epoch": 1, "loss": 0.5, "dominant": "audio", "phi/audio": 0.2}
    (run / "iterations.jsonl").write_text(json.dumps(good) + "\n")
    return run


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[1, 2]", "expected a JSON object {...}, found a list"),
        ('{"step": "2", "loss": 0.1}', "'step' must be an integer, found '2'"),
        ('{"step": 2, "loss": "low"}', "'loss' must be a number or null, found 'low'"),
        ('{"step": 2, "phi/audio": [0.1]}', "'phi/audio' must be a number or null"),
        ('{"step": 2, "dominant": 0}', "'dominant' must be a string, found 0"),
        ('{"step": 2, "epoch": true}', "'epoch' must be an integer, found True"),
    ],
)
def test_a_record_of_the_wrong_type_names_file_and_line(tmp_path, line, problem):
    run = _run_dir(tmp_path)
    with open(run / "iterations.jsonl", "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(ValueError) as info:
        load_run(run)
    message = str(info.value)
    assert f"{run / 'iterations.jsonl'}, line 2: {problem}" in message


def test_records_with_extra_keys_of_any_type_still_load(tmp_path):
    run = _run_dir(tmp_path)
    with open(run / "iterations.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 2, "loss": None, "note": "user key", "tags": [1]}) + "\n")
    loaded = load_run(run)
    assert list(loaded.iterations["step"]) == [1, 2]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_broken_config_json_names_the_file(tmp_path, text):
    run = _run_dir(tmp_path)
    (run / "config.json").write_text(text)
    with pytest.raises(
        ValueError, match=r"config\.json (is not valid JSON|must hold a JSON object)"
    ):
        load_run(run)


def test_a_broken_summary_is_ignored_with_a_warning_naming_it(tmp_path):
    run = _run_dir(tmp_path)
    (run / "summary.json").write_text("[]")
    with pytest.warns(RuntimeWarning, match="summary.json must hold a JSON object"):
        assert load_run(run).summary == {}


def test_msam_report_on_a_broken_record_is_one_line_naming_it(tmp_path, capsys):
    run = _run_dir(tmp_path)
    with open(run / "iterations.jsonl", "a") as fh:
        fh.write('{"step": "x"}\n')
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "iterations.jsonl, line 2" in err and "Traceback" not in err


def test_a_custom_dataset_is_recorded_under_its_own_name(tmp_path):
    import dataclasses

    from msam_core import train

    data = dataclasses.replace(
        load_dataset("synthetic", n_train=32, n_val=16, n_test=16), name="my_sensors"
    )
    out = train({"epochs": 1}, out=tmp_path / "run", data=data, quiet=True)
    run = load_run(out)
    assert run.dataset == "my_sensors" and run.config["dataset"] == "my_sensors"
    assert run.config["run"]["custom_data"] is True
    assert run.summary["dataset"] == "my_sensors"
    # resuming with the same data continues the same run
    train(out=out, resume=True, data=data, quiet=True, epochs=2)
    assert load_run(out).summary["epochs_done"] == 2


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not a zip at all"])
def test_a_broken_landscape_file_names_the_file(tmp_path, content):
    from msam_core.landscape import load_landscape

    path = tmp_path / "grid.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"grid\.npz is not a landscape file msam can read"):
        load_landscape(path)


def test_a_foreign_npz_names_what_it_lacks(tmp_path):
    import numpy as np

    from msam_core.landscape import load_landscape

    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz is not a landscape msam wrote: it lacks"):
        load_landscape(tmp_path / "other.npz")


def test_resuming_over_a_record_of_the_wrong_type_names_file_and_line(tmp_path, capsys):
    from msam_core import train

    config = {"epochs": 1, "dataset_options": {"n_train": 32, "n_val": 16, "n_test": 16}}
    out = train(config, out=tmp_path / "run", quiet=True)
    with open(out / "iterations.jsonl", "a") as fh:
        fh.write('{"step": "seven", "loss": 0.1}\n')
    before = (out / "iterations.jsonl").read_text()
    args = ["train", "--resume", str(out), "--epochs", "2", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "iterations.jsonl, line 2: 'step' must be an integer, found 'seven'" in err
    assert (out / "iterations.jsonl").read_text() == before  # nothing rewritten
