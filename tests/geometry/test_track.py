"""Sharpness tracked during training: warm starts, preconditioned λ_max(P⁻¹H), the
edge-of-stability lines, SAM's free sharpness, the track file and its resume."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from geomkit.errors import ResultFileError, SpecError
from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.hessian import hessian_eigs
from geomkit.geometry.track import SharpnessTracker, adam_scale, eos_threshold
from geomkit.io.track import FLOAT_COLUMNS, INT_COLUMNS, read_track
from geomkit.train import train
from geomkit.train.sam import SAM, sam_step
from tests.cases import make_case
from tests.geometry._hessian_oracle import dense_hessian
from tests.train.tiny import DATA, TINY, tiny_cfg

_cfg = tiny_cfg


# ---------------------------------------------------------------------------- hessian_eigs
@pytest.mark.parametrize("name", ["mlp", "vit1"])
def test_scaled_eigenvalues_are_those_of_the_preconditioned_hessian(name, device):
    case = make_case(name, n=10)
    names = resolve_blocks(case.model, ("whole",))["whole"]
    H = dense_hessian(case.model, names, case.inputs, case.targets)
    g = torch.Generator().manual_seed(1)
    p = torch.rand(H.shape[0], generator=g, dtype=torch.float64) * 5 + 0.1  # P = diag(p)
    # λ(P⁻¹H): a non-symmetric matrix with real eigenvalues (similar to S H S)
    want = np.sort(scipy.linalg.eigvals((H / p[:, None]).numpy()).real)
    c = case.to(device)
    r = hessian_eigs(c.model, c.inputs, c.targets, blocks=("whole",), top_k=2, smallest=True,
                     tol=1e-10, scale={"whole": p.rsqrt().to(device)})
    got = r.blocks["whole"]
    assert got.eigenvalues[0] == pytest.approx(want[-1], rel=1e-7)
    assert got.eigenvalues[1] == pytest.approx(want[-2], rel=1e-6)
    assert got.lambda_min == pytest.approx(want[0], rel=1e-6, abs=1e-9)
    # and the unscaled run is H's own spectrum
    plain = hessian_eigs(c.model, c.inputs, c.targets, blocks=("whole",), tol=1e-10)
    assert plain.blocks["whole"].lambda_max == pytest.approx(
        float(torch.linalg.eigvalsh(H)[-1]), rel=1e-7)


def test_a_start_vector_near_the_eigenvector_converges_in_fewer_products():
    case = make_case("vit1", n=10)
    names = resolve_blocks(case.model, ("whole",))["whole"]
    H = dense_hessian(case.model, names, case.inputs, case.targets)
    evals, evecs = torch.linalg.eigh(H)
    cold = hessian_eigs(case.model, case.inputs, case.targets, tol=1e-8).blocks["whole"]
    g = torch.Generator().manual_seed(3)
    near = evecs[:, -1] + 1e-3 * torch.randn(H.shape[0], generator=g, dtype=torch.float64)
    warm = hessian_eigs(case.model, case.inputs, case.targets, tol=1e-8,
                        start={"whole": near}).blocks["whole"]
    assert warm.lambda_max == pytest.approx(float(evals[-1]), rel=1e-8)
    assert cold.lambda_max == pytest.approx(float(evals[-1]), rel=1e-8)
    assert warm.n_hvps < cold.n_hvps


def test_start_and_scale_are_checked():
    case = make_case("mlp", n=10)
    m, x, y = case.model, case.inputs, case.targets
    n = sum(p.numel() for p in m.parameters())
    with pytest.raises(SpecError, match="entries"):
        hessian_eigs(m, x, y, start={"whole": torch.ones(n + 1, dtype=torch.float64)})
    with pytest.raises(SpecError, match="zero"):
        hessian_eigs(m, x, y, start={"whole": torch.zeros(n, dtype=torch.float64)})
    with pytest.raises(SpecError, match="not measured"):
        hessian_eigs(m, x, y, start={"attn": torch.ones(n, dtype=torch.float64)})
    with pytest.raises(SpecError, match="positive"):
        hessian_eigs(m, x, y, scale={"whole": -torch.ones(n, dtype=torch.float64)})


# ---------------------------------------------------------------------------- thresholds
def _heavy_ball_diverges(lam: float, lr: float, beta: float, steps: int = 4000) -> bool:
    """torch's SGD (momentum β, dampening 0) on the 1-D quadratic λx²/2 from x = 1."""
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=beta)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * lam * x**2).sum().backward()
        opt.step()
    return not bool(x.abs() < 1.0)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_the_sgd_threshold_is_where_heavy_ball_becomes_unstable(beta):
    lr = 0.1
    x = torch.zeros(1, requires_grad=True)
    thr, pthr = eos_threshold(torch.optim.SGD([x], lr=lr, momentum=beta), lr)
    assert thr == pytest.approx((2 + 2 * beta) / lr) and math.isnan(pthr)
    assert not _heavy_ball_diverges(0.98 * thr, lr, beta)
    assert _heavy_ball_diverges(1.02 * thr, lr, beta)


