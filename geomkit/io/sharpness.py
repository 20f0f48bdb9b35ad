"""Sharpness files (``geomkit sharpness --out``): one writer, one reader.

Layout (format ``geomkit-sharpness/1``; every file opens in plain h5py)::

    /                  attrs: format, created, provenance (JSON), checkpoint_path,
                              checkpoint_sha256, label, model, config (JSON),
                              data_spec (JSON),
                              settings (JSON: kind, rho, p, adaptive, m, ...), n_samples,
                              n_batches, done (last: only a finished file has it)
    /blocks/<block>/   attrs: value, stderr, loss, perturbed_loss, radius, n_params,
                              n_forward, n_backward, seconds
                       datasets: per_batch, param_names

:func:`sharpness_record` gives the same keys as plain values (what ``--json`` prints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import (
    SHARPNESS_FORMAT,
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

__all__ = ["SHARPNESS_FORMAT", "check_sharpness_out", "load_sharpness", "save_sharpness",
           "sharpness_record"]

_SCALARS = ("value", "stderr", "loss", "perturbed_loss", "radius", "n_params", "n_forward",
            "n_backward", "seconds")


def sharpness_record(result: Any, *, checkpoint: Any = None, loss: str = "ce") -> dict[str, Any]:
    """A :class:`~geomkit.geometry.sharpness.SharpnessResult` as plain values: ``settings``,
    ``n_samples``, ``n_batches``, ``blocks`` (block → value, stderr, loss, perturbed_loss,
    radius, n_params, n_forward, n_backward, seconds, per_batch) and ``params``; with
    ``checkpoint`` also ``checkpoint``, ``model`` and ``label``."""
    settings = result.settings()
    if loss != "ce":
        settings["loss"] = loss
    out: dict[str, Any] = {}
    if checkpoint is not None:
        out.update(checkpoint=str(checkpoint.path), model=checkpoint.model_name,
                   label=checkpoint.label)
    out.update(settings=settings, n_samples=int(result.n_samples),
               n_batches=int(result.n_batches), blocks={},
               params={b: list(v) for b, v in result.params.items()})
    for b, e in result.blocks.items():
        d = {k: getattr(e, k) for k in _SCALARS}
        d["per_batch"] = [float(v) for v in e.per_batch]
        out["blocks"][b] = d
    return out


def check_sharpness_out(path: str | Path) -> None:
    """Refuse an existing ``path`` that is not a sharpness file (a results file, a
    landscape, ...), which ``--out`` must never replace."""
    check_replace(path, SHARPNESS_FORMAT)


def save_sharpness(path: str | Path, result: Any, *, checkpoint: Any = None,
                   loss: str = "ce") -> dict[str, Any]:
    """Write ``result`` to the sharpness file ``path`` atomically; returns the record."""
    path = Path(path)
    check_sharpness_out(path)
    rec = sharpness_record(result, checkpoint=checkpoint, loss=loss)
    with atomic_h5(path) as f:
        f.attrs["format"] = SHARPNESS_FORMAT
        f.attrs["created"] = now_utc()
        set_provenance(f)
        if checkpoint is not None:
            set_checkpoint_attrs(f, checkpoint)
        set_json_attr(f, "settings", rec["settings"])
        f.attrs["n_samples"] = rec["n_samples"]
        f.attrs["n_batches"] = rec["n_batches"]
        root = f.create_group("blocks", track_order=True)
        for b, d in rec["blocks"].items():
            g = root.create_group(b)
            for k in _SCALARS:
                g.attrs[k] = d[k]
            g.create_dataset("per_batch", data=np.asarray(d["per_batch"], dtype=np.float64))
            g.create_dataset("param_names", data=np.asarray(rec["params"].get(b, []),
                                                            dtype="S"))
        f.attrs["done"] = True  # last
    return rec


def load_sharpness(path: str | Path) -> dict[str, Any]:
    """Read a sharpness file: root attributes (JSON parsed) and ``blocks``.

    Raises:
        ResultFileError: missing, not HDF5, damaged, not a sharpness file, or unfinished.
    """
    from geomkit.errors import ResultFileError

    path = Path(path)
    with open_h5(path, "r", kind=SHARPNESS_FORMAT) as f:
        if not attr(f, "done", False):
            raise ResultFileError(f"{path} is an unfinished sharpness file; run the command "
                                  "again")
        out: dict[str, Any] = {k: attr(f, k) for k in f.attrs}
        for k in ("config", "data_spec", "settings"):
            out[k] = get_json_attr(f, k, {})
        out["provenance"] = get_provenance(f)
        out["blocks"] = {}
        for b, g in f.get("blocks", {}).items():
            d = {k: attr(g, k) for k in g.attrs}
            d["per_batch"] = [float(v) for v in g["per_batch"][...]]
            d["param_names"] = [s.decode() if isinstance(s, bytes) else str(s)
                                for s in g["param_names"][...]]
            out["blocks"][b] = d
    return out
