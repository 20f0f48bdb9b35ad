"""Studies of checkpoints trained elsewhere (``[[checkpoints]]``): imported user models are
measured, drawn and paired beside (or instead of) the runs a study trains, never trained or
written, and every mistake in the entries is one line."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cli.main import main
from geomkit.errors import SpecError
from geomkit.provenance import file_sha256
from geomkit.study import load_study_config, open_study, run_study, study_config_from_dict

FACTORY = """
from torch import nn

def build_net(width=12, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.GELU(),
                         nn.Linear(width, num_classes))
"""

SETTINGS = """
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


@pytest.fixture
def imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two checkpoints of a user's own model, written by ``import_weights`` into
    ``tmp_path/ckpts`` (as if trained vanilla and with SAM by someone else's code)."""
    from geomkit.imported import import_weights, save_imported

    name = f"ext_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = __import__(name)
    d = tmp_path / "ckpts"
    d.mkdir()
    for i, opt in enumerate(("vanilla", "sam")):
        torch.manual_seed(i)
        torch.save(mod.build_net().state_dict(), d / f"w{i}.pt")
        save_imported(import_weights(f"{name}:build_net", d / f"w{i}.pt", data="digits"),
                      d / f"{opt}.pt")
    yield d
    sys.modules.pop(name, None)


def _study_file(tmp_path: Path, entries: str, head: str = 'name = "ext"\n') -> Path:
    p = tmp_path / "study.toml"
    p.write_text(head + SETTINGS + textwrap.dedent(entries))
    return p


ENTRIES = """
[[checkpoints]]
path = "ckpts/vanilla.pt"
model = "net"
optimizer = "vanilla"

[[checkpoints]]
path = "ckpts/sam.pt"
model = "net"
optimizer = "sam"
"""


def test_a_second_seed_of_a_cell_draws_every_surface(imported: Path, tmp_path: Path):
    """Two [[checkpoints]] with the same labels and another seed share a Figure-1 cell:
    every surface is drawn, each titled by its run, none dropped."""
    extra = ENTRIES + """
[[checkpoints]]
path = "ckpts/sam.pt"
model = "net"
optimizer = "sam"
seed = 1
"""
    study = _study_file(tmp_path, extra)
    cfg = load_study_config(study)
    cfg = cfg.replace(analysis=cfg.analysis.__class__.from_dict(
        {**cfg.analysis.to_dict(), "measure": ["params"], "density_samples": 0}))
    r = run_study(cfg, tmp_path / "out", progress=False)
    assert set(r.landscapes) == {"net-vanilla-s0", "net-sam-s0", "net-sam-s1"}
    assert "landscapes_runs" in r.figures and "landscapes" not in r.figures


def test_externals_are_checked_before_anything_trains(imported: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    import geomkit.train

    def no_training(*a, **k):
        raise AssertionError("trained before checking the [[checkpoints]]")

    monkeypatch.setattr(geomkit.train, "train", no_training)
    head = 'name = "mixed"\nmodels = ["resnet-tiny"]\n'
    bad = ENTRIES.replace("ckpts/sam.pt", "ckpts/typo.pt").replace('"net"', '"mine"')
    with pytest.raises(SpecError, match="no such checkpoint file"):
        run_study(load_study_config(_study_file(tmp_path, bad, head)), tmp_path / "out",
                  progress=False)
    # a study's own run file listed as a checkpoint would be overwritten by training
    own = ENTRIES.replace("ckpts/sam.pt", "out/runs/resnet-tiny-sam-s0/last.pt").replace(
        '"net"', '"mine"')
    (tmp_path / "out" / "runs" / "resnet-tiny-sam-s0").mkdir(parents=True)
    (tmp_path / "ckpts" / "sam.pt").rename(tmp_path / "out/runs/resnet-tiny-sam-s0/last.pt")
    with pytest.raises(SpecError, match="the study's own run resnet-tiny-sam-s0"):
        run_study(load_study_config(_study_file(tmp_path, own, head)), tmp_path / "out",
                  progress=False)


def test_relative_paths_are_normalized(tmp_path: Path):
    from geomkit.study.config import ExternalRun

    e = ExternalRun.from_dict({"path": "../imported/x.pt", "model": "m", "optimizer": "sam"},
                              tmp_path / "studies")
    assert e.path == str(tmp_path.resolve() / "imported" / "x.pt") and ".." not in e.path


@pytest.mark.filterwarnings("ignore:NTK kernel is singular:RuntimeWarning")
def test_a_study_of_imported_checkpoints_runs_every_stage_and_never_writes_them(
        imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    study = _study_file(tmp_path, ENTRIES)
    monkeypatch.chdir(tmp_path / "ckpts")  # relative paths are the study file's, not cwd's
    before = {p.name: file_sha256(p) for p in imported.glob("*.pt")}
    out = tmp_path / "out"
    r = run_study(load_study_config(study), out, progress=False)

    assert [x.status for x in r.runs] == ["external", "external"]
    assert [x.checkpoint for x in r.runs] == [imported / "vanilla.pt", imported / "sam.pt"]
    assert not (out / "runs").exists()  # nothing trained, nothing copied
    assert set(r.landscapes) == {"net-vanilla-s0", "net-sam-s0"}
    assert (out / "figures" / "landscapes.png").is_file()  # 1 model x 2 optimizers, complete

    state = json.loads((out / "study.json").read_text())
    assert [x["checkpoint"] for x in state["runs"]] == [str(imported / "vanilla.pt"),
                                                        str(imported / "sam.pt")]
    assert {x["family"] for x in state["runs"]} == {"other"}

    view = open_study(out)
    rows = {x["run"]: x for x in view.rows}
    for row in rows.values():
        assert row["lambda_max"]["whole"] > 0 and row["weight_norm"] > 0
        assert row["test_acc"] == row["clean"] and row["test_acc_from"] == "analysis"
        assert row["landscape"] and row["density"]
    # the two checkpoints hold different weights: different curvature
    assert rows["net-vanilla-s0"]["lambda_max"]["whole"] != \
        rows["net-sam-s0"]["lambda_max"]["whole"]
    [(van, sam)] = view.pairs()
    assert (van["run"], sam["run"]) == ("net-vanilla-s0", "net-sam-s0")
    report = (out / "report.md").read_text()
    assert "[[checkpoints]]" in report and str(imported / "sam.pt") in report
    assert "SAM lowers λ_max in every Hessian block" in report
    assert "(analysis)" in report

    # re-running reuses everything; --force never touches a checkpoint it did not train
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    run_study(load_study_config(study), out, stages="train,analyze,landscape", progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")} == mtimes
    run_study(load_study_config(study), out, stages="train", force=True, progress=False)
    assert {p.name: file_sha256(p) for p in imported.glob("*.pt")} == before


def test_checkpoints_join_the_trained_runs_and_their_labels(imported: Path, tmp_path: Path):
    head = 'name = "mixed"\nmodels = ["resnet-tiny"]\n'
    cfg = load_study_config(_study_file(tmp_path, ENTRIES.replace('"net"', '"mine"'), head))
    names = [r.name for r in cfg.runs()]
    assert names == ["resnet-tiny-vanilla-s0", "resnet-tiny-sam-s0", "mine-vanilla-s0",
                     "mine-sam-s0"]
    assert [r.external for r in cfg.runs()] == [False, False, True, True]
    assert cfg.model_labels == ("resnet-tiny", "mine")
    assert cfg.in_figures(1.0, 5, external=True) and not cfg.in_figures(1.0, 5, external=False)
    # the resolved config (absolute paths) reads back to the same study
    assert study_config_from_dict(cfg.to_dict()) == cfg

    # a label that repeats a trained run's name is refused, naming both
    clash = ENTRIES.replace('"net"', '"resnet-tiny"')
    with pytest.raises(SpecError, match="two runs are named 'resnet-tiny-vanilla-s0'"):
        load_study_config(_study_file(tmp_path, clash, head))
    # labels differing only in case would share files on a case-insensitive file system
    case = ENTRIES.replace('model = "net"\noptimizer = "sam"',
                           'model = "NET"\noptimizer = "vanilla"')
    with pytest.raises(SpecError, match="differs only in case"):
        load_study_config(_study_file(tmp_path, case, head))


@pytest.mark.parametrize("entry, match", [
    ('path = "ckpts/sam.pt"\nmodel = "net"\n', r"needs optimizer"),
    ('path = "ckpts/sam.pt"\nmodel = "my net"\noptimizer = "sam"\n', r"model must be a label"),
    ('path = "ckpts/sam.pt"\nmodel = "n"\noptimizer = "sam"\nepochs = 3\n',
     r"unknown \[\[checkpoints\]\] key\(s\) epochs"),
    ('path = "ckpts/sam.pt"\nmodel = "n"\noptimizer = "sam"\nfamily = "cnn"\n',
     r"family must be one of vit, mixer, resnet, other"),
    ('path = "ckpts/sam.pt"\nmodel = "n"\noptimizer = "sam"\nseed = 1.5\n',
     r"seed must be an integer"),
    ('path = ""\nmodel = "n"\noptimizer = "sam"\n', r"path must be a non-empty string"),
])
def test_bad_checkpoint_entries_are_one_line(tmp_path: Path, entry: str, match: str):
    with pytest.raises(SpecError, match=match) as e:
        load_study_config(_study_file(tmp_path, "[[checkpoints]]\n" + entry))
    assert "\n" not in str(e.value)


def test_no_models_and_no_checkpoints_is_refused():
    with pytest.raises(SpecError, match=r"or \[\[checkpoints\]\] to measure"):
        study_config_from_dict({"name": "x"})
    with pytest.raises(SpecError, match="checkpoints must be a list of tables"):
        study_config_from_dict({"name": "x", "checkpoints": "a.pt"})


def test_a_missing_or_broken_checkpoint_stops_the_study_in_one_line(
        imported: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    (imported / "sam.pt").unlink()
    study = _study_file(tmp_path, ENTRIES)
    rc = main(["study", str(study), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no such checkpoint file" in err and str(imported / "sam.pt") in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "results.h5").exists()  # refused before measuring

    (imported / "sam.pt").write_bytes(b"not a checkpoint")
    rc = main(["study", str(study), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "[[checkpoints]]" in err and len(err.strip().splitlines()) == 1
