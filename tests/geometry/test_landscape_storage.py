"""Resumable, shardable landscape files: layout, resume, refusal, kill/resume, merge, torchrun.

The layout and resume tests take the ``device`` fixture: the model (and the directions it
draws) live on ``device``, files hold CPU arrays, and the surfaces are compared with the
in-memory evaluation on the same device and with the CPU case.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from geomkit.errors import ResultFileError, SpecError
from geomkit.geometry.landscape import (
    Grid,
    compute_landscape,
    loss_landscape,
    merge_shards,
    parse_shard,
    random_directions,
    read_directions,
    read_landscape,
    shard_path,
)
from tests.cases import make_case

ROOT = Path(__file__).resolve().parents[2]
GRID = Grid((-1.0, 1.0, 5), (-1.0, 1.0, 4))
SPEC = {"checkpoint_sha256": "abc", "seed": 0, "norm": "filter", "ignore": "biasbn"}


def _case():
    case = make_case("cnn_bn", n=16)
    return case, random_directions(case.model, 2, seed=0)


def _compute(path, case, dirs, grid=GRID, spec=SPEC, **kw):
    return compute_landscape(path, case.model, case.inputs, case.targets, dirs, grid, spec=spec,
                             **kw)


def _count_forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_file_layout_reference_names_scales_and_attrs(tmp_path, device):
    cpu, cpu_dirs = _case()
    case = cpu.to(device)
    dirs = random_directions(case.model, 2, seed=0)  # on the device: written via the CPU
    path = tmp_path / "surf.h5"
    res = _compute(path, case, dirs, attrs={"checkpoint": "/x/ckpt.pt"}, batch_size=8)
    mem = loss_landscape(case.model, case.inputs, case.targets, dirs, GRID, batch_size=8)
    np.testing.assert_array_equal(res.loss, mem.loss)
    ref = loss_landscape(cpu.model, cpu.inputs, cpu.targets, cpu_dirs, GRID, batch_size=8)
    np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-12)  # float64, the CPU surface
    np.testing.assert_array_equal(res.acc, ref.acc)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["xcoordinates"][...], np.linspace(-1, 1, 5))
        np.testing.assert_array_equal(f["ycoordinates"][...], np.linspace(-1, 1, 4))
        for name in ("train_loss", "train_acc", "done"):
            assert f[name].shape == (4, 5)  # [len(y), len(x)]
            assert f[name].dims[0][0].name == "/ycoordinates"
            assert f[name].dims[1][0].name == "/xcoordinates"
        assert f["xcoordinates"].is_scale and f["ycoordinates"].is_scale
        assert f["done"].dtype == bool and f["done"][...].all()
        names = [k for k, _ in case.model.named_parameters()]
        assert sorted(f["directions/x"]) == sorted(names) == sorted(f["directions/y"])
        np.testing.assert_array_equal(
            f["directions/y/5.weight"][...], dirs[1]["5.weight"].cpu().numpy()
        )
        a = f.attrs
        assert a["checkpoint"] == "/x/ckpt.pt" and a["checkpoint_sha256"] == "abc"
        assert a["x"] == "-1:1:5" and a["y"] == "-1:1:4" and a["seed"] == 0
        assert a["norm"] == "filter" and a["ignore"] == "biasbn"
        for k in (
            "geomkit_version",
            "torch_version",
            "compute_seconds",
            "points_per_s",
            "cosine_xy",
        ):
            assert k in a
    assert not (tmp_path / "surf.h5.tmp").exists()
    back = read_directions(path)
    assert all(torch.equal(back[1][k], dirs[1][k].cpu()) for k in dirs[1])


def test_one_dimensional_file(tmp_path):
    case, dirs = _case()
    res = compute_landscape(
        tmp_path / "line.h5",
        case.model,
        case.inputs,
        case.targets,
        dirs[:1],
        Grid((-1, 1, 7)),
        spec=SPEC,
    )
    with h5py.File(tmp_path / "line.h5", "r") as f:
        assert "ycoordinates" not in f and "directions/y" not in f
        assert f["train_loss"].shape == (7,) and f["train_loss"].dims[0][0].name == "/xcoordinates"
    assert res.loss.shape == (7,) and res.complete


def test_resume_never_recomputes_a_finished_point(tmp_path, device):
    cpu, dirs = _case()
    case = cpu.to(device)  # resumed from CPU directions read back from the file
    path = tmp_path / "surf.h5"
    seen = []

    def stop_after_7(done, total):
        seen.append(done)
        if done >= 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _compute(path, case, dirs, flush_interval=0, callback=stop_after_7)
    part = read_landscape(path)
    assert part.done.sum() == 7 and not part.complete
    assert np.isnan(part.loss[~part.done]).all()
    calls, h = _count_forwards(case.model)
    try:  # resumed without --resume: the same command continues the file
        res = compute_landscape(
            path,
            case.model,
            case.inputs,
            case.targets,
            lambda: 1 / 0,
            GRID,
            spec=SPEC,
            batch_size=16,
        )
    finally:
        h.remove()
    assert len(calls) == GRID.size - 7  # one batch per point, only the missing points
    full = loss_landscape(case.model, case.inputs, case.targets, dirs, GRID)
    np.testing.assert_array_equal(res.loss, full.loss)
    np.testing.assert_array_equal(res.acc, full.acc)
    ref = loss_landscape(cpu.model, cpu.inputs, cpu.targets, dirs, GRID)
    np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-12)  # float64, the CPU surface
    np.testing.assert_array_equal(res.acc, ref.acc)
    calls, h = _count_forwards(case.model)
    _compute(path, case, dirs, resume=True)
    h.remove()
    assert calls == []  # a finished file is not recomputed


def test_mismatched_spec_is_refused_and_file_untouched(tmp_path):
    case, dirs = _case()
    path = tmp_path / "surf.h5"
    _compute(path, case, dirs)
    before = path.read_bytes()
    for spec, grid in (
        ({**SPEC, "seed": 1}, GRID),
        ({**SPEC, "checkpoint_sha256": "def"}, GRID),
        (SPEC, Grid((-1, 1, 5), (-1, 1, 5))),
        ({**SPEC, "norm": "layer"}, GRID),
    ):
        with pytest.raises(ResultFileError) as e:
            compute_landscape(path, case.model, case.inputs, case.targets, dirs, grid, spec=spec)
        assert "\n" not in str(e.value) and "another spec" in str(e.value)
    with pytest.raises(ResultFileError, match="shard"):
        compute_landscape(
            path, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC, shard=(0, 2)
        )
    assert path.read_bytes() == before
    with pytest.raises(ResultFileError, match="nothing to resume"):
        _compute(tmp_path / "new.h5", case, dirs, resume=True)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ResultFileError):
        _compute(tmp_path / "junk.h5", case, dirs)


def test_shards_merge_to_the_single_run(tmp_path):
    case, dirs = _case()
    single = _compute(tmp_path / "one.h5", case, dirs)
    parts = []
    for i in range(3):
        p = shard_path(tmp_path / "surf.h5", i, 3)
        r = compute_landscape(
            p, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC, shard=(i, 3)
        )
        assert 0 < r.done.sum() < GRID.size
        parts.append(p)
    assert parts[1].name == "surf.shard1of3.h5"
    with pytest.raises(ResultFileError, match="missing"):
        merge_shards(parts[:2], tmp_path / "surf.h5")
    merged = merge_shards(parts[::-1], tmp_path / "surf.h5")
    np.testing.assert_array_equal(merged.loss, single.loss)
    np.testing.assert_array_equal(merged.acc, single.acc)
    assert merged.complete and merged.attrs["shard"] == "0/1"
    # the merged file is what the unsharded command would have written: it resumes as complete
    calls, h = _count_forwards(case.model)
    _compute(tmp_path / "surf.h5", case, dirs)
    h.remove()
    assert calls == []
    other = tmp_path / "other.h5"
    compute_landscape(
        other,
        case.model,
        case.inputs,
        case.targets,
        dirs,
        GRID,
        spec={**SPEC, "seed": 9},
        shard=(2, 3),
    )
    with pytest.raises(ResultFileError, match="not shards of one run"):
        merge_shards(parts[:2] + [other], tmp_path / "m.h5")
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x/2", "1", "-1/2"):
        with pytest.raises(SpecError):
            parse_shard(bad)


_KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from geomkit.geometry.landscape import Grid, compute_landscape, random_directions
from tests.cases import make_case
case = make_case("cnn_bn", n=16)
dirs = random_directions(case.model, 2, seed=0)
case.model.register_forward_pre_hook(lambda *a: time.sleep(0.05))
def report(done, total):
    print(done, flush=True)
grid = Grid((-1.0, 1.0, 5), (-1.0, 1.0, 4))
compute_landscape({path!r}, case.model, case.inputs, case.targets, dirs, grid,
                  spec={spec!r}, flush_interval=0, callback=report)
"""


