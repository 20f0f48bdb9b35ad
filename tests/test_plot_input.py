"""geomkit.plot refuses what it cannot draw, in one line, before drawing or writing:
bad options (levels, sizes, dpi, colour limits, columns, formats), surfaces with no finite
or no computed point; and it draws what is there of partial or partly non-finite ones."""

from __future__ import annotations

import errno

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from geomkit import plot  # noqa: E402
from geomkit.errors import ResultFileError, SpecError  # noqa: E402
from geomkit.io.landscape import Landscape  # noqa: E402


def _surf(loss, done=None, path="t.h5"):
    loss = np.asarray(loss, dtype=float)
    ny, nx = loss.shape
    done = np.ones(loss.shape, bool) if done is None else done
    return Landscape(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), loss, 100 - loss, done,
                     path=path)


def _bowl(ny=7, nx=9):
    X, Y = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny))
    return 0.1 + X**2 + 0.5 * Y**2


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"dpi": 0}, "dpi"),
        ({"dpi": -5}, "dpi"),
        ({"dpi": float("nan")}, "dpi"),
        ({"dpi": "150"}, "dpi"),
        ({"num_levels": 1}, "num_levels"),
        ({"num_levels": 2.5}, "num_levels"),
        ({"ncols": 0}, "ncols"),
        ({"vmin": float("inf")}, "vmin"),
        ({"vmin": 2.0, "vmax": 1.0}, "vmin"),
        ({"vmin": 1.0, "vmax": 1.0}, "vmin"),
        ({"vmin": 0.0, "log": True}, "vmin"),
        ({"vmax": -1.0, "log": True}, "vmax"),
        ({"size": (0, 100)}, "size"),
        ({"size": (100,)}, "size"),
        ({"size": (10**6, 100)}, "size"),
        ({"panel_size": (3.0, -1.0)}, "panel_size"),
        ({"formats": []}, "formats"),
        ({"formats": ["png", "gif"]}, "formats"),
        ({"kind": "bogus"}, "kind"),
        ({"value": "lossy"}, "value"),
    ],
)
def test_bad_options_are_one_line_spec_errors_naming_the_keyword(kw, param):
    with pytest.raises(SpecError) as e:
        plot.check_options(**kw)
    msg = str(e.value)
    assert e.value.param == param and "\n" not in msg
    assert param in msg or param == "formats"  # "unknown figure format 'gif'; ..."


@pytest.mark.parametrize("kw", [{"dpi": 0}, {"dpi": -1}, {"size": (0, 10)}, {"formats": ()},
                                {"formats": ("png", "gif")}, {"dpi": 10**5}])
def test_save_figure_checks_everything_before_writing_anything(tmp_path, kw):
    """Old code: dpi 0 reached matplotlib (ValueError: dpi must be positive) and a bad
    second format was refused only after the first file was written."""
    fig = plot.plot_contourf(_surf(_bowl()))
    with pytest.raises(SpecError):
        plot.save_figure(fig, tmp_path / "f", **kw)
    assert list(tmp_path.iterdir()) == []


