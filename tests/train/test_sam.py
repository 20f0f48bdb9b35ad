"""SAM / ASAM against the update written out by hand, in float64.

The update tests take the ``device`` fixture (CPU, and CUDA when present): the hand-written
oracle runs on the CPU model, SAM on a copy on ``device``; weights are compared on the CPU.
"""

from __future__ import annotations

import io
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from geomkit.errors import GeomkitError
from geomkit.train.sam import (
    SAM,
    disable_running_stats,
    enable_running_stats,
    frozen_running_stats,
    sam_step,
)

DT = torch.float64


def _mlp(device: torch.device | str = "cpu") -> nn.Module:
    torch.manual_seed(1)  # initialised on the CPU: the same weights on every device
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).to(DT).to(device)


def _data(n: int = 8, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(n, 3, generator=g, dtype=DT), torch.randint(0, 4, (n,), generator=g)
    return x.to(device), y.to(device)


def _loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return f


def _hand_sam_steps(model, x, y, *, rho, adaptive, lr, momentum=0.0, wd=0.0, steps=1):
    """SAM(SGD) written out: g, eps, g at w + eps, SGD with momentum and weight decay."""
    f = _loss_of(model, x, y)
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    buf: dict[str, torch.Tensor] = {}
    for _ in range(steps):
        g = grad(f)(w)
        if adaptive:
            norm = torch.sqrt(sum(((w[k].abs() * g[k]) ** 2).sum() for k in w))
            eps = {k: rho * w[k] ** 2 * g[k] / norm for k in w}
        else:
            norm = torch.sqrt(sum((g[k] ** 2).sum() for k in w))
            eps = {k: rho * g[k] / norm for k in w}
        g2 = grad(f)({k: w[k] + eps[k] for k in w})
        for k in w:
            d = g2[k] + wd * w[k]
            if momentum:
                buf[k] = d.clone() if k not in buf else momentum * buf[k] + d
                d = buf[k]
            w[k] = w[k] - lr * d
    return w


def _closure(opt, model, x, y):
    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize(
    "hyper",
    [dict(lr=0.1), dict(lr=0.1, momentum=0.9, wd=0.01)],
    ids=["sgd", "sgd-momentum-wd"],
)
def test_update_equals_hand_formula(adaptive, hyper, device):
    x, y = _data()
    rho = 0.3
    expected = _hand_sam_steps(_mlp(), x, y, rho=rho, adaptive=adaptive, steps=3, **hyper)
    model = _mlp(device)
    x, y = x.to(device), y.to(device)
    opt = SAM(
        model.parameters(),
        torch.optim.SGD,
        rho=rho,
        adaptive=adaptive,
        lr=hyper["lr"],
        momentum=hyper.get("momentum", 0.0),
        weight_decay=hyper.get("wd", 0.0),
    )
    first_losses = []
    for _ in range(3):
        first_losses.append(opt.step(_closure(opt, model, x, y)))
    for k, p in model.named_parameters():
        assert p.device.type == device.type
        torch.testing.assert_close(p.detach().cpu(), expected[k], rtol=0, atol=1e-12)
    # the returned loss is the one at w (before the step), and SAM descended
    assert first_losses[0].item() > first_losses[-1].item()


def test_first_second_step_matches_step():
    x, y = _data()
    a, b = _mlp(), _mlp()
    oa = SAM(a.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9)
    ob = SAM(b.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9)
    for _ in range(2):
        oa.step(_closure(oa, a, x, y))
        ob.zero_grad()
        nn.functional.cross_entropy(b(x), y).backward()
        ob.first_step(zero_grad=True)
        nn.functional.cross_entropy(b(x), y).backward()
        ob.second_step(zero_grad=True)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_weights_restored_bitwise(adaptive, device):
    x, y = _data(device=device)
    model = _mlp(device)
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.7, adaptive=adaptive, lr=0.0)
    nn.functional.cross_entropy(model(x), y).backward()
    t = [w.abs() if adaptive else torch.ones_like(w) for w in w0]
    g = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g, strict=True)))
    eps = [0.7 * ti * ti * gi / norm for ti, gi in zip(t, g, strict=True)]
    opt.first_step(zero_grad=True)
    perturbed = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(pp, w) for pp, w in zip(perturbed, w0, strict=True))
    # subtracting eps again would not give w back bit for bit: the test can fail
    assert any(not torch.equal(pp - e, w) for pp, e, w in zip(perturbed, eps, w0, strict=True))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    for p, w in zip(model.parameters(), w0, strict=True):
        assert torch.equal(p, w)
        assert p.grad is None


