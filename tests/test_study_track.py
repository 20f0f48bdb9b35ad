"""A study with ``[track]``: every trained run tracks λ_max and keeps snapshots; the
report draws "sharpness during training" and the trajectory landscapes; a rerun
recomputes nothing; bad ``[track]`` settings are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geomkit.errors import SpecError
from geomkit.io.track import read_track
from geomkit.plot import read_trajectory
from geomkit.study import load_study_config, open_study, run_study, study_config_from_dict
from tests.test_study import MICRO, _mtimes

TRACKED = MICRO.replace("[train]\nepochs = 1", "[train]\nepochs = 2") + """
[track]
every = 1
samples = 8
test_samples = 8
snapshot_every = 1
trajectory_grid = 3
"""


@pytest.mark.slow
def test_a_tracked_study_draws_sharpness_during_training_and_trajectories(tmp_path: Path):
    cfg_path = tmp_path / "tracked.toml"
    cfg_path.write_text(TRACKED)
    out = tmp_path / "study"
    r = run_study(load_study_config(cfg_path).replace(threads=1), out, progress=False)
    view = open_study(out)
    for row in view.rows:
        t = read_track(row["track"])
        assert t.columns["step"].tolist() == [1, 2, 3, 4]  # 48 examples / batch 24, 2 epochs
        assert np.isfinite(t.columns["lambda_max"]).all()
        assert t.settings["probe_samples"] == 8
        tr = read_trajectory(row["trajectory"])
        assert tr is not None and len(tr.a) == 3  # initial weights and 2 epochs
    assert {"sharpness_training", "trajectories"} <= set(r.figures)
    md = r.report.read_text()
    assert "![sharpness_training](figures/sharpness_training.png)" in md
    assert "`runs/<run>/track.h5`" in md and "`runs/<run>/snapshots.h5`" in md
    before = _mtimes(out)
    run_study(cfg_path, out, progress=False)
    assert _mtimes(out) == before  # tracks, snapshots and trajectory surfaces reused


@pytest.mark.parametrize("track, match", [
    ({"every": -1}, r"\[track\] every must be an integer >= 0"),
    ({"evry": 5}, r"unknown \[track\] key\(s\) evry"),
    ({"tol": 3}, r"\[track\] tol must be a number in \(0, 1\)"),
    ({"every": 5, "samples": 10**6}, r"\[track\] samples 1000000 is more than"),
])
def test_bad_track_settings_are_refused(track, match):
    with pytest.raises(SpecError, match=match):
        study_config_from_dict({"name": "t", "models": ["vit-tiny"], "track": track})
