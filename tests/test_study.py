"""Studies: presets and study files, and a micro study through every stage, re-run reused."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from geomkit.errors import SpecError
from geomkit.models import build
from geomkit.study import (
    StudyConfig,
    findings,
    list_presets,
    load_study_config,
    markdown_to_html,
    open_study,
    parse_stages,
    run_study,
    study_config_from_dict,
)

MICRO = """
name = "micro"
models = ["vit-tiny", "resnet-tiny"]
optimizers = ["vanilla", "sam"]
seeds = [0]

[model_kwargs."vit-tiny"]
depth = 1
embed_dim = 8
num_heads = 2

[model_kwargs."resnet-tiny"]
widths = [4, 4, 8]

[data]
source = "synthetic"
synthetic_train = 48
synthetic_test = 32
augment = false

[train]
epochs = 1
batch_size = 24

[analysis]
samples = 16
ntk_samples = 8
ntk_repeats = 1
test_samples = 16
hessian_max_iter = 8
density_samples = 16
density_probes = 1
density_iter = 6

[landscape]
x = [-1.0, 1.0, 3]
y = [-1.0, 1.0, 3]
samples = 16
"""


def test_presets_load_and_expand():
    assert {"quick", "fashion", "subsets"} <= set(list_presets())
    quick = load_study_config("quick")
    assert isinstance(quick, StudyConfig)
    names = [r.name for r in quick.runs()]
    assert names == [f"{m}-{o}-s0" for m in ("vit-tiny", "mixer-tiny", "resnet-tiny")
                     for o in ("vanilla", "sam")]
    by = {r.name: r.train_config for r in quick.runs()}
    assert by["resnet-tiny-vanilla-s0"].optimizer == "sgd"
    assert by["resnet-tiny-sam-s0"].optimizer == "sam"
    assert by["resnet-tiny-sam-s0"].base_optimizer == "sgd"
    assert by["vit-tiny-vanilla-s0"].optimizer == "adamw"
    assert by["mixer-tiny-sam-s0"].rho == pytest.approx(0.3)
    assert by["vit-tiny-sam-s0"].data["source"] == "digits"
    assert by["resnet-tiny-sam-s0"].lr is None  # the family's default
    lr = study_config_from_dict(quick.to_dict() | {"lr": {"vit": 0.01, "mixer-tiny": 0.02}})
    by = {r.name: r.train_config for r in lr.runs()}
    assert by["vit-tiny-sam-s0"].lr == 0.01 and by["mixer-tiny-vanilla-s0"].lr == 0.02
    assert by["resnet-tiny-sam-s0"].lr is None
    subsets = load_study_config("subsets")
    assert sorted({r.subset for r in subsets.runs()}) == [0.1, 0.25, 0.5, 1.0]
    assert any(r.name == "vit-sam-subset0.25-s0" for r in subsets.runs())
    fashion = load_study_config("fashion")
    assert len(fashion.seeds) == 3
    assert quick.threads == fashion.threads == subsets.threads == 1
    # round trip through the JSON-able dict
    assert study_config_from_dict(quick.to_dict(), source="preset:quick") == quick


def test_fashion_presets_build_the_models_their_comments_describe():
    # fashion.toml / subsets.toml state parameter counts and were sized by step time:
    # the models must build at 28 px, one channel, with those sizes
    for preset in ("fashion", "subsets"):
        cfg = load_study_config(preset)
        counts = {}
        for r in cfg.runs():
            tc = r.train_config
            model = build(tc.model, image_size=28, in_chans=1, num_classes=10,
                          **tc.model_kwargs)
            counts[tc.model] = sum(p.numel() for p in model.parameters())
            assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        assert counts == {"vit": 205_962, "mixer": 111_402, "resnet": 175_610}, preset


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(SpecError, match="valid presets: .*quick") as e:
        load_study_config("quik")
    assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match="no such study file"):
        load_study_config("missing/study.toml")


@pytest.mark.parametrize(
    "text, match",
    [
        ("models = [", "not valid TOML"),
        ('models = ["nope"]', "unknown model 'nope'"),
        ('models = ["vit-tiny"]\noptimizers = ["adam"]', "unknown optimizer 'adam'"),
        ('models = ["vit-tiny"]\nwhat = 1', "unknown study key"),
        ('models = ["vit-tiny"]\n[train]\nepochs = 0', "epochs"),
        ('models = ["vit-tiny"]\n[train]\nseed = 3', "may not set seed"),
        ('models = ["vit-tiny"]\n[data]\nsource = "mnist"', r"\[data\]"),
        ('models = ["vit-tiny"]\n[data]\nsubsets = [0]', "subsets"),
        ('models = ["vit-tiny"]\n[landscape]\nx = [1, -1, 5]', "min < max"),
        ('models = ["vit-tiny"]\n[analysis]\nsamples = -1', "samples"),
        ('models = ["vit-tiny"]\n[vanilla]\nvit = "adam"', "vanilla.vit"),
        ('models = ["vit-tiny"]\n[lr]\nvit = "fast"', "lr.vit"),
        ('models = ["vit-tiny"]\n[lr]\nvit = 0.1\n[train]\nlr = 0.1', "may not set lr"),
        ("seeds = [0]", "needs `models"),
        ('models = ["vit-tiny"]\nthreads = -1', "threads"),
    ],
)
def test_malformed_study_files(tmp_path: Path, text: str, match: str):
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(SpecError, match=match) as e:
        load_study_config(p)
    assert "\n" not in str(e.value)


def test_parse_stages():
    assert parse_stages(None) == ("train", "analyze", "landscape", "report")
    assert parse_stages("report,train") == ("train", "report")
    with pytest.raises(SpecError, match="valid: train"):
        parse_stages("train,plot")


def _mtimes(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*"))
            if p.is_file() and p.suffix in (".pt", ".h5")}


@pytest.mark.slow
# a 1-block, width-8 ViT at init on 8 near-duplicate synthetic inputs has a float32-singular NTK
@pytest.mark.filterwarnings("ignore:NTK kernel is singular:RuntimeWarning")
def test_micro_study_end_to_end_and_rerun_reuses(tmp_path: Path):
    cfg_path = tmp_path / "micro.toml"
    cfg_path.write_text(MICRO)
    out = tmp_path / "study"
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = run_study(load_study_config(cfg_path).replace(threads=1), out, progress=False)
        assert torch.get_num_threads() == 2  # the study's thread count was restored
    finally:
        torch.set_num_threads(threads)
    assert [x.status for x in r.runs] == ["trained"] * 4
    for x in r.runs:
        assert (out / "runs" / x.name / "last.pt").is_file()
        assert x.epochs == 1 and 0 <= x.test_acc <= 1
    state = json.loads((out / "study.json").read_text())
    assert [row["run"] for row in state["runs"]] == [x.name for x in r.runs]
    # stage 2: every run measured; densities; stage 3: complete surfaces; stage 4: report
    view = open_study(out)
    for row in view.rows:
        assert row["lambda_max"]["whole"] > 0 and row["weight_norm"] > 0
        assert 0 <= row["clean"] <= 1 and row["per_corruption"]
        assert row["density"] and row["landscape"]
    assert set(r.landscapes) == {x.name for x in r.runs}
    assert {"landscapes", "lambda_max", "sparsity", "density", "corruptions"} <= set(r.figures)
    for png in r.figures.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = r.report.read_text()
    assert "## Findings" in md and "SAM lowers λ_max in every Hessian block" in md
    assert "vit-tiny-sam" in md and "![landscapes](figures/landscapes.png)" in md
    assert "`landscapes/<run>.h5`" in md and "`density/<run>.h5`" in md
    html = (out / "report.html").read_text()
    assert "<table>" in html and "<img" in html and "<h2>Findings</h2>" in html
    before = _mtimes(out)

    again = run_study(cfg_path, out, progress=False)
    assert [x.status for x in again.runs] == ["reused"] * 4
    assert _mtimes(out) == before  # nothing retrained, remeasured or recomputed
    assert again.report is not None

    # a different setting for an existing run is refused, not silently mixed
    changed = load_study_config(cfg_path)
    changed = changed.replace(train=dict(changed.train, epochs=2))
    with pytest.raises(SpecError, match="epochs=1"):
        run_study(changed, out, stages="train", progress=False)


def test_landscapes_only_for_the_runs_figure_1_draws(tmp_path: Path, monkeypatch):
    """Stage 3 computes surfaces for the first seed on the largest subset only: the report's
    Figure 1 draws those and nothing else (the fashion study had spent 12 of its 18 surfaces
    on seeds 1-2)."""
    import geomkit.geometry.landscape as landscape
    from geomkit.study.run import RunRecord
    from geomkit.study.stages import landscape_stage

    cfg = study_config_from_dict({"name": "t", "models": ["vit-tiny"], "seeds": [3, 1],
                                  "data": {"subsets": [0.5, 1.0]}})
    assert cfg.figure_key == (1.0, 3)
    records = [RunRecord(spec, tmp_path / spec.name / "last.pt", "reused") for spec in cfg.runs()]
    assert len(records) == 8
    asked: list[str] = []

    class Done:
        complete = True

    def fake(ckpt, path, **kw):
        asked.append(Path(ckpt).parent.name)
        return Done()

    monkeypatch.setattr(landscape, "landscape_from_checkpoint", fake)
    out = landscape_stage(cfg, tmp_path, records, progress=False)
    assert asked == ["vit-tiny-vanilla-s3", "vit-tiny-sam-s3"]
    assert sorted(out["landscapes"]) == sorted(asked)


def test_markdown_to_html_subset():
    md = ("# T\n\ntext with `code` and **bold** <x>\n\n- a\n- b\n\n"
          "| h | v |\n|---|---|\n| r | 1 |\n\n![f](f.png)\n")
    out = markdown_to_html(md)
    assert "<h1>T</h1>" in out and "<code>code</code>" in out and "<strong>bold</strong>" in out
    assert "&lt;x&gt;" in out and "<li>a</li>" in out and "<th>h</th>" in out
    assert "<td>1</td>" in out and "---" not in out and "<img alt='f' src='f.png'>" in out


def test_findings_from_numbers(tmp_path: Path):
    from geomkit.study.view import StudyView

    def row(model, fam, opt, acc, lam, w, kappa):
        return {"run": f"{model}-{opt}", "model": model, "family": fam, "optimizer": opt,
                "subset": 1.0, "seed": 0, "test_acc": acc, "kappa_init": kappa,
                "lambda_max": {"embedding": lam, "whole": 2 * lam}, "hessian_depth": 2,
                "t3": {"embedding": lam, "whole": 2 * lam},
                "weight_norm": w, "mean_corrupted": acc - 0.1}

    rows = (row("resnet-tiny", "resnet", "vanilla", 0.9, 5.0, 10.0, 10.0),
            row("resnet-tiny", "resnet", "sam", 0.91, 4.0, 11.0, 10.0),
            row("vit-tiny", "vit", "vanilla", 0.8, 50.0, 10.0, 100.0),
            row("vit-tiny", "vit", "sam", 0.79, 60.0, 9.0, 100.0))
    f = {x.claim: x for x in findings(StudyView(tmp_path, {}, rows, None))}
    assert f["NTK κ at initialization: ResNet < ViT < Mixer"].verdict == "holds"
    assert f["SAM lowers λ_max in every Hessian block"].verdict == "partly"
    assert "2 of 4" in f["SAM lowers λ_max in every Hessian block"].detail
    assert f["SAM raises the weight norm ‖w‖₂"].verdict == "partly"
    assert f["SAM improves test accuracy"].verdict == "partly"

    # the report lists only the files the study wrote (no landscapes, no densities here)
    from geomkit.study.report import report_markdown

    full = [dict(r, epochs=1, train_loss=0.5, train_seconds=1.0) for r in rows]
    cfg = study_config_from_dict({"name": "t", "models": ["resnet-tiny", "vit-tiny"]})
    md = report_markdown(StudyView(tmp_path, {}, full, None), cfg, {})
    assert "`results.h5`" in md and "landscapes/" not in md and "density/" not in md


def test_cli_study_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture):
    from cli.main import main

    assert main(["study", "nope", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomkit: error: unknown study preset 'nope'; valid presets: ")
    assert err.count("\n") == 1
    assert main(["study", "quick", "--out", str(tmp_path / "s"), "--stages", "plot"]) == 2
    assert "valid: train, analyze, landscape, report" in capsys.readouterr().err


def test_study_json_is_valid_json_even_with_nan(tmp_path: Path):
    import math

    from geomkit.study.run import _write_json_atomic

    p = tmp_path / "study.json"
    _write_json_atomic(p, {"runs": [{"test_acc": math.nan, "train_seconds": math.inf,
                                     "checkpoint": Path("runs/a/last.pt")}]})

    def strict(token):
        raise ValueError(f"invalid JSON token {token}")

    state = json.loads(p.read_text(), parse_constant=strict)
    assert state == {"runs": [{"test_acc": None, "train_seconds": "inf",
                               "checkpoint": "runs/a/last.pt"}]}
    assert [q.name for q in tmp_path.iterdir()] == ["study.json"]


def test_density_file_is_tagged_reused_and_never_replaces_a_foreign_file(tmp_path: Path):
    from types import SimpleNamespace

    import h5py

    from geomkit.errors import ResultFileError
    from geomkit.study.stages import density_for_run
    from geomkit.study.view import read_density
    from tests.cases import tiny_checkpoint

    cfg = study_config_from_dict({"name": "t", "models": ["vit-tiny"],
                                  "analysis": {"density_samples": 8, "density_probes": 1,
                                               "density_iter": 4}})
    run = SimpleNamespace(name="r", checkpoint=tiny_checkpoint(tmp_path / "c.pt"))
    path = tmp_path / "density" / "r.h5"
    assert density_for_run(run, path, cfg) == path
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "geomkit-density/1"
        assert "torch_version" in json.loads(f.attrs["provenance"])
    d = read_density(path)
    assert d.grid.shape == d.density.shape and d.attrs["samples"] == 8
    assert d.attrs["provenance"]["torch_version"]
    before = path.stat().st_mtime_ns
    density_for_run(run, path, cfg)
    assert path.stat().st_mtime_ns == before  # reused
    # a density file from before the format tag is geomkit's: read and reused
    with h5py.File(path, "a") as f:
        del f.attrs["format"]
    assert read_density(path).grid.shape == d.grid.shape
    legacy = path.read_bytes()
    density_for_run(run, path, cfg)
    assert path.read_bytes() == legacy
    # anything else is refused, one line, and left byte-identical
    from geomkit.results import ResultsFile

    for name, make in (("results", lambda p: ResultsFile(p)),
                       ("text", lambda p: p.write_text("notes"))):
        other = tmp_path / "density" / f"{name}.h5"
        make(other)
        content = other.read_bytes()
        with pytest.raises(ResultFileError) as e:
            density_for_run(run, other, cfg, force=True)
        assert "\n" not in str(e.value) and "refusing to replace" in str(e.value)
        assert other.read_bytes() == content
        with pytest.raises(ResultFileError) as e:
            read_density(other)
        assert "\n" not in str(e.value)


def test_landscape_stage_keeps_a_surface_of_other_settings_unless_forced(tmp_path: Path):
    """Changed [landscape] settings are refused (the surface is kept) unless --force; a
    surface of a checkpoint that was since retrained is stale and recomputed."""
    from geomkit.study.run import RunRecord
    from geomkit.study.stages import landscape_stage
    from tests.cases import tiny_checkpoint

    def cfg(seed: int):
        return study_config_from_dict({"name": "t", "models": ["vit-tiny"], "seeds": [0],
                                       "optimizers": ["vanilla"],
                                       "landscape": {"x": [-1.0, 1.0, 3], "y": [-1.0, 1.0, 3],
                                                     "samples": 8, "seed": seed}})

    spec = cfg(0).runs()[0]
    ck = tiny_checkpoint(tmp_path / "runs" / spec.name / "last.pt")
    records = [RunRecord(spec, ck, "reused")]
    path = landscape_stage(cfg(0), tmp_path, records, progress=False)["landscapes"][spec.name]
    before = path.read_bytes()
    with pytest.raises(SpecError, match=r"other \[landscape\] settings \(seed\); pass force"):
        landscape_stage(cfg(1), tmp_path, records, progress=False)
    assert path.read_bytes() == before
    landscape_stage(cfg(1), tmp_path, records, force=True, progress=False)
    assert path.read_bytes() != before
    with h5py.File(path) as f:
        assert json.loads(f.attrs["spec"])["seed"] == 1
    tiny_checkpoint(ck, seed=5)  # retrained: the surface of the old weights is stale
    landscape_stage(cfg(1), tmp_path, records, progress=False)
    with h5py.File(path) as f:
        assert json.loads(f.attrs["spec"])["checkpoint_sha256"] == load_sha(ck)


def load_sha(path: Path) -> str:
    from geomkit.checkpoint import load_checkpoint

    return load_checkpoint(path).sha256()


def test_a_directory_given_as_the_study_is_named_a_directory(tmp_path: Path):
    with pytest.raises(SpecError, match="is a directory, not a study file"):
        load_study_config(str(tmp_path))


def test_cli_study_seeds_trains_only_those(tmp_path: Path, capsys: pytest.CaptureFixture):
    from cli.main import main

    cfg_path = tmp_path / "two.toml"
    cfg_path.write_text(MICRO.replace('models = ["vit-tiny", "resnet-tiny"]',
                                      'models = ["resnet-tiny"]')
                        .replace("seeds = [0]", "seeds = [0, 1]"))
    out = tmp_path / "study"
    rc = main(["study", str(cfg_path), "--out", str(out), "--stages", "train", "--seeds", "1",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "resnet-tiny-sam-s1", "resnet-tiny-vanilla-s1"]
    capsys.readouterr()
    rc = main(["study", str(cfg_path), "--out", str(out), "--seeds", "0,7", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "seeds 7 are not the study's" in err and err.count("\n") == 1