def test_save_figure_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    fig = plot.plot_contourf(_surf(_bowl()))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fig, "savefig", full)
    with pytest.raises(ResultFileError, match="cannot write .*f.png: no space left"):
        plot.save_figure(fig, tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", plot.KINDS)
def test_all_nan_surface_is_refused(kind):
    """Old code drew an empty figure (exit 0 from the CLI)."""
    s = _surf(np.full((7, 9), np.nan))
    with pytest.raises(ResultFileError) as e:
        plot.plot_panel([s], kind=kind)
    msg = str(e.value)
    assert msg.startswith("t.h5") and "no finite loss value (all 63 points NaN/inf)" in msg
    assert "\n" not in msg


def test_all_inf_and_all_not_computed_are_refused():
    with pytest.raises(ResultFileError, match="no finite loss value"):
        plot.plot_contour(_surf(np.full((3, 3), np.inf)))
    with pytest.raises(ResultFileError, match=r"no computed point yet \(0 of 9\)"):
        plot.plot_contourf(_surf(np.full((3, 3), np.nan), done=np.zeros((3, 3), bool)))
    half = np.zeros((3, 3), bool)
    half[0] = True
    loss = np.full((3, 3), np.nan)
    with pytest.raises(ResultFileError, match="all 3 computed points of 9 NaN/inf"):
        plot.plot_contourf(_surf(loss, done=half))


def test_the_1d_row_through_zero_must_have_a_finite_value():
    loss = _bowl()
    loss[3] = np.nan  # y = 0 is row 3 of 7
    with pytest.raises(ResultFileError, match="row through y = 0 has no finite loss"):
        plot.plot_1d(_surf(loss))
    plot.plot_contourf(_surf(loss))  # the 2-D surface itself is drawable


def _scatter_points(ax) -> int:
    from matplotlib.collections import PathCollection

    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


@pytest.mark.parametrize("kind", ["contour", "contourf", "surface"])
def test_isolated_finite_points_are_drawn_as_dots(kind):
    """A checkerboard of NaNs has no all-finite cell: contours show nothing, so the finite
    points are drawn as dots (old code: an empty axes)."""
    loss = _bowl(5, 5)
    loss.flat[::2] = np.nan
    fig = getattr(plot, f"plot_{kind}")(_surf(loss))
    assert _scatter_points(fig.axes[0]) == int(np.isfinite(loss).sum())


def test_partly_nan_and_partial_surfaces_draw_their_finite_cells(tmp_path):
    loss = _bowl()
    loss[0, 0] = np.nan
    fig = plot.plot_contourf(_surf(loss))
    assert _scatter_points(fig.axes[0]) == 0  # every finite point is in a finite cell
    done = np.zeros(loss.shape, bool)
    done[:4] = True
    partial = _surf(np.where(done, _bowl(), np.nan), done=done)
    assert plot.progress(partial) == (36, 63)
    fig = plot.plot_panel([partial], kind="contourf")
    plot.save_figure(fig, tmp_path / "p", formats=("png",))
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("kind", plot.KINDS)
def test_log_scale_masks_non_positive_values_without_warnings(kind):
    """Old code handed zeros to a log colour scale (matplotlib warned: "Log scale: values
    of z <= 0 have been masked"; warnings are errors in this suite)."""
    loss = _bowl()
    loss[2, 2] = 0.0
    plot.plot_panel([_surf(loss)], kind=kind, log=True)
    with pytest.raises(ResultFileError, match="no positive loss value to draw on a log scale"):
        plot.plot_panel([_surf(np.zeros((3, 3)))], kind=kind, log=True)


def test_one_row_grid_needs_kind_1d():
    s = _surf(_bowl(1, 5))
    with pytest.raises(SpecError, match=r"at least 2 points along x and y.*5x1.*1d"):
        plot.plot_contour(s)
    plot.plot_1d(s)


def test_panel_checks_titles_and_clamps_columns():
    s = _surf(_bowl())
    with pytest.raises(SpecError, match="titles has 1 names for 2 files") as e:
        plot.plot_panel([s, s], titles=["a"])
    assert e.value.param == "titles"
    fig = plot.plot_panel([s, s], kind="contour", ncols=5)
    grids = {a.get_subplotspec().get_geometry()[:2] for a in fig.axes if a.get_title()}
    assert grids == {(1, 2)}
    fig = plot.plot_panel([s], kind="contour", num_levels=7)
    assert len(fig.axes[0].collections[0].levels) == 7


def test_vmin_or_vmax_beyond_the_data_is_refused():
    s = _surf(_bowl())
    with pytest.raises(SpecError, match="vmin 100 is not below the largest value"):
        plot.color_scale([s], vmin=100.0)
    with pytest.raises(SpecError, match="vmax -1 is not above the smallest value"):
        plot.color_scale([s], vmax=-1.0)


def test_vts_export_refuses_all_nan_and_is_atomic(tmp_path):
    pytest.importorskip("pyevtk")
    with pytest.raises(ResultFileError, match="no finite loss value"):
        plot.export_vts(_surf(np.full((3, 3), np.nan)), tmp_path / "n.vts")
    out = plot.export_vts(_surf(_bowl()), tmp_path / "s.vts")
    assert out == tmp_path / "s.vts" and b"StructuredGrid" in out.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.vts"]
