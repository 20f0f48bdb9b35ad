"""Every `geomkit` command that writes, on a read-only directory and on a full disk: one
line on stderr, exit code 2, no traceback, no temporary (or lock) file left and every result
that was there before byte for byte intact (issue #13).

How the directory refuses writes (the helpers below, also used by
``tests/geometry/test_landscape_disk.py``):

* read-only: a tmpfs remounted ``ro`` (EROFS) where this process may mount (root), else a
  tree without write permission (EACCES; root ignores permissions, so as root without
  mounting the read-only cases skip);
* full: a small tmpfs filled to the last page (ENOSPC) where this process may mount, else
  ``RLIMIT_FSIZE`` in the child process (EFBIG: the kernel refuses every write past the
  limit -- also the HDF5 library's own ``write(2)`` calls, which no Python monkeypatch
  reaches).

The failing command runs in a child process (``python -m cli``), so a crash (exit 139), a
traceback printed while the interpreter exits or HDF5's error stack show in its exit code
and stderr.  The results that must survive are written first, in process, into a staging
directory and copied into the place before it refuses writes.
"""

from __future__ import annotations

import errno
import functools
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FSIZE_LIMIT = 256  # bytes: below every result file, above a lock file's pid


def _mount(*args: str) -> bool:
    if shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    return r.returncode == 0


