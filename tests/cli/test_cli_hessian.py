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
        for key in ("lambda_max", "params", "hvps", "seconds", "lambda_min", "residual"):
            assert key in d
        assert d["lambda_max"] == e.lambda_max  # same seed, CPU: bitwise
        assert d["lambda_min"] == e.lambda_min
        assert d["params"] == e.n_params and d["hvps"] == e.n_hvps
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
        assert g["eigenvectors"].shape == (1, got["blocks"]["whole"]["params"])
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
