"""Stages 2-4 of a study: measurements, landscapes, figures and the report.

Each stage takes ``(config, out_dir, runs, *, force, progress)`` -- ``runs`` are the
:class:`~geomkit.study.run.RunRecord` s with a finished checkpoint -- and returns a dict
of what it produced, for :class:`~geomkit.study.run.StudyResult`. Each reuses finished
work unless ``force``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomkit.errors import ResultFileError
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

    A file whose checkpoint hash and settings match is reused.
    """
    import h5py

    from geomkit.checkpoint import load_checkpoint
    from geomkit.geometry.spectrum import spectral_density
    from geomkit.provenance import file_sha256, provenance

    a = config.analysis
    sha = file_sha256(run.checkpoint)
    settings = json.dumps({"samples": a.density_samples, "probes": a.density_probes,
                           "iter": a.density_iter, "seed": 0, "block": "whole"}, sort_keys=True)
    if path.exists() and not force:
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("checkpoint_sha256") == sha and f.attrs.get("settings") == settings:
                    return path
        except OSError:
            pass
    _log(progress, f"density: {run.name}")
    ck = load_checkpoint(run.checkpoint)
    n = min(a.density_samples, len(ck.analysis_data("train")[0]))
    x, y = ck.analysis_data("train", n)
    d = spectral_density(ck.model, x, y, blocks=("whole",), n_probes=a.density_probes,
                         n_iter=a.density_iter, n_grid=400, seed=0)["whole"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
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
        f.attrs["provenance"] = json.dumps(provenance())
    os.replace(tmp, path)
    return path


# -- stage 3: landscapes -------------------------------------------------------------------

def landscape_stage(config: StudyConfig, out_dir: Path, runs: Sequence[Any], *,
                    force: bool = False, progress: bool = True) -> dict[str, Any]:
    """A filter-normalized random 2-D surface into ``out_dir/landscapes/<run>.h5`` for each
    run the Figure-1 grid shows (the first seed on the largest subset,
    :attr:`StudyConfig.figure_key`; the other runs' surfaces would be drawn nowhere), resumed
    at the first unfinished grid point; the grid itself is drawn by the report."""
    ls = config.landscape
    subset, seed = config.figure_key
    runs = [r for r in runs if r.spec.subset == subset and r.spec.seed == seed]
    if not ls.enabled or not runs:
        return {}
    from geomkit.geometry.landscape import landscape_from_checkpoint

    files: dict[str, Path] = {}
    for i, r in enumerate(runs):
        path = out_dir / "landscapes" / f"{r.name}.h5"
        if force:
            path.unlink(missing_ok=True)
        kw = dict(x=ls.x, y=ls.y, samples=ls.samples, seed=ls.seed, norm=ls.norm,
                  ignore=ls.ignore, progress=progress)
        _log(progress, f"landscape {i + 1}/{len(runs)}: {r.name}")
        try:
            surf = landscape_from_checkpoint(r.checkpoint, path, **kw)
        except ResultFileError as e:  # retrained checkpoint or changed grid: start over
            _log(progress, f"landscape: {path.name} is stale ({str(e)[:100]}...); recomputing")
            path.unlink(missing_ok=True)
            surf = landscape_from_checkpoint(r.checkpoint, path, **kw)
        if surf.complete:
            files[r.name] = path
    return {"landscapes": files}


# -- stage 4: figures and report -----------------------------------------------------------

def report_stage(config: StudyConfig, out_dir: Path, runs: Sequence[Any], *,
                 force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Figures (λ_max bars, sparsity, densities, corruptions, landscape grid) and
    ``report.md`` / ``report.html``. Cheap, so always redrawn from the files."""
    from geomkit.study.report import write_report

    _log(progress, f"report: {out_dir / 'report.md'}")
    figures, report = write_report(config, out_dir, runs)
    return {"figures": figures, "report": report}