def _umount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@functools.cache
def can_mount() -> bool:
    """This process may mount a tmpfs (root with CAP_SYS_ADMIN, e.g. not most CI)."""
    if os.geteuid() != 0:
        return False
    d = Path(tempfile.mkdtemp(prefix="geomkit-mount-probe-"))
    try:
        if not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)):
            return False
        _umount(d)
        return True
    finally:
        d.rmdir()


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` to the last byte, then free ``leave`` bytes
    (a disk that fills up while a file is written); returns the filler file."""
    filler = directory / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


def _fsize_limit() -> None:  # in the child, before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


@dataclass
class Place:
    """A directory ``dir`` that :meth:`refuse` makes read-only or full (``kind``)."""

    dir: Path
    kind: str
    how: str = ""
    mounted: bool = False
    ignore: set = field(default_factory=set)  # names of our own files (the filler)
    preexec: object = None

    def refuse(self, leave: int = 0) -> None:
        if self.how == "tmpfs-ro":
            assert _mount("-o", "remount,ro", str(self.dir)), "remount ro failed"
        elif self.how == "chmod":
            for d, _, _ in os.walk(self.dir):
                os.chmod(d, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
        elif self.how == "tmpfs-full":
            self.ignore.add(fill(self.dir, leave).name)
        elif self.how == "fsize":
            self.preexec = _fsize_limit

    def close(self) -> None:
        if self.mounted:
            _umount(self.dir)
        elif self.how == "chmod":
            for d, _, _ in os.walk(self.dir):
                os.chmod(d, stat.S_IRWXU)

    def causes(self) -> tuple[str, ...]:
        """What the one-line error may name as the cause."""
        return {
            "tmpfs-ro": ("read-only file system",),
            "chmod": ("permission denied",),
            "tmpfs-full": ("no space left on device",),
            "fsize": ("file too large",),
        }[self.how]


def make_place(base: Path, kind: str, size: str = "32m") -> Place:
    """A :class:`Place` under ``base`` (skips the test where ``kind`` cannot be made)."""
    d = base / "place"
    d.mkdir()
    if can_mount():
        if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)):
            pytest.skip("cannot mount a tmpfs")
        return Place(d, kind, "tmpfs-ro" if kind == "readonly" else "tmpfs-full", True)
    if kind == "readonly":
        if os.geteuid() == 0:
            pytest.skip("read-only directory: root ignores permissions and cannot mount here")
        return Place(d, kind, "chmod")
    return Place(d, kind, "fsize")


def snapshot(directory: Path, ignore=()) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under ``directory``, by relative path."""
    out: dict[str, bytes | None] = {}
    for d, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), directory)] = None
        for name in files:
            if name in ignore:
                continue
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, directory)] = f.read()
    return out


def run_cli(argv, *, preexec=None, stdout=subprocess.PIPE, timeout: float = 300):
    """``python -m cli *argv`` in a child process."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "cli", *map(str, argv)], cwd=ROOT, env=env,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout,
                          preexec_fn=preexec)


def assert_one_line_exit_2(p, *names: str, causes: tuple[str, ...] = ()) -> str:
    """Exit code 2 and exactly one ``geomkit: error:`` line naming ``names`` (and one of
    ``causes``) on stderr: no traceback, no HDF5 error stack, no crash."""
    err = p.stderr
    assert p.returncode == 2, f"exit {p.returncode}, stderr:\n{err[-3000:]}"
    assert err.count("\n") == 1 and err.startswith("geomkit: error: "), err[-3000:]
    for n in names:
        assert n in err, err
    if causes:
        assert any(c in err for c in causes), err
    return err


# -- the writers -------------------------------------------------------------------------

FAST_TRAIN = ["--model", "vit-tiny", "--data", "digits", "--epochs", "1", "--batch-size",
              "256", "--no-progress"]
GRID = ["--x", "-1:1:3", "--y", "-1:1:3", "--samples", "16", "--no-progress"]
HESSIAN = ["--blocks", "whole", "--samples", "16", "--max-iter", "4", "--no-progress"]
MICRO_STUDY = """
name = "micro"
models = ["vit-tiny"]
optimizers = ["vanilla"]
seeds = [0]

[model_kwargs."vit-tiny"]
depth = 1
embed_dim = 8
num_heads = 2

[data]
source = "synthetic"
synthetic_train = 32
synthetic_test = 16
augment = false

[train]
epochs = 1
batch_size = 16

[analysis]
samples = 16
ntk_samples = 8
density_samples = 0
test_samples = 16

[landscape]
samples = 16
"""

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Inputs outside the refusing place, and the results each writer rewrites (staged)."""
    from cli.main import main
    from tests.cases import tiny_checkpoint

    d = tmp_path_factory.mktemp("inputs")
    ck = tiny_checkpoint(d / "a.pt")
    (d / "micro.toml").write_text(MICRO_STUDY)
    for i in range(2):
        assert main(["landscape", str(ck), *GRID, "--shard", f"{i}/2",
                     "--out", str(d / f"sh{i}.h5")]) == 0
    assert main(["landscape", str(ck), *GRID, "--out", str(d / "s.h5")]) == 0
    return d


def _stage(name: str, inputs: Path, out: Path) -> None:
    """Write the result that writer ``name`` replaces into ``out`` (in process)."""
    from cli.main import main

    assert main(_argv(name, inputs, out, first=True)) == 0


def _argv(name: str, i: Path, out: Path, first: bool = False) -> list[str]:
    ck = str(i / "a.pt")
    if name == "train":  # a second run beside the first one
        return ["train", *FAST_TRAIN, "--out", str(out / ("run1" if first else "run2"))]
    if name == "analyze":
        return ["analyze", ck, "--measure", "params", "--no-progress", "--out",
                str(out / "r.h5"), *([] if first else ["--force"])]
    if name == "landscape":  # a new surface beside the first one
        return ["landscape", ck, *GRID, "--seed", "0" if first else "1", "--out",
                str(out / ("s.h5" if first else "t.h5"))]
    if name == "landscape-merge":
        return ["landscape-merge", str(i / "sh0.h5"), str(i / "sh1.h5"), "--out",
                str(out / "m.h5")]
    if name == "hessian":
        return ["hessian", ck, *HESSIAN, "--out", str(out / "h.h5")]
    if name == "plot":
        return ["plot", str(i / "s.h5"), "--kind", "contour", "--format", "png", "--vtk",
                "--out", str(out / "fig")]
    if name in ("study", "study-force"):
        return ["study", str(i / "micro.toml"), "--out", str(out / "st"), "--stages", "train",
                "--no-progress", *(["--force"] if name == "study-force" and not first else [])]
    if name == "study-new":  # a new study beside the first one
        return ["study", str(i / "micro.toml"), "--out", str(out / ("st" if first else "st2")),
                "--stages", "train", "--no-progress"]
    raise AssertionError(name)


WRITERS = ["train", "analyze", "landscape", "landscape-merge", "hessian", "plot", "study"]
CASES = [(w, k) for w in WRITERS for k in ("readonly", "full")] + [
    # --force retrains over the old run, which stays whole until replaced
    ("study-force", "readonly"), ("study-force", "full"),
    ("study-new", "readonly"), ("study-new", "full"),
]


@pytest.fixture(scope="module")
def staged(inputs, tmp_path_factory):
    """writer -> a directory holding the results it rewrites (made once per module)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            d = tmp_path_factory.mktemp(f"staged-{name}")
            _stage(name, inputs, d)
            cache[name] = d
        return cache[name]

    return get


@pytest.mark.parametrize(("writer", "kind"), CASES)
def test_writer_on_a_refusing_directory(writer, kind, inputs, staged, tmp_path):
    source = staged(writer)
    place = make_place(tmp_path, kind)
    try:
        shutil.copytree(source, place.dir, dirs_exist_ok=True, symlinks=True)
        before = snapshot(place.dir)
        place.refuse()
        p = run_cli(_argv(writer, inputs, place.dir), preexec=place.preexec)
        assert_one_line_exit_2(p, str(place.dir), causes=place.causes())
        # nothing new (no temporary file, no lock, no empty run directory), nothing lost
        assert snapshot(place.dir, ignore=place.ignore) == before
    finally:
        place.close()


def test_table_on_a_full_stdout(inputs, staged):
    """`geomkit table` writes only to stdout: a full one is one line, exit 2."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    results = staged("analyze") / "r.h5"
    with open("/dev/full", "w") as full:
        p = run_cli(["table", str(results), "--which", "1"], stdout=full)
    assert_one_line_exit_2(p, "No space left on device")


def test_vtk_export_on_a_refusing_directory(inputs, tmp_path):
    """`plot --vtk` draws the PNG first; the VTK writer alone (pyevtk appends ``.vts`` to
    the name it is given) must leave nothing either."""
    place = make_place(tmp_path, "full")
    try:
        before = snapshot(place.dir)
        place.refuse()
        code = ("import sys\nfrom geomkit.errors import GeomkitError\n"
                "from geomkit.plot import export_vts\n"
                f"try:\n    export_vts({str(inputs / 's.h5')!r}, {str(place.dir / 's.vts')!r})\n"
                "except GeomkitError as e:\n    print(e, file=sys.stderr)\n    sys.exit(2)\n")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                           capture_output=True, timeout=120, preexec_fn=place.preexec)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert any(c in p.stderr for c in place.causes()), p.stderr
        assert snapshot(place.dir, ignore=place.ignore) == before
    finally:
        place.close()


def test_analyze_writes_nothing_before_its_inputs_are_valid(inputs, tmp_path, capsys):
    """A bad checkpoint -- alone or after a good one -- is found before any work: no empty
    (or partial) results file is left behind."""
    from cli.main import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    good = str(inputs / "a.pt")
    for cks in ([str(bad)], [good, str(bad)]):
        out = tmp_path / "new" / "r.h5"
        assert main(["analyze", *cks, "--measure", "params", "--no-progress",
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "bad.pt" in err
        assert not out.exists() and not out.parent.exists()


def test_hessian_out_that_cannot_be_written_fails_before_computing(inputs, tmp_path,
                                                                   monkeypatch, capsys):
    from cli.main import main
    from geomkit.geometry import hessian

    def never(*a, **kw):
        raise AssertionError("computed for an --out it cannot write")

    monkeypatch.setattr(hessian, "hessian_eigs", never)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep")
    out = blocker / "h.h5"
    assert main(["hessian", str(inputs / "a.pt"), *HESSIAN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"geomkit: error: cannot write {out}: a parent is not a directory\n"
    assert blocker.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_an_h5py_runtime_error_with_an_errno_is_a_write_error(tmp_path):
    """h5py raises some failed writes of the HDF5 library as RuntimeError (errno in the
    message): still one line naming the file, the old file kept, no temporary file."""
    from geomkit.errors import ResultFileError
    from geomkit.io import atomic_h5

    p = tmp_path / "f.h5"
    with atomic_h5(p) as f:
        f.attrs["v"] = 1
    before = p.read_bytes()
    with pytest.raises(ResultFileError) as e:
        with atomic_h5(p, copy=True) as f:
            f.attrs["v"] = 2
            raise RuntimeError("Can't decrement id ref count (file write failed: time = now, "
                               "filename = 'x', file descriptor = 3, errno = 28, error message"
                               " = 'No space left on device', buf = 0x1, total write size = 8)")
    assert str(e.value) == f"cannot write {p}: no space left on device"
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["f.h5"]
