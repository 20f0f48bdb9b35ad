"""One writer per result file: an advisory ``flock`` on a sidecar lock file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geomkit.errors import ResultFileError

from ._atomic import _make_parents, _remove_dirs, write_error

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None  # type: ignore[assignment]


def lock_path(path: str | Path) -> Path:
    """The sidecar lock file of ``path``: ``dir/.NAME.lock``."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text().strip()
    except OSError:
        return "pid unknown"
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _same_file(fd: int, lock: Path) -> bool:
    """``lock`` still names the file open as ``fd`` (its holder did not remove it between
    our ``open`` and our ``flock``)."""
    try:
        st = os.stat(lock)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _write_pid(lock: Path) -> None:
    try:  # a full disk may refuse even these few bytes: the lock holds without them
        fd = os.open(lock, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass


@contextmanager
def exclusive_lock(path: str | Path, *, busy: str = "is being written by another process",
                   hint: str = "wait for it to finish or choose another path",
                   param: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` for the ``with`` block, or refuse.

    The lock is ``flock(LOCK_EX | LOCK_NB)`` on the sidecar :func:`lock_path`, which holds
    the holder's pid and is removed on leaving the block.  The kernel releases a flock
    when its process dies, so the lock file a killed process leaves behind never blocks:
    the next holder takes it over (and removes it).  Only processes that take this lock
    exclude each other; it is advisory.  Missing parent directories of ``path`` are made
    (and removed again if the block leaves them empty).

    Where the sidecar cannot be created (a read-only file system or directory, no free
    inode) but ``path`` exists, the block runs unlocked: nothing can be created there,
    so at most ``path`` is updated in place where its own permissions allow it.  (Locking
    ``path`` itself instead would collide with the HDF5 library's own ``flock`` of the
    files it opens.)

    Raises:
        ResultFileError: one line, ``PATH <busy> (pid N); <hint>`` while another process
            holds the lock; ``cannot write PATH: CAUSE`` where the sidecar cannot be
            created and ``path`` does not exist (it could not be created either).
    """
    path = Path(path)
    if fcntl is None:
        yield
        return
    lock = lock_path(path)
    try:
        created = _make_parents(path.parent)  # removed again below if left empty
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with _locked(path, lock, busy, hint, param):
            yield
    finally:
        _remove_dirs(created)


@contextmanager
def _locked(path: Path, lock: Path, busy: str, hint: str,
            param: str | None) -> Iterator[None]:
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)  # read-only: no write handle
        except OSError as e:
            if not path.is_file():
                raise write_error(path, e) from None
            yield  # see exclusive_lock: nothing can be created here
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise write_error(path, e) from None
            raise ResultFileError(f"{path} {busy} ({_holder(lock)}); {hint}",
                                  param=param) from None
        if not _same_file(fd, lock):
            os.close(fd)  # we locked a lock file its holder had just removed: again
            continue
        break
    else:  # pragma: no cover - a hundred holders in a row
        raise ResultFileError(f"{path} {busy}; {hint}", param=param)
    try:
        _write_pid(lock)
        yield
    finally:
        try:
            lock.unlink()  # still holding it: no one else can have it now
        except OSError:
            pass
        os.close(fd)  # releases the lock