def test_the_adam_threshold_and_sam_unwrapped():
    x = torch.zeros(1, requires_grad=True)
    thr, pthr = eos_threshold(torch.optim.AdamW([x], lr=1e-3, betas=(0.9, 0.999)), 1e-3)
    assert math.isnan(thr) and pthr == pytest.approx(38 / 1e-3)
    sam = SAM([x], torch.optim.SGD, rho=0.05, lr=0.2, momentum=0.9)
    assert eos_threshold(sam, 0.2)[0] == pytest.approx(3.8 / 0.2)
    assert eos_threshold(sam, 0.0)[0] == math.inf


def test_adam_scale_is_the_inverse_square_root_of_adams_own_denominator():
    """Adam (no weight decay) moves each weight by −lr·m̂/(√v̂ + ε): with the state after a
    step, −Δ/(lr·m̂) must equal S² = 1/(√v̂ + ε) entry by entry."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-3,
                            weight_decay=0.0)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    names = [n for n, _ in model.named_parameters()]
    assert adam_scale(model, opt, names) is None  # no state before the first step
    for _ in range(3):
        before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    st = [opt.state[p] for p in model.parameters()]
    t = float(st[0]["step"])
    m_hat = torch.cat([s["exp_avg"].reshape(-1) for s in st]) / (1 - 0.8**t)
    s = adam_scale(model, opt, names)
    torch.testing.assert_close(-(after - before) / (1e-2 * m_hat), s**2, rtol=1e-9, atol=0)
    assert adam_scale(model, torch.optim.SGD(model.parameters(), lr=0.1), names) is None


# ---------------------------------------------------------------------------- SAM's loss
def test_sam_step_keeps_the_loss_at_the_perturbed_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    rho = 0.3
    w = [p.detach().clone() for p in model.parameters()]
    g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    with torch.no_grad():
        for p, wi, gi in zip(model.parameters(), w, g, strict=True):
            p.copy_(wi + rho * gi / norm)
        want = F.cross_entropy(model(x), y).item()
        for p, wi in zip(model.parameters(), w, strict=True):
            p.copy_(wi)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1)
    assert opt.perturbed_loss is None
    loss = sam_step(model, opt, lambda: F.cross_entropy(model(x), y))
    assert opt.perturbed_loss.item() == pytest.approx(want, rel=1e-12)
    assert opt.perturbed_loss.item() > loss.item()


# ---------------------------------------------------------------------------- the tracker
@pytest.mark.parametrize("optimizer", ["adamw", "sam", "sgd"])
def test_tracking_during_training(tmp_path, optimizer):
    tr = SharpnessTracker(48, every=2, test=16, out=tmp_path / "run" / "track.h5",
                          cold_check=True, tol=1e-4)
    plain = train(_cfg(optimizer=optimizer), tmp_path / "plain", progress=False)
    tracked = train(_cfg(optimizer=optimizer), tmp_path / "run", progress=False, callbacks=[tr])
    from geomkit.checkpoint import load_checkpoint

    a, b = (load_checkpoint(r.checkpoint).model.state_dict() for r in (plain, tracked))
    assert all(torch.equal(a[k], b[k]) for k in a)  # tracking changed nothing trained
    t = read_track(tmp_path / "run" / "track.h5")
    c = t.columns
    assert c["step"].tolist() == [2, 4, 6, 8] and len(t) == 4
    assert set(c) == set(INT_COLUMNS + FLOAT_COLUMNS)
    assert t.label == f"vit-tiny/{'sam' if optimizer == 'sam' else 'vanilla'}"
    assert t.sam == (optimizer == "sam")
    assert t.settings["probe_samples"] == 48 and t.settings["every"] == 2
    # warm-started λ_max equals a cold start's to the tolerance, never costing more
    np.testing.assert_allclose(c["lambda_max"], c["cold_lambda_max"], rtol=2e-4)
    assert (c["hvps"] > 0).all() and c["hvps"].sum() <= c["cold_hvps"].sum()
    assert np.isfinite(c["train_loss"]).all() and np.isfinite(c["test_acc"]).all()
    base = "sgd" if optimizer == "sgd" else "adamw"  # vit's SAM wraps AdamW
    if base == "adamw":
        assert np.isnan(c["threshold"]).all()
        np.testing.assert_allclose(c["precond_threshold"], 38 / c["lr"])
        assert (c["precond_lambda_max"] > c["lambda_max"]).all()  # lr-free units: P ≪ 1
    else:
        np.testing.assert_allclose(c["threshold"], 3.8 / c["lr"])
        assert np.isnan(c["precond_lambda_max"]).all()
    if optimizer == "sam":
        assert np.isfinite(c["sam_sharpness"]).all()
    else:
        assert np.isnan(c["sam_sharpness"]).all()


def test_the_tracked_values_are_the_measurement_at_those_weights(tmp_path):
    """The row of step 9 (the last) is hessian_eigs on the final weights and probe set."""
    from geomkit.checkpoint import load_checkpoint
    from geomkit.data import DataSpec, load_split

    tr = SharpnessTracker(40, every=9, tol=1e-6)
    r = train(_cfg(optimizer="sgd"), tmp_path / "run", progress=False, callbacks=[tr])
    model = load_checkpoint(r.checkpoint).model
    x, y = load_split(DataSpec.from_dict(DATA), "train")
    want = hessian_eigs(model, x[:40], y[:40], tol=1e-6).blocks["whole"].lambda_max
    assert tr.rows[-1]["step"] == 9
    assert tr.rows[-1]["lambda_max"] == pytest.approx(want, rel=1e-5)


def test_blocks_are_tracked_beside_the_whole_model(tmp_path):
    tr = SharpnessTracker(32, every=3, blocks=("paper",), out=tmp_path / "r" / "track.h5")
    train(_cfg(epochs=1), tmp_path / "r", progress=False, callbacks=[tr])
    t = read_track(tmp_path / "r" / "track.h5")
    assert {"embedding", "attn", "mlp"} <= set(t.blocks)
    for v in t.blocks.values():
        assert len(v) == len(t) and (v <= t.columns["lambda_max"][0] * (1 + 1e-3)).all()


_KILL = textwrap.dedent("""
    import os, signal, sys
    from geomkit.geometry.track import SharpnessTracker
    from geomkit.train import TrainConfig, train
    cfg = TrainConfig(**{cfg!r})
    tr = SharpnessTracker(40, every=2, test=16, out=sys.argv[1] + "/track.h5")
    class Kill:
        every = 1
        def __call__(self, e):
            if e.step == {kill}:
                os.kill(os.getpid(), signal.SIGKILL)
    train(cfg, sys.argv[1], resume=True, progress=False, callbacks=[tr, Kill()])
