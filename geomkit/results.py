"""Analysis results in HDF5: one group per checkpoint, one subgroup per measurement.

Layout (every file opens in plain h5py)::

    /                              attrs: format="geomkit-results/1", created, provenance (JSON)
    /checkpoints/<id>/             attrs: label, model, optimizer, checkpoint_path,
                                          checkpoint_sha256, config, data_spec,
                                          model_kwargs (JSON), order
    /checkpoints/<id>/<measurement>/
                                   attrs: settings (JSON), provenance (JSON), seconds, done
                                   values as datasets: numbers and strings as scalars,
                                   lists as 1-D arrays, nested dicts as subgroups

``<id>`` is :func:`checkpoint_id`: the checkpoint file's SHA-256 prefix and its label, so
the same weights always map to the same group and a retrained file gets a new one.

**Never half-written.**  Every change (:meth:`ResultsFile.put`) copies the file to a
temporary name beside it, writes the measurement there with its ``done`` attribute last,
closes, fsyncs and renames it over the original (:func:`geomkit.io.atomic_h5`).  A killed
run leaves either the old file or the new one; a failed write (disk full, ...) leaves the
old file and raises a one-line :class:`~geomkit.errors.ResultFileError`; readers only
ever count measurements whose ``done`` attribute is set.  Dicts are JSON attributes
under the NaN policy of :mod:`geomkit.io` (files with the older ``"nan"`` strings read).

Reading: :func:`load_results` returns a :class:`Results` of frozen
:class:`CheckpointRecord` s (no pandas needed); :meth:`Results.to_dataframe` gives one
row per checkpoint when pandas is installed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from geomkit.io import (
    RESULTS_FORMAT,
    atomic_h5,
    dumps_json,
    jsonable,
    loads_json,
    now_utc,
    open_h5,
    set_provenance,
)
from geomkit.io import attr as _attr

__all__ = [
    "FORMAT",
    "CheckpointRecord",
    "Measurement",
    "Results",
    "ResultsFile",
    "checkpoint_id",
    "load_results",
]

FORMAT = RESULTS_FORMAT  # "geomkit-results/1"
_ROOT = "checkpoints"


def checkpoint_id(sha256: str, label: str) -> str:
    """Stable group name of a checkpoint: ``<sha256[:12]>-<label>`` (``/`` → ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", label)
    return f"{sha256[:12]}-{safe}"


# -- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One finished measurement of one checkpoint.

    Attributes:
        name: the measurement's name (e.g. ``hessian``).
        values: nested dict of numbers, strings and lists (key order kept).
        settings: the options it was computed with (a rerun with other settings is
            refused unless forced).
        seconds: wall time of the computation.
        provenance: versions, host and time of the computation.
    """

    name: str
    values: dict[str, Any]
    settings: dict[str, Any]
    seconds: float
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class CheckpointRecord:
    """Everything a results file holds about one checkpoint.

    Attributes:
        id: the group name (:func:`checkpoint_id`).
        label: ``model/run-label`` (e.g. ``vit-tiny/sam``).
        model: registry name of the model.
        optimizer: the training optimizer (``adamw``, ``sgd``, ``sam``, ...).
        checkpoint_path: the checkpoint file analysed.
        checkpoint_sha256: its SHA-256.
        config, data_spec, model_kwargs: from the checkpoint.
        measurements: name → :class:`Measurement`, finished ones only.
    """

    id: str
    label: str
    model: str
    optimizer: str
    checkpoint_path: str
    checkpoint_sha256: str
    config: dict[str, Any]
    data_spec: dict[str, Any]
    model_kwargs: dict[str, Any]
    measurements: dict[str, Measurement]

    def get(self, key: str, default: Any = None) -> Any:
        """A value by dotted path, e.g. ``"hessian.lambda_max.whole"``; ``default`` if absent."""
        name, _, rest = key.partition(".")
        m = self.measurements.get(name)
        if m is None:
            return default
        node: Any = m.values
        for part in rest.split(".") if rest else []:
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def flat(self) -> dict[str, Any]:
        """One flat dict: the identity fields, then ``measurement.key[.sub]`` → value."""
        out: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "model": self.model,
            "optimizer": self.optimizer,
            "checkpoint_path": self.checkpoint_path,
            "checkpoint_sha256": self.checkpoint_sha256,
        }

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, Mapping):
                for k, v in node.items():
                    walk(f"{prefix}.{k}", v)
            else:
                out[prefix] = node

        for name, m in self.measurements.items():
            walk(name, m.values)
        return out


@dataclass(frozen=True)
class Results:
    """The contents of a results file, checkpoints in the order they were first added."""

    path: Path
    attrs: dict[str, Any]
    records: tuple[CheckpointRecord, ...]

    def __iter__(self) -> Iterator[CheckpointRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: str | int) -> CheckpointRecord:
        """A record by position, id or label (a unique label)."""
        if isinstance(key, int):
            return self.records[key]
        for r in self.records:
            if r.id == key:
                return r
        hits = [r for r in self.records if r.label == key]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise KeyError(f"label {key!r} is ambiguous; use one of the ids {[r.id for r in hits]}")
        raise KeyError(key)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """id → :meth:`CheckpointRecord.flat` (plain Python)."""
        return {r.id: r.flat() for r in self.records}

    def to_dataframe(self) -> Any:
        """A pandas DataFrame, one row per checkpoint (index: id), flat columns.

        Raises:
            ImportError: pandas is not installed (use :meth:`to_dict` instead).
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "to_dataframe() needs pandas (pip install pandas); to_dict() needs nothing"
            ) from None
        rows = [r.flat() for r in self.records]
        return pd.DataFrame(rows).set_index("id") if rows else pd.DataFrame()


