"""`geomkit landscape` on a full disk or a read-only directory, and two processes on one file.

The HDF5 library writes with its own ``write(2)`` calls, which no Python monkeypatch
reaches, so the disk refuses for real: a small tmpfs (filled up, or remounted read-only)
where this process may mount, else ``RLIMIT_FSIZE`` in the child process, under which the
kernel refuses every write past an offset -- also an HDF5 overwrite in place of bytes that
are already on the disk (see ``tests/test_write_errors.py`` for the helpers).

Before the fix a full disk crashed the interpreter (exit 139 after hundreds of h5py
"Exception ignored" error lines) and left the temporary file filling the disk; a flush
whose write failed did the same while HDF5 freed the dataset that held the buffered write.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest

from geomkit.errors import ResultFileError
from geomkit.geometry.landscape import Grid, compute_landscape, random_directions
from geomkit.io import exclusive_lock, lock_path
from tests.cases import make_case, tiny_checkpoint
from tests.test_write_errors import (
    ROOT,
    assert_one_line_exit_2,
    can_mount,
    make_place,
    run_cli,
    snapshot,
)

CLI_GRID = ["--x", "-1:1:5", "--y", "-1:1:4", "--samples", "16", "--no-progress"]
GRID = Grid((-1.0, 1.0, 5), (-1.0, 1.0, 4))
SPEC = {"checkpoint_sha256": "abc", "seed": 0, "norm": "filter", "ignore": "biasbn"}
NOISE = ("Traceback", "Exception ignored", "HDF5-DIAG", "Segmentation")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "a.pt")


def _quiet_one_line(p, *names, causes=()):
    err = assert_one_line_exit_2(p, *names, causes=causes)
    assert not any(n in err for n in NOISE), err
    return err


def _fsize(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _interrupted(path, keep: int = 7) -> dict[str, np.ndarray]:
    """Turn the complete landscape ``path`` into one interrupted after ``keep`` points."""
    with h5py.File(path, "r+") as f:
        for name, blank in (("train_loss", np.nan), ("train_acc", np.nan), ("done", False)):
            a = f[name][...]
            a.reshape(-1)[keep:] = blank
            f[name][...] = a
        return {k: f[k][...] for k in ("train_loss", "train_acc", "done")}


def _compute(argv) -> None:
    """A run that is to succeed, in process (the child processes are for the failures)."""
    from cli.main import main

    assert main([str(a) for a in argv]) == 0


def _arrays(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in ("train_loss", "train_acc", "done")}


# -- full disk ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["tmpfs", "fsize"])
def test_full_disk_at_creation_is_one_line_and_leaves_nothing(ckpt, tmp_path, how):
    """The disk fills up while the new file is written (room for HDF5's superblock, not
    for the file): before the fix h5py's close crashed the interpreter."""
    if how == "tmpfs":
        if not can_mount():
            pytest.skip("cannot mount a tmpfs here")
        place = make_place(tmp_path, "full", size="256k")
        place.refuse(leave=12 * 1024)  # the file needs some 40 KB
    else:
        (tmp_path / "place").mkdir()
        place = None
    where = tmp_path / "place"
    try:
        before = snapshot(where, ignore={".filler"})
        out = where / "surf.h5"
        p = run_cli(["landscape", ckpt, *CLI_GRID, "--out", out],
                    preexec=_fsize(256) if how == "fsize" else None)
        _quiet_one_line(p, f"cannot write {out}: ",
                        causes=("no space left on device", "file too large"))
        # no temporary file keeps the disk full, no lock file, no empty result
        assert snapshot(where, ignore={".filler"}) == before
    finally:
        if place is not None:
            place.close()


def _offsets(path) -> dict[str, int]:
    with h5py.File(path, "r") as f:
        return {k: int(f[k].id.get_offset()) for k in ("train_loss", "done")}