def test_rosenbrock_descends():
    xy = torch.tensor([-1.5, 2.0], dtype=DT, requires_grad=True)

    def rosen(v):
        return (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2

    assert rosen(xy).item() == 12.5
    d0 = torch.linalg.vector_norm(xy.detach() - 1).item()
    opt = SAM([xy], torch.optim.SGD, rho=0.01, lr=5e-4, momentum=0.9)

    def closure():
        loss = rosen(xy)
        loss.backward()
        return loss

    for _ in range(800):
        opt.step(closure)
    assert rosen(xy).item() < 0.05  # from 12.5
    assert torch.linalg.vector_norm(xy.detach() - 1).item() < 0.15 * d0


@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.AdamW], ids=["sgd", "adamw"])
def test_state_dict_round_trip(base, device):
    x, y = _data(device=device)
    kw = (
        dict(lr=0.05, momentum=0.9, weight_decay=1e-3) if base is torch.optim.SGD else dict(lr=1e-2)
    )
    a = _mlp(device)
    oa = SAM(a.parameters(), base, rho=0.2, adaptive=True, **kw)
    for _ in range(2):
        oa.step(_closure(oa, a, x, y))
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "optimizer": oa.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)

    b = _mlp(device)
    b.load_state_dict(ck["model"])
    ob = SAM(b.parameters(), base, rho=0.05, adaptive=False, lr=1.0)
    ob.load_state_dict(ck["optimizer"])
    assert ob.param_groups is ob.base_optimizer.param_groups
    g = ob.param_groups[0]
    assert (g["rho"], g["adaptive"], g["lr"]) == (0.2, True, kw["lr"])
    sa, sb = oa.base_optimizer.state, ob.base_optimizer.state
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert sa[pa].keys() == sb[pb].keys() and len(sa[pa]) > 0
        for k in sa[pa]:
            va, vb = torch.as_tensor(sa[pa][k]), torch.as_tensor(sb[pb][k])
            assert va.device == vb.device and torch.equal(va, vb)
    oa.step(_closure(oa, a, x, y))
    ob.step(_closure(ob, b, x, y))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_scheduler_acts_on_shared_groups():
    x, y = _data()
    model = _mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):  # first/second step, then the scheduler: no "called before" warning
        nn.functional.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    opt.load_state_dict(opt.state_dict())
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_per_group_rho_and_added_group():
    model = _mlp()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = SAM([{"params": first, "rho": 0.0}], torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)
    opt.add_param_group({"params": second})
    assert len(opt.param_groups) == 2 and opt.param_groups is opt.base_optimizer.param_groups
    assert opt.param_groups[1]["rho"] == 0.5 and opt.param_groups[1]["momentum"] == 0.9
    x, y = _data()
    w0 = [p.detach().clone() for p in model.parameters()]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step()
    moved = [not torch.equal(p, w) for p, w in zip(model.parameters(), w0, strict=True)]
    assert moved == [False, False, True, True]


def test_gradient_clipping_applies_to_sam_gradient(device):
    x, y = _data()
    rho, lr, c = 0.3, 0.1, 1e-3
    cpu_model = _mlp()  # the oracle, on the CPU
    f = _loss_of(cpu_model, x, y)
    w = {k: v.detach().clone() for k, v in cpu_model.named_parameters()}
    g = grad(f)(w)
    norm = torch.sqrt(sum((g[k] ** 2).sum() for k in w))
    g2 = grad(f)({k: w[k] + rho * g[k] / norm for k in w})
    n2 = torch.sqrt(sum((g2[k] ** 2).sum() for k in w))
    assert n2 > c
    expected = {k: w[k] - lr * g2[k] * (c / (n2 + 1e-6)) for k in w}

    model = _mlp(device)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    xd, yd = x.to(device), y.to(device)
    loss = sam_step(model, opt, lambda: nn.functional.cross_entropy(model(xd), yd), max_grad_norm=c)
    assert loss.item() == pytest.approx(f(w).item(), abs=1e-14)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach().cpu(), expected[k], rtol=0, atol=1e-12)


def test_batchnorm_running_stats_first_forward_only(device):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4)).to(DT)
    model.train()
    ref = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4)).to(DT)
    ref.load_state_dict(model.state_dict())
    ref.to(device).train()  # the reference on the same device: bitwise the same statistics
    model.to(device)
    x, y = _data(16, device)
    ref(x)  # one forward at w: the statistics SAM must end with
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    sam_step(model, opt, lambda: nn.functional.cross_entropy(model(x), y))
    bn, bn_ref = model[1], ref[1]
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == 1 and bn.track_running_stats
    assert not torch.equal(bn.running_mean.cpu(), torch.zeros(6, dtype=DT))

    # the helpers themselves: buffers untouched while disabled, batch statistics still used
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    disable_running_stats(model)
    disable_running_stats(model)  # idempotent: the saved flag is not overwritten
    out = model[1](model[0](x))
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k])
    h = model[0](x)
    batch = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(out, batch)
    enable_running_stats(model)
    assert bn.track_running_stats
    with frozen_running_stats(model):
        assert not bn.track_running_stats
    assert bn.track_running_stats


def test_first_backward_is_local_under_ddp():
    class FakeDDP(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.syncing, self.seen = module, True, []

        @contextmanager
        def no_sync(self):
            self.syncing = False
            try:
                yield
            finally:
                self.syncing = True

        def forward(self, x):
            self.seen.append(self.syncing)
            return self.module(x)

    x, y = _data()
    model = FakeDDP(_mlp())
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    sam_step(model, opt, lambda: nn.functional.cross_entropy(model(x), y))
    assert model.seen == [False, True]


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_zero_gradient_gives_no_nan(adaptive, device):
    model = _mlp(device)
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.first_step()
    for p, w in zip(model.parameters(), w0, strict=True):
        assert torch.equal(p, w)
    opt.second_step()
    for p, w in zip(model.parameters(), w0, strict=True):
        assert torch.equal(p, w)
    # ASAM at w = 0 with a nonzero gradient: T g = 0, still no NaN
    z = torch.zeros(3, dtype=DT, device=device, requires_grad=True)
    o = SAM([z], torch.optim.SGD, rho=0.1, adaptive=True, lr=0.1)
    z.grad = torch.ones(3, dtype=DT, device=device)
    o.first_step()
    assert torch.equal(z.detach().cpu(), torch.zeros(3, dtype=DT))


def test_misuse_errors():
    model = _mlp()
    with pytest.raises(GeomkitError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(TypeError, match="class"):
        SAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(RuntimeError, match="first_step"):
        opt.second_step()
    x, y = _data()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        opt.first_step()
