"""The Table 4 study: vanilla / SAM / AUG / SAM+AUG over training-set subsets with a fixed
budget of optimizer steps, and the report's Table 4 section and findings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from geomkit.checkpoint import load_checkpoint
from geomkit.errors import SpecError
from geomkit.study import load_study_config, open_study, run_study, study_config_from_dict
from geomkit.study.report import (
    paper_table4,
    report_markdown,
    table4_findings,
    table4_markdown,
)
from geomkit.study.view import StudyView

MICRO = """
name = "table4"
models = ["vit-tiny"]
optimizers = ["vanilla", "sam", "aug", "sam-aug"]
seeds = [0, 1]
aug = "light2"
threads = 1

[model_kwargs."vit-tiny"]
depth = 1
embed_dim = 8
num_heads = 2

[data]
source = "synthetic"
synthetic_train = 48
synthetic_test = 16
augment = false
subsets = [1.0, 0.5]

[train]
steps = 4
batch_size = 16

[analysis]
measure = ["hessian"]
samples = 8
ntk_samples = 8
ntk_repeats = 1
test_samples = 16
hessian_max_iter = 4
sharpness_m = 8
sharpness_steps = 2
noise_draws = 2
density_samples = 0

[landscape]
enabled = false
samples = 8
"""


def _micro(**changes) -> dict:
    d = tomllib.loads(MICRO)
    for k, v in changes.items():
        if isinstance(v, dict):
            d[k] = {**d.get(k, {}), **v}
        else:
            d[k] = v
    return d


def test_a_micro_table4_study_end_to_end(tmp_path: Path):
    cfg = study_config_from_dict(_micro())
    # the report's text without its figures (drawn and tested in tests/test_study.py)
    res = run_study(cfg, tmp_path / "s", stages="train,analyze", progress=False)
    assert len(res.runs) == 16
    for r in res.runs:
        ck = load_checkpoint(r.checkpoint)
        assert ck.step == 4, r.name  # the budget, at 48 or 24 examples (3 or 2 per epoch)
        assert ck.config["steps"] == 4
        assert ck.epoch == ck.config["epochs"] == (2 if r.spec.subset == 1 else 2)
        want = "light2" if r.spec.optimizer in ("aug", "sam-aug") else "none"
        assert ck.config["augreg"] == want, r.name
        assert ck.config["optimizer"] == ("sam" if "sam" in r.spec.optimizer else "adamw")
    assert {r.name for r in res.runs} >= {"vit-tiny-sam-aug-subset0.5-s1", "vit-tiny-aug-s0"}
    view = open_study(tmp_path / "s")
    md = report_markdown(view, cfg, {})
    assert "## Table 4: training-set subsets, SAM and strong augmentation" in md
    assert "| model | method | 1 | 1/2 | paper (1 / 1/2 of ImageNet) |" in md
    # vit-tiny is a ViT: the paper's ViT-B/16 column, 79.9 / 75.4 for SAM
    row = next(ln for ln in md.splitlines() if ln.startswith("| vit-tiny | SAM | "))
    assert row.count(" ± ") == 2 and row.endswith("| 79.9 / 75.4 |")
    assert "λ_max of the whole model" in md and "S_max (adaptive" not in md  # not measured
    assert "Final training loss" in md
    for claim in ("SAM's accuracy gain over vanilla grows as the training set shrinks",
                  "AUG flattens the minimum", "SAM+AUG is more accurate than both"):
        line = next(ln for ln in md.splitlines() if claim in ln)
        assert "not measured" not in line and "(2 seeds)" in line, line
    assert "4 optimizer steps per run" in md
    # the paper's vanilla/SAM findings still pair vanilla with sam only
    assert "SAM improves test accuracy" in md
    # a rerun reuses every finished budget run
    again = run_study(cfg, tmp_path / "s", stages="train", progress=False)
    assert {r.status for r in again.runs} == {"reused"}
    assert {r["optimizer"] for r in view.rows} == {"vanilla", "sam", "aug", "sam-aug"}
    assert len(view.pairs()) == 4 and len(view.pairs("sam-aug", base="aug")) == 4


def _row(model, opt, subset, seed, acc, lam):
    return {"run": f"{model}-{opt}-{subset}-s{seed}", "model": model, "family": "vit",
            "optimizer": opt, "subset": subset, "seed": seed, "test_acc": acc,
            "lambda_max": {"whole": lam}, "train_loss": 0.01, "sharpness": {"whole": lam / 100}}


def test_table4_findings_from_known_numbers(tmp_path: Path):
    rows = []
    for seed in (0, 1):
        d = 0.01 * seed  # seeds differ a little, so the cells have a std
        rows += [_row("vit", "vanilla", 1.0, seed, 0.80 + d, 100.0),
                 _row("vit", "sam", 1.0, seed, 0.81 + d, 20.0),
                 _row("vit", "aug", 1.0, seed, 0.82 + d, 50.0),
                 _row("vit", "sam-aug", 1.0, seed, 0.83 + d, 10.0),
                 _row("vit", "vanilla", 0.1, seed, 0.50 + d, 300.0),
                 _row("vit", "sam", 0.1, seed, 0.60 + d, 40.0),
                 _row("vit", "aug", 0.1, seed, 0.55 + d, 400.0),  # AUG sharper here
                 _row("vit", "sam-aug", 0.1, seed, 0.58 + d, 30.0)]  # below SAM here
    view = StudyView(tmp_path, {}, tuple(rows), None)
    gain, flat, both = table4_findings(view)
    assert gain.verdict == "holds" and "+1.00 at 1, +10.00 at 1/10 points (2 seeds)" in gain.detail
    assert flat.verdict == "partly" and "AUG below vanilla in 1 of 2" in flat.detail
    assert "SAM below vanilla in 2 of 2" in flat.detail
    assert both.verdict == "partly" and "in 1 of 2" in both.detail
    cfg = study_config_from_dict(_micro(), source="x")
    md = "\n".join(table4_markdown(view, cfg))
    assert "| vit | Vanilla | 80.5 ± 0.5 | 50.5 ± 0.5 | 74.6 / 32.8 |" in md
    assert "| vit | SAM+AUG | 10 ± 0 | 30 ± 0 |" in md  # λ_max table
    assert "S_max (adaptive" in md and "| vit | AUG | 0.5 ± 0 | 4 ± 0 |" in md
    # one subset, or no Table 4 method: no section
    one = StudyView(tmp_path, {}, tuple(r for r in rows if r["subset"] == 1.0), None)
    assert table4_markdown(one, cfg) == []


def test_paper_table4_is_read_from_the_reference():
    models, paper = paper_table4()
    assert models == {"resnet": "ResNet-152", "vit": "ViT-B/16", "mixer": "Mixer-B/16"}
    assert paper[("mixer", "sam-aug")] == {1.0: 78.1, 0.5: 73.1, 0.25: 65.8, 0.1: 51.0}
    assert paper[("resnet", "sam")][0.1] == 57.1 and ("resnet", "aug") not in paper


@pytest.mark.parametrize("changes, match", [
    ({"aug": "strong"}, "aug must be an AugReg level, one of light1, "),
    ({"aug": "none"}, "aug must be an AugReg level"),
    ({"aug": 3}, "aug must be an AugReg level.*got 3 \\(integer\\)"),
    ({"train": {"steps": 0}}, "\\[train\\] steps must be an integer >= 1 or null, got 0"),
    ({"train": {"steps": 2.5}}, "\\[train\\] steps must be an integer >= 1"),
    ({"train": {"steps": "100"}}, "\\[train\\] steps must be an integer >= 1"),
    ({"train": {"epochs": 3}}, "\\[train\\] sets both steps and epochs; give one"),
    ({"train": {"augreg": "light1"}}, "\\[train\\] may not set augreg in a study with aug"),
])
def test_bad_aug_and_steps_are_refused_in_one_line(changes, match):
    with pytest.raises(SpecError, match=match) as e:
        study_config_from_dict(_micro(**changes))
    assert "\n" not in str(e.value)


def test_the_subsets_preset_asks_table4s_question():
    cfg = load_study_config("subsets")
    assert cfg.optimizers == ("vanilla", "sam", "aug", "sam-aug")
    assert cfg.subsets == (1.0, 0.5, 0.25, 0.1) and cfg.data.source == "fashion-mnist"
    assert "epochs" not in cfg.train and cfg.train["steps"] >= 1000
    assert cfg.analysis.density_samples == 0 and not cfg.landscape.enabled
    runs = cfg.runs()
    by = {r.name: r.train_config for r in runs}
    assert by["vit-aug-subset0.1-s0"].augreg == cfg.aug
    assert by["vit-sam-aug-subset0.1-s0"].optimizer == "sam"
    assert by["vit-vanilla-subset0.1-s0"].augreg == "none"
    assert all(r.train_config.steps == cfg.train["steps"] for r in runs)
