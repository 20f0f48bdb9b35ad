"""The one I/O layer (geomkit.io): atomic writes, typed HDF5, the JSON NaN policy, refusal."""

from __future__ import annotations

import errno
import io
import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import geomkit.io as gio
from geomkit.errors import ResultFileError
from geomkit.io import _atomic, _h5


def _strict(text: str):
    """json.loads that refuses the NaN/Infinity tokens (what strict JSON parsers do)."""

    def bad(token):
        raise ValueError(f"invalid JSON token {token}")

    return json.loads(text, parse_constant=bad)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# -- atomic writes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, cause",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
    ],
)
def test_failed_os_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch,
                                                                    code, cause):
    p = tmp_path / "f.json"
    gio.atomic_write_text(p, "old contents\n")
    before = p.read_bytes()

    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_atomic.os, "write", failing_write)
    with pytest.raises(ResultFileError) as e:
        gio.atomic_write_text(p, "new contents that never land\n")
    msg = _one_line(e)
    assert msg == f"cannot write {p}: {cause}"
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["f.json"]


def test_failed_h5py_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.h5"
    with gio.atomic_h5(p) as f:
        f.attrs["format"] = "x"
        f.create_dataset("v", data=np.arange(4.0))
    before = p.read_bytes()
    real = h5py.File

    class Full:
        """h5py.File whose dataset writes fail like a full disk (h5py's own message)."""

        def __init__(self, *a, **kw):
            self.f = real(*a, **kw)
            self.attrs = self.f.attrs

        def create_dataset(self, *a, **kw):
            raise OSError("Can't write data (file write failed: time = now, filename = "
                          f"'{p}', file descriptor = 5, errno = 28, error message = 'No "
                          "space left on device', buf = 0x1, total write size = 8)")

        def close(self):
            self.f.close()

    monkeypatch.setattr(h5py, "File", Full)
    with pytest.raises(ResultFileError) as e:
        with gio.atomic_h5(p) as f:
            f.attrs["format"] = "x"
            f.create_dataset("v", data=np.arange(8.0))
    assert _one_line(e) == f"cannot write {p}: no space left on device"
    monkeypatch.setattr(h5py, "File", real)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["f.h5"]


def test_os_error_wrapped_by_a_library_is_found(tmp_path):
    """torch.save turns a failed write into a RuntimeError raised while handling the OSError."""
    torch = pytest.importorskip("torch")
    p = tmp_path / "c.pt"
    gio.atomic_write_bytes(p, b"previous checkpoint")

    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    def write(tmp):
        torch.save({"w": torch.ones(1000)}, Full())

    with pytest.raises(ResultFileError) as e:
        gio.atomic_write(p, write)
    assert _one_line(e) == f"cannot write {p}: no space left on device"
    assert p.read_bytes() == b"previous checkpoint"
    assert [q.name for q in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), KeyboardInterrupt()])
def test_other_exceptions_propagate_unchanged_and_clean_up(tmp_path, exc):
    p = tmp_path / "f.txt"
    gio.atomic_write_text(p, "old")

    def write(tmp):
        Path(tmp).write_text("half")
        raise exc

    with pytest.raises(type(exc)):
        gio.atomic_write(p, write)
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_creates_parents_and_keeps_the_umask_mode(tmp_path):
    p = tmp_path / "a" / "b" / "f.txt"
    gio.atomic_write_text(p, "x")
    assert p.read_text() == "x"
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_unwritable_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ResultFileError) as e:
        gio.atomic_write_text(blocker / "x.json", "{}")
    assert _one_line(e).startswith(f"cannot write {blocker / 'x.json'}: ")


def test_os_cause_reads_the_errno_inside_h5py_messages():
    e = OSError("Unable to create file (unable to open file: name = 'x', errno = 30, "
                "error message = 'Read-only file system', flags = 13, o_flags = 242)")
    assert gio.os_cause(e) == "read-only file system"
    assert gio.os_cause(OSError(errno.EACCES, "Permission denied")) == "permission denied"


# -- HDF5 -------------------------------------------------------------------------------------


def _results_file(path: Path) -> Path:
    from geomkit.results import ResultsFile

    rf = ResultsFile(path)
    meta = {"id": "abc-m_x", "label": "m/x", "model": "m", "optimizer": "x",
            "config": {"lr": 0.1, "notes": "n" * 200}}
    for i in range(6):
        rf.put(meta, f"m{i}", {"v": float(i), "s": "text" * 30, "l": list(range(50))},
               settings={"k": i, "name": "s" * 40}, seconds=0.5)
    return path


