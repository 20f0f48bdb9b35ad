"""HDF5 files geomkit writes: typed opening, atomic writing, JSON attributes, refusal."""

from __future__ import annotations

import datetime as _dt
import errno
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geomkit.errors import GeomkitError, ResultFileError

from ._atomic import _one_line, _os_error_in, _write_all, atomic_path, os_cause, write_error
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


def _quiet() -> None:
    """No HDF5 error stack on stderr from this thread (h5py silences only the thread it
    was imported in; errors still reach Python as exceptions)."""
    from h5py import _errors

    silence = getattr(_errors, "silence_errors", None)
    if silence is not None:
        silence()


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

    def __init__(self, f: h5py.File, path: Path, kind: Kind, mode: str = "r") -> None:
        self.f, self.path, self.kind, self.mode = f, path, kind, mode

    def __enter__(self) -> h5py.File:
        return self.f

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self.f.close()
        except Exception as e:
            if exc is None:
                failed = self._write_failure(e)
                if failed is not None:
                    raise failed from e
                raise
        if exc is None or isinstance(exc, GeomkitError) or not isinstance(exc, Exception):
            return False
        failed = self._write_failure(exc)  # a full disk, not a damaged file
        if failed is not None:
            raise failed from exc
        raise ResultFileError(_damaged(self.path, _noun(self.kind)[0], exc)) from exc

    def _write_failure(self, e: BaseException) -> ResultFileError | None:
        """``cannot write PATH: CAUSE`` for a failed system call of a file open for
        writing (an error reading stays "damaged")."""
        if self.mode == "r":
            return None
        os_err = _os_error_in(e)
        return None if os_err is None else write_error(self.path, os_err)

    # used without `with`: behave like the h5py.File
    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def close(self) -> None:
        self.f.close()


def open_h5(path: str | Path, mode: str = "r", *, kind: Kind = None,
            untagged: bool = False) -> _Opened:
    """Open an existing HDF5 file geomkit reads or updates in place; use with ``with``.

    Args:
        mode: ``"r"`` or ``"r+"`` (new files are written by :func:`atomic_h5`).  In
            ``"r+"`` dataset writes are synchronous (no sieve buffer), so a failed write
            raises where it is made; call ``f.flush()`` before leaving the block to see
            a failed metadata write there too.  A write that fails (full disk, read-only
            file system, ...) raises ``cannot write PATH: CAUSE``.
        kind: the format tag(s) the root ``format`` attribute must hold; None = any
            HDF5 file (e.g. a landscape file of the reference tool).
        untagged: also accept a file with no ``format`` attribute at all (files geomkit
            wrote before it tagged them).

    Raises:
        ResultFileError: one line, for a missing path, a directory, a file that is not
            HDF5 or is damaged (also when the damage shows only while reading inside the
            ``with`` block), or another format tag.
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"open_h5 opens existing files ('r' or 'r+'), not {mode!r}")
    path = Path(path)
    noun, writer = _noun(kind)
    if not path.exists():
        raise ResultFileError(f"no such {noun}: {path}")
    if not path.is_file():
        raise ResultFileError(f"not a {noun}: {path} is not a file")
    _quiet()
    try:
        f = _open_waiting(path, mode)
    except Exception as e:
        if isinstance(e, GeomkitError):
            raise
        if _is_locked(e):
            raise ResultFileError(
                f"{path} is open for writing in another process (HDF5 file lock); try "
                "again when it is done") from None
        if mode != "r":  # a read-only file system or directory, not a damaged file
            os_err = _os_error_in(e)
            if os_err is not None and _can_read(path):
                raise write_error(path, os_err) from None
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
    return _Opened(f, path, kind, mode)


def _open_synchronous(path: Path) -> h5py.File:
    """``h5py.File(path, "r+")`` whose writes reach the disk where they are made.

    Without the sieve buffer a dataset write is a ``write(2)`` at once: a full disk or a
    read-only file system fails it as an OSError in the ``ds[...] = v`` that made it.
    With the buffer the write happens later, when the dataset's id is freed, where h5py
    can only print the error -- and the half-freed file then crashes the interpreter
    (hundreds of error lines, exit 139).  Metadata (attributes) stays cached until the
    file is flushed: flush explicitly inside the ``with`` block to see its errors there.
    """
    import h5py
    from h5py import h5f, h5p

    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_EARLIEST, h5f.LIBVER_LATEST)  # as h5py.File
    fapl.set_sieve_buf_size(0)
    return h5py.File(h5f.open(os.fsencode(path), h5f.ACC_RDWR, fapl=fapl))


def _is_locked(e: BaseException) -> bool:
    """HDF5 could not take its own ``flock`` of the file: another process has it open
    for writing (h5py: ``unable to lock file, errno = 11``)."""
    os_err = _os_error_in(e)
    return (os_err is not None and os_err.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
            and "lock" in str(e))


#: seconds :func:`open_h5` waits for another process's HDF5 lock of the file
LOCK_WAIT = 5.0


def _open_waiting(path: Path, mode: str) -> h5py.File:
    """Open ``path``; while another process holds HDF5's lock of it (a flush of a few
    milliseconds, typically), try again for up to :data:`LOCK_WAIT` seconds."""
    import h5py

    deadline = time.monotonic() + LOCK_WAIT
    delay = 0.01
    while True:
        try:
            return h5py.File(path, "r") if mode == "r" else _open_synchronous(path)
        except Exception as e:
            if not _is_locked(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.25)


def _can_read(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r"):
            return True
    except Exception:
        return False


def _raised_in_h5py(e: BaseException) -> bool:
    """True when ``e`` was raised inside h5py (a damaged file), not by the caller's code."""
    tb = e.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    name = last.tb_frame.f_code.co_filename.replace(os.sep, "/")
    return name.startswith("h5py/") or "/h5py/" in name


