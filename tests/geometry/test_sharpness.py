"""Sharpness (avg / sam / worst m-sharpness) against exact answers.

Oracles:

- an exactly quadratic loss: a bias-free float64 ``nn.Linear(d, k)`` at the minimum of a
  squared error (targets ``Y = X Wᵀ``), whose batch Hessian w.r.t. the row-major weight is
  ``kron(I_k, 2/m X_Sᵀ X_S)`` (built from X and checked against a double backward).  There
  ``E[S_avg] = ρ² tr(CHC)/2``, the ℓ2 worst case is ``ρ² λ_max(CHC)/2``, the ℓ∞ worst case
  of a diagonal quadratic is ``ρ² Σ h_i c_i²/2`` and that of any PSD quadratic is the
  largest value at the 2^n box vertices;
- a small tanh MLP with cross-entropy: SAM's value recomputed by hand from a manual
  gradient, the worst case never below SAM's value nor below random feasible points;
- bookkeeping: the model restored bit for bit (also on error), blocks, seeds, m-batching,
  option errors, the APGD schedule and BatchNorm's mode.
"""

from __future__ import annotations

import copy
import itertools
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomkit.errors import SpecError
from geomkit.geometry.sharpness import apgd_checkpoints, default_rho, sharpness

DT = torch.float64


def mse(out, t):
    return (out - t).square().sum(-1)


def ce(out, t):
    return F.cross_entropy(out, t, reduction="none")


# -- the quadratic oracle ---------------------------------------------------------------------


def _quadratic(X, W):
    """A bias-free Linear holding W and the targets Y = X Wᵀ (the loss's minimum)."""
    k, d = W.shape
    lin = nn.Linear(d, k, bias=False).to(DT)
    with torch.no_grad():
        lin.weight.copy_(W)
    return lin, X @ W.T


def _hessian(X, k):
    """Hessian of the mean squared error over the rows of X w.r.t. the row-major weight."""
    return torch.kron(torch.eye(k, dtype=DT), 2.0 / len(X) * X.T @ X)


def _double_backward_hessian(lin, X, Y):
    """The same Hessian by autograd: one double backward per weight coordinate."""
    w = lin.weight.detach().clone().requires_grad_(True)
    loss = mse(F.linear(X, w), Y).mean()
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    g = g.reshape(-1)
    rows = [torch.autograd.grad(g[i], w, retain_graph=True)[0].reshape(-1)
            for i in range(g.numel())]
    return torch.stack(rows).detach()


def _design(n, scales, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(scales), generator=g, dtype=DT) * torch.tensor(scales, dtype=DT)


def _weights(k, d, seed):
    """Weights of distinct magnitudes, none near zero (c = |W| for the adaptive cases)."""
    g = torch.Generator().manual_seed(seed)
    mag = 0.3 + torch.rand(k, d, generator=g, dtype=DT)
    sign = torch.where(torch.rand(k, d, generator=g, dtype=DT) < 0.5, -1.0, 1.0).to(DT)
    return mag * sign


def test_quadratic_hessian_oracle_matches_double_backward():
    X = _design(20, [3, 2, 1.5, 1, 0.7, 0.5], 0)
    lin, Y = _quadratic(X, _weights(2, 6, 1))
    torch.testing.assert_close(_double_backward_hessian(lin, X, Y), _hessian(X, 2),
                               rtol=1e-12, atol=1e-12)
    # at the minimum: zero loss and zero gradient
    loss = mse(lin(X), Y).mean()
    (g,) = torch.autograd.grad(loss, lin.weight)
    assert float(loss.detach()) < 1e-28 and float(g.abs().max()) < 1e-14


