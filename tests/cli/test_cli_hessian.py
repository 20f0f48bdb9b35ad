"""`geomkit hessian` end to end (in process)."""

from __future__ import annotations

import json

import h5py
import pytest
import torch

from cli.main import main
from geomkit.checkpoint import load_checkpoint
from geomkit.geometry.hessian import hessian_eigs
from tests.cases import tiny_checkpoint

N = 16




@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "vit.pt")


def _run(capsys, argv):
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_matches_library(ckpt, capsys):
    rc, out, _ = _run(capsys, ["hessian", str(ckpt), "--samples", str(N), "--json",
                               "--blocks", "whole", "attn", "--block", "qkv=attn\\.qkv",
                               "--tol", "1e-6", "--smallest"])
    assert rc == 0
    got = json.loads(out)
    assert got["samples"] == N and list(got["blocks"]) == ["whole", "attn", "qkv"]
    ck = load_checkpoint(ckpt)
    x, y = ck.analysis_data("train", N)
    want = hessian_eigs(ck.model, x, y, blocks=("whole", "attn"), regex={"qkv": r"attn\.qkv"},
                        tol=1e-6, smallest=True)
    for b, e in want.blocks.items():
        d = got["blocks"][b]
        # the machine keys of the analyze `hessian` measurement (geomkit.measurements.hessian)
        for key in ("lambda_max", "n_params", "n_hvps", "seconds", "lambda_min", "residual",
                    "converged"):
            assert key in d
        assert d["lambda_max"] == e.lambda_max  # same seed, CPU: bitwise
        assert d["lambda_min"] == e.lambda_min
        assert d["n_params"] == e.n_params and d["n_hvps"] == e.n_hvps
        assert d["residual"] == e.residual and d["converged"] == e.converged
        assert "params" not in d and "hvps" not in d  # one key set, not two
    assert got["settings"]["tol"] == 1e-6 and got["settings"]["bn"] == "eval"


def test_table_with_paper_blocks_topk_and_trace(ckpt, capsys):
    rc, out, _ = _run(capsys, ["hessian", str(ckpt), "--samples", str(N), "--top-k", "2",
                               "--trace", "--probes", "4", "--smallest", "--no-progress"])
    assert rc == 0
    lines = out.splitlines()
    assert "vit/sgd" in lines[0] and "N=16" in lines[0]
    header = lines[1].split()
    assert header[:3] == ["block", "#params", "lambda_max"]
    assert {"top-2", "lambda_min", "trace", "HVPs", "seconds"} <= set(header)
    names = [ln.split()[0] for ln in lines[3:]]
    assert names == ["embedding", "attn", "mlp", "block1", "whole"]


def test_out_writes_hdf5_with_provenance_and_density(ckpt, capsys, tmp_path):
    out_path = tmp_path / "h.h5"
    rc, out, _ = _run(capsys, ["hessian", str(ckpt), "--samples", str(N), "--blocks", "whole",
                               "--density", "--density-probes", "2", "--density-iter", "10",
                               "--trace", "--probes", "3", "--out", str(out_path), "--json"])
    assert rc == 0
    got = json.loads(out)
    dens = got["blocks"]["whole"]["density"]
    assert len(dens["grid"]) == len(dens["density"]) == 1000
    assert not (tmp_path / "h.h5.tmp").exists()
    with h5py.File(out_path, "r") as f:
        assert f.attrs["done"] and f.attrs["checkpoint_sha256"] == load_checkpoint(ckpt).sha256()
        assert "torch_version" in json.loads(f.attrs["provenance"])
        g = f["blocks/whole"]
        assert g.attrs["lambda_max"] == got["blocks"]["whole"]["lambda_max"]
        assert g.attrs["trace"] == got["blocks"]["whole"]["trace"]
        assert g["eigenvectors"].shape == (1, got["blocks"]["whole"]["n_params"])
        for key in ("lambda_max", "residual", "n_hvps", "n_params", "converged"):
            assert g.attrs[key] == got["blocks"]["whole"][key]
        assert len(g["param_names"]) > 0
        d = g["density"]
        assert abs(float(torch.trapezoid(torch.from_numpy(d["density"][()]),
                                         torch.from_numpy(d["grid"][()]))) - 1) < 1e-6


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--blocks", "token_mlp"], "unknown block 'token_mlp'"),
        (["--blocks", "block3"], "block3"),
        (["--block", "x=zzz"], "matches no trainable parameter"),
        (["--block", "nonsense"], "NAME=REGEX"),
        (["--block", "bad=(["], "invalid regular expression"),
        (["--out", "x.txt"], ".h5"),
    ],
)
def test_user_errors_exit_2_with_one_line(ckpt, capsys, argv, match):
    rc, out, err = _run(capsys, ["hessian", str(ckpt), "--samples", "4", *argv])
    assert rc == 2 and out == ""
    err = err.strip()
    assert err.startswith("geomkit: error:") and match in err and "\n" not in err


def test_missing_checkpoint_exit_2(capsys, tmp_path):
    rc, _, err = _run(capsys, ["hessian", str(tmp_path / "none.pt")])
    assert rc == 2 and err.startswith("geomkit: error:") and err.count("\n") == 1


