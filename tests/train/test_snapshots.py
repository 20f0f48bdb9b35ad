"""SnapshotWriter: the weights every E epochs (and the initial and final ones) in one file,
equal in content after a kill and a resume to an uninterrupted run's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from geomkit.checkpoint import load_checkpoint
from geomkit.errors import ResultFileError, SpecError
from geomkit.io.snapshots import read_snapshots
from geomkit.train import train
from geomkit.train.snapshots import SnapshotWriter, flat_parameters
from tests.train.tiny import DATA as _DATA
from tests.train.tiny import tiny_cfg

DATA = {**_DATA, "synthetic_train": 64}


def _cfg(**kw):
    return tiny_cfg(**({"data": DATA} | kw))


def _content(path):
    s = read_snapshots(path)
    return s, np.stack([s.row(i) for i in range(len(s))])


def test_every_e_epochs_the_initial_and_the_final_weights(tmp_path):
    out = tmp_path / "run"
    res = train(_cfg(), out, progress=False, callbacks=[SnapshotWriter(out, 2)])
    s, theta = _content(out)
    assert s.epochs.tolist() == [0, 2, 3] and s.steps.tolist() == [0, 4, 6]
    assert s.model == "vit-tiny" and s.attrs["every_epochs"] == 2
    names, shapes, final = flat_parameters(load_checkpoint(res.checkpoint).model)
    assert list(s.names) == names and [tuple(x) for x in s.shapes] == shapes
    np.testing.assert_array_equal(theta[-1], final)  # the final weights, bit for bit
    assert s.params(2)["cls_token"].shape == (1, 1, 16)
    np.testing.assert_array_equal(s.columns(5, 9), theta[:, 5:9])


def test_snapshot_zero_is_the_loops_own_initialisation(tmp_path):
    # lr 1e-30: one epoch of SGD leaves every weight as initialised (in float32)
    out = tmp_path / "run"
    train(_cfg(epochs=1, optimizer="sgd", lr=1e-30, weight_decay=0.0, warmup_epochs=0.0),
          out, progress=False, callbacks=[SnapshotWriter(out, 1)])
    s, theta = _content(out)
    assert s.epochs.tolist() == [0, 1]
    np.testing.assert_allclose(theta[0], theta[1], rtol=0, atol=1e-12)


class _Stop:
    """Interrupts the run after the epoch event of ``epoch`` (after the snapshot)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, e):
        if e.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("kill", ["between_checkpoint_and_snapshot", "after_a_later_row"])
def test_a_resumed_run_gives_the_uninterrupted_file(tmp_path, monkeypatch, kill):
    ref = tmp_path / "ref"
    train(_cfg(), ref, progress=False, callbacks=[SnapshotWriter(ref, 1)])
    s_ref, t_ref = _content(ref)
    out = tmp_path / "run"
    if kill == "between_checkpoint_and_snapshot":
        from geomkit.train import loop

        orig = loop.save_checkpoint

        def save_then_die(path, model, **kw):
            orig(path, model, **kw)
            if kw["epoch"] == 2:  # epoch 2's checkpoint is written, its snapshot is not
                raise KeyboardInterrupt

        monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(), out, progress=False, callbacks=[SnapshotWriter(out, 1)])
        monkeypatch.setattr(loop, "save_checkpoint", orig)
        assert read_snapshots(out).epochs.tolist() == [0, 1]
    else:
        # the file holds epoch 2 while the run resumes from epoch 1's checkpoint
        keep = tmp_path / "epoch1.pt"

        def copy_first(e):
            if e.epoch == 1:
                shutil.copy(out / "last.pt", keep)

        with pytest.raises(KeyboardInterrupt):
            train(_cfg(), out, progress=False,
                  callbacks=[SnapshotWriter(out, 1), copy_first, _Stop(2)])
        shutil.copy(keep, out / "last.pt")
        assert read_snapshots(out).epochs.tolist() == [0, 1, 2]
    train(_cfg(), out, resume=True, progress=False, callbacks=[SnapshotWriter(out, 1)])
    s, t = _content(out)
    assert s.epochs.tolist() == s_ref.epochs.tolist() == [0, 1, 2, 3]
    assert s.steps.tolist() == s_ref.steps.tolist()
    np.testing.assert_array_equal(t, t_ref)
    assert s.names == s_ref.names and s.shapes == s_ref.shapes


def test_a_run_started_afresh_replaces_the_old_snapshots(tmp_path):
    out = tmp_path / "run"
    train(_cfg(epochs=2), out, progress=False, callbacks=[SnapshotWriter(out, 1)])
    train(_cfg(epochs=2, seed=5), out, overwrite=True, progress=False,
          callbacks=[SnapshotWriter(out, 2)])
    s, theta = _content(out)
    assert s.epochs.tolist() == [0, 2]
    from geomkit.models import build

    kwargs = load_checkpoint(out / "last.pt").model_kwargs  # (loading draws random numbers)
    torch.manual_seed(5)
    m0 = build("vit-tiny", **kwargs)
    np.testing.assert_array_equal(theta[0], flat_parameters(m0)[2])


def test_bad_arguments_and_files(tmp_path):
    with pytest.raises(SpecError, match="positive"):
        SnapshotWriter(tmp_path, 0)
    with pytest.raises(ResultFileError, match="no such snapshots file"):
        read_snapshots(tmp_path)
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["format"] = "geomkit-landscape-1"
    with pytest.raises(ResultFileError, match="not a geomkit snapshots file"):
        read_snapshots(tmp_path / "x.h5")
