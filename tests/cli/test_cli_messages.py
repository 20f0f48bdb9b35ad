"""What a new user sees for wrong inputs: one whole line, exit 2, saying what the file is.

Checkpoints (`geomkit info`): torch's own text is summarised, never cut mid-word nor
carrying its ANSI codes; a pickle that carries code names the global torch refused;
truncated, damaged, empty, text, HDF5 and npz files, bare state_dicts are told apart.
Damaged (not truncated) HDF5 files written by the tool, in `geomkit table` and a
resuming `geomkit analyze`.  `geomkit plot`: options checked before anything is read,
all-NaN and unfinished surfaces, messages about inputs that never point at --out.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import h5py
import numpy as np
import pytest
import torch

from cli.main import main
from tests.cases import tiny_checkpoint


def _run(capsys, argv):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc, err):
    assert rc == 2, err
    assert err.startswith("geomkit: error: ") and err.count("\n") == 1, err
    assert "\x1b" not in err and "[1m" not in err and "Traceback" not in err, err
    return err.strip()


class NotAllowlisted:
    """A class torch's weights-only loader does not know."""


class RunsACommand:
    """A pickle that would call os.system on load (with a harmless command)."""

    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "a.pt")


def _corrupt(data: bytes, at: int, n: int = 64) -> bytes:
    b = bytearray(data)
    b[at:at + n] = b"\xa5" * min(n, len(b) - at)
    return bytes(b)


def _crc_damaged(src, dst):
    """Change bytes inside the largest stored tensor: the zip stays readable, its CRC not."""
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = src.read_bytes()
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    dst.write_bytes(_corrupt(data, start + info.file_size // 2, 16))


# -- checkpoints ---------------------------------------------------------------------------


def test_code_carrying_pickle_names_the_refused_global(ckpt, tmp_path, capsys):
    """Old code: "... is not a readable checkpoint (truncated or not a torch file): Weights
    only load failed. This file can still be loaded, to do so you have two options,
    \\x1b[1mdo those steps only ...", cut at 160 characters."""
    p = tmp_path / "obj.pt"
    torch.save({"weights": torch.ones(2), "extra": NotAllowlisted()}, p)
    err = _one_line_error(*_run(capsys, ["info", p])[::2])
    assert "not a weights-only file" in err and "pickled Python objects" in err
    assert f"`{__name__}.NotAllowlisted`" in err and "will not execute" in err
    assert "truncated" not in err and "not a torch file" not in err
    assert "geomkit.save_checkpoint" in err and err.endswith(")")  # whole, not cut


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2", "pickle protocol 4"])
def test_pickle_calling_os_system_is_named_and_never_run(tmp_path, capsys, how):
    p = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"a": RunsACommand()}, p)
    else:
        p.write_bytes(pickle.dumps(RunsACommand(), protocol=int(how[-1])))
    err = _one_line_error(*_run(capsys, ["info", p])[::2])
    assert "not a weights-only file" in err and f"`{os.system.__module__}.system`" in err
    assert "truncated" not in err


def test_whole_pickled_model_and_bare_state_dict(ckpt, tmp_path, capsys):
    from geomkit.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt).model
    torch.save(model, tmp_path / "m.pt")
    err = _one_line_error(*_run(capsys, ["info", tmp_path / "m.pt"])[::2])
    assert f"`{type(model).__module__}.{type(model).__name__}`" in err
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    err = _one_line_error(*_run(capsys, ["info", tmp_path / "sd.pt"])[::2])
    n = len(model.state_dict())
    assert f"holds a bare state_dict ({n} tensors)" in err
    assert "--weights" in err and "geomkit import" in err


def _write(kind, p, ckpt):
    data = ckpt.read_bytes()
    if kind == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif kind == "crc":
        _crc_damaged(ckpt, p)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello world\n")
    elif kind == "hdf5":
        with h5py.File(p, "w") as f:
            f["x"] = [1.0]
    elif kind == "npz":
        with open(p, "wb") as f:
            np.savez(f, a=np.ones(3))
    elif kind == "old-style truncated":
        torch.save({"a": torch.ones(500)}, p, _use_new_zipfile_serialization=False)
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "plain pickle":
        p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    elif kind == "directory":
        p.mkdir()


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("truncated", "is not a readable checkpoint: it is truncated or damaged"),
        ("crc", "fails its CRC-32 check"),
        ("empty", "it is empty (0 bytes)"),
        ("text", "not a torch file (a text file)"),
        ("hdf5", "is an HDF5 file"),
        ("npz", "is a numpy .npz archive, not a torch checkpoint"),
        ("old-style truncated", "it is truncated (300 bytes; an old-style torch file"),
        ("plain pickle", "is a plain pickle (pickle.dump), not a torch checkpoint"),
        ("directory", "is a directory without last.pt"),
    ],
)
def test_each_unreadable_file_says_what_it_is(ckpt, tmp_path, capsys, kind, fragment):
    """Old code: all of these were "truncated or not a torch file" plus a cut torch text
    (the text file: "...: 101"); the CRC-damaged one loaded with silently changed weights."""
    p = tmp_path / "x.pt"
    _write(kind, p, ckpt)
    err = _one_line_error(*_run(capsys, ["info", p])[::2])
    assert fragment in err and str(p) in err
    assert "weights-only" not in err and "miniz" not in err and "PytorchStreamReader" not in err