# -- value trees <-> HDF5 ---------------------------------------------------------------


_jsonable = jsonable  # the one policy of geomkit.io (geomkit.analyze normalizes with it)


def _dumps(obj: Any) -> str:
    return dumps_json(obj, sort_keys=True)


def _loads(text: Any) -> Any:
    try:
        return loads_json(text)
    except (TypeError, ValueError):
        return text


def _write_tree(group: h5py.Group, values: Mapping[str, Any]) -> None:
    for key, v in values.items():
        key = str(key)
        if "/" in key:
            raise ValueError(f"result keys may not contain '/': {key!r}")
        if v is None:
            continue
        if isinstance(v, Mapping):
            _write_tree(group.create_group(key, track_order=True), v)
        elif isinstance(v, str):
            group.create_dataset(key, data=v, dtype=h5py.string_dtype())
        elif isinstance(v, (list, tuple)) and v and all(isinstance(e, str) for e in v):
            group.create_dataset(key, data=list(v), dtype=h5py.string_dtype())
        elif isinstance(v, (list, tuple)):
            group.create_dataset(key, data=np.asarray(v, dtype=float if not v else None))
        else:
            group.create_dataset(key, data=np.asarray(v))


def _read_value(ds: h5py.Dataset) -> Any:
    if h5py.check_string_dtype(ds.dtype) is not None:
        v = ds.asstr()[()]
        return v.tolist() if isinstance(v, np.ndarray) else v
    v = ds[()]
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v.item() if isinstance(v, np.generic) else v


