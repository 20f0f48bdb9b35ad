"""Hessian files (``geomkit hessian --out``): one writer, one reader, the analyze keys.

Layout (format ``geomkit-hessian/2``; every file opens in plain h5py)::

    /                  attrs: format, created, provenance (JSON), checkpoint_path,
                              checkpoint_sha256, label, model, config (JSON),
                              data_spec (JSON), settings (JSON), samples, strategy,
                              done (last: only a finished file has it)
    /blocks/<block>/   attrs: lambda_max, residual, n_hvps, n_params, converged (the
                              machine keys of the ``hessian`` measurement of
                              ``geomkit analyze``), seconds, error_bound, [lambda_min,
                              lambda_min_residual], [trace, trace_stderr, trace_probes,
                              trace_seconds]
                       datasets: eigenvalues (top-k, largest first), param_names,
                              [eigenvectors (k, n_params)]
    /blocks/<block>/density/   grid, density, nodes, weights; attrs sigma, n_probes, n_iter

:func:`hessian_record` gives the same keys as plain values (what ``--json`` prints).
Files of format ``geomkit-hessian/1`` (per-block ``params``/``hvps``) still read, with
the keys renamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import (
    HESSIAN_FORMAT,
    HESSIAN_FORMAT_V1,
    atomic_h5,
    attr,
    check_replace,
    get_json_attr,
    get_provenance,
    now_utc,
    open_h5,
    set_checkpoint_attrs,
    set_json_attr,
    set_provenance,
)

__all__ = [
    "BLOCK_KEYS",
    "HESSIAN_FORMAT",
    "HESSIAN_KINDS",
    "check_hessian_out",
    "hessian_record",
    "load_hessian",
    "save_hessian",
]

#: Per-block keys shared with the ``hessian`` measurement of ``geomkit analyze``
#: (:mod:`geomkit.measurements.hessian`: ``values[key][block]``).
BLOCK_KEYS = ("lambda_max", "residual", "n_hvps", "n_params", "converged")
#: Formats a Hessian file may hold (an older one may be replaced by a new run).
HESSIAN_KINDS = (HESSIAN_FORMAT, HESSIAN_FORMAT_V1)
_V1_NAMES = {"params": "n_params", "hvps": "n_hvps"}
_DENSITY_ARRAYS = ("grid", "density", "nodes", "weights")


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu()
    return np.asarray(t, dtype=np.float64)


def hessian_record(result: Any, *, traces: Mapping[str, Any] | None = None,
                   densities: Mapping[str, Any] | None = None,
                   smallest: bool = False, checkpoint: Any = None,
                   loss: str = "ce") -> dict[str, Any]:
    """A :class:`~geomkit.geometry.hessian.HessianResult` (with optional per-block
    :class:`~geomkit.geometry.spectrum.TraceResult` / ``DensityResult``) as plain values.

    Keys: ``samples``, ``strategy``, ``settings`` (the result's settings and
    ``smallest``), ``blocks`` (block → :data:`BLOCK_KEYS`, ``seconds``, ``eigenvalues``,
    ``error_bound``, optionally ``lambda_min``, ``trace*`` and ``density``) and
    ``params`` (block → parameter names); with ``checkpoint`` also ``checkpoint``,
    ``model`` and ``label``. A ``loss`` other than ``ce`` joins the settings.
    """
    traces, densities = traces or {}, densities or {}
    out: dict[str, Any] = {"samples": int(result.n_samples)}
    if checkpoint is not None:
        out.update(checkpoint=str(checkpoint.path), model=checkpoint.model_name,
                   label=checkpoint.label)
    settings = {**result.settings(), "smallest": smallest}
    if loss != "ce":
        settings["loss"] = loss
    out.update(strategy=result.strategy, settings=settings,
               blocks={}, params={b: list(v) for b, v in result.params.items()})
    for b, e in result.blocks.items():
        d: dict[str, Any] = {
            "lambda_max": float(e.lambda_max),
            "residual": float(e.residual),
            "n_hvps": int(e.n_hvps),
            "n_params": int(e.n_params),
            "converged": bool(e.converged),
            "seconds": float(e.seconds),
            "eigenvalues": [float(v) for v in e.eigenvalues],
            "error_bound": float(e.error_bound),
        }
        if smallest:
            d["lambda_min"] = None if e.lambda_min is None else float(e.lambda_min)
            if e.lambda_min_residual is not None:
                d["lambda_min_residual"] = float(e.lambda_min_residual)
        if b in traces:
            t = traces[b]
            d.update(trace=float(t.trace), trace_stderr=float(t.stderr),
                     trace_probes=int(t.n_probes), trace_seconds=float(t.seconds))
        if b in densities:
            dr = densities[b]
            d["density"] = {"grid": _numpy(dr.grid).tolist(),
                            "density": _numpy(dr.density).tolist(),
                            "sigma": float(dr.sigma), "mean": float(dr.mean)}
        out["blocks"][b] = d
    return out


def check_hessian_out(path: str | Path) -> None:
    """Refuse (one-line :class:`~geomkit.errors.ResultFileError`) an existing ``path``
    that is not a Hessian file geomkit wrote -- e.g. an analyze results file or a
    landscape, which ``--out`` must never replace."""
    check_replace(path, HESSIAN_KINDS)


def save_hessian(path: str | Path, result: Any, *, checkpoint: Any = None,
                 traces: Mapping[str, Any] | None = None,
                 densities: Mapping[str, Any] | None = None, smallest: bool = False,
                 vectors: bool = True, loss: str = "ce") -> dict[str, Any]:
    """Write ``result`` (as :func:`hessian_record`) to the Hessian file ``path`` atomically.

    ``checkpoint`` (a :class:`~geomkit.checkpoint.Checkpoint`) adds its identity;
    ``vectors`` stores the blocks' eigenvectors when the result holds them.  An existing
    ``path`` that is not a Hessian file is refused (:func:`check_hessian_out`) and left
    untouched.  Returns the record.
    """
    path = Path(path)
    check_hessian_out(path)
    densities = densities or {}
    rec = hessian_record(result, traces=traces, densities=densities, smallest=smallest,
                         checkpoint=checkpoint, loss=loss)
    with atomic_h5(path) as f:
        f.attrs["format"] = HESSIAN_FORMAT
        f.attrs["created"] = now_utc()
        set_provenance(f)
        if checkpoint is not None:
            set_checkpoint_attrs(f, checkpoint)
        set_json_attr(f, "settings", rec["settings"])
        f.attrs["samples"] = rec["samples"]
        f.attrs["strategy"] = str(rec["strategy"])
        root = f.create_group("blocks", track_order=True)
        for b, d in rec["blocks"].items():
            g = root.create_group(b)
            for k, v in d.items():
                if k == "eigenvalues":
                    g.create_dataset(k, data=np.asarray(v, dtype=np.float64))
                elif k != "density" and v is not None:
                    g.attrs[k] = v
            g.create_dataset("param_names", data=np.asarray(rec["params"].get(b, []), dtype="S"))
            e = result.blocks[b]
            if vectors and getattr(e, "vectors", None) is not None:
                g.create_dataset("eigenvectors", data=_numpy(e.vectors))
            if b in densities:
                dr = densities[b]
                dg = g.create_group("density")
                for k in _DENSITY_ARRAYS:
                    dg.create_dataset(k, data=_numpy(getattr(dr, k)))
                dg.attrs["sigma"] = float(dr.sigma)
                dg.attrs["n_probes"] = int(dr.n_probes)
                dg.attrs["n_iter"] = int(dr.n_iter)
        f.attrs["done"] = True  # last
    return rec


def load_hessian(path: str | Path) -> dict[str, Any]:
    """Read a Hessian file: the root attributes (JSON ones parsed) and ``blocks`` →
    per-block values (:data:`BLOCK_KEYS` and the rest; arrays as numpy, ``param_names``
    as strings, ``density`` as a dict).

    Raises:
        ResultFileError: missing, not HDF5, damaged, not a Hessian file, or unfinished.
    """
    from geomkit.errors import ResultFileError

    path = Path(path)
    with open_h5(path, "r", kind=HESSIAN_KINDS) as f:
        if not attr(f, "done", False):
            raise ResultFileError(f"{path} is an unfinished hessian file; run the command again")
        v1 = attr(f, "format") == HESSIAN_FORMAT_V1
        out: dict[str, Any] = {k: attr(f, k) for k in f.attrs}
        for k in ("config", "data_spec", "settings"):
            out[k] = get_json_attr(f, k, {})
        out["provenance"] = get_provenance(f)
        blocks: dict[str, Any] = {}
        for b, g in f.get("blocks", {}).items():
            d: dict[str, Any] = {}
            for k in g.attrs:
                d[_V1_NAMES.get(k, k) if v1 else k] = attr(g, k)
            for k, ds in g.items():
                if k == "density":
                    d[k] = {n: ds[n][...] for n in ds}
                    d[k].update({n: attr(ds, n) for n in ds.attrs})
                elif k == "param_names":
                    d[k] = [s.decode() if isinstance(s, bytes) else str(s) for s in ds[...]]
                elif k == "eigenvalues":
                    d[k] = [float(v) for v in ds[...]]
                else:
                    d[k] = ds[...]
            if "converged" in d:
                d["converged"] = bool(d["converged"])
            blocks[b] = d
        out["blocks"] = blocks
    return out
