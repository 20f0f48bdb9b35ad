"""Study figures from the rows of :func:`geomkit.study.open_study` (no recomputation).

Each function takes rows (dicts, see :mod:`geomkit.study.view`) and returns a matplotlib
``Figure`` with one panel per model; optimizers are bars or lines within a panel.
Save with :func:`geomkit.plot.save_figure`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from geomkit.study.view import COLUMN_TITLES, COLUMNS, lambda_columns, read_density

COLORS = {"vanilla": "#4C72B0", "sam": "#DD8452", "asam": "#55A868", "aug": "#C44E52",
          "sam-aug": "#937860"}


def _color(opt: str) -> str:
    return COLORS.get(opt, "#8172B3")


def _by_model(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["model"], []).append(r)
    return out


def _panels(rows: Sequence[dict[str, Any]], keep: Callable[[dict[str, Any]], bool],
            panel_size: tuple[float, float] = (3.6, 2.9), projection: str | None = None):
    from matplotlib.figure import Figure

    groups = {m: [r for r in rs if keep(r)] for m, rs in _by_model(rows).items()}
    groups = {m: rs for m, rs in groups.items() if rs}
    n = max(len(groups), 1)
    fig = Figure(figsize=(panel_size[0] * n, panel_size[1]), layout="constrained")
    axes = [fig.add_subplot(1, n, i + 1, projection=projection) for i in range(n)]
    if not groups:
        axes[0].text(0.5, 0.5, "no measurements yet", ha="center", va="center")
        axes[0].set_axis_off()
    return fig, list(zip(axes, groups.items(), strict=False))


def plot_lambda_bars(rows: Sequence[dict[str, Any]]):
    """λ_max of each Table-3 block as grouped bars (optimizers side by side), log scale."""
    fig, panels = _panels(rows, lambda r: bool(r.get("lambda_max")))
    for ax, (model, rs) in panels:
        cols = [c for c in COLUMNS if any(c in lambda_columns(r) for r in rs)]
        width = 0.8 / len(rs)
        for k, r in enumerate(rs):
            lc = lambda_columns(r)
            vals = [max(lc.get(c, np.nan), 1e-8) for c in cols]
            ax.bar(np.arange(len(cols)) + (k - (len(rs) - 1) / 2) * width, vals, width,
                   label=r["optimizer"], color=_color(r["optimizer"]))
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.25)  # headroom for the legend
        ax.set_xticks(range(len(cols)), [COLUMN_TITLES[c].replace(" / ", "/\n") for c in cols],
                      fontsize=7, rotation=30, ha="right")
        ax.set_title(model, fontsize=9)
        ax.set_ylabel("Hessian λ_max")
        ax.legend(fontsize=7, ncols=len(rs), loc="upper center")
    return fig


def plot_sparsity(rows: Sequence[dict[str, Any]]):
    """Fraction of active (> 0) post-activation values per block, vanilla vs SAM."""
    fig, panels = _panels(rows, lambda r: bool(r.get("block_active_fraction")))
    for ax, (model, rs) in panels:
        for r in rs:
            f = r["block_active_fraction"]
            ax.plot(np.arange(1, len(f) + 1), f, "o-", label=r["optimizer"],
                    color=_color(r["optimizer"]))
        ax.set_xlabel("block")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("active fraction")
        ax.set_ylim(0, 1)
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def plot_densities(rows: Sequence[dict[str, Any]]):
    """Hessian eigenvalue densities (SLQ, whole model), vanilla vs SAM, log density."""
    fig, panels = _panels(rows, lambda r: bool(r.get("density")))
    for ax, (model, rs) in panels:
        for r in rs:
            d = read_density(r["density"])
            ax.plot(d.grid, np.maximum(d.density, 1e-8), label=r["optimizer"],
                    color=_color(r["optimizer"]), lw=1)
        ax.set_yscale("log")
        ax.set_ylim(1e-6, None)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def plot_corruptions(rows: Sequence[dict[str, Any]]):
    """Test accuracy, clean and under each corruption (mean over severities)."""
    fig, panels = _panels(rows, lambda r: r.get("per_corruption") is not None,
                          panel_size=(4.4, 3.0))
    for ax, (model, rs) in panels:
        names = ["clean"] + list(rs[0]["per_corruption"])
        width = 0.8 / len(rs)
        for k, r in enumerate(rs):
            vals = [r["clean"]] + [r["per_corruption"].get(c, np.nan) for c in names[1:]]
            ax.bar(np.arange(len(names)) + (k - (len(rs) - 1) / 2) * width,
                   100 * np.asarray(vals), width, label=r["optimizer"],
                   color=_color(r["optimizer"]))
        ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=7,
                      rotation=40, ha="right")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 118)
        ax.set_yticks(range(0, 101, 20))
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7, ncols=len(rs), loc="upper center")
    return fig


def plot_subsets(rows: Sequence[dict[str, Any]]):
    """Test accuracy against the training-set fraction, per model and optimizer (Table 4)."""
    fig, panels = _panels(rows, lambda r: True)
    for ax, (model, rs) in panels:
        for opt in dict.fromkeys(r["optimizer"] for r in rs):
            pts: dict[float, list[float]] = {}
            for r in rs:
                if r["optimizer"] == opt:
                    pts.setdefault(r["subset"], []).append(r["test_acc"])
            xs = sorted(pts)
            ax.plot(xs, [100 * float(np.mean(pts[x])) for x in xs], "o-", label=opt,
                    color=_color(opt))
        ax.set_xscale("log")
        ax.set_xlabel("fraction of the training set")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def plot_tracks(rows: Sequence[dict[str, Any]]):
    """Sharpness during training: per model, λ_max against the step for each optimizer
    (the preconditioned λ_max(P⁻¹H) for Adam/AdamW runs, as
    :func:`geomkit.plot.track_series`), with its edge-of-stability line dashed; log
    scale."""
    from geomkit.io.track import read_track
    from geomkit.plot import track_series

    fig, panels = _panels(rows, lambda r: bool(r.get("track")), panel_size=(3.8, 3.0))
    for ax, (model, rs) in panels:
        whats = []
        for r in rs:
            what, step, lam, thr = track_series(read_track(r["track"]))
            ok = np.isfinite(lam)
            color = _color(r["optimizer"])
            ax.plot(step[ok], lam[ok], "-", marker=".", markersize=3, color=color,
                    label=r["optimizer"])
            okt = np.isfinite(thr) & np.isfinite(lam)
            if okt.any():
                ax.plot(step[okt], thr[okt], "--", color=color, linewidth=0.8)
            whats.append(what)
        ax.set_yscale("log")
        # the threshold grows as the learning rate decays to 0 (1e10 at the end of a
        # cosine schedule): the axis follows the λ values, with room to show the line
        # where it comes near them
        lams = [v for r in rs for v in track_series(read_track(r["track"]))[2]
                if np.isfinite(v) and v > 0]
        if lams:
            ax.set_ylim(min(lams) / 3, max(lams) * 30)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(" / ".join(dict.fromkeys(whats)))
        ax.legend(fontsize=7)
    return fig
