"""Stages 2-4 of a study: measurements, landscapes, figures and the report.

Each stage takes ``(config, out_dir, runs, *, force, progress)`` -- ``runs`` are the
:class:`~geomkit.study.run.RunRecord` s with a finished checkpoint -- and returns a dict
of what it produced, for :class:`~geomkit.study.run.StudyResult`. Each reuses finished
work unless ``force``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomkit.errors import ResultFileError, SpecError, SpecMismatch
from geomkit.study._log import log as _log
from geomkit.study.config import StudyConfig

# -- stage 2: analysis ---------------------------------------------------------------------

def analyze_stage(config: StudyConfig, out_dir: Path, runs: Sequence[Any], *,
                  force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Measure every run into ``out_dir/results.h5`` and its spectral density into
    ``out_dir/density/<run>.h5``; both skip what is already there."""
    out: dict[str, Any] = {}
    if not runs:
        return out
    a = config.analysis
    from geomkit.analyze import analyze

    path = out_dir / "results.h5"
    ckpts = [r.checkpoint for r in runs]
    _log(progress, f"analyze {len(ckpts)} checkpoints into {path}")
    # changed [analysis] settings are refused by analyze() (ResultFileError naming the
    # difference) unless the study runs with --force: stored measurements are never
    # replaced silently
    analyze(ckpts, path, force=force, measurements=list(a.measure) or None,
            progress=progress, **a.analyze_options())
    out["results"] = path
    if a.density_samples > 0:
        for r in runs:
            density_for_run(r, out_dir / "density" / f"{r.name}.h5", config, force=force,
                            progress=progress)
    return out


def density_for_run(run: Any, path: Path, config: StudyConfig, *, force: bool = False,
                    progress: bool = False) -> Path:
    """The whole-model Hessian spectral density (SLQ) of one run, written atomically.

    The file (format ``geomkit-density/1``, :mod:`geomkit.io`) is reused when its
    checkpoint hash and settings match; an older one is replaced, a file that is not a
    density file (another format, not HDF5, damaged) is refused and left untouched.
    """
    from geomkit.checkpoint import load_checkpoint
    from geomkit.geometry.spectrum import spectral_density
    from geomkit.io import (
        DENSITY_FORMAT,
        atomic_h5,
        attr,
        check_replace,
        dumps_json,
        now_utc,
        open_h5,
        set_provenance,
    )
    from geomkit.provenance import file_sha256

    a = config.analysis
    sha = file_sha256(run.checkpoint)
    settings = dumps_json({"samples": a.density_samples, "probes": a.density_probes,
                           "iter": a.density_iter, "seed": 0, "block": "whole"}, sort_keys=True)
    # files written before densities had a format tag have none: still geomkit's
    check_replace(path, DENSITY_FORMAT, untagged=True)
    if path.exists() and not force:
        try:
            with open_h5(path, "r", kind=DENSITY_FORMAT, untagged=True) as f:
                if attr(f, "checkpoint_sha256") == sha and attr(f, "settings") == settings:
                    return path
        except ResultFileError:
            pass  # damaged: computed again below
    _log(progress, f"density: {run.name}")
    ck = load_checkpoint(run.checkpoint)
    n = min(a.density_samples, len(ck.analysis_data("train")[0]))
    x, y = ck.analysis_data("train", n)
    d = spectral_density(ck.model, x, y, blocks=("whole",), n_probes=a.density_probes,
                         n_iter=a.density_iter, n_grid=400, seed=0)["whole"]
    with atomic_h5(path) as f:
        f.attrs["format"] = DENSITY_FORMAT
        f.attrs["created"] = now_utc()
        for k in ("grid", "density", "nodes", "weights"):
            f.create_dataset(k, data=getattr(d, k).detach().cpu().double().numpy())
        f.attrs["sigma"] = float(d.sigma)
        f.attrs["n_params"] = int(d.n_params)
        f.attrs["n_hvps"] = int(d.n_hvps)
        f.attrs["seconds"] = float(d.seconds)
        f.attrs["samples"] = int(n)
        f.attrs["settings"] = settings
        f.attrs["checkpoint"] = str(Path(run.checkpoint).resolve())
        f.attrs["checkpoint_sha256"] = sha
        set_provenance(f)
    return path


# -- stage 3: landscapes -------------------------------------------------------------------

