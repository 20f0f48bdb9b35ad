"""`geomkit ntk` end to end (in process)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cli.main import main
from geomkit.checkpoint import load_checkpoint
from geomkit.geometry.ntk import ntk, ntk_at_init
from tests.cases import tiny_checkpoint

N = 8


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "vit.pt")


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_at_checkpoint_matches_library(ckpt, capsys):
    rc, out, _ = _run(capsys, ["ntk", str(ckpt), "--samples", str(N), "--json"])
    assert rc == 0
    got = json.loads(out)
    for key in ("samples", "mode", "kappa", "lambda_max", "lambda_min"):
        assert key in got
    assert got["samples"] == N and got["mode"] == "sum" and got["init"] is False
    assert "kappa_std" not in got
    ck = load_checkpoint(ckpt)
    x, _ = ck.analysis_data("train", N)
    want = ntk(ck.model, x, dtype=torch.float64)
    assert got["kappa"] == pytest.approx(want.kappa, rel=1e-9)
    assert got["lambda_max"] == pytest.approx(want.lambda_max, rel=1e-9)
    assert got["lambda_min"] == pytest.approx(want.lambda_min, rel=1e-9)


def test_init_reports_mean_and_std_over_repeats(ckpt, capsys):
    argv = ["ntk", str(ckpt), "--init", "--repeats", "2", "--seed", "3", "--samples", str(N),
            "--mode", "trace", "--block", "attn", "--json"]
    rc, out, _ = _run(capsys, argv)
    assert rc == 0
    got = json.loads(out)
    assert got["init"] is True and got["seeds"] == [3, 4] and got["mode"] == "trace"
    ck = load_checkpoint(ckpt)
    x, _ = ck.analysis_data("train", N)
    names = [n for n, _ in ck.model.named_parameters() if ".attn." in n]
    want = ntk_at_init(ck.fresh_model, x, repeats=2, seed=3, mode="trace", params=names,
                       dtype=torch.float64)
    assert got["kappa"] == pytest.approx(want.kappa, rel=1e-9)
    assert got["kappa_std"] == pytest.approx(want.kappa_std, rel=1e-6)
    assert got["n_params"] == sum(p.numel() for n, p in ck.model.named_parameters() if n in names)


def test_model_name_and_table(capsys):
    argv = ["ntk", "--model", "vit-tiny", "--data", "digits", "--samples", "4", "--repeats", "1",
            "--dtype", "float32", "--no-progress"]
    rc, out, _ = _run(capsys, argv)
    assert rc == 0
    assert "kappa" in out and "initialization" in out and "kappa std" in out


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["ntk", "missing.pt"], "no such checkpoint"),
        (["ntk", "--model", "vit-tiny"], "--data"),
        (["ntk", "--model", "nope", "--data", "digits"], "unknown model"),
        (["ntk"], "checkpoint path or --model"),
        (["ntk", "CKPT", "--block", "nope"], "nope"),
        (["ntk", "CKPT", "--samples", "100000"], "100000"),
    ],
)
def test_bad_input_exits_2_with_one_line(ckpt, capsys, argv, fragment):
    argv = [str(ckpt) if a == "CKPT" else a for a in argv]
    rc, out, err = _run(capsys, argv)
    assert rc == 2 and out == ""
    assert err.startswith("geomkit: error:") and err.count("\n") == 1 and fragment in err


def test_inf_kappa_is_json_safe(ckpt, capsys, monkeypatch):
    import geomkit.geometry.ntk as mod

    real = mod.ntk

    def singular(*a, **k):
        r = real(*a, **k)
        return mod.NTKResult(**{**r.__dict__, "kappa": math.inf, "lambda_min": 0.0})

    monkeypatch.setattr(mod, "ntk", singular)
    rc, out, _ = _run(capsys, ["ntk", str(ckpt), "--samples", str(N), "--json"])
    assert rc == 0 and json.loads(out)["kappa"] == "inf"