def test_stdin_dash_is_refused_plainly(capsys):
    err = _one_line_error(*_run(capsys, ["info", "-"])[::2])
    assert "standard input" in err


def test_weights_of_another_model_list_the_misfits(ckpt, tmp_path, capsys):
    """Old code: torch's RuntimeError, last line, cut at 160 characters."""
    raw = torch.load(ckpt, weights_only=True)
    raw["model"]["kwargs"]["num_classes"] = 3
    torch.save(raw, tmp_path / "k.pt")
    err = _one_line_error(*_run(capsys, ["info", tmp_path / "k.pt"])[::2])
    assert "weights do not fit model 'vit'" in err
    assert "head.weight is 10x8 in the file but 3x8 in the model" in err
    raw["model"] = {"name": "resnet-tiny", "kwargs": {"num_classes": 10}}
    torch.save(raw, tmp_path / "r.pt")
    err = _one_line_error(*_run(capsys, ["info", tmp_path / "r.pt"])[::2])
    assert "missing (" in err and "unexpected (" in err and "more)" in err


# -- damaged HDF5 files written by the tool ------------------------------------------------


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("res")
    a, b = tiny_checkpoint(d / "a.pt", 0), tiny_checkpoint(d / "b.pt", 1)
    out = d / "r.h5"
    assert main(["analyze", str(a), str(b), "--measure", "params", "--out", str(out),
                 "--no-progress"]) == 0
    return a, b, out


def _sweep(src, tmp_path, capsys, argv_of, step=512):
    """Corrupt 64 bytes at every ``step`` of ``src`` (a copy each time) and run the
    command; return the failures: (offset, what went wrong)."""
    data = src.read_bytes()
    bad, refused = [], 0
    for at in range(step, len(data), step):  # offset 0 is the signature: "not HDF5"
        p = tmp_path / f"d{at}.h5"
        p.write_bytes(_corrupt(data, at))
        try:
            rc, _, err = _run(capsys, argv_of(p))
        except Exception as e:  # a traceback for the user
            bad.append((at, f"{type(e).__name__}: {e}"))
            continue
        if rc == 0:
            continue  # damage in bytes the command does not read (no checksum to catch it)
        refused += 1
        if rc != 2 or err.count("\n") != 1 or not err.startswith("geomkit: error: "):
            bad.append((at, err))
        elif "cannot write" in err or str(p) not in err:  # a read named a write failure
            bad.append((at, err.strip()))
    return bad, refused


def test_damaged_results_file_in_table_is_one_line(results, tmp_path, capsys):
    bad, refused = _sweep(results[2], tmp_path, capsys,
                          lambda p: ["table", p, "--which", "1"])
    assert refused and not bad, bad


def test_damaged_results_file_in_resuming_analyze_is_one_line(results, tmp_path, capsys):
    a, b, src = results
    bad, refused = _sweep(src, tmp_path, capsys,
                          lambda p: ["analyze", a, b, "--measure", "params", "--out", p,
                                     "--no-progress"])
    assert refused and not bad, bad


# -- plot ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    from geomkit.geometry.landscape import Grid, compute_landscape, random_directions
    from tests.cases import make_case

    case = make_case("mlp")
    path = tmp_path_factory.mktemp("ls") / "s.h5"
    compute_landscape(path, case.model, case.inputs, case.targets,
                      random_directions(case.model, 2, seed=0), Grid((-1, 1, 4), (-1, 1, 3)))
    return path


def _edited(src, dst, **arrays):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        for k, fn in arrays.items():
            f[k][...] = fn(f[k][...])
    return dst


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--dpi", "0"], "--dpi must be positive"),
        (["--dpi", "-3"], "--dpi must be positive"),
        (["--dpi", "1e6"], "pixels a side"),
        (["--ncols", "0"], "--ncols must be at least 1"),
        (["--vmin", "2", "--vmax", "1"], "--vmin must be below vmax"),
        (["--vmin", "nan"], "--vmin must be a finite number"),
        (["--log", "--vmin", "0"], "--vmin must be positive on a log scale"),
        (["--levels", "1"], "--levels must be at least 2"),
        (["--size", "800"], "--size must be WIDTHxHEIGHT"),
        (["--size", "0x600"], "--size must be positive"),
        (["--format", ","], "--format names no figure format"),
        (["--format", "png,gif"], "unknown figure format 'gif'"),
        (["--titles", "a,b"], "--titles has 2 names for 1 files"),
    ],
)
def test_plot_options_are_checked_before_any_file_is_read(tmp_path, capsys, flags, fragment):
    """Old code: --dpi 0 was a matplotlib ValueError traceback after reading the files;
    --ncols 0, --vmin > --vmax and --format , were accepted."""
    missing = tmp_path / "missing.h5"  # the option error comes first
    err = _one_line_error(*_run(capsys, ["plot", missing, *flags, "--out", tmp_path / "f"])[::2])
    assert fragment in err
    assert list(tmp_path.iterdir()) == []


