"""Table 1 / Table 3 assembly from results files, the paper's numbers, every format."""

import csv
import io
import json
import math
from pathlib import Path

import pytest

from geomkit import tables as T
from geomkit.errors import ResultFileError, SpecError
from geomkit.results import ResultsFile, load_results

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper_tables.md"


def _meta(model, opt, sha, label="vanilla"):
    return {"id": f"{sha}-{model}", "label": f"{model}/{label}", "model": model, "optimizer": opt,
            "checkpoint_path": f"/{model}.pt", "checkpoint_sha256": sha * 8,
            "config": {"optimizer": opt, "label": label}, "data_spec": {"source": "digits"},
            "model_kwargs": {}}


def _put(rf, meta, params, kappa, lam, acts, clean, corr):
    rf.put(meta, "params", {"num_params": params}, settings={}, seconds=0)
    rf.put(meta, "ntk_init", {"kappa": kappa}, settings={}, seconds=0)
    rf.put(meta, "hessian", {"lambda_max": lam, "depth": acts["depth"]}, settings={}, seconds=0)
    rf.put(meta, "activations", acts, settings={}, seconds=0)
    rf.put(meta, "robustness", {"clean": clean, "mean_corrupted": corr}, settings={}, seconds=0)


@pytest.fixture
def results(tmp_path):
    p = tmp_path / "r.h5"
    rf = ResultsFile(p)
    vit_lam = {"embedding": 30.0, "attn": 20.0, "mlp": 25.0, "block1": 5.0, "block2": 4.0,
               "block4": 3.0, "whole": 70.0}
    acts = {"depth": 4, "weight_norm": 12.5, "a": {"first": 1.0, "mid": 2.0, "last": 3.0}}
    _put(rf, _meta("vit-tiny", "adamw", "aaaaaa"), 136138, 4205.3, vit_lam, acts, 0.9, 0.5)
    mix_lam = {"embedding": 8.0, "token_mlp": 0.5, "channel_mlp": 2.0, "block1": 1.0,
               "block2": 0.7, "block4": 0.2, "whole": 9.0}
    _put(rf, _meta("mixer-tiny", "sam", "bbbbbb", "sam"), 72714, math.inf, mix_lam, acts,
         0.95, 0.625)
    res_lam = {"embedding": 1.0, "block1": 2.0, "block2": 3.0, "block3": 4.0, "whole": 5.0}
    acts3 = {"depth": 3, "weight_norm": 30.0, "a": {"first": 4.0, "mid": 5.0, "last": 6.0}}
    meta = _meta("resnet-tiny", "sgd", "cccccc")
    _put(rf, meta, 77754, 2801.6, res_lam, acts3, 0.97, 0.8)
    rf.drop(meta["id"], "robustness")  # a missing measurement renders as a dash
    return p


def test_paper_tables_parse_the_packaged_copy():
    p = T.paper_tables()
    assert set(p) >= {1, 2, 3, 4}
    t1 = p[1]
    assert t1.header[1:] == ("ResNet-50", "ResNet-152", "ViT-B/16", "ViT-B/16-SAM", "Mixer-B/16",
                             "Mixer-B/16-SAM")
    rows = {r[0]: r[1:] for r in t1.rows}
    assert rows["NTK κ (at init)"][2] == 4205.3 and rows["NTK κ (at init)"][3] is None
    assert rows["#Params"][0] == "25M"
    t3 = {r[0]: r[1:] for r in p[3].rows}
    assert t3["Mixer-B/16-SAM"][-1] == 216.1 and len(p[3].header) == 12
    if SHARED.exists():  # the packaged copy is the shared reference, verbatim
        pkg = Path(T.__file__).parent / "reference" / "paper_tables.md"
        assert pkg.read_text() == SHARED.read_text()


def test_table1_columns_rows_and_units(results):
    t = T.table1(results)
    assert t.col_labels == ("vit-tiny/adamw", "mixer-tiny/sam", "resnet-tiny/sgd")
    assert t.row_labels[0] == "#Params" and len(t.row_labels) == 5
    col = {lab: [row[j] for row in t.cells] for j, lab in enumerate(t.col_labels)}
    assert col["vit-tiny/adamw"] == [136138, 4205.3, 70.0, 90.0, 50.0]
    assert math.isinf(col["mixer-tiny/sam"][1])
    assert col["resnet-tiny/sgd"][3:] == [None, None]
    md = T.render(t, "md")
    assert "| #Params | 136.1K | 72.7K | 77.8K |" in md
    assert "| -C (%) | 50.0 | 62.5 | – |" in md and "inf" in md


def test_table1_with_paper_side_by_side(results):
    t = T.table1(results, with_paper=True)
    assert len(t.col_labels) == 3 + 6 and t.col_labels[3] == "paper: ResNet-50"
    j = t.col_labels.index("paper: Mixer-B/16")
    got = {lab: row[j] for lab, row in zip(t.row_labels, t.cells, strict=True)}
    assert got == {"#Params": "59M", "NTK κ (at init)": 14468.0, "Hessian λ_max": 1644.4,
                   "Top-1 (%)": 66.4, "-C (%)": 33.8}
    md = T.render(t, "md")
    assert md.count("–") >= 2  # the paper's own dashes (no κ for SAM)
    row = "| Hessian λ_max | 70.00 | 9.00 | 5.00 | 122.9 | 179.8 | 738.8 | 20.9 | 1644.4 | 22.5 |"
    assert row in md  # the paper's numbers as printed there


