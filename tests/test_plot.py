"""Every plot kind renders headlessly to valid PNG/PDF files of the requested size."""

from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from PIL import Image  # noqa: E402

from geomkit import plot  # noqa: E402
from geomkit.errors import SpecError  # noqa: E402
from geomkit.geometry.landscape import Grid, Landscape, compute_landscape, random_directions  # noqa: E402
from tests.cases import make_case  # noqa: E402


def _surface(shift=0.0, nan=True, ny=7):
    x = np.linspace(-1, 1, 9)
    y = np.linspace(-1, 1, ny)
    X, Y = np.meshgrid(x, y)
    loss = 0.1 + X**2 + 0.5 * Y**2 + shift
    if nan:
        loss[0, 0] = np.nan
        loss[1, 2] = np.inf
    acc = 100 * np.exp(-loss)
    return Landscape(x, y, loss, acc, np.ones(loss.shape, bool), attrs={"model_name": "toy"})


def _line():
    x = np.linspace(-1, 1, 11)
    loss = 0.2 + x**2
    loss[3] = np.nan
    return Landscape(x, None, loss, 90 - 10 * x**2, np.ones(11, bool))


def _check(paths, size, dpi=100):
    png, pdf = paths
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == size
    w, h = plot.pdf_page_size(pdf)
    assert (w, h) == pytest.approx((size[0] / dpi * 72, size[1] / dpi * 72), abs=0.5)


@pytest.mark.parametrize("kind", ["contour", "contourf", "surface"])
@pytest.mark.parametrize("log", [False, True])
def test_2d_kinds_render_to_requested_size(tmp_path, kind, log):
    fig = getattr(plot, f"plot_{kind}")(_surface(), log=log)
    _check(plot.save_figure(fig, tmp_path / kind, size=(320, 240), dpi=100), (320, 240))


def test_1d_curve_and_row_of_a_2d_file(tmp_path):
    _check(
        plot.save_figure(plot.plot_1d(_line(), log=True), tmp_path / "a", size=(300, 200), dpi=100),
        (300, 200),
    )
    _check(
        plot.save_figure(plot.plot_1d(_surface()), tmp_path / "b", size=(300, 200), dpi=100),
        (300, 200),
    )


def test_takes_an_axes_and_returns_it():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert plot.plot_contourf(_surface(), ax) is ax
    ax3 = fig.add_subplot(projection="3d")
    assert plot.plot_surface(_surface(), ax3) is ax3


def test_panel_2x3_shares_one_color_scale(tmp_path):
    surfs = [_surface(shift=k) for k in range(6)]
    scale = plot.color_scale(surfs)
    finite = np.concatenate([s.loss[np.isfinite(s.loss)] for s in surfs])
    assert (scale.vmin, scale.vmax) == (finite.min(), finite.max())
    fig = plot.plot_panel(surfs, kind="contourf", titles=[f"p{k}" for k in range(6)])
    axes = [a for a in fig.axes if a.get_title()]
    assert len(axes) == 6 and {a.get_subplotspec().get_geometry()[:2] for a in axes} == {(2, 3)}
    # every panel uses the same levels
    levels = {tuple(a.collections[0].levels) for a in axes}
    assert len(levels) == 1 and len(next(iter(levels))) == 30
    _check(plot.save_figure(fig, tmp_path / "panel", size=(900, 600), dpi=100), (900, 600))
    for kind in ("contour", "surface", "1d"):
        f = plot.plot_panel(surfs[:2] if kind != "1d" else [_line(), _line()], kind=kind)
        _check(plot.save_figure(f, tmp_path / kind, size=(600, 300), dpi=100), (600, 300))


def test_reads_files_and_refuses_bad_input(tmp_path):
    case = make_case("mlp")
    dirs = random_directions(case.model, 2, seed=0)
    path = tmp_path / "s.h5"
    compute_landscape(
        path, case.model, case.inputs, case.targets, dirs, Grid((-1, 1, 4), (-1, 1, 3))
    )
    _check(
        plot.save_figure(plot.plot_contour(path), tmp_path / "c", size=(200, 200), dpi=100),
        (200, 200),
    )
    with pytest.raises(SpecError):
        plot.plot_contour(_line())
    with pytest.raises(SpecError):
        plot.plot_panel([_surface()], kind="bogus")
    with pytest.raises(SpecError):
        plot.save_figure(plot.plot_1d(_line()), tmp_path / "x", formats=("gif",))


def test_vts_export(tmp_path):
    pytest.importorskip("pyevtk")
    out = plot.export_vts(_surface(), tmp_path / "surf.vts", log=True)
    text = out.read_bytes()
    assert out.suffix == ".vts" and b"StructuredGrid" in text and b"valid" in text


def test_vts_without_pyevtk_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("pyevtk"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(SpecError, match="pip install"):
        plot.export_vts(_surface(), tmp_path / "s.vts")


_NO_COMPUTE_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import matplotlib
matplotlib.use("Agg")
from geomkit import plot
fig = plot.plot_panel([{path!r}, {path!r}], kind="contourf")
plot.save_figure(fig, {prefix!r}, formats=("png",), size=(200, 100), dpi=100)
plot.plot_contour({path!r}); plot.plot_1d({path!r})
loaded = sorted(m for m in sys.modules
                if m == "torch" or m.startswith(("torch.", "geomkit.geometry")))
print(",".join(loaded) or "none")
"""


def test_reading_and_plotting_a_file_imports_neither_torch_nor_geomkit_geometry(tmp_path):
    """The landscape reader is the I/O layer's (geomkit.io.landscape), not the compute
    package's: drawing a file needs h5py and matplotlib only."""
    import subprocess
    import sys
    from pathlib import Path

    case = make_case("mlp")
    dirs = random_directions(case.model, 2, seed=0)
    path = tmp_path / "s.h5"
    compute_landscape(
        path, case.model, case.inputs, case.targets, dirs, Grid((-1, 1, 4), (-1, 1, 3))
    )
    root = str(Path(__file__).resolve().parents[1])
    script = _NO_COMPUTE_SCRIPT.format(root=root, path=str(path), prefix=str(tmp_path / "p"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "none"
    assert (tmp_path / "p.png").is_file()