def test_sigkilled_run_resumes_to_the_uninterrupted_surface(tmp_path):
    path = tmp_path / "surf.h5"
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(root=str(ROOT), path=str(path), spec=SPEC))
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            for line in proc.stdout:
                if int(line) >= 4:
                    break
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    part = read_landscape(path)
    assert 4 <= part.done.sum() < GRID.size
    case, dirs = _case()
    res = _compute(path, case, dirs)
    full = loss_landscape(case.model, case.inputs, case.targets, dirs, GRID)
    assert res.complete
    np.testing.assert_array_equal(res.loss, full.loss)
    np.testing.assert_array_equal(res.acc, full.acc)


_DIST_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from geomkit import distributed
from geomkit.geometry.landscape import Grid, compute_landscape, random_directions
from tests.cases import make_case
case = make_case("cnn_bn", n=16)
dirs = random_directions(case.model, 2, seed=0)
grid = Grid((-1.0, 1.0, 5), (-1.0, 1.0, 4))
compute_landscape({path!r}, case.model, case.inputs, case.targets, dirs, grid,
                  spec={spec!r})
import torch.distributed as dist
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_give_the_single_process_surface(tmp_path):
    path = tmp_path / "surf.h5"
    script = tmp_path / "dist.py"
    script.write_text(_DIST_SCRIPT.format(root=str(ROOT), path=str(path), spec=SPEC))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert shard_path(path, 0, 2).exists() and shard_path(path, 1, 2).exists()
    merged = read_landscape(path)
    case, dirs = _case()
    full = loss_landscape(case.model, case.inputs, case.targets, dirs, GRID)
    assert merged.complete and merged.attrs["shard"] == "0/1"
    np.testing.assert_array_equal(merged.loss, full.loss)
    np.testing.assert_array_equal(merged.acc, full.acc)


