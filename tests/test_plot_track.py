"""`geomkit plot RUN/track.h5 ...`: λ_max against the step with the threshold line, several
runs on one axis (synthetic track files written here with h5py)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from cli.main import main

COLUMNS = ("epoch", "lr", "lambda_max", "threshold", "precond_lambda_max",
           "precond_threshold", "sam_sharpness", "train_loss", "train_acc", "test_loss",
           "test_acc")


def _track(path, label, optimizer, sam=False, n=6, lam=None):
    step = np.arange(1, n + 1, dtype=np.int64) * 10
    nan = np.full(n, np.nan)
    lam = np.linspace(1.0, 20.0, n) if lam is None else lam
    cols = {k: nan for k in COLUMNS}
    cols.update(epoch=step // 20, lr=np.full(n, 0.1), train_loss=np.linspace(2, 0.5, n),
                test_loss=np.linspace(2.1, 0.8, n), train_acc=np.linspace(10, 90, n),
                test_acc=np.linspace(10, 80, n))
    if optimizer == "sgd":
        cols.update(lambda_max=lam, threshold=np.full(n, (2 + 2 * 0.9) / 0.1))
    else:
        cols.update(lambda_max=lam, precond_lambda_max=3 * lam,
                    precond_threshold=np.full(n, 38 / 0.001))
    if sam:
        cols["sam_sharpness"] = np.linspace(0.1, 0.01, n)
    with h5py.File(path, "w") as f:
        f.attrs.update(format="geomkit-track/1", label=label, optimizer=optimizer, sam=sam)
        f.create_dataset("step", data=step)
        for k, v in cols.items():
            f.create_dataset(k, data=np.asarray(v, dtype=np.float64))
        f.create_group("blocks").create_dataset("embedding", data=lam / 2)
    return path


def test_lambda_max_vs_step_with_threshold_lines(tmp_path):
    from geomkit import plot

    a = _track(tmp_path / "a.h5", "resnet-tiny/sgd", "sgd")
    b = _track(tmp_path / "b.h5", "vit-tiny/sam", "adamw", sam=True)
    fig = plot.plot_track([a, b], log=True)
    ax = fig.axes[0]
    lines = ax.get_lines()
    solid = [ln for ln in lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert len(solid) == 2 and len(dashed) == 2
    for s, d in zip(solid, dashed, strict=True):  # a threshold in its run's colour
        assert s.get_color() == d.get_color()
    np.testing.assert_allclose(dashed[0].get_ydata(), 38.0)  # (2 + 2*0.9) / 0.1
    # Adam: the preconditioned λ_max(P⁻¹H) against (2 + 2β₁)/((1 − β₁)η)
    np.testing.assert_allclose(solid[1].get_ydata(), 3 * np.linspace(1, 20, 6))
    np.testing.assert_allclose(dashed[1].get_ydata(), 38 / 0.001)
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("resnet-tiny/sgd" in t for t in labels) and any("vit-tiny/sam" in t for t in labels)
    assert len(fig.axes) == 2 and len(fig.axes[1].get_lines()) == 4  # train/test loss


def test_cli_plots_track_files_and_refuses_mixing(tmp_path, capsys):
    a = _track(tmp_path / "a.h5", "resnet-tiny/sgd", "sgd")
    b = _track(tmp_path / "b.h5", "resnet-tiny/sam", "sgd", sam=True)
    rc = main(["plot", str(a), str(b), "--out", str(tmp_path / "t"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    files = json.loads(out)["files"]
    assert files == [str(tmp_path / "t_track.png"), str(tmp_path / "t_track.pdf")]
    assert (tmp_path / "t_track.pdf").read_bytes().startswith(b"%PDF")
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f.attrs["format"] = "geomkit-landscape-1"
    rc = main(["plot", str(a), str(tmp_path / "l.h5"), "--out", str(tmp_path / "m")])
    _, err = capsys.readouterr()
    assert rc == 2 and "not a track file" in err and len(err.strip().splitlines()) == 1


def test_a_track_without_finite_lambda_is_refused(tmp_path, capsys):
    a = _track(tmp_path / "a.h5", "x/sgd", "sgd", lam=np.full(6, np.nan))
    rc = main(["plot", str(a), "--out", str(tmp_path / "t")])
    _, err = capsys.readouterr()
    assert rc == 2 and "no finite" in err and "Traceback" not in err
    assert not (tmp_path / "t_track.png").exists()


@pytest.mark.parametrize("titles", ["one,two,three"])
def test_titles_must_match_the_files(tmp_path, capsys, titles):
    a = _track(tmp_path / "a.h5", "x/sgd", "sgd")
    rc = main(["plot", str(a), "--titles", titles, "--out", str(tmp_path / "t")])
    _, err = capsys.readouterr()
    assert rc == 2 and "--titles" in err


@pytest.mark.parametrize("log", [False, True])
def test_the_axis_follows_lambda_not_a_threshold_that_runs_away(tmp_path, log):
    """At the end of a cosine schedule lr → 0 and the threshold → 1e10: the λ values must
    stay readable, the line drawn where it comes near them."""
    from geomkit.plot import plot_track

    path = _track(tmp_path / "t.h5", "r", "sgd")
    with h5py.File(path, "a") as f:
        del f["threshold"]
        f.create_dataset("threshold", data=np.array([40.0, 50, 80, 1e3, 1e6, 1e10]))
    lo, hi = plot_track([path], log=log).axes[0].get_ylim()
    assert hi < 1e3 and lo < 1.0  # λ runs 1 .. 20