def _memory_file(tmp: Path, image: bytes | None) -> h5py.File:
    """An HDF5 file that lives in memory only (core driver, no backing store), empty or
    holding ``image`` (the bytes of an HDF5 file) for appending.

    Its name is unique in this process (``tmp`` is) and never on the disk: the core
    driver refuses a file image under the name of an existing file."""
    import h5py

    name = tmp.with_name(tmp.name + ".in-memory")
    if image is None:
        return h5py.File(name, "w", driver="core", backing_store=False)
    from h5py import h5f, h5p

    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_fapl_core(backing_store=False)
    fapl.set_file_image(image)
    return h5py.File(h5f.open(os.fsencode(name), h5f.ACC_RDWR, fapl=fapl))


@contextmanager
def atomic_h5(path: str | Path, *, copy: bool = False) -> Iterator[h5py.File]:
    """A new HDF5 file that appears under ``path`` only once complete.

    Yields an ``h5py.File`` built in memory (with ``copy`` and an existing ``path``: a
    copy of it, for appending).  On a normal exit its bytes are written to a temporary
    file beside ``path``, fsynced and renamed onto ``path``; on an exception nothing is
    written, the temporary file is removed and ``path`` keeps its old contents (see
    :func:`~geomkit.io.atomic_path` for the one-line error an ``OSError`` becomes).

    The HDF5 library itself never writes to the disk here: a full disk, a quota or a
    read-only file system fails a plain Python ``write``, with its errno -- never inside
    HDF5, whose failed ``close`` leaves its objects half-freed (hundreds of error lines,
    then a segmentation fault that leaves the temporary file filling the disk).
    """
    path = Path(path)
    _quiet()
    with atomic_path(path) as tmp:
        image = None
        if copy and path.exists():
            try:
                image = path.read_bytes()
            except OSError as e:
                raise ResultFileError(f"cannot read {path}: {os_cause(e)}") from None
        try:
            f = _memory_file(tmp, image)
        except Exception as e:  # noqa: BLE001 - h5py's errors on a damaged image vary
            raise ResultFileError(_damaged(path, "HDF5 file", e)) from None
        try:
            yield f
            f.flush()
            data = f.id.get_file_image()
        except Exception as e:
            if image is not None and _raised_in_h5py(e):  # appending to a damaged copy
                raise ResultFileError(_damaged(path, "HDF5 file", e)) from None
            raise
        finally:
            f.close()
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)


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


def set_checkpoint_attrs(node: Any, checkpoint: Any) -> None:
    """A result file's identity of the checkpoint it measured: ``checkpoint_path``,
    ``checkpoint_sha256``, ``label``, ``model``, ``config`` and ``data_spec`` (JSON)."""
    node.attrs["checkpoint_path"] = str(checkpoint.path)
    node.attrs["checkpoint_sha256"] = checkpoint.sha256()
    node.attrs["label"] = str(checkpoint.label)
    node.attrs["model"] = str(checkpoint.model_name)
    set_json_attr(node, "config", checkpoint.config)
    set_json_attr(node, "data_spec", checkpoint.data_spec.to_dict())


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
    _quiet()
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
