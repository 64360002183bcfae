"""The ``msam`` command: train, resume, demo, plug-in commands and one-line user errors."""

from __future__ import annotations

import argparse
import re
import sys
import types

import pytest
import yaml

import msam_core.cli as cli
from msam_core.cli import main
from msam_core.record import load_run

SMALL = ["--dataset_options", "{n_train: 128, n_val: 32, n_test: 32}", "--batch_size", "32"]


def test_train_with_flags_and_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "joint", "--epochs", "1", "--device", "cpu", *SMALL]
    status = main([*args, "--lr", "0.1", "--fusion=sum", "--out", str(out), "--quiet"])
    assert status == 0, capsys.readouterr().err
    run = load_run(out)
    assert run.config["lr"] == 0.1 and run.config["fusion"] == "sum"
    assert run.config["dataset_options"]["n_train"] == 128
    assert len(run.iterations) == 4  # 128 / 32


def test_train_from_a_config_file_then_resume(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "method": "msam",
                "epochs": 1,
                "batch_size": 32,
                "device": "cpu",
                "dataset_options": {"n_train": 64, "n_val": 32, "n_test": 32},
            }
        )
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    run = load_run(out)
    assert run.summary["finished"] and list(run.iterations["step"]) == [1, 2, 3, 4]
    assert "run written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "unknown method 'nope'; choose one of"),
        (["--dataset", "nope"], "unknown dataset 'nope'; choose one of"),
        (["--fusion", "nope"], "unknown fusion 'nope'; choose one of"),
        (["--lrr", "1"], "unknown config key(s) ['lrr'] (did you mean 'lr'?); valid keys are"),
        (["--epochs", "two"], "config key 'epochs': cannot read 'two' as int"),
        (["--config", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["--rho", "nan"], "rho must be a finite number >= 0, got nan"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--dataset_options.nosie", "0.5"], "unknown dataset_options of 'synthetic' ['nosie']"),
        (["--model_options.hiden", "8"], "unknown model_options ['hiden']"),
        (["--method_options.phi_emma", "0.5"], "unknown method_options ['phi_emma']"),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, args, message):
    status = main(["train", "--out", str(tmp_path / "run"), "--quiet", *SMALL, *args])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_existing_run_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--method", "joint", "--epochs", "1", "--out", str(out), "--quiet", *SMALL]
    assert main(common) == 0
    assert main(common) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*common, "--overwrite"]) == 0


