"""geomkit's one I/O layer: every file geomkit writes goes through here.

**Atomic replacement.**  :func:`atomic_write` / :func:`atomic_path` (and
:func:`atomic_h5`, :func:`atomic_write_text`, :func:`write_json` on top of them) write
the whole file under a temporary name in the target's directory, fsync it and
``os.replace`` it onto the final name.  On any exception the temporary file is removed
and the final name keeps its previous contents -- never a partial file.  An ``OSError``
(disk full, permission, read-only file system; also one torch or h5py wrapped) becomes
a one-line :class:`~geomkit.errors.ResultFileError`: ``cannot write PATH: no space left
on device``.  geomkit's own errors and bugs propagate unchanged.

HDF5 files are built in memory and written with plain Python writes
(:func:`atomic_h5`), so the HDF5 library never meets a full disk while writing a new
file.  :func:`probe_writable` fails early, before a long computation, where the result
could not be written; :func:`exclusive_lock` keeps two processes from computing into one
file (an advisory ``flock`` on the sidecar ``.NAME.lock``, released by the kernel when
its holder dies).

**HDF5.**  Every HDF5 file geomkit writes carries a root ``format`` tag
(``geomkit-results/1``, ``geomkit-landscape-1``, ``geomkit-hessian/2``,
``geomkit-density/1``), a ``provenance`` JSON attribute (:func:`set_provenance`) and its
dicts as JSON string attributes (:func:`set_json_attr` / :func:`get_json_attr`).
:func:`open_h5` opens an existing file with one-line errors for a missing path, a file
that is not HDF5, a damaged one (also damage that only shows while reading inside the
``with`` block) and another format tag.  :func:`check_replace` refuses to replace a
file that geomkit did not write for the same purpose (format tag, optionally spec).

**One NaN policy for JSON.**  JSON that geomkit writes -- JSON files (``study.json``),
JSON inside HDF5 attributes and the CLI's ``--json`` output -- is always valid JSON
(``allow_nan=False``): a NaN is written as ``null`` and ``+inf``/``-inf`` as the strings
``"inf"``/``"-inf"`` (an infinite value, e.g. the condition number of a singular NTK, is
an answer, not a missing one, so it stays distinguishable from NaN).  :func:`dumps_json`
applies the policy; :func:`loads_json` / :func:`get_json_attr` read files from before it
too: the legacy strings ``"nan"`` / ``"inf"`` / ``"-inf"`` and the bare tokens ``NaN`` /
``Infinity`` read as what the policy writes today (``None``, ``"inf"``, ``"-inf"``).
Numbers stored as HDF5 datasets keep their IEEE values (NaN, inf) unchanged.

Reading a landscape (:mod:`geomkit.io.landscape`) needs neither torch nor the compute
package :mod:`geomkit.geometry`; Hessian files are :mod:`geomkit.io.hessian`.
"""

from __future__ import annotations

from ._atomic import (
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    os_cause,
    probe_writable,
    write_error,
)
from ._h5 import (
    FORMATS,
    atomic_h5,
    attr,
    check_replace,
    describe_mismatch,
    file_format,
    get_json_attr,
    get_provenance,
    normalize_spec,
    now_utc,
    open_h5,
    register_format,
    set_checkpoint_attrs,
    set_json_attr,
    set_provenance,
)
from ._json import dumps_json, jsonable, loads_json
from ._lock import exclusive_lock, lock_path

#: Format tags of the files geomkit writes (the root ``format`` attribute).
RESULTS_FORMAT = register_format("geomkit-results/1", "results file", "`geomkit analyze`")
LANDSCAPE_FORMAT = register_format("geomkit-landscape-1", "landscape file",
                                   "`geomkit landscape`")
HESSIAN_FORMAT = register_format("geomkit-hessian/2", "hessian file", "`geomkit hessian --out`")
HESSIAN_FORMAT_V1 = register_format("geomkit-hessian/1", "hessian file",
                                    "`geomkit hessian --out`")
DENSITY_FORMAT = register_format("geomkit-density/1", "density file", "`geomkit study`")
SHARPNESS_FORMAT = register_format("geomkit-sharpness/1", "sharpness file",
                                   "`geomkit sharpness --out`")


def write_json(path, obj, *, indent: int | None = 1, sort_keys: bool = False):
    """Write ``obj`` as a JSON file atomically (:func:`dumps_json`, trailing newline)."""
    return atomic_write_text(path, dumps_json(obj, indent=indent, sort_keys=sort_keys) + "\n")


def read_json(path):
    """Read a JSON file geomkit wrote (:func:`loads_json`); one-line ResultFileError if it
    is missing or not JSON."""
    from pathlib import Path

    from geomkit.errors import ResultFileError

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ResultFileError(f"cannot read {path}: {os_cause(e)}") from None
    try:
        return loads_json(text)
    except ValueError as e:
        raise ResultFileError(f"{path} is not valid JSON ({' '.join(str(e).split())})") from None


__all__ = [
    "DENSITY_FORMAT",
    "SHARPNESS_FORMAT",
    "FORMATS",
    "HESSIAN_FORMAT",
    "HESSIAN_FORMAT_V1",
    "LANDSCAPE_FORMAT",
    "RESULTS_FORMAT",
    "atomic_h5",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "attr",
    "check_replace",
    "describe_mismatch",
    "dumps_json",
    "exclusive_lock",
    "file_format",
    "get_json_attr",
    "get_provenance",
    "jsonable",
    "lock_path",
    "loads_json",
    "normalize_spec",
    "now_utc",
    "open_h5",
    "os_cause",
    "probe_writable",
    "read_json",
    "register_format",
    "set_checkpoint_attrs",
    "set_json_attr",
    "set_provenance",
    "write_error",
    "write_json",
]