@pytest.mark.parametrize("fails_at", ["train_loss", "done"])
def test_a_flush_that_cannot_write_keeps_the_flushed_points(ckpt, tmp_path, fails_at):
    """The write of the values (or of the done mask after them) fails in place: one line,
    exit 2, the points flushed before intact, no point marked done without its values; the
    same command later completes the surface."""
    out = tmp_path / "surf.h5"
    argv = ["landscape", ckpt, *CLI_GRID, "--out", out]
    _compute(argv)
    full = _arrays(out)
    before = _interrupted(out)
    limit = _offsets(out)[fails_at]  # every write from this offset on is refused
    p = run_cli(argv, preexec=_fsize(limit))
    _quiet_one_line(p, f"cannot write {out}: file too large",
                    "the points flushed before are kept")
    after = _arrays(out)
    assert after["done"][before["done"]].all()  # nothing flushed before is lost
    if fails_at == "train_loss":
        for k in before:
            np.testing.assert_array_equal(after[k], before[k])
    np.testing.assert_array_equal(after["train_loss"][after["done"]],
                                  full["train_loss"][after["done"]])
    assert sorted(q.name for q in tmp_path.iterdir()) == ["surf.h5"]  # no lock, no temp
    _compute(argv)
    np.testing.assert_array_equal(_arrays(out)["train_loss"], full["train_loss"])


@contextlib.contextmanager
def _tmpfs_run(ckpt, tmp_path, kind: str):
    """``(place, out, argv)``: a 1 MB tmpfs of ``kind`` holding an interrupted surface."""
    if not can_mount():
        pytest.skip("needs a tmpfs to fill or remount read-only (root)")
    place = make_place(tmp_path, kind, size="1m")
    try:
        out = place.dir / "surf.h5"
        argv = ["landscape", ckpt, *CLI_GRID, "--out", out]
        _compute(argv)
        full = _arrays(out)
        _interrupted(out)
        yield place, out, argv, full
    finally:
        place.close()


def test_a_disk_that_fills_up_after_the_start_does_not_stop_the_run(ckpt, tmp_path):
    """Every array is allocated when the file is created, so a flush only overwrites bytes
    already on the disk: a run resumed on a full disk completes."""
    with _tmpfs_run(ckpt, tmp_path, "full") as (place, out, argv, full):
        place.refuse()
        p = run_cli(argv)
        assert p.returncode == 0, p.stderr
        np.testing.assert_array_equal(_arrays(out)["train_loss"], full["train_loss"])
        assert sorted(os.listdir(place.dir)) == [".filler", "surf.h5"]


def test_resume_on_a_read_only_file_system_is_one_line(ckpt, tmp_path):
    with _tmpfs_run(ckpt, tmp_path, "readonly") as (place, out, argv, _):
        before = snapshot(place.dir)
        place.refuse()
        p = run_cli(argv)
        _quiet_one_line(p, f"cannot write {out}: read-only file system")
        assert snapshot(place.dir) == before


# -- one process per file ----------------------------------------------------------------

_HOLDER = r"""
import sys
import torch
torch.set_num_threads(1)
from geomkit.geometry.landscape import Grid, compute_landscape, random_directions
from tests.cases import make_case

path = sys.argv[1]
case = make_case("cnn_bn", n=16)
dirs = random_directions(case.model, 2, seed=0)
state = {"waited": False}

def gate(module, args):  # the first forward waits until the test says go
    if not state["waited"]:
        state["waited"] = True
        print("computing", flush=True)
        sys.stdin.readline()

case.model.register_forward_pre_hook(gate)
spec = {"checkpoint_sha256": "abc", "seed": 0, "norm": "filter", "ignore": "biasbn"}
compute_landscape(path, case.model, case.inputs, case.targets, dirs,
                  Grid((-1.0, 1.0, 5), (-1.0, 1.0, 4)), spec=spec, flush_interval=0.0)
print("finished", flush=True)
"""


