"""Reading a study directory back: one flat row per run, joined from every artifact.

>>> from geomkit.study import open_study
>>> s = open_study("runs/quick")                           # doctest: +SKIP
>>> [(r["run"], r["test_acc"], r["lambda_max"].get("whole")) for r in s.rows]  # doctest: +SKIP

A row holds the run's identity (``run``, ``model``, ``family``, ``optimizer``,
``subset``, ``seed``), its training metrics (``test_acc``, ``train_loss``,
``train_seconds``; for a ``[[checkpoints]]`` entry, whose ``status`` is ``external``,
``test_acc`` is the analysis's clean accuracy and ``test_acc_from`` says so) and, when
stage 2 has measured it, ``num_params``, ``kappa_init``,
``lambda_max`` (block → value), ``hessian_depth``, ``weight_norm``, ``a`` (first / mid
/ last block output norm), ``a_index``, ``block_active_fraction`` (list), ``clean``,
``mean_corrupted``, ``per_corruption`` (corruption → accuracy) — each measurement's
``view`` in :mod:`geomkit.measurements` — and ``t1`` / ``t3``, its Table 1 / Table 3
values by entry key; stage-3/2 files are in ``landscape`` and ``density`` (paths or None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomkit.errors import ResultFileError


def _lambda_entries() -> list[Any]:
    from geomkit import measurements as registry

    return [e for _, e in registry.table_entries(3) if e.group == "lambda_max"]


#: The Hessian block columns of Table 3 (keys and titles from the measurement registry).
COLUMNS: tuple[str, ...] = tuple(e.key for e in _lambda_entries())
COLUMN_TITLES: dict[str, str] = {e.key: e.label for e in _lambda_entries()}


@dataclass(frozen=True)
class Density:
    """A Hessian spectral density of one run (SLQ, the whole model)."""

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


def read_density(path: str | Path) -> Density:
    """Read ``density/<run>.h5`` (format ``geomkit-density/1``, or an untagged file from
    before the tag; plain h5py datasets ``grid``, ``density``, ``nodes``, ``weights``).

    Raises:
        ResultFileError: one line: missing, not HDF5, damaged, another format, or a
            dataset missing.
    """
    from geomkit.io import DENSITY_FORMAT, attr, get_provenance, open_h5

    path = Path(path)
    with open_h5(path, "r", kind=DENSITY_FORMAT, untagged=True) as f:
        missing = [k for k in ("grid", "density", "nodes", "weights") if k not in f]
        if missing:
            raise ResultFileError(f"{path} is not a readable density file: no "
                                  f"{', '.join(missing)}")
        attrs = {k: attr(f, k) for k in f.attrs}
        if "provenance" in attrs:
            attrs["provenance"] = get_provenance(f)
        return Density(f["grid"][...], f["density"][...], f["nodes"][...], f["weights"][...],
                       attrs)


@dataclass(frozen=True)
class StudyView:
    """A study directory read back (see the module docstring for the row keys)."""

    out_dir: Path
    config: dict[str, Any]
    rows: tuple[dict[str, Any], ...]
    results_path: Path | None

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.out_dir.name))

    def row(self, run: str) -> dict[str, Any]:
        """The row of one run by name."""
        for r in self.rows:
            if r["run"] == run:
                return r
        raise KeyError(f"no run {run!r}; runs: {', '.join(r['run'] for r in self.rows)}")

    def density(self, run: str) -> Density | None:
        p = self.row(run).get("density")
        return read_density(p) if p else None

    def pairs(self, sam: str = "sam", base: str = "vanilla"
              ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(``base`` row, ``sam`` row) of the same model, seed and subset: vanilla vs SAM by
        default; ``pairs("sam-aug", base="aug")`` pairs the augmented runs (the ``aug`` and
        ``sam-aug`` rows never pair with the plain ones unless asked)."""
        by = {(r["model"], r["seed"], r["subset"], r["optimizer"]): r for r in self.rows}
        return [(r, by[(r["model"], r["seed"], r["subset"], sam)]) for r in self.rows
                if r["optimizer"] == base and (r["model"], r["seed"], r["subset"], sam) in by]


def _measured(rec: Any) -> dict[str, Any]:
    """The registered measurements' views of a record, and its Table 1 / Table 3 values by
    entry key (``t1``, ``t3``)."""
    from geomkit import measurements as registry

    out: dict[str, Any] = {}
    for m in registry.registry().values():
        if m.view is not None and m.name in rec.measurements:
            out.update(m.view(rec))
    for t in (1, 3):
        out[f"t{t}"] = {e.key: v for _, e in registry.table_entries(t)
                        if (v := e.value(rec)) is not None}
    return out


def open_study(out_dir: str | Path) -> StudyView:
    """Read a study directory written by :func:`geomkit.study.run_study`.

    Raises:
        ResultFileError: ``out_dir`` has no ``study.json``.
    """
    from geomkit.provenance import file_sha256
    from geomkit.study.config import model_family

    out_dir = Path(out_dir)
    state_path = out_dir / "study.json"
    if not state_path.is_file():
        raise ResultFileError(f"{out_dir} is not a study directory (no study.json); "
                              "run the study into it first")
    state = json.loads(state_path.read_text())
    by_sha: dict[str, Any] = {}
    results_path = out_dir / "results.h5"
    if results_path.is_file():
        from geomkit.results import load_results

        for rec in load_results(results_path):
            by_sha[rec.checkpoint_sha256] = rec
    else:
        results_path = None
    rows = []
    for run in state.get("runs", []):
        row = dict(run)
        # study.json keeps the family since [[checkpoints]] (a label's own is "other")
        row["family"] = row.get("family") or model_family(row["model"])
        ck = out_dir / run["checkpoint"]
        row["checkpoint"] = str(ck)
        if by_sha and ck.is_file():
            rec = by_sha.get(file_sha256(ck))
            if rec is not None:
                row.update(_measured(rec))
        if row.get("status") == "external" and row.get("test_acc") is None \
                and row.get("clean") is not None:
            # a checkpoint trained elsewhere has no training metrics: its test accuracy is
            # the analysis's clean accuracy ([analysis] test_samples; 0 = the whole split)
            row["test_acc"] = row["clean"]
            row["test_acc_from"] = "analysis"
        for key, sub in (("landscape", "landscapes"), ("density", "density")):
            p = out_dir / sub / f"{run['run']}.h5"
            row[key] = str(p) if p.is_file() else None
        # geometry during training: beside the checkpoint (also one trained elsewhere
        # with `geomkit train --track`), and the trajectory-PCA surface of the study
        p = ck.parent / "track.h5"
        row["track"] = str(p) if p.is_file() else None
        p = out_dir / "landscapes" / f"{run['run']}_pca.h5"
        row["trajectory"] = str(p) if p.is_file() else None
        rows.append(row)
    return StudyView(out_dir, state.get("config", {}), tuple(rows), results_path)


def lambda_columns(row: dict[str, Any]) -> dict[str, float]:
    """A row's Hessian λ_max by Table-3 column key (see :data:`COLUMNS`)."""
    t3 = row.get("t3") or {}
    return {c: float(t3[c]) for c in COLUMNS if c in t3}