def test_plot_refuses_an_all_nan_surface(surface, tmp_path, capsys):
    """Old code: an empty figure and exit 0."""
    p = _edited(surface, tmp_path / "nan.h5", train_loss=lambda z: np.full_like(z, np.nan))
    err = _one_line_error(*_run(capsys, ["plot", p, "--out", tmp_path / "f"])[::2])
    assert f"{p}: the surface has no finite loss value (all 12 points NaN/inf)" in err
    assert not list(tmp_path.glob("f_*"))


def test_plot_of_an_unfinished_surface_draws_it_and_says_so(surface, tmp_path, capsys):
    def half(z):
        z = z.copy()
        z.flat[6:] = np.nan if z.dtype.kind == "f" else 0
        return z

    p = _edited(surface, tmp_path / "part.h5", train_loss=half, train_acc=half, done=half)
    rc, out, err = _run(capsys, ["plot", p, "--out", tmp_path / "f", "--json", "--kind",
                                 "contourf", "--format", "png"])
    assert rc == 0 and err.count("\n") == 1 and "geomkit: note:" in err
    assert "unfinished (6 of 12 points computed)" in err and "geomkit landscape" in err
    res = json.loads(out)
    assert res["unfinished"] == [{"file": str(p), "points_done": 6, "points": 12}]
    assert (tmp_path / "f_contourf.png").stat().st_size > 0
    none = _edited(surface, tmp_path / "none.h5", done=lambda d: np.zeros_like(d))
    err = _one_line_error(*_run(capsys, ["plot", none, "--out", tmp_path / "g"])[::2])
    assert "no computed point yet (0 of 12)" in err


def test_plot_out_directory_and_vtk_names(surface, tmp_path, capsys):
    d = tmp_path / "figs"
    d.mkdir()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for x in (a, b):
        (x / "s.h5").write_bytes(surface.read_bytes())
    flags = ["--kind", "contour", "--format", "png", "--json"]
    rc, out, _ = _run(capsys, ["plot", a / "s.h5", "--out", d, *flags])
    assert rc == 0 and json.loads(out)["files"] == [str(d / "s_contour.png")]
    rc, out, _ = _run(capsys, ["plot", a / "s.h5", "--out", f"{tmp_path / 'new'}/", *flags])
    assert rc == 0 and (tmp_path / "new" / "s_contour.png").is_file()
    pytest.importorskip("pyevtk")
    rc, out, _ = _run(capsys, ["plot", a / "s.h5", b / "s.h5", "--out", d / "p", "--vtk",
                               *flags])
    files = json.loads(out)["files"]
    assert rc == 0 and str(d / "p_s_1.vts") in files and str(d / "p_s_2.vts") in files


@pytest.mark.parametrize("damage", ["foreign", "results", "garbage"])
def test_plot_messages_about_inputs_never_point_at_out(surface, results, tmp_path, capsys,
                                                       damage):
    p = tmp_path / "in.h5"
    if damage == "foreign":
        with h5py.File(p, "w") as f:
            f["abc"] = [1.0]
    elif damage == "results":
        p.write_bytes(results[2].read_bytes())
    else:
        p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    err = _one_line_error(*_run(capsys, ["plot", p, "--out", tmp_path / "f"])[::2])
    assert str(p) in err and "--out" not in err and "choose another" not in err


def test_merge_messages_about_input_shards_never_point_at_out(ckpt, tmp_path, capsys):
    args = ["--x", "-1:1:3", "--y", "-1:1:3", "--samples", "8", "--no-progress"]
    shards = [tmp_path / f"p{i}.h5" for i in range(2)]
    for i, s in enumerate(shards):
        assert main(["landscape", str(ckpt), *args, "--shard", f"{i}/2", "--out", str(s)]) == 0
    with h5py.File(shards[1], "r+") as f:
        del f.attrs["spec"]  # a landscape file that lost its spec
    err = _one_line_error(*_run(capsys, ["landscape-merge", *shards, "--out",
                                         tmp_path / "m.h5"])[::2])
    assert str(shards[1]) in err and "--out" not in err


# -- table ---------------------------------------------------------------------------------


def test_markdown_table_escapes_a_pipe_in_a_run_label(tmp_path, capsys):
    """Old code: a run labelled "sam|rho=0.2" split its markdown row into one cell more."""
    ck = tiny_checkpoint(tmp_path / "c.pt", 0, label="sam|rho=0.2")
    out = tmp_path / "r.h5"
    assert main(["analyze", str(ck), "--measure", "params", "--out", str(out),
                 "--no-progress"]) == 0
    rc, text, _ = _run(capsys, ["table", out, "--which", "3"])
    rows = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert rc == 0 and "vit/sam\\|rho=0.2" in text

    def cells(line):
        return len(line.replace("\\|", "").split("|"))

    assert {cells(r) for r in rows} == {cells(rows[0])}