def test_demo_prints_both_methods_side_by_side_on_synthetic_and_real_data(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    headers = [line for line in text.splitlines() if line.split() == ["joint", "msam"]]
    assert len(headers) == 2  # one table per dataset
    for row in ("test acc, fused", "test acc, visual alone", "Shapley share, audio", "sharpness"):
        assert row in text
    assert "test acc, fou alone" in text and "Shapley share, pix" in text
    for dataset in ("synthetic", "mfeat"):
        for method in ("joint", "msam"):
            run = load_run(out / dataset / method)
            assert (run.dataset, run.method) == (dataset, method)


def test_demo_rejects_an_unknown_dataset_listing_the_choices(tmp_path, capsys):
    assert main(["demo", "--datasets", "cifar", "--out", str(tmp_path), "--quiet"]) == 2
    assert "synthetic" in capsys.readouterr().err


def test_help_lists_builtin_commands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "demo" in text


def test_unknown_command(capsys):
    assert main(["nope"]) == 2
    assert "unknown command 'nope'; choose one of" in capsys.readouterr().err


def test_plugin_commands_come_from_entry_points(monkeypatch, capsys):
    plugin = types.ModuleType("fake_plugin")
    plugin.HELP = "a plug-in"
    plugin.add_arguments = lambda parser: parser.add_argument("--times", type=int, default=1)
    plugin.run = lambda args: print("hello " * args.times) or 0
    monkeypatch.setitem(sys.modules, "fake_plugin", plugin)

    class EntryPoint:
        name = "hello"

        def load(self):
            return plugin

    monkeypatch.setattr(cli, "entry_points", lambda group: [EntryPoint()])
    assert "hello" in cli.available_commands()
    assert main(["hello", "--times", "2"]) == 0
    assert capsys.readouterr().out.strip() == "hello hello"


def test_every_builtin_command_follows_the_convention():
    for name in cli._builtin_commands():
        module = cli.load_command(name)
        assert isinstance(module.HELP, str) and module.HELP
        module.add_arguments(argparse.ArgumentParser())
        assert callable(module.run)


@pytest.mark.parametrize("folder", ["avmnist", "2024", "on", "data #1"])  # never read as YAML
def test_train_data_root_flag_reaches_the_audio_visual_loader(
    tmp_path, capsys, monkeypatch, folder
):
    import av_fixtures as fx

    monkeypatch.chdir(tmp_path)  # a relative path, as typed
    fx.make_avmnist(tmp_path / folder)
    out = tmp_path / "run"
    args = ["train", "--dataset", "avmnist", "--data-root", folder, "--method", "joint"]
    args += ["--epochs", "1", "--batch_size", "4", "--dataset_options.val_size", "3"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert load_run(out).config["dataset_options"]["data_root"] == folder


def test_train_data_root_missing_is_a_one_line_error_with_the_layout(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    args = ["train", "--dataset", "cremad", "--data-root", str(missing), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "AudioWAV" in err


# `msam --help` and argument errors answer before torch, pandas or plotly are imported: each
# case runs in a fresh interpreter and reports which of them it loaded.
_IMPORTS_PROBE = """
import runpy, sys
sys.argv = ["msam", *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
heavy = [m for m in ("torch", "pandas", "plotly", "scipy") if m in sys.modules]
print("LOADED", heavy, code, file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("module", "args", "status"),
    [
        ("msam_core", ["--help"], 0),
        ("msam_core.cli", ["--help"], 0),
        ("msam_core", ["train", "--help"], 0),
        ("msam_core", ["report", "--help"], 0),
        ("msam_core", ["train", "--epochs"], 2),  # argparse: a flag without its value
        ("msam_core", ["compare", "--methods", "joint"], 2),  # --out is required
        ("msam_core", ["landscape"], 2),  # the run directory is required
        ("msam_core", ["tarin"], 2),  # unknown command
    ],
)
def test_help_and_argument_errors_do_not_import_torch(module, args, status):
    import subprocess

    probe = _IMPORTS_PROBE.format(module=module, args=args)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"LOADED [] {status}", done.stderr[-2000:]


def test_every_command_accepts_quiet():
    for name in cli.available_commands():
        module = cli.load_command(name)
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        options = {a for action in parser._actions for a in action.option_strings}
        assert "--quiet" in options, f"msam {name} has no --quiet"


def test_epoch_lines_name_the_initial_evaluation_and_resume_says_where_it_starts(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "joint", "--epochs", "2", "--device", "cpu", *SMALL]
    assert main([*args, "--out", str(out)]) == 0
    text = "".join(capsys.readouterr())
    # 2 epochs print 2 epoch lines, plus one line for the evaluation of the initial weights
    assert text.count("initial evaluation: train loss") == 1, text
    assert re.findall(r"epoch +(\d+): train loss", text) == ["1", "2"], text
    assert main(["train", "--resume", str(out), "--device", "cpu"]) == 0
    text = "".join(capsys.readouterr())
    assert "already complete (2 of 2 epochs); pass --epochs" in text, text
    assert main(["train", "--resume", str(out), "--epochs", "3", "--device", "cpu"]) == 0
    text = "".join(capsys.readouterr())
    assert "resuming from epoch 2 of 3" in text, text
    assert re.findall(r"epoch +(\d+): train loss", text) == ["3"], text


def test_entry_returns_the_status_of_main_and_freezes_what_is_alive_for_the_exit():
    """The console script's ``entry``: ``main``'s exit status, with the objects alive at the end
    moved out of the interpreter's final collections (``gc.freeze``); a plain ``main`` call
    leaves the collector alone."""
    import subprocess

    probe = (
        "import gc, sys\n"
        "from msam_core.cli import entry, main\n"
        "sys.argv = ['msam', 'tarin']\n"
        "plain = main(['tarin'])\n"
        "before = gc.get_freeze_count()\n"
        "status = entry()\n"
        "print(plain, before, status, gc.get_freeze_count() > 0)\n"
    )
    # `python -m msam_core` (what --nproc and torchrun start on every rank) goes through it too
    as_module = (
        "import gc, runpy, sys\n"
        "sys.argv = ['msam', 'tarin']\n"
        "try:\n"
        "    runpy.run_module('msam_core', run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    print(done.code, gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", as_module], capture_output=True, text=True, timeout=300
    )
    assert done.stdout.split() == ["2", "True"], done.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.stdout.split() == ["2", "0", "2", "True"], done.stderr[-2000:]