""")


_KILL_CFG = dict(model="vit-tiny", model_kwargs=TINY, data=DATA, epochs=3, batch_size=32,
                 warmup_epochs=0.5)


def _run_script(tmp, out, kill_at):
    script = tmp / f"kill{kill_at}.py"
    script.write_text(_KILL.format(cfg=_KILL_CFG, kill=kill_at))
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, str(script), str(out)], env=env,
                          capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted_track(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    p = _run_script(tmp, tmp / "ref", -1)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return read_track(tmp / "ref" / "track.h5")


@pytest.mark.slow
@pytest.mark.parametrize("kill", [5, 7])
def test_tracking_resumes_after_sigkill_with_the_uninterrupted_series(tmp_path, kill,
                                                                      uninterrupted_track):
    """Killed at step 5 (row 4 written after the checkpoint of step 3) or 7 (after the
    epoch-2 checkpoint at step 6; rows 2, 4, 6 kept): the resumed series equals an
    uninterrupted run's, every column but the timing bit for bit. (All runs are
    subprocesses: the same threads, so the same float32 reductions.)"""
    run = tmp_path / "run"
    p = _run_script(tmp_path, run, kill)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    assert read_track(run / "track.h5").columns["step"].max() == kill - 1
    p = _run_script(tmp_path, run, -1)  # the resume
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    a, b = read_track(run / "track.h5"), uninterrupted_track
    assert a.columns["step"].tolist() == [2, 4, 6, 8]
    for k in INT_COLUMNS + FLOAT_COLUMNS:
        if k != "seconds":
            np.testing.assert_array_equal(a.columns[k], b.columns[k], err_msg=k)


class _Stop:
    every = 1

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, e) -> None:
        if e.kind == "step" and e.step == self.at:
            raise KeyboardInterrupt


def test_a_resume_with_other_settings_is_refused(tmp_path):
    run = tmp_path / "run"
    tr = SharpnessTracker(32, every=2, out=run / "track.h5")
    with pytest.raises(KeyboardInterrupt):  # after the epoch-1 checkpoint (step 3)
        train(_cfg(), run, progress=False, callbacks=[tr, _Stop(5)])
    tr2 = SharpnessTracker(32, every=1, out=run / "track.h5")
    with pytest.raises(SpecError, match="other settings.*every"):
        train(_cfg(), run, resume=True, progress=False, callbacks=[tr2])
    assert read_track(run / "track.h5").columns["step"].tolist() == [2, 4]  # untouched


def test_bad_tracker_settings_and_a_foreign_out_are_refused(tmp_path):
    with pytest.raises(SpecError, match="every"):
        SharpnessTracker(8, every=0)
    with pytest.raises(SpecError, match="tol"):
        SharpnessTracker(8, every=1, tol=2.0)
    with pytest.raises(SpecError, match="probe"):
        SharpnessTracker(0, every=1)
    with pytest.raises(SpecError, match="measure directly"):
        SharpnessTracker(8, every=1).measure(torch.nn.Linear(2, 2), None, step=1)
    other = tmp_path / "notes.h5"
    other.write_text("not hdf5")
    with pytest.raises(ResultFileError, match="refusing to replace"):
        SharpnessTracker(8, every=1, out=other)


def test_sharpness_measures_are_tracked_as_the_measurement_at_those_weights(tmp_path):
    from geomkit.checkpoint import load_checkpoint
    from geomkit.data import DataSpec, load_split
    from geomkit.geometry.sharpness import sharpness

    kw = {"kind": "worst", "adaptive": True, "m": 16, "steps": 3}
    tr = SharpnessTracker(32, every=3, out=tmp_path / "r" / "track.h5",
                          sharpness={"worst": kw, "avg": {"kind": "avg", "m": 16}})
    r = train(_cfg(epochs=1, optimizer="sgd"), tmp_path / "r", progress=False, callbacks=[tr])
    t = read_track(tmp_path / "r" / "track.h5")
    assert set(t.sharpness) == {"worst", "avg"} and len(t.sharpness["worst"]) == len(t) == 1
    x, y = load_split(DataSpec.from_dict(DATA), "train")
    model = load_checkpoint(r.checkpoint).model  # step 3 = the end of the one epoch
    want = sharpness(model, x[:32], y[:32], **kw).blocks["whole"].value
    assert t.sharpness["worst"][0] == pytest.approx(want, rel=1e-5)
    assert t.sharpness["worst"][0] > 0
    with pytest.raises(SpecError, match="passes the model"):
        SharpnessTracker(8, every=1, sharpness={"x": {"model": None}})


def test_a_bce_run_is_tracked_with_its_own_loss(tmp_path):
    from geomkit.checkpoint import load_checkpoint
    from geomkit.data import DataSpec, load_split

    tr = SharpnessTracker(32, every=3, tol=1e-6, out=tmp_path / "r" / "track.h5")
    r = train(_cfg(epochs=1, optimizer="sgd", loss="bce"), tmp_path / "r", progress=False,
              callbacks=[tr])
    t = read_track(tmp_path / "r" / "track.h5")
    assert t.settings["loss"] == "bce"
    x, y = load_split(DataSpec.from_dict(DATA), "train")
    model = load_checkpoint(r.checkpoint).model
    bce = hessian_eigs(model, x[:32], y[:32], loss="bce", tol=1e-6).blocks["whole"]
    ce = hessian_eigs(model, x[:32], y[:32], tol=1e-6).blocks["whole"]
    assert t.columns["lambda_max"][-1] == pytest.approx(bce.lambda_max, rel=1e-5)
    assert abs(bce.lambda_max - ce.lambda_max) > 1e-3 * ce.lambda_max  # the test can fail