def test_table3_rows_blocks_and_paper(results):
    t = T.table3(results)
    assert t.row_labels == ("vit-tiny/adamw", "mixer-tiny/sam", "resnet-tiny/sgd")
    vit, mix, res = t.cells
    assert vit == (30.0, 20.0, 25.0, 5.0, 4.0, 3.0, 70.0, 12.5, 1.0, 2.0, 3.0)
    assert mix[1:3] == (0.5, 2.0) and mix[3:6] == (1.0, 0.7, 0.2)
    assert res[:7] == (1.0, None, None, 2.0, 3.0, 4.0, 5.0)  # mid of 3 blocks is block 2
    assert any("resnet-tiny 1/2/3" in n for n in t.notes)
    tp = T.table3(results, with_paper=True)
    assert tp.row_labels[-1] == "paper: Mixer-B/16-SAM"
    assert tp.cells[-1] == (18.2, 1.4, 9.5, 4.0, 1.1, 0.3, 22.5, 389.9, 110.9, 176.0, 216.1)


def test_formats(results):
    t = T.table1(results, with_paper=True)
    rows = list(csv.reader(io.StringIO(T.render(t, "csv"))))
    assert rows[0][1:] == list(t.col_labels) and rows[1][:2] == ["#Params", "136138"]
    assert rows[2][2] == "inf" and rows[4][3] == ""
    obj = json.loads(T.render(t, "json"))
    assert obj["table"] == 1 and obj["columns"] == list(t.col_labels)
    assert obj["rows"][1]["values"]["mixer-tiny/sam"] == "inf"
    assert obj["rows"][3]["values"]["resnet-tiny/sgd"] is None
    tex = T.render(T.table3(results), "tex")
    assert r"\toprule" in tex and r"$\|w\|_2$" in tex and r"vit-tiny/adamw" in tex
    assert tex.count(r"\\") == 1 + 3
    with pytest.raises(SpecError):
        T.render(t, "html")


def test_transpose_and_make_table(results):
    t = T.make_table(results, 3)
    tt = T.make_table(results, 3, transpose=True)
    assert tt.row_labels == t.col_labels and tt.transposed() == t
    with pytest.raises(SpecError):
        T.make_table(results, 2)


def test_duplicate_labels_are_told_apart(tmp_path):
    p = tmp_path / "r.h5"
    rf = ResultsFile(p)
    acts = {"depth": 1, "weight_norm": 1.0, "a": {"first": 1.0, "mid": 1.0, "last": 1.0}}
    for sha in ("111111", "222222"):
        _put(rf, _meta("vit-tiny", "adamw", sha), 10, 1.0, {"whole": 1.0}, acts, 0.5, 0.25)
    assert T.table1(p).col_labels == ("vit-tiny/adamw (111111)", "vit-tiny/adamw (222222)")


def test_duplicate_labels_use_seed_and_subset_when_they_differ(tmp_path):
    p = tmp_path / "r.h5"
    rf = ResultsFile(p)
    acts = {"depth": 1, "weight_norm": 1.0, "a": {"first": 1.0, "mid": 1.0, "last": 1.0}}
    runs = [("aaaaaa", 0, 1.0), ("bbbbbb", 1, 1.0), ("cccccc", 0, 0.5), ("dddddd", 0, 0.5)]
    for sha, seed, subset in runs:
        meta = _meta("vit-tiny", "adamw", sha)
        meta["config"]["seed"] = seed
        meta["data_spec"]["subset"] = subset
        _put(rf, meta, 10, 1.0, {"whole": 1.0}, acts, 0.5, 0.25)
    _put(rf, _meta("mixer-tiny", "sam", "eeeeee", "sam"), 10, 1.0, {"whole": 1.0}, acts, 0.5,
         0.25)
    labels = dict(zip([r.checkpoint_sha256[:6] for r in load_results(p).records],
                      T.table1(p).col_labels, strict=True))
    assert labels == {
        "aaaaaa": "vit-tiny/adamw (subset 1 s0)",
        "bbbbbb": "vit-tiny/adamw (subset 1 s1)",
        # same seed and subset: only the checkpoint hash tells them apart
        "cccccc": "vit-tiny/adamw (subset 0.5 s0 cccccc)",
        "dddddd": "vit-tiny/adamw (subset 0.5 s0 dddddd)",
        "eeeeee": "mixer-tiny/sam",
    }


def test_accuracy_note_names_the_number_of_test_examples(results, tmp_path):
    assert "on the digits test split" in " ".join(T.table1(results).notes)
    p = tmp_path / "n.h5"
    rf = ResultsFile(p)
    meta = _meta("vit-tiny", "adamw", "aaaaaa")
    rf.put(meta, "robustness", {"clean": 0.5, "mean_corrupted": 0.25, "n_samples": 2000},
           settings={}, seconds=0)
    assert "top-1 on the first 2000 digits test examples" in " ".join(T.table1(p).notes)


def test_empty_file(tmp_path):
    p = tmp_path / "r.h5"
    ResultsFile(p)
    with pytest.raises(ResultFileError, match="no analysed checkpoint"):
        T.table1(p)
    assert len(T.table3(p, with_paper=True).row_labels) == 4