def _read_tree(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, node in group.items():
        out[key] = _read_tree(node) if isinstance(node, h5py.Group) else _read_value(node)
    return out


# -- reading -----------------------------------------------------------------------------


def _open(path: Path, mode: str = "r") -> Any:
    """The results file, typed: one-line ResultFileError for a missing path, a file that
    is not HDF5 or damaged (also while reading) and another file's format tag."""
    return open_h5(path, mode, kind=FORMAT)


def _measurement(name: str, g: h5py.Group) -> Measurement | None:
    if not _attr(g, "done", False):
        return None
    return Measurement(
        name=name,
        values=_read_tree(g),
        settings=_loads(_attr(g, "settings", "{}")) or {},
        seconds=float(_attr(g, "seconds", math.nan)),
        provenance=_loads(_attr(g, "provenance", "{}")) or {},
    )


def _record(cid: str, g: h5py.Group) -> CheckpointRecord:
    ms: dict[str, Measurement] = {}
    for name, sub in g.items():
        if isinstance(sub, h5py.Group):
            m = _measurement(name, sub)
            if m is not None:
                ms[name] = m
    return CheckpointRecord(
        id=cid,
        label=str(_attr(g, "label", cid)),
        model=str(_attr(g, "model", "")),
        optimizer=str(_attr(g, "optimizer", "")),
        checkpoint_path=str(_attr(g, "checkpoint_path", "")),
        checkpoint_sha256=str(_attr(g, "checkpoint_sha256", "")),
        config=_loads(_attr(g, "config", "{}")) or {},
        data_spec=_loads(_attr(g, "data_spec", "{}")) or {},
        model_kwargs=_loads(_attr(g, "model_kwargs", "{}")) or {},
        measurements=ms,
    )


def load_results(path: str | Path) -> Results:
    """Read a results file written by :func:`geomkit.analyze.analyze` / :class:`ResultsFile`.

    Raises:
        ResultFileError: missing file, not HDF5, or an HDF5 file that is not a results file.
    """
    path = Path(path)
    with _open(path) as f:
        attrs = {k: _attr(f, k) for k in f.attrs}
        if "provenance" in attrs:
            attrs["provenance"] = _loads(attrs["provenance"])
        root = f.get(_ROOT)
        groups = [] if root is None else list(root.items())
        groups.sort(key=lambda kv: (int(_attr(kv[1], "order", 0)), kv[0]))
        records = tuple(_record(cid, g) for cid, g in groups)
    return Results(path=path.resolve(), attrs=attrs, records=records)


# -- writing -----------------------------------------------------------------------------


_now = now_utc


class ResultsFile:
    """A results file open for resumable, atomic updates.

    Creating one on a path that does not exist writes an empty results file -- or, with
    ``create=False``, nothing until the first :meth:`put` (a job that fails before its
    first result leaves no empty file behind; until then :meth:`get` and :meth:`find`
    find nothing and :meth:`load` is empty).  An existing path must already be a results
    file (else :class:`ResultFileError`).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "r.h5")
        >>> rf = ResultsFile(p)
        >>> meta = {"id": "abc-m_x", "label": "m/x", "model": "m", "optimizer": "x"}
        >>> rf.put(meta, "params", {"num_params": 3}, settings={}, seconds=0.0)
        >>> load_results(p)["m/x"].get("params.num_params")
        3
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.exists() or self.path.is_symlink():
            _open(self.path).close()  # validates
        elif create:
            with self._update():
                pass

    def _exists(self) -> bool:
        return self.path.exists()

    class _Update:
        """Copy → modify → close → fsync → rename (:func:`geomkit.io.atomic_h5`), so the
        file is never seen half-written and a failed update leaves it as it was."""

        def __init__(self, path: Path) -> None:
            self.path = path
            self._cm: Any = None

        @contextmanager
        def _run(self) -> Iterator[h5py.File]:
            with atomic_h5(self.path, copy=True) as f:
                if "format" not in f.attrs:  # a new file
                    f.attrs["format"] = FORMAT
                    f.attrs["created"] = _now()
                    set_provenance(f)
                    f.create_group(_ROOT)
                yield f
                f.attrs["updated"] = _now()  # only a successful update is stamped

        def __enter__(self) -> h5py.File:
            self._cm = self._run()
            return self._cm.__enter__()

        def __exit__(self, exc_type, exc, tb) -> bool | None:
            return self._cm.__exit__(exc_type, exc, tb)

    def _update(self) -> ResultsFile._Update:
        return ResultsFile._Update(self.path)

    def load(self) -> Results:
        """The current contents (:func:`load_results`; empty while not yet written)."""
        if not self._exists():
            return Results(path=self.path.resolve(), attrs={}, records=())
        return load_results(self.path)

    def get(self, cid: str, name: str) -> Measurement | None:
        """The finished measurement ``name`` of checkpoint ``cid``, or None."""
        if not self._exists():
            return None
        with _open(self.path) as f:
            g = f.get(f"{_ROOT}/{cid}/{name}")
            return None if g is None else _measurement(name, g)

    def find(self, name: str, settings: Mapping[str, Any]) -> tuple[str, Measurement] | None:
        """Any checkpoint's finished ``name`` computed with exactly ``settings`` (for reuse)."""
        want = _loads(_dumps(settings))
        for r in self.load():
            m = r.measurements.get(name)
            if m is not None and m.settings == want:
                return r.id, m
        return None

    def put(
        self,
        meta: Mapping[str, Any],
        name: str,
        values: Mapping[str, Any],
        *,
        settings: Mapping[str, Any],
        seconds: float,
        provenance_extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write (or replace) measurement ``name`` of the checkpoint described by ``meta``.

        ``meta`` holds ``id`` and the checkpoint attributes (``label``, ``model``,
        ``optimizer``, ``checkpoint_path``, ``checkpoint_sha256``, ``config``,
        ``data_spec``, ``model_kwargs``); dict values are stored as JSON.
        """
        cid = str(meta["id"])
        with self._update() as f:
            root = f.require_group(_ROOT)
            g = root.get(cid)
            if g is None:
                g = root.create_group(cid)
                g.attrs["order"] = len(root) - 1
            for k, v in meta.items():
                if k == "id":
                    continue
                g.attrs[k] = _dumps(v) if isinstance(v, (Mapping, list, tuple)) else str(v)
            if name in g:
                del g[name]
            m = g.create_group(name, track_order=True)
            _write_tree(m, values)
            m.attrs["settings"] = _dumps(settings)
            set_provenance(m, provenance_extra)
            m.attrs["seconds"] = float(seconds)
            m.attrs["done"] = True  # last: only now does the measurement count as finished

    def drop(self, cid: str, name: str | None = None) -> None:
        """Remove one measurement of ``cid``, or the whole checkpoint (``name=None``)."""
        if not self._exists():
            return
        with self._update() as f:
            key = f"{_ROOT}/{cid}" + (f"/{name}" if name else "")
            if key in f:
                del f[key]