def test_the_surface_type_and_reader_live_in_the_io_layer(tmp_path):
    import geomkit.geometry.landscape as gl
    import geomkit.io.landscape as il

    assert gl.Landscape is il.Landscape and gl.read_landscape is il.read_landscape
    case, dirs = _case()
    mem = loss_landscape(case.model, case.inputs, case.targets, dirs, GRID, batch_size=8)
    assert isinstance(mem, il.Landscape)
    res = _compute(tmp_path / "s.h5", case, dirs)
    assert isinstance(res, il.Landscape) and isinstance(read_landscape(res.path), il.Landscape)
    with h5py.File(res.path, "r") as f:
        assert f.attrs["format"] == "geomkit-landscape-1"


def test_files_geomkit_did_not_write_are_never_replaced(tmp_path):
    from geomkit.results import ResultsFile

    case, dirs = _case()
    parts = []
    for i in range(2):
        p = shard_path(tmp_path / "surf.h5", i, 2)
        compute_landscape(p, case.model, case.inputs, case.targets, dirs, GRID, spec=SPEC,
                          shard=(i, 2))
        parts.append(p)
    results = tmp_path / "results.h5"
    ResultsFile(results)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("xcoordinates", data=[0.0])
    text = tmp_path / "notes.h5"
    text.write_text("notes")
    for target in (results, foreign, text):
        before = target.read_bytes()
        with pytest.raises(ResultFileError) as e:
            merge_shards(parts, target)
        assert "\n" not in str(e.value) and str(target) in str(e.value)
        with pytest.raises(ResultFileError) as e:
            _compute(target, case, dirs)
        assert "\n" not in str(e.value)
        assert target.read_bytes() == before