def test_open_h5_errors_are_one_line(tmp_path):
    with pytest.raises(ResultFileError, match="no such results file") as e:
        gio.open_h5(tmp_path / "none.h5", kind=gio.RESULTS_FORMAT)
    _one_line(e)
    with pytest.raises(ResultFileError, match="not a results file") as e:
        gio.open_h5(tmp_path, kind=gio.RESULTS_FORMAT)
    _one_line(e)
    txt = tmp_path / "t.h5"
    txt.write_text("not hdf5")
    with pytest.raises(ResultFileError, match="not an HDF5 file") as e:
        gio.open_h5(txt, kind=gio.RESULTS_FORMAT)
    _one_line(e)
    other = tmp_path / "o.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = gio.LANDSCAPE_FORMAT
    with pytest.raises(ResultFileError, match="not a geomkit results file") as e:
        gio.open_h5(other, kind=gio.RESULTS_FORMAT)
    assert "geomkit-landscape-1" in _one_line(e)
    with gio.open_h5(other, kind=gio.LANDSCAPE_FORMAT) as f:
        assert gio.file_format(f) == gio.LANDSCAPE_FORMAT
    untagged = tmp_path / "u.h5"
    with h5py.File(untagged, "w") as f:
        f.create_dataset("x", data=1)
    with pytest.raises(ResultFileError, match="no format tag"):
        gio.open_h5(untagged, kind=gio.DENSITY_FORMAT)
    with gio.open_h5(untagged, kind=gio.DENSITY_FORMAT, untagged=True) as f:
        assert f["x"][()] == 1
    with pytest.raises(ValueError):
        gio.open_h5(untagged, "w")  # new files go through atomic_h5


def _damage(src: Path, dst: Path, at: int, n: int = 64) -> None:
    data = bytearray(src.read_bytes())
    data[at:at + n] = b"\xff" * n
    dst.write_bytes(bytes(data))


