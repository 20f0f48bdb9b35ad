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


def _os_error_in(e: BaseException) -> OSError | None:
    """``e`` itself or the OSError it was raised from (torch wraps a failed ``write``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def write_error(path: str | Path, e: OSError) -> ResultFileError:
    """A one-line :class:`ResultFileError` naming ``path`` and the cause of ``e``."""
    return ResultFileError(f"cannot write {path}: {os_cause(e)}")


def _reserve(path: Path) -> Path:
    """A new, empty temporary file beside ``path`` (mode as the umask allows)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write ``path`` all at once: yields a temporary path in the same directory.

    Write (and close) the file at the yielded path inside the ``with`` block.  On a
    normal exit it is fsynced and renamed onto ``path`` (``os.replace``); on any
    exception it is removed and ``path`` is left as it was.  An ``OSError`` (also one a
    library wrapped, as torch does) is raised as a one-line
    :class:`~geomkit.errors.ResultFileError` naming ``path`` and the cause (``no space
    left on device``, ``permission denied``, ``read-only file system``, ...); geomkit's
    own errors and other exceptions (bugs, ``KeyboardInterrupt``) propagate unchanged.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _reserve(path)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        tmp = None
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


def atomic_write(path: str | Path, write_fn: Callable[[Path], Any]) -> Path:
    """Call ``write_fn(tmp)`` to write the file, then move it onto ``path`` atomically.

    ``write_fn`` gets a temporary path beside ``path`` and must write and close the whole
    file there.  See :func:`atomic_path` for what happens on failure.  Returns ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
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