def test_out_keys_are_the_analyze_hessian_keys(ckpt, capsys, tmp_path):
    from geomkit.io.hessian import BLOCK_KEYS, load_hessian
    from geomkit.measurements import hessian as hessian_measurement

    schema = set(hessian_measurement.MEASUREMENT.schema)
    assert set(BLOCK_KEYS) <= schema  # lambda_max, residual, n_hvps, n_params, converged
    out_path = tmp_path / "h.h5"
    rc, out, _ = _run(capsys, ["hessian", str(ckpt), "--samples", str(N), "--blocks", "whole",
                               "--out", str(out_path), "--json"])
    assert rc == 0
    got = json.loads(out)
    back = load_hessian(out_path)
    assert back["format"] == "geomkit-hessian/2" and back["samples"] == N
    assert back["settings"] == got["settings"]
    for key in BLOCK_KEYS:
        assert back["blocks"]["whole"][key] == got["blocks"]["whole"][key]
    assert list(back["blocks"]["whole"]["param_names"])
    # a second run may replace its own hessian file
    rc, _, _ = _run(capsys, ["hessian", str(ckpt), "--samples", str(N), "--blocks", "whole",
                             "--out", str(out_path), "--json"])
    assert rc == 0 and load_hessian(out_path)["blocks"]["whole"]["n_params"] > 0


def _analyze_results_file(ckpt, path):
    from geomkit.analyze import analyze

    analyze([ckpt], path, measurements=["params"], progress=False)
    return path


@pytest.mark.parametrize("kind", ["results", "landscape", "foreign", "text"])
def test_out_refuses_to_replace_a_file_it_did_not_write(ckpt, capsys, tmp_path, kind):
    target = tmp_path / "results.h5"
    if kind == "results":
        _analyze_results_file(ckpt, target)
    elif kind == "landscape":
        from geomkit.io import LANDSCAPE_FORMAT

        with h5py.File(target, "w") as f:
            f.attrs["format"] = LANDSCAPE_FORMAT
            f.create_dataset("xcoordinates", data=[0.0])
    elif kind == "foreign":
        with h5py.File(target, "w") as f:
            f.create_dataset("x", data=1)
    else:
        target.write_text("my notes")
    before = target.read_bytes()
    rc, out, err = _run(capsys, ["hessian", str(ckpt), "--samples", "4", "--blocks", "whole",
                                 "--out", str(target)])
    assert rc == 2 and out == ""
    err = err.strip()
    assert err.startswith("geomkit: error:") and "\n" not in err
    assert "refusing to replace" in err and str(target) in err
    assert target.read_bytes() == before  # byte-identical
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.h5"]  # no temporary left


def test_out_on_analyze_results_exits_2_and_keeps_the_file(ckpt, capsys, tmp_path):
    from geomkit.results import load_results

    target = _analyze_results_file(ckpt, tmp_path / "results.h5")
    before = target.read_bytes()
    rc, _, err = _run(capsys, ["hessian", str(ckpt), "--out", str(target), "--json"])
    assert rc == 2 and err.count("\n") == 1 and "results file" in err
    assert target.read_bytes() == before
    assert len(load_results(target)) == 1  # still the analyze results file


def test_loss_and_label_smoothing_flags_reach_the_hessian(ckpt, capsys, tmp_path):
    ck = load_checkpoint(ckpt)
    x, y = ck.analysis_data("train", N)
    base = ["hessian", str(ckpt), "--samples", str(N), "--json", "--blocks", "whole"]
    got = {}
    for flags in (["--loss", "mse"], ["--loss", "ce:0.1"], ["--label-smoothing", "0.1"]):
        rc, out, err = _run(capsys, [*base, *flags])
        assert rc == 0, err
        got[" ".join(flags)] = json.loads(out)
    for key, loss in (("--loss mse", "mse"), ("--loss ce:0.1", "ce:0.1")):
        want = hessian_eigs(ck.model, x, y, blocks=("whole",), loss=loss)
        assert got[key]["blocks"]["whole"]["lambda_max"] == pytest.approx(
            want.blocks["whole"].lambda_max, rel=1e-5)
        assert got[key]["settings"]["loss"] == loss
    smoothed = got["--label-smoothing 0.1"]
    assert smoothed["settings"]["loss"] == "ce:0.1"
    assert (smoothed["blocks"]["whole"]["lambda_max"]
            == got["--loss ce:0.1"]["blocks"]["whole"]["lambda_max"])
    out = tmp_path / "h.h5"
    assert _run(capsys, [*base, "--loss", "bce", "--out", str(out)])[0] == 0
    with h5py.File(out) as f:
        assert json.loads(f.attrs["settings"])["loss"] == "bce"
    for flags, fragment in ((["--loss", "mse", "--label-smoothing", "0.1"], "ce loss"),
                            (["--loss", "ce:0.2", "--label-smoothing", "0.1"], "once")):
        rc, _, err = _run(capsys, [*base, *flags])
        assert rc == 2 and fragment in err and len(err.strip().splitlines()) == 1
