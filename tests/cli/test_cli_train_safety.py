"""`geomkit train` never replaces a run, never silently ignores a contradicting flag on
--resume, refuses bf16 where it would not be used, and ends a divergence in one line with
the last finite checkpoint kept."""

import math

import pytest
import torch

from cli.main import main
from geomkit.checkpoint import load_checkpoint

FAST = ["--data", "digits", "--epochs", "1", "--batch-size", "256", "--no-progress"]


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def run_dir(tmp_path, capsys):
    rc, _, err = _run(capsys, "train", "--model", "vit-tiny", "--out", str(tmp_path / "r"),
                      *FAST)
    assert rc == 0, err
    return tmp_path / "r"


def test_train_refuses_to_replace_a_run(run_dir, capsys):
    before = (run_dir / "last.pt").read_bytes()
    rc, _, err = _run(capsys, "train", "--model", "resnet-tiny", "--out", str(run_dir), *FAST)
    assert rc == 2 and err.count("\n") == 1 and "already holds a run of vit-tiny" in err
    assert "--resume" in err and (run_dir / "last.pt").read_bytes() == before


def test_resume_refuses_contradicting_flags(run_dir, capsys):
    before = (run_dir / "last.pt").read_bytes()
    rc, _, err = _run(capsys, "train", "--model", "resnet-tiny", "--lr", "0.1", "--out",
                      str(run_dir), "--resume", "--no-progress")
    assert rc == 2 and err.count("\n") == 1
    assert "model='resnet-tiny'" in err and "lr=0.1" in err
    assert (run_dir / "last.pt").read_bytes() == before
    # flags left at their defaults do not contradict: the finished run is returned
    rc, _, err = _run(capsys, "train", "--out", str(run_dir), "--resume", "--no-progress")
    assert rc == 0, err


def test_out_that_is_a_file(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    rc, _, err = _run(capsys, "train", "--out", str(notes), *FAST)
    assert rc == 2 and "is a file" in err and notes.read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks bf16 without CUDA")
def test_bf16_without_cuda_is_refused(tmp_path, capsys):
    rc, _, err = _run(capsys, "train", "--bf16", "--out", str(tmp_path / "b"), *FAST)
    assert rc == 2 and "--bf16" in err and "CUDA" in err
    assert not (tmp_path / "b" / "last.pt").exists()


def test_divergence_is_one_line_and_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    rc, _, err = _run(capsys, "train", "--model", "vit-tiny", "--optimizer", "sgd", "--lr",
                      "1e6", "--grad-clip", "0", "--out", str(tmp_path / "d"), *FAST)
    assert rc == 2 and err.count("\n") == 1 and "diverged" in err and "--lr" in err
    assert "Traceback" not in err


def test_divergence_after_an_epoch_keeps_the_finite_epoch(tmp_path, monkeypatch, capsys):
    from geomkit.train import loop

    calls = {"n": 0}
    real = loop.evaluate

    def nan_in_epoch_2(*a, **kw):
        calls["n"] += 1
        loss, acc = real(*a, **kw)
        return (math.nan, acc) if calls["n"] == 2 else (loss, acc)

    monkeypatch.setattr(loop, "evaluate", nan_in_epoch_2)
    out = tmp_path / "e"
    rc, _, err = _run(capsys, "train", "--model", "vit-tiny", "--out", str(out), "--data",
                      "digits", "--epochs", "2", "--batch-size", "256", "--no-progress")
    assert rc == 2 and "epoch 2" in err and "epoch 1, the last finite one" in err
    ck = load_checkpoint(out / "last.pt")
    assert ck.epoch == 1 and math.isfinite(ck.metrics["test_loss"])