def test_full_disk_at_creation_leaves_no_file(tmp_path, monkeypatch):
    import errno

    from geomkit.geometry.landscape import storage

    def full(directions):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "directions_sha256", full)
    case, dirs = _case()
    path = tmp_path / "surf.h5"
    with pytest.raises(ResultFileError) as e:
        _compute(path, case, dirs)
    assert str(e.value) == f"cannot write {path}: no space left on device"
    assert list(tmp_path.iterdir()) == []


def test_damaged_landscape_file_is_one_line(tmp_path):
    case, dirs = _case()
    path = tmp_path / "surf.h5"
    _compute(path, case, dirs)
    data = bytearray(path.read_bytes())
    at = data.find(b"GCOL")  # the global heap of the string attributes
    assert at > 0
    data[at:at + 8] = b"\xff" * 8
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    with pytest.raises(ResultFileError) as e:
        read_landscape(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_the_loss_reaches_the_surface_and_its_spec(tmp_path):
    from geomkit.geometry.landscape import evaluate_points

    case, dirs = _case()
    coords = GRID.coords(np.arange(GRID.size))
    plain = _compute(tmp_path / "ce.h5", case, dirs)
    with h5py.File(tmp_path / "ce.h5") as f:
        ce_spec = f.attrs["spec"]
    assert "loss" not in str(ce_spec)  # files from before the loss was an option still match
    for loss in ("mse", "ce:0.1", "bce"):
        path = tmp_path / f"{loss.replace(':', '_')}.h5"
        res = _compute(path, case, dirs, loss=loss)
        want, _ = evaluate_points(case.model, case.inputs, case.targets, dirs, coords, loss=loss)
        np.testing.assert_allclose(res.loss.reshape(-1), want, rtol=1e-6, atol=1e-7)
        assert not np.allclose(res.loss, plain.loss)
        before = path.read_bytes()
        with pytest.raises(ResultFileError, match="another spec"):
            _compute(path, case, dirs, loss="ce")
        assert path.read_bytes() == before
    # a loss named as ce with smoothing zero is plain ce: the same file resumes
    same = _compute(tmp_path / "ce.h5", case, dirs, loss="ce:0")
    np.testing.assert_array_equal(same.loss, plain.loss)
    with pytest.raises(SpecError, match="unknown loss"):
        _compute(tmp_path / "x.h5", case, dirs, loss="hinge")
    assert not (tmp_path / "x.h5").exists()


def test_callable_losses_are_told_apart_in_the_spec():
    import functools

    import torch.nn.functional as F

    from geomkit.geometry.landscape.storage import loss_spec

    a = loss_spec(functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.1))
    b = loss_spec(functools.partial(F.cross_entropy, reduction="none", label_smoothing=0.3))
    assert a != b and "label_smoothing=0.1" in a["loss"]
    assert a == loss_spec(functools.partial(F.cross_entropy, reduction="none",
                                            label_smoothing=0.1))  # stable across calls
    with pytest.raises(SpecError, match="cannot be told apart"):
        loss_spec(lambda z, y: F.cross_entropy(z, y, reduction="none"))
