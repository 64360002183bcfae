"""``msam compare``: one run per (method, seed), a table over seeds, and resuming."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from msam_core.cli import main
from msam_core.compare import (
    compare,
    markdown_table,
    parse_methods,
    parse_seeds,
    run_path,
    run_state,
)
from msam_core.train import train

# the module, not the flat-API function of the same name
compare_module = importlib.import_module("msam_core.compare")

TINY = {
    "dataset_options": {"n_train": 64, "n_val": 32, "n_test": 32},
    "batch_size": 32,
    "epochs": 1,
    "device": "cpu",
    "alone": False,  # the ceiling runs have tests of their own
}


@pytest.fixture
def train_calls(monkeypatch):
    """Every call compare makes to the training loop, as (resume, epochs) pairs."""
    calls = []

    def counting(*args, **kwargs):
        calls.append((kwargs.get("resume", False), kwargs.get("epochs")))
        return train(*args, **kwargs)

    monkeypatch.setattr(compare_module, "train", counting)
    return calls


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def test_compare_writes_one_run_per_method_and_seed_and_aggregates(tmp_path, train_calls):
    out = tmp_path / "cmp"
    table = compare("synthetic", "joint,ogm_ge", 2, out, **TINY)
    assert len(train_calls) == 4
    assert list(table["method"]) == ["joint", "ogm_ge"] and list(table["seeds"]) == [2, 2]
    for method in ("joint", "ogm_ge"):
        accs = [_summary(run_path(out, method, s))["best"]["test"]["acc"] for s in (0, 1)]
        row = table.loc[table["method"] == method].iloc[0]
        assert row["test_acc_mean"] == pytest.approx(np.mean(accs))
        assert row["test_acc_std"] == pytest.approx(np.std(accs, ddof=1))
        shares = [row[f"share/{m}_mean"] for m in ("audio", "visual")]
        assert sum(shares) == pytest.approx(1.0)
        assert row["sec_per_step_mean"] > 0
    for name in ("results.csv", "results.md", "runs.csv", "compare.json"):
        assert (out / name).is_file(), name
    assert pd.read_csv(out / "results.csv").shape[0] == 2
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(zip(runs["method"], runs["seed"], strict=True)) == [
        ("joint", 0),
        ("joint", 1),
        ("ogm_ge", 0),
        ("ogm_ge", 1),
    ]
    markdown = (out / "results.md").read_text()
    assert "| joint | 2 |" in markdown and "acc audio" in markdown


def test_second_call_reuses_finished_runs_without_training(tmp_path, train_calls):
    out = tmp_path / "cmp"
    first = compare("synthetic", ["joint"], 2, out, **TINY)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("joint/seed*/iterations.jsonl")}
    assert len(train_calls) == 2 and len(stamps) == 2
    second = compare("synthetic", ["joint"], 2, out, **TINY)
    assert len(train_calls) == 2  # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    pd.testing.assert_frame_equal(first, second)


def test_interrupted_run_is_resumed_not_restarted(tmp_path, train_calls):
    out = tmp_path / "cmp"
    cfg = {**TINY, "epochs": 2, "method": "joint", "seed": 0, "name": "joint/seed0"}
    del cfg["alone"]  # a compare argument, not a config key
    # a run killed during epoch 2: its callback stops it after the first step of that epoch
    path = run_path(out, "joint", 0)
    train(cfg, out=path, quiet=True, callback=lambda r: not (r.get("step") == 3))
    assert run_state(path) == "resumable"
    compare("synthetic", ["joint"], [0], out, **{**TINY, "epochs": 2})
    assert train_calls == [(True, 2)]
    summary = _summary(path)
    assert summary["finished"] and summary["steps"] == 4
    steps = [json.loads(line)["step"] for line in (path / "iterations.jsonl").open()]
    assert steps == [1, 2, 3, 4]  # no step lost, none repeated


def test_more_epochs_extend_finished_runs(tmp_path, train_calls):
    out = tmp_path / "cmp"
    compare("synthetic", ["joint"], 1, out, **TINY)
    compare("synthetic", ["joint"], 1, out, **{**TINY, "epochs": 2})
    assert train_calls == [(False, None), (True, 2)]
    assert _summary(run_path(out, "joint", 0))["epochs_done"] == 2


def test_a_stored_run_with_another_config_is_an_error(tmp_path):
    out = tmp_path / "cmp"
    compare("synthetic", ["joint"], 1, out, **TINY)
    with pytest.raises(ValueError, match=r"lr: stored 0.05, asked 0.1"):
        compare("synthetic", ["joint"], 1, out, **{**TINY, "lr": 0.1})
    compare("synthetic", ["joint"], 1, out, **{**TINY, "epochs": 2})  # extends the run
    with pytest.raises(ValueError, match="a run of 2 epochs but 1 are asked for"):
        compare("synthetic", ["joint"], 1, out, **TINY)
    table = compare("synthetic", ["joint"], 1, out, overwrite=True, **{**TINY, "lr": 0.1})
    assert table.shape[0] == 1


def test_options_given_as_tuples_match_the_stored_lists(tmp_path, train_calls):
    options = {**TINY["dataset_options"], "strengths": (4.0, 2.0)}  # JSON stores a list
    compare("synthetic", ["joint"], 1, tmp_path / "cmp", **{**TINY, "dataset_options": options})
    compare("synthetic", ["joint"], 1, tmp_path / "cmp", **{**TINY, "dataset_options": options})
    assert len(train_calls) == 1  # reused, not refused as another config


def test_a_run_that_diverged_before_any_evaluation_is_a_row_without_metrics(tmp_path):
    # lr so large the loss overflows within epoch 1: the run stops before evaluating it
    data = {"n_train": 320, "n_val": 32, "n_test": 32}
    with pytest.warns(RuntimeWarning, match="the loss became nan"):
        table = compare(
            "synthetic",
            ["joint"],
            1,
            tmp_path / "cmp",
            **{**TINY, "lr": 1e4, "dataset_options": data},
        )
    runs = pd.read_csv(tmp_path / "cmp" / "runs.csv")
    assert runs["diverged"].tolist() == [1]
    assert math.isnan(runs["test_acc"].iloc[0]) and math.isnan(runs["share/audio"].iloc[0])
    assert table.shape[0] == 1


def test_markdown_table_formats_mean_and_sd():
    summary = pd.DataFrame(
        [
            {
                "method": "msam",
                "seeds": 3,
                "diverged": 0,
                "test_acc_mean": 0.91234,
                "test_acc_std": 0.0123,
                "sec_per_step_mean": 0.0042,
                "sec_per_step_std": math.nan,
            }
        ]
    )
    assert markdown_table(summary) == (
        "| method | seeds | test acc | ms / step |\n|---|---|---|---|\n"
        "| msam | 3 | 0.912 ± 0.012 | 4.20 |\n"
    )


def test_cli_compare_prints_the_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "joint", "--seeds", "1", "--out", str(out), "--epochs", "1"]
    argv += ["--batch_size", "32", "--device", "cpu", "--dataset_options.n_train", "64"]
    argv += ["--dataset_options.n_val", "32", "--dataset_options.n_test", "32"]
    argv[2] = "joint,msam"
    assert main(argv) == 0
    printed, err = capsys.readouterr()
    assert "| joint | 1 |" in printed and "| msam | 1 |" in printed and "results.md" in printed
    # one overall bar (runs done / total, the run in progress) and a line per finished run
    # (4 runs: joint, msam, and each modality trained alone)
    assert "runs: 100%" in err and "4/4" in err and "running msam seed 0" in err, err
    assert "[1/4] joint seed 0: trained" in printed + err
    assert "epoch" not in err  # no per-run bars or epoch lines without --verbose
    assert main([*argv, "--quiet"]) == 0  # every run is reused; nothing but the table
    printed, err = capsys.readouterr()
    assert err == "" and "| msam | 1 |" in printed and "[1/4]" not in printed
    assert main([*argv[:2], "jiont", *argv[3:]]) == 2
    assert "unknown method 'jiont'" in capsys.readouterr().err


def test_request_errors_name_the_problem(tmp_path):
    assert parse_seeds(3) == [0, 1, 2] and parse_seeds("4,7") == [4, 7]
    assert [s.label for s in parse_methods(" joint , msam ")] == ["joint", "msam"]
    with pytest.raises(ValueError, match="count"):
        parse_seeds("three")
    with pytest.raises(ValueError, match="at least one seed"):
        parse_seeds(0)
    with pytest.raises(ValueError, match="more than once"):
        parse_methods("joint,joint")
    with pytest.raises(ValueError, match="choose one of"):
        parse_methods("jiont")
    with pytest.raises(ValueError, match="sets \\['method'\\]"):
        compare("synthetic", ["joint"], 1, tmp_path / "x", method="msam")


def test_method_specs_are_rows_of_their_own_and_reused(tmp_path, train_calls):
    out = tmp_path / "cmp"
    specs = "joint,msam,msam[rho=0.5],msam[perturb=all,rho=0.2]"
    table = compare("synthetic", specs, 1, out, **TINY)
    labels = ["joint", "msam", "msam[rho=0.5]", "msam[perturb=all,rho=0.2]"]
    assert list(table["method"]) == labels and len(train_calls) == 4
    stored = json.loads((run_path(out, "msam[rho=0.5]", 0) / "config.json").read_text())
    assert stored["rho"] == 0.5 and stored["method"] == "msam"
    both = json.loads((run_path(out, labels[3], 0) / "config.json").read_text())
    assert both["method_options"] == {"perturb": "all"} and both["rho"] == 0.2
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["method"]) == labels
    compare("synthetic", specs, 1, out, **TINY)
    assert len(train_calls) == 4  # every spec's run reused


def test_a_run_whose_resolved_method_options_differ_or_are_unknown_is_not_reused(tmp_path):
    # msam's perturb default was once 'all': such a run stored method_options {} as one with
    # today's default does, and only the resolved options tell them apart
    out = tmp_path / "cmp"
    compare("synthetic", "msam", 1, out, **TINY)
    config_file = run_path(out, "msam", 0) / "config.json"
    doc = json.loads(config_file.read_text())
    assert doc["run"]["resolved_method_options"]["perturb"] == "dominant"
    doc["run"]["resolved_method_options"]["perturb"] = "all"
    config_file.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"perturb: stored 'all', asked 'dominant'.*--overwrite"):
        compare("synthetic", "msam", 1, out, **TINY)
    del doc["run"]["resolved_method_options"]
    config_file.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"seed0' holds a run from before .* --overwrite"):
        compare("synthetic", "msam", 1, out, **TINY)
    assert (run_path(out, "msam", 0) / "summary.json").exists()  # nothing was deleted
    compare("synthetic", "msam", 1, out, overwrite=True, **TINY)


def test_an_older_run_is_reused_when_no_changed_default_is_in_doubt(tmp_path, train_calls):
    # joint has no option whose default changed; msam[perturb=all] set it itself
    out = tmp_path / "cmp"
    specs = "joint,msam[perturb=all]"
    compare("synthetic", specs, 1, out, **TINY)
    for label in ("joint", "msam[perturb=all]"):
        config_file = run_path(out, label, 0) / "config.json"
        doc = json.loads(config_file.read_text())
        del doc["run"]["resolved_method_options"]
        config_file.write_text(json.dumps(doc))
    calls = len(train_calls)
    compare("synthetic", specs, 1, out, **TINY)
    assert len(train_calls) == calls  # both reused


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("msam[rhoo=0.5]", r"'rhoo' is neither an option of 'msam'"),
        ("msam[rho]", r"'rho' is not key=value"),
        ("msam[rho=0.5", r"'\[' without '\]'"),
        ("msam[rho=-1]", r"rho must be"),
        ("ogm_ge[perturb=all]", r"'perturb' is neither an option of 'ogm_ge'"),
        ("msm[rho=1]", r"unknown method 'msm'"),
        # option values are the method's to check: refused before the grid runs, not per run
        ("msam[perturb=bogus]", r"unknown msam perturb 'bogus'"),
        ("msam[decomposition=split]", r"unknown msam decomposition 'split'"),
        ("msam[phi_ema=1.5]", r"phi_ema .* must be in \[0, 1\)"),
    ],
)
def test_a_bad_spec_is_named_before_anything_is_written(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        compare("synthetic", f"joint,{spec}", 1, tmp_path / "cmp", **TINY)
    assert not (tmp_path / "cmp").exists()


def test_a_method_its_model_cannot_take_is_refused_before_anything_is_written(tmp_path):
    # OGM-GE needs a unimodal readout, which early fusion lacks
    with pytest.raises(ValueError, match="early fusion"):
        compare("synthetic", "joint,ogm_ge", 1, tmp_path / "cmp", fusion="early", **TINY)
    assert not (tmp_path / "cmp").exists()


def test_fp16_on_the_cpu_is_refused_before_anything_is_written(tmp_path):
    # refused once for the whole grid, not as a failed row per run after the folder exists
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        compare("synthetic", "joint,msam", 2, tmp_path / "cmp", precision="fp16", **TINY)
    assert not (tmp_path / "cmp").exists()


def test_alone_runs_give_ceiling_headroom_and_recovered(tmp_path):
    out = tmp_path / "cmp"
    table = compare("synthetic", "joint,sam", 2, out, **{**TINY, "alone": True})
    runs = pd.read_csv(out / "runs.csv").set_index(["method", "seed"])
    for m in ("audio", "visual"):
        alone = json.loads((run_path(out, f"alone/{m}", 0) / "config.json").read_text())
        assert alone["modalities"] == [m] and alone["method"] == "joint"
        ceiling = runs.loc[f"alone/{m}", "test_acc"]
        inside = runs.loc["joint", f"acc/{m}"]
        sam = runs.loc["sam", f"acc/{m}"]
        row = table.set_index("method")
        assert row.loc["joint", f"alone/{m}_mean"] == pytest.approx(ceiling.mean())
        headroom = (ceiling - inside).mean()
        assert row.loc["sam", f"headroom/{m}_mean"] == pytest.approx(headroom)
        if headroom <= 0:  # no room: nothing to recover, no ratio
            assert math.isnan(row.loc["sam", f"recovered/{m}_mean"])
            continue
        expected = 100 * (sam - inside).mean() / headroom
        assert row.loc["sam", f"recovered/{m}_mean"] == pytest.approx(expected)
        assert row.loc["joint", f"recovered/{m}_mean"] == pytest.approx(0.0)
    text = (out / "results.md").read_text()
    assert "recovered visual (%)" in text and "alone visual" in text and "probe visual" in text

    # the weak modality is joint's lowest on validation; the headline quotes the summary
    val = {
        m: np.mean([_summary(run_path(out, "joint", s))["best"]["val"][f"acc/{m}"] for s in (0, 1)])
        for m in ("audio", "visual")
    }
    weak = compare_module.weak_modality(out, [0, 1], ["audio", "visual"])
    assert weak == min(val, key=val.__getitem__)
    head = compare_module.headline(table, weak)
    assert list(head.index) == ["joint", "sam"] and head.loc["joint", "× joint"] == "1.00"
    sam = table.set_index("method").loc["sam"]
    recovered = head.loc["sam", f"recovered {weak} (%)"]
    if math.isfinite(sam[f"recovered/{weak}_mean"]):
        assert recovered.startswith(f"{sam[f'recovered/{weak}_mean']:.1f} ± ")
    step = f"{1000 * sam['sec_per_step_mean']:.2f} ± {1000 * sam['sec_per_step_std']:.2f}"
    assert head.loc["sam", "ms / step"] == step
    with pytest.raises(KeyError, match="alone=True"):
        compare_module.headline(table.drop(columns=f"recovered/{weak}_mean"), weak)
    with pytest.raises(ValueError, match="'joint' among its methods"):
        compare_module.weak_modality(out, [0, 1], ["nope"])


def test_no_alone_and_single_modality_requests(tmp_path):
    table = compare("synthetic", "joint", 1, tmp_path / "a", **TINY)
    assert not (tmp_path / "a" / "alone").exists()
    assert not any(c.startswith("alone/") for c in table.columns)
    with pytest.raises(ValueError, match="needs at least 2 modalities"):
        compare("synthetic", "joint,ogm_ge", 1, tmp_path / "b", **{**TINY, "modalities": "audio"})
    assert not (tmp_path / "b").exists()


def test_a_folder_another_comparison_is_writing_is_refused_before_anything_is_written(
    tmp_path, capsys
):
    """Two comparisons in one folder: the second is refused up front, naming the first,
    instead of finding its runs locked and tabulating them as failed."""
    from msam_core.runlock import run_lock

    out = tmp_path / "cmp"
    out.mkdir()
    argv = ["compare", "--methods", "joint", "--seeds", "1", "--out", str(out), "--epochs", "1"]
    argv += ["--device", "cpu", "--no-alone", "--quiet"]
    with run_lock(out, "comparing"):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is being written by this process" in err and "comparing" in err, err
    assert [p.name for p in out.iterdir()] == []


def test_a_comparison_whose_every_run_fails_still_tabulates_them(tmp_path, monkeypatch):
    """No run leaves metrics: the table still has one failed row per spec, not a KeyError."""

    def failing(*args, **kwargs):
        raise RuntimeError("no luck")

    monkeypatch.setattr(compare_module, "train", failing)
    table = compare("synthetic", "joint,msam", 1, tmp_path / "cmp", **TINY)
    assert list(table["failed"]) == [1, 1] and list(table["seeds"]) == [0, 0]
    runs = pd.read_csv(tmp_path / "cmp" / "runs.csv")
    assert list(runs["error"].str.contains("no luck")) == [True, True]
