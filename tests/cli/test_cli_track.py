"""`geomkit train --track`: a track file beside the checkpoint, resumed with the run;
mistakes in the tracking flags are one line and exit code 2 before anything trains."""

from __future__ import annotations

import pytest

from cli.main import main
from geomkit.io.track import read_track

FAST = ["--data", "synthetic", "--model", "vit-tiny", "--model-arg", "depth=1",
        "--model-arg", "embed_dim=16", "--epochs", "2", "--batch-size", "64",
        "--no-progress"]


def _run(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_track_writes_the_series_and_resume_continues_it(tmp_path, capsys):
    out = tmp_path / "r"
    rc, _, err = _run(capsys, "train", *FAST, "--epochs", "1", "--track-every", "2",
                      "--track-samples", "32", "--track-test-samples", "0",
                      "--track-blocks", "paper", "--track-sharpness", "avg", "--out", str(out))
    assert rc == 0, err
    t = read_track(out / "track.h5")
    assert list(t.sharpness) == ["avg"] and len(t.sharpness["avg"]) == len(t)
    n1 = len(t)
    assert n1 >= 1 and t.settings["every"] == 2 and t.settings["probe_samples"] == 32
    assert {"attn", "mlp"} <= set(t.blocks)
    assert t.optimizer == "adamw" and not t.sam
    # a finished run is not tracked again; a longer one continues the series
    rc, _, err = _run(capsys, "train", "--out", str(out), "--resume", "--no-progress",
                      "--track-every", "2", "--track-samples", "32",
                      "--track-test-samples", "0", "--track-blocks", "paper",
                      "--track-sharpness", "avg")
    assert rc == 0, err
    assert len(read_track(out / "track.h5")) == n1


@pytest.mark.parametrize("argv, msg", [
    (["--track-blocks", "paper"], "--track-blocks needs --track"),
    (["--track-sharpness", "worst"], "--track-sharpness needs --track"),
    (["--track", "--track-sharpness", "max"], "unknown measure 'max'"),
    (["--track-every", "0"], "--track-every: expected a positive integer"),
    (["--track", "--track-tol", "1.5"], "--track-tol: expected a number between 0 and 1"),
    (["--track", "--track-samples", "-3"], "--track-samples: expected a positive integer"),
])
def test_bad_tracking_flags_are_one_line(tmp_path, capsys, argv, msg):
    rc, _, err = _run(capsys, "train", *FAST, *argv, "--out", str(tmp_path / "r"))
    assert rc == 2 and msg in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_foreign_track_file_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "track.h5").write_text("my notes")
    rc, _, err = _run(capsys, "train", *FAST, "--track", "--out", str(out))
    assert rc == 2 and "refusing to replace" in err and err.count("\n") == 1
    assert not (out / "last.pt").exists()
    assert (out / "track.h5").read_text() == "my notes"