@pytest.mark.parametrize("adaptive", [False, True])
def test_avg_quadratic_matches_trace(adaptive):
    d, k, n, m, draws, rho = 6, 2, 64, 16, 64, 0.05
    X = _design(n, [3, 2, 1.5, 1, 0.7, 0.5], 2)
    W = _weights(k, d, 3)
    lin, Y = _quadratic(X, W)
    c = W.abs().reshape(-1) if adaptive else torch.ones(k * d, dtype=DT)
    C = torch.diag(c)
    expect, sigma = [], []
    for s in range(0, n - m + 1, m):
        A = C @ _hessian(X[s : s + m], k) @ C
        expect.append(rho**2 * float(torch.trace(A)) / 2)
        # δ = ρ C z: Var(ρ²/2 zᵀAz) = ρ⁴ tr(A²)/2 per draw
        sigma.append(rho**2 / 2 * math.sqrt(2 * float(torch.trace(A @ A)) / draws))
    r = sharpness(lin, X, Y, kind="avg", rho=rho, adaptive=adaptive, m=m, draws=draws,
                  loss=mse)
    b = r.blocks["whole"]
    assert r.n_batches == 4 and r.n_samples == 64 and len(b.per_batch) == 4
    assert b.n_params == k * d
    assert math.isfinite(b.stderr) and b.stderr > 0
    target = sum(expect) / len(expect)
    assert abs(b.value - target) <= 3 * b.stderr, (b.value, target, b.stderr)
    # each batch within 4 exact standard deviations of its own expectation
    for v, e, sd in zip(b.per_batch, expect, sigma, strict=True):
        assert abs(v - e) <= 4 * sd, (v, e, sd)
    # several batches: the standard error is over the batches' values
    pb = b.per_batch
    mu = sum(pb) / len(pb)
    se = math.sqrt(sum((v - mu) ** 2 for v in pb) / (len(pb) - 1) / len(pb))
    assert b.stderr == pytest.approx(se, rel=1e-12)
    assert b.value == pytest.approx(mu, rel=1e-12)
    # the clean loss is the minimum (0) and L^N = L + S_avg
    assert abs(b.loss) < 1e-28
    assert b.perturbed_loss == pytest.approx(b.loss + b.value, rel=1e-12, abs=1e-15)
    assert math.isnan(b.radius)
    # the cost: one clean forward and one per draw, per batch
    assert (b.n_forward, b.n_backward) == (4 * (1 + draws), 0)


def test_avg_quadratic_one_batch_stderr_over_draws():
    d, k, n, draws, rho = 6, 2, 40, 64, 0.05
    X = _design(n, [3, 2, 1.5, 1, 0.7, 0.5], 4)
    lin, Y = _quadratic(X, _weights(k, d, 5))
    A = _hessian(X, k)
    expect = rho**2 * float(torch.trace(A)) / 2
    sigma = rho**2 / 2 * math.sqrt(2 * float(torch.trace(A @ A)) / draws)
    b = sharpness(lin, X, Y, kind="avg", rho=rho, m=n, draws=draws, loss=mse).blocks["whole"]
    assert math.isfinite(b.stderr) and b.stderr > 0
    assert abs(b.value - expect) <= 3 * b.stderr, (b.value, expect, b.stderr)
    assert abs(b.value - expect) <= 4 * sigma, (b.value, expect, sigma)
    # the draws' standard error estimates the exact one (64 draws: well within 2x)
    assert 0.5 * sigma < b.stderr < 2 * sigma, (b.stderr, sigma)


def test_worst_l2_quadratic_reaches_top_eigenvalue():
    d, k, n, rho = 6, 2, 40, 0.1
    X = _design(n, [3, 2, 1.5, 1, 0.7, 0.5], 6)
    lin, Y = _quadratic(X, _weights(k, d, 7))
    lam = float(torch.linalg.eigvalsh(_hessian(X, k))[-1])
    bound = rho**2 * lam / 2
    r = sharpness(lin, X, Y, kind="worst", p="2", rho=rho, m=n, loss=mse)
    b = r.blocks["whole"]
    assert r.n_batches == 1
    assert 0.99 * bound <= b.value <= bound * (1 + 1e-9), (b.value, bound)
    assert b.radius <= rho * (1 + 1e-6)
    assert b.perturbed_loss == pytest.approx(b.loss + b.value, rel=1e-12)


def test_worst_l2_adaptive_quadratic_reaches_scaled_top_eigenvalue():
    d, k, n, rho = 6, 2, 40, 0.3
    X = _design(n, [3, 2, 1.5, 1, 0.7, 0.5], 8)
    W = _weights(k, d, 9)
    lin, Y = _quadratic(X, W)
    C = torch.diag(W.abs().reshape(-1))
    lam = float(torch.linalg.eigvalsh(C @ _hessian(X, k) @ C)[-1])
    bound = rho**2 * lam / 2
    b = sharpness(lin, X, Y, kind="worst", p="2", rho=rho, adaptive=True, m=n,
                  loss=mse).blocks["whole"]
    # ‖δ ⊘ c‖₂ ≤ ρ
    assert b.radius <= rho * (1 + 1e-6), (b.radius, rho)
    assert 0.99 * bound <= b.value <= bound * (1 + 1e-9), (b.value, bound)


