"""`geomkit sharpness`, its HDF5 file, and the `sharpness` measurement of `geomkit analyze`:
the numbers are the library's on the same examples, and bad input is one line, exit 2."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from cli.main import main
from geomkit.checkpoint import load_checkpoint
from geomkit.geometry.sharpness import sharpness

FACTORY = """
from torch import nn

def build_net(width=12, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.GELU(),
                         nn.Linear(width, num_classes))
"""


@pytest.fixture
def ck_path(tmp_path, monkeypatch):
    """An imported checkpoint of a user's model on digits."""
    from geomkit.imported import import_weights, save_imported

    name = f"sharp_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = __import__(name)
    torch.manual_seed(0)
    torch.save(mod.build_net().state_dict(), tmp_path / "w.pt")
    save_imported(import_weights(f"{name}:build_net", tmp_path / "w.pt", data="digits"),
                  tmp_path / "ck.pt")
    yield tmp_path / "ck.pt"
    sys.modules.pop(name, None)


def _run(capsys, argv):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, kw", [
    (["--kind", "avg", "--rho", "0.02", "--draws", "4"], dict(kind="avg", rho=0.02, draws=4)),
    (["--kind", "sam", "--adaptive"], dict(kind="sam", adaptive=True)),
    (["--kind", "worst", "--p", "inf", "--adaptive", "--steps", "5"],
     dict(kind="worst", p="inf", adaptive=True, steps=5)),
])
def test_cli_equals_the_library_on_the_same_examples(ck_path, capsys, argv, kw):
    rc, out, err = _run(capsys, ["sharpness", ck_path, "--samples", "96", "--m", "32",
                                 "--json", *argv])
    assert rc == 0, err
    got = json.loads(out)
    ck = load_checkpoint(ck_path)
    x, y = ck.analysis_data("train", 96)
    want = sharpness(ck.model, x, y, m=32, **kw)
    assert got["n_batches"] == 3 and got["settings"]["kind"] == kw["kind"]
    assert got["blocks"]["whole"]["value"] == pytest.approx(want.blocks["whole"].value,
                                                           rel=1e-6, abs=1e-9)
    assert got["blocks"]["whole"]["per_batch"] == pytest.approx(
        list(want.blocks["whole"].per_batch), rel=1e-6, abs=1e-9)


def test_out_file_round_trips_and_never_replaces_another_file(ck_path, capsys, tmp_path):
    from geomkit.io.sharpness import load_sharpness

    out = tmp_path / "s.h5"
    rc, text, err = _run(capsys, ["sharpness", ck_path, "--samples", "64", "--m", "32",
                                  "--blocks", "whole", "--block", "first=^1\\.", "--out", out,
                                  "--no-progress"])
    assert rc == 0, err
    assert "first" in text and f"wrote {out}" in text
    f = load_sharpness(out)
    assert set(f["blocks"]) == {"whole", "first"}
    assert f["blocks"]["first"]["n_params"] == 64 * 12 + 12
    assert f["settings"]["kind"] == "worst" and f["checkpoint_sha256"]
    assert f["blocks"]["first"]["param_names"] == ["1.weight", "1.bias"]

    rc, _, err = _run(capsys, ["analyze", ck_path, "--measure", "params", "--out",
                               tmp_path / "r.h5", "--no-progress"])
    assert rc == 0, err
    before = (tmp_path / "r.h5").read_bytes()
    rc, _, err = _run(capsys, ["sharpness", ck_path, "--out", tmp_path / "r.h5"])
    assert rc == 2 and "not a sharpness file" in err
    assert (tmp_path / "r.h5").read_bytes() == before


@pytest.mark.parametrize("argv, fragment", [
    (["--m", "300", "--samples", "256"], "exceeds --samples"),
    (["--blocks", "attn"], "unknown block 'attn'"),
    (["--block", "x=("], "invalid regular expression"),
    (["--block", "a/b=^1"], "must be letters, digits"),
    (["--rho", "0"], "positive finite number"),
    (["--p", "3"], "invalid choice"),
    (["--out", "s.txt"], "must name an .h5 file"),
])
def test_bad_input_is_one_line_exit_2(ck_path, capsys, argv, fragment):
    rc, _, err = _run(capsys, ["sharpness", ck_path, *argv])
    assert rc == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1


def test_analyze_measures_l_train_l_noise_and_adaptive_sharpness(ck_path, capsys, tmp_path):
    from geomkit.results import load_results

    rc, _, err = _run(capsys, ["analyze", ck_path, "--measure", "sharpness", "--samples", "64",
                               "--sharpness-m", "32", "--sharpness-steps", "4",
                               "--noise-draws", "3", "--out", tmp_path / "r.h5",
                               "--no-progress"])
    assert rc == 0, err
    v = load_results(tmp_path / "r.h5")[0].measurements["sharpness"].values
    ck = load_checkpoint(ck_path)
    x, y = ck.analysis_data("train", 64)
    noise = sharpness(ck.model, x, y, kind="avg", rho=0.01, draws=3, m=32)
    worst = sharpness(ck.model, x, y, kind="worst", adaptive=True, rho=0.5, steps=4, m=32)
    assert v["loss"] == pytest.approx(noise.blocks["whole"].loss, rel=1e-6)
    assert v["noise_loss"] == pytest.approx(noise.blocks["whole"].perturbed_loss, rel=1e-6)
    assert v["worst"]["whole"] == pytest.approx(worst.blocks["whole"].value, rel=1e-5)
    rc, out, err = _run(capsys, ["table", tmp_path / "r.h5", "--which", "1"])
    assert rc == 0, err
    for label in ("L_train", "L^N_train", "S_max (adaptive)", "Auto-PGD"):
        assert label in out
    rc, _, err = _run(capsys, ["analyze", ck_path, "--measure", "sharpness",
                               "--sharpness-p", "1", "--out", tmp_path / "r2.h5"])
    assert rc == 2 and "--sharpness-p must be 2 or inf" in err


def test_model_and_weights_without_a_checkpoint(ck_path, capsys):
    # like every analysis command, sharpness takes --model SPEC --weights FILE --data
    ck = load_checkpoint(ck_path)
    spec = ck.model_name
    rc, out, err = _run(capsys, ["sharpness", "--model", spec, "--weights",
                                 ck_path.parent / "w.pt", "--data", "digits", "--kind", "sam",
                                 "--samples", "64", "--m", "32", "--json"])
    assert rc == 0, err
    x, y = ck.analysis_data("train", 64)
    want = sharpness(ck.model, x, y, kind="sam", m=32).blocks["whole"].value
    assert json.loads(out)["blocks"]["whole"]["value"] == pytest.approx(want, rel=1e-6)