def _holder(path):
    """A process computing into ``path``, stopped at its first forward pass."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=ROOT, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline()
    if line.strip() != "computing":
        p.kill()
        raise AssertionError(f"holder did not start: {line!r} {p.stderr.read()}")
    return p


def _case_and_counter():
    case = make_case("cnn_bn", n=16)
    calls = []
    case.model.register_forward_hook(lambda *a: calls.append(1))
    return case, random_directions(case.model, 2, seed=0), calls


def test_a_second_process_on_the_same_file_is_refused(ckpt, tmp_path, capsys):
    from cli.main import main

    out = tmp_path / "surf.h5"
    holder = _holder(out)
    try:
        assert lock_path(out).exists()
        case, dirs, calls = _case_and_counter()
        with pytest.raises(ResultFileError) as e:  # the same computation
            compute_landscape(out, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC)
        msg = str(e.value)
        assert "\n" not in msg and calls == []
        assert msg.startswith(f"{out} is being computed by another process (pid {holder.pid})")
        # the command line: one line, exit 2, whatever the settings
        assert main(["landscape", str(ckpt), *CLI_GRID, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"(pid {holder.pid})" in err and "--out" in err
        out_, err_ = holder.communicate("go\n", timeout=120)
        assert holder.returncode == 0 and "finished" in out_, err_
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["surf.h5"]  # the lock file is gone
    # rerun when the first is done: every point is reused, none recomputed
    res = compute_landscape(out, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC)
    assert res.complete and calls == []


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "surf.h5"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdin.close()
    holder.stdout.close()
    holder.stderr.close()
    assert lock_path(out).exists()  # left behind, but the kernel released the flock
    case, dirs, calls = _case_and_counter()
    res = compute_landscape(out, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC)
    assert res.complete and calls
    assert sorted(q.name for q in tmp_path.iterdir()) == ["surf.h5"]


def test_the_lock_excludes_threads_and_is_released(tmp_path):
    """Each ``exclusive_lock`` opens its own lock file description, so two threads of one
    process exclude each other as two processes do."""
    target = tmp_path / "f.h5"
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with exclusive_lock(target):
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert inside.wait(30)
        with pytest.raises(ResultFileError, match=rf"\(pid {os.getpid()}\)"):
            with exclusive_lock(target):
                pass
    finally:
        leave.set()
        t.join(30)
    with exclusive_lock(target):
        assert lock_path(target).read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_without_room_for_the_lock_file_an_existing_file_still_reads(tmp_path, monkeypatch):
    """Where the lock file cannot be created (read-only directory) a complete file still
    reads -- nothing is to be written -- and a missing one is a one-line write error."""
    case, dirs, calls = _case_and_counter()
    out = tmp_path / "surf.h5"
    compute_landscape(out, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC)
    n = len(calls)
    real = os.open

    def no_lock_files(path, flags, *a, **kw):
        if str(path).endswith(".lock") and flags & os.O_CREAT:
            import errno

            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", no_lock_files)
    res = compute_landscape(out, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC)
    assert res.complete and len(calls) == n
    with pytest.raises(ResultFileError) as e:
        compute_landscape(tmp_path / "new.h5", case.model, case.inputs, case.targets, dirs,
                          GRID, spec=SPEC)
    assert str(e.value) == f"cannot write {tmp_path / 'new.h5'}: read-only file system"
    assert len(calls) == n  # refused before the directions or any point
    monkeypatch.undo()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["surf.h5"]


@pytest.mark.skipif(os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE",
                    reason="HDF5 file locking is off")
def test_a_reader_waits_for_a_flush_of_another_process(tmp_path, monkeypatch):
    """While another process has the file open for writing (a flush: HDF5 holds its own
    lock of the file), a reader waits instead of calling the file damaged."""
    from geomkit.geometry.landscape import read_landscape
    from geomkit.io import _h5

    monkeypatch.setattr(_h5, "LOCK_WAIT", 1.0)

    case, dirs, _ = _case_and_counter()
    out = tmp_path / "surf.h5"
    compute_landscape(out, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC)
    code = ("import sys, time, h5py\nf = h5py.File(sys.argv[1], 'r+')\n"
            "print('open', flush=True)\ntime.sleep(float(sys.argv[2]))\nf.close()\n")
    for hold, ok in ((0.3, True), (2.5, False)):
        p = subprocess.Popen([sys.executable, "-c", code, str(out), str(hold)],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "open"
            if ok:
                assert read_landscape(out).complete
            else:
                with pytest.raises(ResultFileError) as e:
                    read_landscape(out)
                assert str(e.value) == (f"{out} is open for writing in another process "
                                        "(HDF5 file lock); try again when it is done")
        finally:
            p.wait(30)
            p.stdout.close()


def test_a_failed_computation_leaves_no_directory_it_made(tmp_path):
    """The lock (and the file) may need ``--out``'s directories; a computation that fails
    before writing anything removes the ones it made."""
    case, dirs, _ = _case_and_counter()
    out = tmp_path / "a" / "b" / "surf.h5"

    def no_directions():
        raise ResultFileError("no directions today")

    with pytest.raises(ResultFileError, match="no directions today"):
        compute_landscape(out, case.model, case.inputs, case.targets, no_directions, GRID,
                          spec=SPEC)
    assert list(tmp_path.iterdir()) == []
    res = compute_landscape(out, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC)
    assert res.complete and sorted(q.name for q in out.parent.iterdir()) == ["surf.h5"]