def landscape_stage(config: StudyConfig, out_dir: Path, runs: Sequence[Any], *,
                    force: bool = False, progress: bool = True) -> dict[str, Any]:
    """A filter-normalized random 2-D surface into ``out_dir/landscapes/<run>.h5`` for each
    run the Figure-1 grid shows (the first seed on the largest subset,
    :attr:`StudyConfig.figure_key`, and every ``[[checkpoints]]`` entry; the other runs'
    surfaces would be drawn nowhere), resumed
    at the first unfinished grid point; the grid itself is drawn by the report."""
    ls = config.landscape
    runs = [r for r in runs if config.in_figures(r.spec.subset, r.spec.seed, r.spec.external)]
    if not ls.enabled or not runs:
        return {}
    from geomkit.geometry.landscape import landscape_from_checkpoint

    files: dict[str, Path] = {}
    for i, r in enumerate(runs):
        path = out_dir / "landscapes" / f"{r.name}.h5"
        if force:  # --force redoes the stage
            _remove(path)
        kw = dict(x=ls.x, y=ls.y, samples=ls.samples, seed=ls.seed, norm=ls.norm,
                  ignore=ls.ignore, progress=progress)
        _log(progress, f"landscape {i + 1}/{len(runs)}: {r.name}")
        try:
            surf = landscape_from_checkpoint(r.checkpoint, path, **kw)
        except SpecMismatch as e:
            # A surface of a checkpoint that was since retrained or trained on is stale
            # and is recomputed; one of other [landscape] settings is kept unless --force
            # (only this mismatch: a busy file or a full disk is never deleted).
            if set(e.keys) - {"checkpoint_sha256"}:
                raise SpecError(f"{path} was computed with other [landscape] settings "
                                f"({', '.join(k for k in e.keys if k != 'checkpoint_sha256')}"
                                "); pass force to recompute it, or use another output "
                                "directory", param="force") from None
            _log(progress, f"landscape: {path.name} is of another checkpoint or setting; "
                 "recomputing")
            _remove(path)
            surf = landscape_from_checkpoint(r.checkpoint, path, **kw)
        if surf.complete:
            files[r.name] = path
    out: dict[str, Any] = {"landscapes": files}
    traj = trajectory_landscapes(config, out_dir, runs, force=force, progress=progress)
    if traj:
        out["trajectories"] = traj
    return out


def trajectory_landscapes(config: StudyConfig, out_dir: Path, runs: Sequence[Any], *,
                          force: bool = False, progress: bool = True) -> dict[str, Path]:
    """The trajectory-PCA surface (Li et al. 2018, §7) of each Figure-1 run trained with
    ``[track] snapshot_every``: ``out_dir/landscapes/<run>_pca.h5``, the grid covering
    the path (``[track] trajectory_grid`` points per axis), the loss on the
    ``[landscape]`` samples; a surface of another checkpoint or path is recomputed."""
    from geomkit.geometry.landscape import landscape_from_checkpoint

    t = config.track
    files: dict[str, Path] = {}
    if not t.snapshot_every:
        return files
    for r in runs:
        snaps = Path(r.checkpoint).parent / "snapshots.h5"
        if r.spec.external or not snaps.is_file():
            continue
        path = out_dir / "landscapes" / f"{r.name}_pca.h5"
        if force:
            _remove(path)
        kw = dict(direction="pca", trajectory=snaps, grid_points=t.trajectory_grid,
                  samples=config.landscape.samples, progress=progress)
        _log(progress, f"trajectory landscape: {r.name}")
        try:
            surf = landscape_from_checkpoint(r.checkpoint, path, **kw)
        except SpecMismatch:  # retrained since: another checkpoint, path or grid
            _remove(path)
            surf = landscape_from_checkpoint(r.checkpoint, path, **kw)
        if surf.complete:
            files[r.name] = path
    return files


def _remove(path: Path) -> None:
    """Delete a stale result file; a refusing file system is one line, not a traceback."""
    from geomkit.io import write_error

    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise write_error(path, e) from None


# -- stage 4: figures and report -----------------------------------------------------------

def report_stage(config: StudyConfig, out_dir: Path, runs: Sequence[Any], *,
                 force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Figures (λ_max bars, sparsity, densities, corruptions, landscape grid) and
    ``report.md`` / ``report.html``. Cheap, so always redrawn from the files."""
    from geomkit.study.report import write_report

    _log(progress, f"report: {out_dir / 'report.md'}")
    figures, report = write_report(config, out_dir, runs)
    return {"figures": figures, "report": report}
