"""HDF5 files geomkit writes: typed opening, atomic writing, JSON attributes, refusal."""

from __future__ import annotations

import datetime as _dt
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geomkit.errors import GeomkitError, ResultFileError

from ._atomic import _one_line, atomic_path
from ._json import dumps_json, loads_json

if TYPE_CHECKING:
    import h5py

#: format tag -> (what the file is called, what writes it); messages name both.
FORMATS: dict[str, tuple[str, str]] = {}

Kind = str | tuple[str, ...] | None


def register_format(tag: str, noun: str, writer: str) -> str:
    """Declare a format tag (the root ``format`` attribute) and return it."""
    FORMATS[tag] = (noun, writer)
    return tag


def _kinds(kind: Kind) -> tuple[str, ...]:
    if kind is None:
        return ()
    return (kind,) if isinstance(kind, str) else tuple(kind)


def _noun(kind: Kind) -> tuple[str, str]:
    kinds = _kinds(kind)
    if kinds and kinds[0] in FORMATS:
        return FORMATS[kinds[0]]
    if kinds:
        return f"{kinds[0]} file", "geomkit"
    return "HDF5 file", "geomkit"


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second (``created`` / ``updated`` stamps)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _cause(e: BaseException) -> str:
    """h5py's cause in a few words: the innermost parenthesis of its message."""
    text = _one_line(str(e)) or type(e).__name__
    if "(" in text and text.endswith(")"):
        inner = text[text.index("(") + 1 : -1]
        if inner:
            return inner
    return text


def attr(node: Any, key: str, default: Any = None) -> Any:
    """An attribute as a plain Python value (bytes decoded, numpy scalars unwrapped)."""
    v = node.attrs.get(key, default)
    if isinstance(v, bytes):
        v = v.decode()
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:
        v = v.item()
    return v


def file_format(f: Any) -> str | None:
    """The root ``format`` attribute of an open file (None if absent)."""
    v = attr(f, "format")
    return None if v is None else str(v)


def _damaged(path: Path, noun: str, e: BaseException) -> str:
    return (f"{path} is damaged or not a complete {noun} ({type(e).__name__}: {_cause(e)}); "
            "delete it and write it again")


class _Opened:
    """Context manager of :func:`open_h5`: the file, and one-line errors for damage."""

    def __init__(self, f: h5py.File, path: Path, kind: Kind) -> None:
        self.f, self.path, self.kind = f, path, kind

    def __enter__(self) -> h5py.File:
        return self.f

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self.f.close()
        except Exception:
            if exc is None:
                raise
        if exc is None or isinstance(exc, GeomkitError) or not isinstance(exc, Exception):
            return False
        raise ResultFileError(_damaged(self.path, _noun(self.kind)[0], exc)) from exc

    # used without `with`: behave like the h5py.File
    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def close(self) -> None:
        self.f.close()


def open_h5(path: str | Path, mode: str = "r", *, kind: Kind = None,
            untagged: bool = False) -> _Opened:
    """Open an existing HDF5 file geomkit reads or updates in place; use with ``with``.

    Args:
        mode: ``"r"`` or ``"r+"`` (new files are written by :func:`atomic_h5`).
        kind: the format tag(s) the root ``format`` attribute must hold; None = any
            HDF5 file (e.g. a landscape file of the reference tool).
        untagged: also accept a file with no ``format`` attribute at all (files geomkit
            wrote before it tagged them).

    Raises:
        ResultFileError: one line, for a missing path, a directory, a file that is not
            HDF5 or is damaged (also when the damage shows only while reading inside the
            ``with`` block), or another format tag.
    """
    import h5py

    if mode not in ("r", "r+"):
        raise ValueError(f"open_h5 opens existing files ('r' or 'r+'), not {mode!r}")
    path = Path(path)
    noun, writer = _noun(kind)
    if not path.exists():
        raise ResultFileError(f"no such {noun}: {path}")
    if not path.is_file():
        raise ResultFileError(f"not a {noun}: {path} is not a file")
    try:
        f = h5py.File(path, mode)
    except Exception as e:
        if isinstance(e, GeomkitError):
            raise
        raise ResultFileError(
            f"{path} is not an HDF5 file (or is damaged: {_cause(e)}); "
            f"pass a {noun} written by {writer}"
        ) from None
    kinds = _kinds(kind)
    if kinds:
        try:
            tag = file_format(f)
        except Exception as e:
            f.close()
            raise ResultFileError(_damaged(path, noun, e)) from e
        if tag not in kinds and not (untagged and tag is None):
            f.close()
            found = "no format tag" if tag is None else f"format {tag!r}"
            raise ResultFileError(
                f"{path} is an HDF5 file but not a geomkit {noun} ({found}, expected "
                f"{kinds[0]!r}); pass a file written by {writer}"
            )
    return _Opened(f, path, kind)


