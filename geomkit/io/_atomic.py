"""Atomic file replacement: temporary file beside the target, fsync, ``os.replace``."""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geomkit.errors import GeomkitError, ResultFileError

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a parent is not a directory",
    errno.EISDIR: "is a directory",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
}


def _errno_of(e: OSError) -> int | None:
    if e.errno is not None:
        return e.errno
    m = re.search(r"errno = (\d+)", str(e))  # h5py puts the C errno into its message
    return int(m.group(1)) if m else None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def os_cause(e: OSError) -> str:
    """The cause of an OSError in a few words: ``no space left on device``, ..."""
    code = _errno_of(e)
    if code in _CAUSES:
        return _CAUSES[code]
    if code is not None:
        return os.strerror(code).lower()
    return _one_line(e.strerror or str(e)) or type(e).__name__


#: the C errno h5py copies into the message of whatever it raises for a failed system call
_H5_ERRNO = re.compile(r"errno = (\d+)")


def _os_error_in(e: BaseException) -> OSError | None:
    """``e`` itself or the OSError it was raised from (torch wraps a failed ``write``).

    h5py raises a failed ``write(2)`` of the HDF5 library as whatever the failing HDF5
    call maps to -- an OSError, but also a RuntimeError (``Can't decrement id ref count``,
    ``Disable slist on flush dest failure failed``) -- with the C errno in the message
    (``errno = 28``): such an exception counts as the OSError of that errno.
    """
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        m = _H5_ERRNO.search(str(e)) if isinstance(e, Exception) else None
        if m is not None:
            code = int(m.group(1))
            return OSError(code, os.strerror(code))
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def write_error(path: str | Path, e: OSError) -> ResultFileError:
    """A one-line :class:`ResultFileError` naming ``path`` and the cause of ``e``."""
    return ResultFileError(f"cannot write {path}: {os_cause(e)}")


def _reserve(path: Path, suffix: str = "") -> Path:
    """A new, empty temporary file beside ``path`` (mode as the umask allows)."""
    for _ in range(100):
        tmp = path.with_name(
            f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:  # makes the rename durable; not every file system allows it
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_parents(directory: Path) -> list[Path]:
    """``mkdir -p directory``; returns the directories it created, deepest first."""
    missing = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_dirs(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first; only empty ones (another writer may use them now)
        try:
            d.rmdir()
        except OSError:
            return


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Write ``path`` all at once: yields a temporary path in the same directory.

    Write (and close) the file at the yielded path inside the ``with`` block.  On a
    normal exit it is fsynced and renamed onto ``path`` (``os.replace``); on any
    exception it is removed, so are the parent directories this call created, and
    ``path`` is left as it was.  An ``OSError`` (also one a library wrapped, as torch
    does, or h5py worded) is raised as a one-line
    :class:`~geomkit.errors.ResultFileError` naming ``path`` and the cause (``no space
    left on device``, ``permission denied``, ``read-only file system``, ...); geomkit's
    own errors and other exceptions (bugs, ``KeyboardInterrupt``) propagate unchanged.

    ``suffix`` ends the temporary name (``.vts`` for a writer that appends its own).
    """
    path = Path(path)
    tmp: Path | None = None
    created: list[Path] = []
    try:
        created = _make_parents(path.parent)
        tmp = _reserve(path, suffix)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        tmp = None
        created = []
        _fsync_dir(path.parent)
    except GeomkitError:
        raise
    except Exception as e:
        os_err = _os_error_in(e)
        if os_err is None:
            raise
        raise write_error(path, os_err) from e
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass  # nothing more can be done on a file system that refuses it
        _remove_dirs(created)


def probe_writable(path: str | Path) -> None:
    """Fail now, before any work, if ``path`` could not be written: creates and removes
    an empty temporary file in its directory (or the nearest existing ancestor, where
    the missing directories would be made), leaving nothing behind.

    Raises:
        ResultFileError: one line, ``cannot write PATH: read-only file system`` (...).
    """
    path = Path(path)
    d = path.parent
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        if not d.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(d))
        _reserve(d / path.name).unlink()
    except OSError as e:
        raise write_error(path, e) from None


def atomic_write(path: str | Path, write_fn: Callable[[Path], Any], *,
                 suffix: str = "") -> Path:
    """Call ``write_fn(tmp)`` to write the file, then move it onto ``path`` atomically.

    ``write_fn`` gets a temporary path beside ``path`` (ending in ``suffix``) and must
    write and close the whole file there.  See :func:`atomic_path` for what happens on
    failure.  Returns ``path``.
    """
    path = Path(path)
    with atomic_path(path, suffix=suffix) as tmp:
        write_fn(tmp)
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` by ``data`` atomically (:func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` by ``text`` (UTF-8) atomically (:func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode())
