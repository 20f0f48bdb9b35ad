"""`geomkit landscape`, `geomkit landscape-merge` and `geomkit plot` end to end (in process)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from cli.main import main
from geomkit.geometry.landscape import read_landscape
from tests.cases import tiny_checkpoint

ARGS = ["--x", "-1:1:3", "--y", "-1:1:3", "--samples", "32", "--no-progress"]


def _ckpt(path, seed=0):
    return tiny_checkpoint(path, seed)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    return _ckpt(d / "a.pt", 0), _ckpt(d / "b.pt", 1)


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_landscape_json_resume_and_plot(ckpts, tmp_path, capsys):
    a, _ = ckpts
    out = tmp_path / "s.h5"
    rc, text, err = _run(capsys, ["landscape", str(a), *ARGS, "--out", str(out), "--json"])
    assert rc == 0, err
    res = json.loads(text)
    assert res["shape"] == [3, 3] and res["complete"] and res["points_done"] == 9
    assert res["norm"] == "filter" and res["ignore"] == "biasbn" and res["samples"] == 32
    with h5py.File(out, "r") as f:
        assert f.attrs["checkpoint"] == str(a.resolve()) and len(f.attrs["checkpoint_sha256"]) == 64
    # the same command again: nothing to do, same numbers; --resume accepted
    rc, text2, _ = _run(
        capsys, ["landscape", str(a), *ARGS, "--out", str(out), "--json", "--resume"]
    )
    assert rc == 0 and json.loads(text2)["center_loss"] == res["center_loss"]
    rc, table, _ = _run(capsys, ["plot", str(out), "--out", str(tmp_path / "fig"), "--vtk"])
    assert rc == 0
    for kind in ("contour", "contourf", "surface"):
        assert (tmp_path / f"fig_{kind}.png").stat().st_size > 0
        assert (tmp_path / f"fig_{kind}.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "fig_s.vts").exists()
    rc, text, _ = _run(
        capsys,
        [
            "plot",
            str(out),
            str(out),
            "--kind",
            "contourf",
            "--log",
            "--out",
            str(tmp_path / "two"),
            "--json",
            "--format",
            "png",
        ],
    )
    assert rc == 0 and json.loads(text)["files"] == [str(tmp_path / "two_contourf.png")]


def test_interpolation_line_and_shards(ckpts, tmp_path, capsys):
    a, b = ckpts
    line = tmp_path / "line.h5"
    rc, text, err = _run(
        capsys,
        [
            "landscape",
            str(a),
            "--dir",
            str(b),
            "--x",
            "0:1:3",
            "--samples",
            "16",
            "--out",
            str(line),
            "--json",
            "--no-progress",
        ],
    )
    assert rc == 0, err
    surf = read_landscape(line)
    assert surf.ycoordinates is None and surf.loss.shape == (3,)
    assert surf.attrs["dir"].startswith("checkpoint:")
    rc, _, _ = _run(capsys, ["plot", str(line), "--out", str(tmp_path / "l")])
    assert rc == 0 and (tmp_path / "l_1d.png").exists()
    shards = [tmp_path / f"p{i}.h5" for i in range(2)]
    for i, s in enumerate(shards):
        assert (
            _run(capsys, ["landscape", str(a), *ARGS, "--shard", f"{i}/2", "--out", str(s)])[0] == 0
        )
    whole = tmp_path / "whole.h5"
    rc, text, _ = _run(
        capsys, ["landscape-merge", *map(str, shards), "--out", str(whole), "--json"]
    )
    assert rc == 0 and json.loads(text)["complete"]
    single = tmp_path / "single.h5"
    assert _run(capsys, ["landscape", str(a), *ARGS, "--out", str(single)])[0] == 0
    np.testing.assert_array_equal(read_landscape(whole).loss, read_landscape(single).loss)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--x", "1:-1:3"], "--x"),
        (["--x", "a:b:c"], "--x"),
        (["--y", "-1:1"], "--y"),
        (["--shard", "2/2"], "shard"),
        (["--dir", "nowhere.pt"], "nowhere.pt"),
    ],
)
def test_bad_input_exits_2_with_one_line(ckpts, tmp_path, capsys, argv, fragment):
    rc, out, err = _run(
        capsys, ["landscape", str(ckpts[0]), *ARGS, *argv, "--out", str(tmp_path / "o.h5")]
    )
    assert rc == 2 and out == ""
    assert err.startswith("geomkit: error:") and err.count("\n") == 1 and fragment in err


def test_missing_checkpoint_and_spec_mismatch_exit_2(ckpts, tmp_path, capsys):
    rc, _, err = _run(
        capsys, ["landscape", str(tmp_path / "none.pt"), *ARGS, "--out", str(tmp_path / "o.h5")]
    )
    assert rc == 2 and "no such checkpoint" in err and err.count("\n") == 1
    out = tmp_path / "s.h5"
    assert _run(capsys, ["landscape", str(ckpts[0]), *ARGS, "--out", str(out)])[0] == 0
    before = out.read_bytes()
    rc, _, err = _run(capsys, ["landscape", str(ckpts[0]), *ARGS, "--seed", "3", "--out", str(out)])
    assert rc == 2 and "another spec" in err and "seed" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, ["landscape", str(ckpts[1]), *ARGS, "--out", str(out)])
    assert rc == 2 and "checkpoint_sha256" in err
    assert out.read_bytes() == before
    rc, _, err = _run(capsys, ["plot", str(tmp_path / "missing.h5")])
    assert rc == 2 and err.count("\n") == 1


def test_loss_flag_reaches_the_surface(ckpts, tmp_path, capsys):
    from geomkit.checkpoint import load_checkpoint
    from geomkit.geometry.landscape import evaluate

    a, _ = ckpts
    ck = load_checkpoint(a)
    x, y = ck.analysis_data("train", 32)
    out = tmp_path / "mse.h5"
    rc, text, err = _run(capsys, ["landscape", str(a), *ARGS, "--loss", "mse", "--out", str(out),
                                  "--json"])
    assert rc == 0, err
    mse, _ = evaluate(ck.model, x, y, loss="mse")
    ce, _ = evaluate(ck.model, x, y)
    center = json.loads(text)["center_loss"]
    assert center == pytest.approx(mse, rel=1e-6) and center != pytest.approx(ce, rel=1e-3)
    # the same file with the default loss is another computation: refused, file kept
    before = out.read_bytes()
    rc, _, err = _run(capsys, ["landscape", str(a), *ARGS, "--out", str(out)])
    assert rc == 2 and "another spec" in err and out.read_bytes() == before
    rc, _, err = _run(capsys, ["landscape", str(a), *ARGS, "--loss", "hinge",
                               "--out", str(tmp_path / "h.h5")])
    assert rc == 2 and "--loss" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h.h5").exists()