@contextmanager
def atomic_h5(path: str | Path, *, copy: bool = False) -> Iterator[h5py.File]:
    """A new HDF5 file that appears under ``path`` only once complete.

    Yields an ``h5py.File`` open on a temporary file beside ``path`` (with ``copy`` and an
    existing ``path``: a copy of it, opened for appending).  On a normal exit the file is
    closed, fsynced and renamed onto ``path``; on an exception it is closed and removed,
    and ``path`` keeps its old contents (see :func:`~geomkit.io.atomic_path` for the
    one-line error an ``OSError`` becomes).
    """
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        if copy and path.exists():
            shutil.copyfile(path, tmp)
            f = h5py.File(tmp, "a")
        else:
            f = h5py.File(tmp, "w")
        try:
            yield f
        finally:
            f.close()


def set_json_attr(node: Any, key: str, value: Any, *, sort_keys: bool = True) -> None:
    """Store ``value`` as a JSON string attribute (geomkit's NaN policy, valid JSON)."""
    node.attrs[key] = dumps_json(value, sort_keys=sort_keys)


def get_json_attr(node: Any, key: str, default: Any = None) -> Any:
    """A JSON string attribute parsed (:func:`~geomkit.io.loads_json`); ``default`` if
    absent; the raw text if it is not JSON."""
    v = attr(node, key)
    if v is None:
        return default
    if not isinstance(v, str):
        return v
    try:
        return loads_json(v)
    except ValueError:
        return v


def set_provenance(node: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Store :func:`geomkit.provenance.provenance` (plus ``extra``) as the JSON attribute
    ``provenance``; returns it."""
    from geomkit.provenance import provenance

    prov = {**provenance(), **(extra or {})}
    set_json_attr(node, "provenance", prov)
    return prov


def get_provenance(node: Any) -> dict[str, Any]:
    """The ``provenance`` JSON attribute ({} if absent)."""
    v = get_json_attr(node, "provenance", {})
    return v if isinstance(v, dict) else {}


def describe_mismatch(old: Mapping[str, Any], new: Mapping[str, Any], *, limit: int = 4) -> str:
    """``k: file X vs requested Y`` for the first keys that differ."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: file {old.get(k)!r} vs requested {new.get(k)!r}" for k in keys[:limit])


def normalize_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` as it reads back from a ``spec`` JSON attribute."""
    return loads_json(dumps_json(spec, sort_keys=True))


def check_replace(path: str | Path, kind: Kind, spec: Mapping[str, Any] | None = None, *,
                  untagged: bool = False) -> None:
    """Refuse to replace a file geomkit did not write for this purpose.

    Nothing happens when ``path`` does not exist, or is a geomkit file of format ``kind``
    (and, with ``spec``, whose ``spec`` JSON attribute equals ``spec``).  ``untagged``
    also accepts files without any format tag (written before geomkit tagged them).

    Raises:
        ResultFileError: one line: ``path`` is a directory, not HDF5, damaged, of another
            format, or of another spec; the file is left untouched.
    """
    import h5py

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    noun, _ = _noun(kind)
    kinds = _kinds(kind)
    if not path.is_file():
        raise ResultFileError(f"refusing to replace {path}: it is not a file")
    try:
        with h5py.File(path, "r") as f:
            tag = file_format(f)
            old = get_json_attr(f, "spec") if spec is not None else None
    except Exception as e:
        raise ResultFileError(
            f"refusing to replace {path}: it is not a geomkit {noun} (not readable as HDF5: "
            f"{_cause(e)}); choose another path or delete it"
        ) from None
    if kinds and tag not in kinds and not (untagged and tag is None):
        if tag in FORMATS:
            what = f"it is a geomkit {FORMATS[tag][0]} (format {tag!r}), not a {noun}"
        else:
            found = "no format tag" if tag is None else f"format {tag!r}"
            what = f"it is not a geomkit {noun} ({found})"
        raise ResultFileError(
            f"refusing to replace {path}: {what}; choose another path or delete it"
        )
    if spec is not None:
        want = normalize_spec(spec)
        if not isinstance(old, dict) or old != want:
            diff = describe_mismatch(old if isinstance(old, dict) else {}, want)
            raise ResultFileError(
                f"refusing to replace {path}: it holds another computation ({diff}); "
                "choose another path or delete it"
            )