def _diagonal_design(scales, copies):
    """Rows ±s_j e_j, each repeated: XᵀX = diag(2·copies·s²) exactly."""
    d = len(scales)
    eye = torch.diag(torch.tensor(scales, dtype=DT))
    return torch.cat([eye * (-1) ** i for i in range(2 * copies)])[torch.randperm(
        2 * copies * d, generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_linf_diagonal_quadratic_exact(adaptive):
    k, rho = 3, 0.01
    X = _diagonal_design([2.0, 1.3, 0.9, 0.6, 0.25], 2)
    W = _weights(k, X.shape[1], 10)
    lin, Y = _quadratic(X, W)
    H = _hessian(X, k)
    assert torch.count_nonzero(H - torch.diag(torch.diag(H))) == 0
    c = W.abs().reshape(-1) if adaptive else torch.ones(W.numel(), dtype=DT)
    expect = rho**2 * float((torch.diag(H) * c**2).sum()) / 2
    b = sharpness(lin, X, Y, kind="worst", p="inf", rho=rho, adaptive=adaptive, m=len(X),
                  loss=mse).blocks["whole"]
    assert b.value == pytest.approx(expect, rel=1e-9)
    assert b.radius <= rho * (1 + 1e-12)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_worst_linf_box_vertex_brute_force(seed, adaptive):
    g = torch.Generator().manual_seed(11)
    mix = torch.randn(4, 4, generator=g, dtype=DT)
    X = torch.randn(24, 4, generator=g, dtype=DT) @ mix  # correlated columns
    W = _weights(1, 4, 12)
    lin, Y = _quadratic(X, W)
    H = _hessian(X, 1)
    assert torch.count_nonzero(H - torch.diag(torch.diag(H))) > 0
    c = W.abs().reshape(-1) if adaptive else torch.ones(4, dtype=DT)
    rho = 0.02
    vertex = [rho**2 * float((c * torch.tensor(v, dtype=DT)) @ H
                             @ (c * torch.tensor(v, dtype=DT))) / 2
              for v in itertools.product((-1.0, 1.0), repeat=4)]
    b = sharpness(lin, X, Y, kind="worst", p="inf", rho=rho, adaptive=adaptive, m=len(X),
                  restarts=8, seed=seed, loss=mse).blocks["whole"]
    assert b.value == pytest.approx(max(vertex), rel=1e-9), (b.value, sorted(vertex)[-3:])


# -- a non-quadratic model ----------------------------------------------------------------


def _mlp(seed=0, train_steps=30):
    """A slightly trained float64 tanh MLP (8 → 16 → 3) and its 64 examples."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 8, generator=g, dtype=DT)
    y = (X[:, :3] + 0.5 * torch.randn(64, 3, generator=g, dtype=DT)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(DT)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(train_steps):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return model, X, y


def _loss_at(model, x, y, loss_fn=ce, deltas=None):
    """L_S(w + δ) on a copy (δ: parameter name → tensor added), the model untouched."""
    work = copy.deepcopy(model)
    with torch.no_grad():
        params = dict(work.named_parameters())
        for n, dl in (deltas or {}).items():
            params[n].add_(dl)
        return float(loss_fn(work(x), y).mean())


def _manual_sam(model, x, y, rho, p, adaptive=False, names=None, loss_fn=ce):
    """SAM's L_S(w+δ) − L_S(w) by hand: δ = ρ c² g/‖c g‖₂ or ρ c sign(g) on ``names``."""
    params = {n: q for n, q in model.named_parameters()
              if q.requires_grad and (names is None or n in names)}
    loss = loss_fn(model(x), y).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    cs = [q.detach().abs() if adaptive else torch.ones_like(q) for q in params.values()]
    if p == "2":
        norm = torch.sqrt(sum(((ci * gi) ** 2).sum() for ci, gi in zip(cs, grads, strict=True)))
        deltas = [rho * ci**2 * gi / norm for ci, gi in zip(cs, grads, strict=True)]
    else:
        deltas = [rho * ci * gi.sign() for ci, gi in zip(cs, grads, strict=True)]
    d = dict(zip(params, deltas, strict=True))
    return _loss_at(model, x, y, loss_fn, deltas=d) - _loss_at(model, x, y, loss_fn)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("p,rho", [("2", 0.05), ("inf", 0.002)])
def test_sam_matches_manual_and_worst_dominates(p, rho, adaptive):
    model, X, y = _mlp()
    if adaptive:
        rho *= 10
    m = 32
    sam = sharpness(model, X, y, kind="sam", p=p, rho=rho, adaptive=adaptive, m=m)
    worst = sharpness(model, X, y, kind="worst", p=p, rho=rho, adaptive=adaptive, m=m)
    bs, bw = sam.blocks["whole"], worst.blocks["whole"]
    assert sam.n_batches == worst.n_batches == 2
    for k in range(2):
        xs, ys = X[k * m : (k + 1) * m], y[k * m : (k + 1) * m]
        manual = _manual_sam(model, xs, ys, rho, p, adaptive)
        assert bs.per_batch[k] == pytest.approx(manual, rel=1e-10, abs=1e-14)
        # the ascent starts at SAM's point: never below it
        assert bw.per_batch[k] >= bs.per_batch[k]
    assert bw.value >= bs.value
    assert bs.value == pytest.approx(sum(bs.per_batch) / 2, rel=1e-12)
    assert bs.loss == pytest.approx(_loss_at(model, X, y), rel=1e-12)
    assert bs.perturbed_loss == pytest.approx(bs.loss + bs.value, rel=1e-12)
    assert bs.radius == pytest.approx(rho, rel=1e-9)
    assert bw.radius <= rho * (1 + 1e-9)
    # sam: one forward and backward at w, one forward at w + δ, per batch
    assert (bs.n_forward, bs.n_backward) == (4, 2)
    # worst: the gradient at w, then one forward and backward per ascent step
    assert bw.n_backward == 2 * (1 + worst.steps * worst.restarts)


@pytest.mark.parametrize("p,rho", [("2", 0.05), ("inf", 0.002)])
def test_worst_beats_random_feasible_perturbations(p, rho):
    model, X, y = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    b = sharpness(model, X, y, kind="worst", p=p, rho=rho, m=len(X)).blocks["whole"]
    names = [n for n, _ in model.named_parameters()]
    shapes = [q.shape for q in model.parameters()]
    g = torch.Generator().manual_seed(123)
    base = _loss_at(model, X, y)
    rand = []
    for _ in range(10):
        z = [torch.randn(s, generator=g, dtype=DT) for s in shapes]
        if p == "2":  # on the ρ-sphere
            norm = torch.sqrt(sum((t**2).sum() for t in z))
            dl = [rho * t / norm for t in z]
        else:  # a vertex of the ρ-box
            dl = [rho * t.sign() for t in z]
        rand.append(_loss_at(model, X, y, deltas=dict(zip(names, dl, strict=True))) - base)
    assert b.value >= max(rand), (b.value, max(rand))
    assert b.loss == pytest.approx(base, rel=1e-12)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# -- the model is never left perturbed -------------------------------------------------------


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [q.requires_grad for q in model.parameters()],
            [mod.training for mod in model.modules()])


def _assert_same(model, snap):
    state, flags, modes = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert [q.requires_grad for q in model.parameters()] == flags
    assert [mod.training for mod in model.modules()] == modes
    assert all(q.grad is None for q in model.parameters())


def test_model_restored_bitwise_after_every_call():
    model, X, y = _mlp()
    model.train()
    model[1].eval()  # a mixed train/eval model
    model[2].bias.requires_grad_(False)  # a frozen parameter
    snap = _snapshot(model)
    calls = [dict(kind="avg", draws=3), dict(kind="avg", adaptive=True, draws=3),
             dict(kind="sam"), dict(kind="sam", p="inf", adaptive=True),
             dict(kind="worst", steps=5), dict(kind="worst", p="inf", steps=5, restarts=2),
             dict(kind="worst", adaptive=True, steps=5, init="random")]
    for kw in calls:
        r = sharpness(model, X, y, m=32, **kw)
        _assert_same(model, snap)
        # the frozen bias is not perturbed
        assert r.blocks["whole"].n_params == 8 * 16 + 16 + 16 * 3


@pytest.mark.parametrize("kind,at", [("avg", 3), ("sam", 3), ("worst", 3), ("sam", 2)])
def test_model_restored_when_loss_raises(kind, at):
    model, X, y = _mlp()
    model.train()
    snap = _snapshot(model)
    count, perturbed = [0], []

    def flaky(out, t):
        count[0] += 1
        if count[0] == at:
            perturbed.append(any(not torch.equal(v, snap[0][k])
                                 for k, v in model.state_dict().items()))
            raise RuntimeError(f"boom on call {at}")
        return ce(out, t)

    with pytest.raises(RuntimeError, match=f"boom on call {at}"):
        sharpness(model, X, y, kind=kind, loss=flaky, m=32, draws=4, steps=5)
    assert count[0] == at
    # the error struck with the weights perturbed (sam's 3rd call is the next batch's
    # clean gradient, hence the extra case at its 2nd call)
    assert perturbed == [not (kind == "sam" and at == 3)]
    _assert_same(model, snap)


# -- blocks ---------------------------------------------------------------------------------


def test_regex_block_perturbs_only_first_layer():
    model, X, y = _mlp()
    rho = 0.05
    r = sharpness(model, X, y, kind="sam", rho=rho, m=len(X), blocks=("whole",),
                  regex={"first": r"^0\."})
    assert list(r.blocks) == ["whole", "first"]
    assert r.params["first"] == ["0.weight", "0.bias"]
    assert r.blocks["first"].n_params == 8 * 16 + 16
    assert r.blocks["whole"].n_params == 8 * 16 + 16 + 16 * 3 + 3
    first = _manual_sam(model, X, y, rho, "2", names={"0.weight", "0.bias"})
    whole = _manual_sam(model, X, y, rho, "2")
    assert r.blocks["first"].value == pytest.approx(first, rel=1e-10)
    assert r.blocks["whole"].value == pytest.approx(whole, rel=1e-10)
    assert abs(first - whole) > 1e-6  # the two really differ
    # the worst case over the first layer alone also matches a sam-first lower bound
    w = sharpness(model, X, y, kind="worst", rho=rho, m=len(X), blocks=(),
                  regex={"first": r"^0\."})
    assert list(w.blocks) == ["first"]
    assert w.blocks["first"].value >= r.blocks["first"].value


# -- repeatability --------------------------------------------------------------------------


def _key(b):
    return (b.value, b.stderr, b.loss, b.perturbed_loss, b.per_batch, b.radius, b.n_params,
            b.n_forward, b.n_backward)


def test_same_seed_repeats_and_other_seed_differs():
    model, X, y = _mlp()
    avg = [sharpness(model, X, y, kind="avg", m=16, draws=4, seed=s) for s in (5, 5, 6)]
    a0, a1, a2 = (_key(r.blocks["whole"]) for r in avg)
    assert a0 == a1
    assert avg[0].blocks["whole"].value != avg[2].blocks["whole"].value
    worst = [sharpness(model, X, y, kind="worst", init="random", restarts=2, steps=6, m=32,
                       seed=s) for s in (3, 3)]
    assert _key(worst[0].blocks["whole"]) == _key(worst[1].blocks["whole"])
    assert avg[0].settings() == avg[1].settings()


# -- m-sharpness batching and options --------------------------------------------------------


@pytest.mark.parametrize("kind", ["avg", "sam", "worst"])
def test_m_batching_and_uneven_iterable(kind):
    g = torch.Generator().manual_seed(7)
    X = torch.randn(100, 8, generator=g, dtype=DT)
    y = torch.randint(0, 3, (100,), generator=g)
    model, _, _ = _mlp()
    kw = dict(kind=kind, m=32, draws=3, steps=5)
    r = sharpness(model, X, y, **kw)
    assert (r.n_batches, r.n_samples, r.m) == (3, 96, 32)
    assert len(r.blocks["whole"].per_batch) == 3
    chunks = [(X[a:b], y[a:b]) for a, b in ((0, 10), (10, 60), (60, 100))]
    it = sharpness(model, chunks, **kw)
    assert (it.n_batches, it.n_samples) == (3, 96)
    for u, v in zip(r.blocks["whole"].per_batch, it.blocks["whole"].per_batch, strict=True):
        assert u == pytest.approx(v, rel=1e-12, abs=1e-15)
    # the batches are the consecutive 32-example sets S (the last 4 examples left out)
    if kind == "sam":
        for k in range(3):
            manual = _manual_sam(model, X[32 * k : 32 * (k + 1)], y[32 * k : 32 * (k + 1)],
                                 default_rho("sam"), "2")
            assert r.blocks["whole"].per_batch[k] == pytest.approx(manual, rel=1e-10)
        assert r.blocks["whole"].loss == pytest.approx(_loss_at(model, X[:96], y[:96]),
                                                       rel=1e-12)


def _one_line_spec_error(call, param):
    with pytest.raises(SpecError) as e:
        call()
    msg = str(e.value)
    assert msg and "\n" not in msg
    assert e.value.param == param
    return msg


@pytest.mark.parametrize("bad,param", [
    (dict(kind="max"), "kind"),
    (dict(kind="Worst"), "kind"),
    (dict(p="1"), "p"),
    (dict(p=3), "p"),
    (dict(rho=0.0), "rho"),
    (dict(rho=-0.1), "rho"),
    (dict(rho=math.nan), "rho"),
    (dict(rho=math.inf), "rho"),
    (dict(rho="0.1"), "rho"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(steps=True), "steps"),
    (dict(restarts=0), "restarts"),
    (dict(draws=0), "draws"),
    (dict(init="zero"), "init"),
    (dict(bn="batch"), "bn"),
    (dict(m=0), "m"),
    (dict(m=101), "m"),
])
def test_bad_options_raise_one_line_spec_error(bad, param):
    model, X, y = _mlp(train_steps=0)
    X, y = torch.cat([X, X[:36]]), torch.cat([y, y[:36]])  # N = 100
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_line_spec_error(lambda: sharpness(model, X, y, **bad), param)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_norm_aliases_and_default_rho():
    model, X, y = _mlp()
    for alias, canon in (("l2", "2"), ("Linf", "inf"), ("inf", "inf"), (2, "2")):
        r = sharpness(model, X, y, kind="sam", p=alias, m=64)
        assert r.p == canon
        assert r.rho == default_rho("sam", False, canon)
    assert default_rho("worst", False, "2") == 0.05
    assert default_rho("worst", True, "2") == 0.5
    assert default_rho("worst", True, "inf") == 1e-3
    assert default_rho("avg", False) == 0.01 and default_rho("avg", True) == 0.1
    s = sharpness(model, X, y, kind="worst", m=64, steps=3).settings()
    assert s["kind"] == "worst" and s["p"] == "2" and s["steps"] == 3 and "draws" not in s
    assert sharpness(model, X, y, kind="avg", m=64, draws=2).settings()["draws"] == 2


# -- the APGD schedule ---------------------------------------------------------------------


def test_apgd_checkpoints_20():
    marks = apgd_checkpoints(20)
    assert marks[0] == math.ceil(0.22 * 20) == 5
    assert all(a < b for a, b in itertools.pairwise(marks))
    assert all(0 < w < 20 for w in marks)
    assert apgd_checkpoints(1) == []


def _exact_checkpoints(steps):
    """{⌈p_j · steps⌉ : j ≥ 1} ∩ (0, steps), p_j in exact rational arithmetic (Croce & Hein
    2020, §3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06))."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return sorted({w for w in (math.ceil(q * steps) for q in p[1:]) if 0 < w < steps})


def test_exact_checkpoint_oracle():
    # p = .22, .41, .57, .70, .80, .87, .93, .99
    assert _exact_checkpoints(20) == [5, 9, 12, 14, 16, 18, 19]
    assert _exact_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert _exact_checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert _exact_checkpoints(5) == [2, 3, 4]


@pytest.mark.parametrize("steps", [5, 10, 20, 50, 100])
def test_apgd_checkpoints_exact_fractions(steps):
    assert apgd_checkpoints(steps) == _exact_checkpoints(steps)


# -- BatchNorm ------------------------------------------------------------------------------


def _bn_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(),
                          nn.Linear(16, 3)).to(DT)
    g = torch.Generator().manual_seed(2)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(32, 8, generator=g, dtype=DT) * 2 + 1)
    X = torch.randn(64, 8, generator=g, dtype=DT)
    y = torch.randint(0, 3, (64,), generator=g)
    return model, X, y


@pytest.mark.parametrize("kind", ["sam", "avg", "worst"])
def test_bn_eval_uses_running_statistics(kind):
    model, X, y = _bn_model()
    assert model.training
    snap = _snapshot(model)
    ref = copy.deepcopy(model).eval()
    kw = dict(kind=kind, m=32, draws=4, steps=5)
    got = sharpness(model, X, y, **kw).blocks["whole"]
    want = sharpness(ref, X, y, **kw).blocks["whole"]
    assert _key(got) == _key(want)
    # L_S(w) with the running statistics (the mean over the two batches of 32)
    assert got.loss == pytest.approx(_loss_at(ref, X, y), rel=1e-12)
    assert abs(_loss_at(ref.train(), X, y) - got.loss) > 1e-6  # batch statistics differ
    ref.eval()
    _assert_same(model, snap)  # running_mean, running_var, num_batches_tracked untouched
    assert model.training and model[1].training
    if kind == "sam":
        for k in range(2):
            manual = _manual_sam(ref, X[32 * k : 32 * (k + 1)], y[32 * k : 32 * (k + 1)],
                                 default_rho("sam"), "2")
            assert got.per_batch[k] == pytest.approx(manual, rel=1e-10)


def test_bn_train_uses_batch_statistics_and_leaves_buffers():
    model, X, y = _bn_model()
    snap = _snapshot(model)
    got = sharpness(model, X, y, kind="sam", m=32, bn="train").blocks["whole"]
    _assert_same(model, snap)
    ref = copy.deepcopy(model).eval()
    ref[1].train()
    ref[1].track_running_stats = False  # batch statistics, buffers neither read nor written
    for k in range(2):
        manual = _manual_sam(ref, X[32 * k : 32 * (k + 1)], y[32 * k : 32 * (k + 1)],
                             default_rho("sam"), "2")
        assert got.per_batch[k] == pytest.approx(manual, rel=1e-10)
    ev = sharpness(model, X, y, kind="sam", m=32).blocks["whole"]
    assert abs(ev.value - got.value) > 1e-8


@pytest.mark.parametrize("kind,p", [("avg", "2"), ("sam", "2"), ("worst", "2"),
                                    ("worst", "inf")])
def test_every_measure_on_every_device_equals_the_cpu_oracle(device, kind, p):
    """The model stays on the CPU; the measure runs on ``device`` (a float64 copy there)
    with the same CPU-generated noise, so the numbers agree to float64 rounding; the exact
    quadratic answers hold there too."""
    d, k, n, rho = 6, 2, 40, 0.1
    X = _design(n, [3, 2, 1.5, 1, 0.7, 0.5], 6)
    lin, Y = _quadratic(X, _weights(k, d, 7))
    kw = dict(kind=kind, p=p, rho=rho, m=n, loss=mse, draws=16)
    here = sharpness(lin, X, Y, **kw).blocks["whole"]
    there = sharpness(lin, X, Y, device=device, **kw)
    assert there.device.startswith(device.type)
    b = there.blocks["whole"]
    assert b.value == pytest.approx(here.value, rel=1e-9, abs=1e-14)
    if kind == "worst" and p == "2":
        lam = float(torch.linalg.eigvalsh(_hessian(X, k))[-1])
        assert 0.99 * rho**2 * lam / 2 <= b.value <= rho**2 * lam / 2 * (1 + 1e-9)
    assert next(lin.parameters()).device.type == "cpu"


def test_a_blocks_numbers_do_not_depend_on_the_other_blocks_asked_for():
    # noise and random starts are seeded by the block's name, not its position
    model, X, y = _mlp()
    for kw in (dict(kind="avg", rho=0.05, draws=4), dict(kind="worst", init="random",
                                                         restarts=2, steps=3)):
        alone = sharpness(model, X, y, m=32, blocks=(), regex={"l1": r"^0\."}, **kw)
        after = sharpness(model, X, y, m=32, blocks=("whole",), regex={"l1": r"^0\."}, **kw)
        assert alone.blocks["l1"].per_batch == after.blocks["l1"].per_batch


def test_train_mode_batch_norm_needs_two_examples_per_set():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).double()
    X, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    with pytest.raises(SpecError, match="m >= 2"):
        sharpness(model, X, y, kind="sam", bn="train", m=1)


def test_block_names_that_would_nest_groups_are_refused():
    from geomkit.geometry.blocks import parse_block_arg

    model, X, y = _mlp()
    for bad in ("a/b", "..", "", "x y"):
        with pytest.raises(SpecError, match="block name"):
            sharpness(model, X, y, kind="sam", m=32, blocks=(), regex={bad: "^0"})
    with pytest.raises(SpecError, match="block name"):
        parse_block_arg("a/b=^1")