def test_damaged_hdf5_is_a_one_line_result_file_error(tmp_path):
    import re

    from geomkit.results import load_results

    src = _results_file(tmp_path / "r.h5")
    load_results(src)  # valid
    data = src.read_bytes()
    # overwrite bytes in the middle of the file: the structure signatures there (global
    # heap of the variable-length strings, symbol tables, B-trees, local heaps)
    sigs = [m.start() for m in re.finditer(rb"GCOL|SNOD|TREE|HEAP", data)]
    middle = min((at for at in sigs if data[at:at + 4] == b"GCOL"),
                 key=lambda at: abs(at - len(data) // 2))
    bad = tmp_path / "middle.h5"
    _damage(src, bad, middle, 8)
    with pytest.raises(ResultFileError) as e:
        load_results(bad)
    msg = _one_line(e)
    assert str(bad) in msg and "damaged" in msg and "bad global heap collection signature" in msg
    raised = 0
    for k, at in enumerate(sigs):
        bad = tmp_path / f"bad{k}.h5"
        _damage(src, bad, at, 8)
        try:  # anything but ResultFileError fails the test: no traceback for a damaged file
            load_results(bad)
        except ResultFileError as e:
            msg = str(e)
            assert "\n" not in msg and str(bad) in msg
            raised += 1
    assert raised >= 3


def test_damage_seen_only_while_reading_is_converted(tmp_path):
    p = tmp_path / "r.h5"
    with gio.atomic_h5(p) as f:
        f.attrs["format"] = gio.RESULTS_FORMAT
    with pytest.raises(ResultFileError) as e:
        with gio.open_h5(p, kind=gio.RESULTS_FORMAT) as f:
            f["missing/dataset"]  # h5py raises KeyError in the block
    msg = _one_line(e)
    assert str(p) in msg and "damaged" in msg


def test_json_attributes_and_provenance(tmp_path):
    p = tmp_path / "a.h5"
    with gio.atomic_h5(p) as f:
        gio.set_json_attr(f, "spec", {"b": math.nan, "a": [1, math.inf, -math.inf]})
        prov = gio.set_provenance(f, {"extra": 1})
        f.attrs["legacy"] = json.dumps({"tol": math.nan, "s": "nan", "big": "inf"})
        f.attrs["text"] = "not json {"
    with gio.open_h5(p) as f:
        text = gio.attr(f, "spec")
        assert _strict(text) == {"a": [1, "inf", "-inf"], "b": None}  # valid JSON
        assert gio.get_json_attr(f, "spec") == {"a": [1, "inf", "-inf"], "b": None}
        assert gio.get_provenance(f) == prov and prov["extra"] == 1 and prov["torch_version"]
        # files from before the policy: bare NaN and "nan" strings read as today's null
        assert gio.get_json_attr(f, "legacy") == {"tol": None, "s": None, "big": "inf"}
        assert gio.get_json_attr(f, "text") == "not json {"
        assert gio.get_json_attr(f, "absent", 5) == 5


# -- the JSON policy --------------------------------------------------------------------------


def test_dumps_json_writes_valid_json_with_nan_as_null():
    torch = pytest.importorskip("torch")
    obj = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "np": np.float32("nan"),
           "arr": np.array([1.0, np.nan]), "t": torch.tensor(2.5), "path": Path("/x"),
           "tuple": (1, 2), "int": np.int64(3), "bool": np.bool_(True), "ok": 1.5}
    text = gio.dumps_json(obj)
    assert _strict(text) == {"nan": None, "inf": "inf", "ninf": "-inf", "np": None,
                             "arr": [1.0, None], "t": 2.5, "path": "/x", "tuple": [1, 2],
                             "int": 3, "bool": True, "ok": 1.5}
    assert gio.loads_json('{"a": NaN, "b": "nan", "c": Infinity, "d": -Infinity}') == {
        "a": None, "b": None, "c": "inf", "d": "-inf"}


def test_write_json_and_read_json(tmp_path):
    p = tmp_path / "s.json"
    gio.write_json(p, {"acc": math.nan, "runs": [{"loss": math.inf}]})
    assert _strict(p.read_text()) == {"acc": None, "runs": [{"loss": "inf"}]}
    assert gio.read_json(p) == {"acc": None, "runs": [{"loss": "inf"}]}
    legacy = tmp_path / "old.json"
    legacy.write_text('{"acc": NaN}')
    assert gio.read_json(legacy) == {"acc": None}
    legacy.write_text("{oops")
    with pytest.raises(ResultFileError, match="not valid JSON") as e:
        gio.read_json(legacy)
    _one_line(e)


def test_cli_print_json_uses_the_same_policy(capsys):
    from cli._common import print_json

    print_json({"a": math.nan, "b": math.inf, "c": [-math.inf, 1.0]})
    out = capsys.readouterr().out
    assert _strict(out) == {"a": None, "b": "inf", "c": ["-inf", 1.0]}
    assert out.strip() == gio.dumps_json({"a": math.nan, "b": math.inf, "c": [-math.inf, 1.0]})


# -- refusing to replace ----------------------------------------------------------------------


def test_check_replace(tmp_path):
    gio.check_replace(tmp_path / "new.h5", gio.HESSIAN_FORMAT)  # nothing there: fine
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("mine", data=1)
    notes = tmp_path / "notes.h5"
    notes.write_text("my notes")
    results = _results_file(tmp_path / "results.h5")
    for path, fragment in ((foreign, "no format tag"), (notes, "not readable as HDF5"),
                           (results, "geomkit results file"), (tmp_path, "not a file")):
        before = None if path.is_dir() else path.read_bytes()
        with pytest.raises(ResultFileError) as e:
            gio.check_replace(path, gio.HESSIAN_FORMAT)
        msg = _one_line(e)
        assert msg.startswith(f"refusing to replace {path}: ") and fragment in msg
        if before is not None:
            assert path.read_bytes() == before
    gio.check_replace(results, gio.RESULTS_FORMAT)  # its own kind: may be replaced
    gio.check_replace(foreign, gio.DENSITY_FORMAT, untagged=True)
    gio.check_replace(results, (gio.HESSIAN_FORMAT, gio.RESULTS_FORMAT))


def test_check_replace_with_a_spec(tmp_path):
    p = tmp_path / "s.h5"
    spec = {"seed": 0, "x": "-1:1:3", "tol": math.nan}
    with gio.atomic_h5(p) as f:
        f.attrs["format"] = gio.LANDSCAPE_FORMAT
        gio.set_json_attr(f, "spec", spec)
    gio.check_replace(p, gio.LANDSCAPE_FORMAT, spec)  # the same computation (NaN included)
    with pytest.raises(ResultFileError) as e:
        gio.check_replace(p, gio.LANDSCAPE_FORMAT, {**spec, "seed": 1})
    msg = _one_line(e)
    assert "another computation" in msg and "seed" in msg


def test_formats_are_registered_once():
    assert gio.RESULTS_FORMAT == "geomkit-results/1"
    assert gio.LANDSCAPE_FORMAT == "geomkit-landscape-1"
    assert {gio.HESSIAN_FORMAT, gio.DENSITY_FORMAT} <= set(_h5.FORMATS)
    from geomkit import results
    from geomkit.geometry.landscape import storage

    assert results.FORMAT == gio.RESULTS_FORMAT and storage.FORMAT == gio.LANDSCAPE_FORMAT


def test_no_module_writes_files_by_hand():
    """Every os.replace in the library is the I/O layer's (the atomic-write implementation)."""
    root = Path(__file__).resolve().parents[1]
    for sub in ("geomkit/results.py", "geomkit/checkpoint.py", "geomkit/plot.py",
                "geomkit/geometry/landscape/storage.py", "geomkit/study/run.py",
                "geomkit/study/stages.py", "cli/hessian.py", "cli/_common.py"):
        assert "os.replace(" not in (root / sub).read_text(), sub


def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from geomkit.checkpoint import load_checkpoint
    from tests.cases import tiny_checkpoint

    p = tiny_checkpoint(tmp_path / "last.pt")
    before = p.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        f.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ResultFileError) as e:
        tiny_checkpoint(p)
    assert _one_line(e) == f"cannot write {p}: no space left on device"
    monkeypatch.setattr(torch, "save", real_save)
    assert p.read_bytes() == before and load_checkpoint(p).model_name
    assert [q.name for q in tmp_path.iterdir()] == ["last.pt"]
    raw = torch.load(p, weights_only=True)  # still a weights_only checkpoint
    assert raw["format"] == "geomkit-checkpoint/1"
