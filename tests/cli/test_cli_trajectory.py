"""`geomkit landscape --dir pca --trajectory RUN` and `geomkit plot` of its file, end to end."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from cli.main import main
from geomkit.checkpoint import load_checkpoint
from geomkit.io.snapshots import write_snapshots
from geomkit.train.snapshots import flat_parameters
from tests.cases import plane_basis, tiny_checkpoint

GRID = ["--x", "-2:1:4", "--y", "-1:1:3"]
COMMON = ["--samples", "32", "--no-progress"]
#: sum a*b = 0, sum a^2 > sum b^2: the principal axes are the plane's own u, v exactly
AB = [(-2.0, 0.0), (-1.0, 1.0), (1.0, 1.0), (0.0, 0.0)]


def _snapshots(path, model, ab):
    """Snapshots theta + a u + b v (u, v orthonormal, zero on 1-D parameters)."""
    names, shapes, theta = flat_parameters(model)
    u, v = plane_basis(shapes, seed=0)
    u, v = 0.05 * u, 0.05 * v
    rows = [theta + a * u + b * v for a, b in ab]
    return write_snapshots(path, rows, [10 * k for k in range(len(ab))], list(range(len(ab))),
                           names=names, shapes=shapes, meta={"model": "vit"})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    ck = tiny_checkpoint(d / "last.pt")
    _snapshots(d / "snapshots.h5", load_checkpoint(ck).model, AB)
    return d, ck


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_pca_landscape_stores_the_path_and_its_true_losses(run, tmp_path, capsys):
    d, ck = run
    out = tmp_path / "pca.h5"
    # the grid in units of the directions: the snapshots are 0.05 * (a, b) from the centre
    grid = ["--x", "-0.1:0.05:4", "--y", "-0.05:0.05:3"]
    rc, text, err = _run(capsys, ["landscape", str(ck), "--dir", "pca", "--trajectory", str(d),
                                  *grid, *COMMON, "--out", str(out), "--json"])
    assert rc == 0, err
    res = json.loads(text)
    assert res["dir"] == "pca" and res["norm"] == "none" and res["snapshots"] == 4
    assert res["explained_variance_ratio"] == pytest.approx([0.75, 0.25], rel=1e-5)
    assert res["snapshots_off_surface"] == 0 and res["max_distance_from_plane"] < 1e-6
    with h5py.File(out, "r") as f:
        g = f["trajectory"]
        np.testing.assert_allclose(np.stack([g["a"][...], g["b"][...]], 1),
                                   0.05 * np.array([(-2, 0), (-1, -1), (1, -1), (0, 0)]),
                                   atol=1e-7)
        np.testing.assert_allclose(g["true_loss"][...], g["surface_loss"][...], rtol=1e-5)
        assert g["step"][...].tolist() == [0, 10, 20, 30]
        spec = json.loads(f.attrs["spec"])
        assert len(spec["trajectory_sha256"]) == 64 and spec["centered"] is False
    # resuming with another trajectory setting is refused, the file kept
    rc, _, err = _run(capsys, ["landscape", str(ck), "--dir", "pca", "--trajectory", str(d),
                               "--centered", *grid, *COMMON, "--out", str(out)])
    assert rc == 2 and "centered" in err and len(err.strip().splitlines()) == 1
    # the plot: path on the contours, PC axes, no disagreement
    rc, text, err = _run(capsys, ["plot", str(out), "--kind", "contour", "--out",
                                  str(tmp_path / "fig"), "--json", "--format", "png"])
    assert rc == 0, err
    tr = json.loads(text)["trajectories"][0]
    assert tr["snapshots"] == 4 and tr["disagree"] == 0 and tr["outside_grid"] == 0
    assert "0 of 4 snapshots" in err
    # a snapshot whose true loss is far from the surface under it is counted (and ringed)
    with h5py.File(out, "r+") as f:
        f["trajectory/true_loss"][1] = 3 * f["trajectory/surface_loss"][1]
    rc, text, err = _run(capsys, ["plot", str(out), "--kind", "contourf", "--out",
                                  str(tmp_path / "fig2"), "--json", "--format", "png",
                                  "--disagree", "0.5"])
    assert rc == 0 and json.loads(text)["trajectories"][0]["disagree"] == 1
    assert "1 of 4 snapshots" in err and "ringed in red" in err


def test_plot_labels_the_axes_by_explained_variance(run, tmp_path, capsys):
    from geomkit import plot

    d, ck = run
    out = tmp_path / "p.h5"
    rc, _, err = _run(capsys, ["landscape", str(ck), "--dir", "pca", "--trajectory",
                               str(d / "snapshots.h5"), "--x", "-0.1:0.05:3", "--y",
                               "-0.05:0.05:3", *COMMON, "--out", str(out)])
    assert rc == 0, err
    fig = plot.plot_panel([out], kind="contour")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "PC1 (75.0 %)" and ax.get_ylabel() == "PC2 (25.0 %)"
    assert ax.get_xlim() == pytest.approx((-0.1, 0.05))  # the path keeps the grid's limits


def test_default_y_range_covers_the_path(run, tmp_path, capsys):
    d, ck = run
    out = tmp_path / "auto.h5"
    rc, text, err = _run(capsys, ["landscape", str(ck), "--dir", "pca", "--trajectory", str(d),
                                  "--x", "-0.1:0.05:2", *COMMON, "--out", str(out), "--json"])
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        y, b = f["ycoordinates"][...], f["trajectory/b"][...]
    assert len(y) == 51 and y[0] < b.min() - 0.009 and y[-1] >= 0.0 + 0.009


def test_bad_trajectory_input_is_one_line_exit_2(run, tmp_path, capsys):
    d, ck = run
    one = tmp_path / "one"
    one.mkdir()
    _snapshots(one / "snapshots.h5", load_checkpoint(ck).model, AB[:1])
    other = tmp_path / "other"
    other.mkdir()
    mixer = tiny_checkpoint(tmp_path / "m.pt", model="mixer", image_size=8, in_chans=1,
                            num_classes=10, depth=1, embed_dim=16, patch_size=4)
    _snapshots(other / "snapshots.h5", load_checkpoint(mixer).model, AB)
    out = str(tmp_path / "x.h5")
    cases = [
        (["--trajectory", str(d)], "--trajectory"),  # without --dir pca
        (["--dir", "pca"], "--trajectory"),  # pca without a trajectory
        (["--dir", "pca", "--trajectory", str(tmp_path / "nope")], "no such snapshots"),
        (["--dir", "pca", "--trajectory", str(one)], "one snapshot only"),
        (["--dir", "pca", "--trajectory", str(other)], "other parameters"),
        (["--centered"], "--centered"),
        (["--dir", "pca", "--trajectory", str(d), "--y", "none"], "2-D"),
        (["--dir", "pca", "--trajectory", str(d), "--norm", "layer"], "not normalized"),
    ]
    for extra, needle in cases:
        argv = ["landscape", str(ck), *extra, *COMMON, "--out", out]
        if "--x" not in extra:
            argv += ["--x", "-1:1:2"]
        rc, _, err = _run(capsys, argv)
        assert rc == 2, (extra, err)
        assert needle in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert "Traceback" not in err
    assert not (tmp_path / "x.h5").exists()
