"""hessian_eigs: per-block λ_max, top-3 and λ_min against dense float64 eigvalsh.

Measurement tests take the ``device`` fixture (CPU, and CUDA when present): dense
Hessians come from the CPU case, :func:`hessian_eigs` runs on ``case.to(device)``.
Eigenvalues are Python floats (T_m's eigenproblem is solved on the CPU); eigenvector
estimates live on the device and are brought to the CPU to be checked.
"""

import copy
import math

import pytest
import torch
import torch.nn as nn

from geomkit.errors import BlockError, SpecError
from geomkit.geometry.hessian import hessian_eigs, lambda_max
from tests.cases import CASE_NAMES, make_case
from tests.geometry._hessian_oracle import cached_block_hessians, dense_hessian


def _rel(a, b, scale):
    return abs(a - b) / max(abs(b), scale)


def _on(r, device):
    return torch.device(r.device).type == device.type


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_paper_block_matches_dense_eigvalsh(name, device):
    case = make_case(name, n=10)
    dev = case.to(device)
    before = copy.deepcopy(dev.model.state_dict())
    r = hessian_eigs(dev.model, dev.inputs, dev.targets, blocks=("paper",), top_k=3,
                     smallest=True, tol=1e-10, max_iter=400, return_vectors=True)
    dense = cached_block_hessians(name, 10)
    assert list(r.blocks) == list(dense) and _on(r, device)
    for b, H in dense.items():
        ev = torch.linalg.eigvalsh(H)
        e = r.blocks[b]
        scale = float(ev.abs().max())
        assert e.n_params == H.shape[0] and e.converged
        assert _rel(e.lambda_max, float(ev[-1]), 1e-12) < 1e-6, (b, e.lambda_max, ev[-1])
        for got, want in zip(e.eigenvalues, ev.flip(0)[:3].tolist(), strict=True):
            assert _rel(got, want, 1e-3 * scale) < 1e-6, (b, got, want)
        # λ_min is often ~0 or negative: relative to its size, floored at 1e-3 λ-scale
        assert _rel(e.lambda_min, float(ev[0]), 1e-3 * scale) < 1e-6, (b, e.lambda_min, ev[0])
        assert e.vectors.device.type == device.type
        y = e.vectors[0].cpu()
        assert float((H @ y - e.lambda_max * y).norm()) < 1e-6 * scale
        assert e.n_hvps <= H.shape[0] + 1
    assert all(torch.equal(t, before[k]) for k, t in dev.model.state_dict().items())


@pytest.mark.parametrize("name", CASE_NAMES)
def test_default_tolerance_meets_its_promise_on_every_block(name, device):
    # the stopping rule (residual sharpened by the estimated gap, see lanczos) must keep
    # tol a real relative error bound: tol 1e-4 -> error <= 1e-4, tol 1e-8 -> <= 1e-6
    dev = make_case(name, n=10).to(device)
    dense = cached_block_hessians(name, 10)
    for tol, limit in ((1e-4, 1e-4), (1e-8, 1e-6)):
        r = hessian_eigs(dev.model, dev.inputs, dev.targets, blocks=("paper",), tol=tol,
                         max_iter=400)
        for b, H in dense.items():
            want = float(torch.linalg.eigvalsh(H)[-1])
            e = r.blocks[b]
            assert e.converged and _rel(e.lambda_max, want, 1e-12) <= limit, (b, tol, e)
            assert e.error_bound <= e.residual
            # the reported bound covers the actual error (float64 round-off aside)
            assert abs(e.lambda_max - want) <= e.error_bound + 1e-12 * abs(want), (b, tol, e)


def test_lockstep_equals_sequential_and_is_bitwise_repeatable(device, monkeypatch):
    if device.type == "cuda":
        # cuDNN may pick convolution backward kernels that accumulate with atomics (the
        # patch embedding), which are not bitwise repeatable; deterministic ones are
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    dev = make_case("vit1", n=10).to(device)
    kw = dict(blocks=("paper",), top_k=2, tol=1e-8, strategy="stream", batch_size=4)
    a = hessian_eigs(dev.model, dev.inputs, dev.targets, schedule="lockstep", **kw)
    b = hessian_eigs(dev.model, dev.inputs, dev.targets, schedule="sequential", **kw)
    c = hessian_eigs(dev.model, dev.inputs, dev.targets, schedule="lockstep", **kw)
    for k in a.blocks:
        assert abs(a.blocks[k].lambda_max - b.blocks[k].lambda_max) <= 1e-9 * abs(
            a.blocks[k].lambda_max)
        assert a.blocks[k].eigenvalues == c.blocks[k].eigenvalues  # bitwise
        assert a.blocks[k].n_hvps == c.blocks[k].n_hvps
    assert a.schedule == "lockstep" and b.schedule == "sequential" and a.strategy == "stream"


def test_float32_model_mode_restored_and_result_fields(device):
    case = make_case("cnn_bn", n=10)
    m = copy.deepcopy(case.model).float().train().to(device)
    r = lambda_max(m, case.inputs.float().to(device), case.targets.to(device), blocks="whole",
                   tol=1e-5)
    assert m.training and all(mod.training for mod in m.modules())
    assert _on(r, device) and all(p.device.type == device.type for p in m.parameters())
    H = dense_hessian(case.model, list(r.params["whole"]), case.inputs, case.targets)
    want = float(torch.linalg.eigvalsh(H)[-1])
    e = r.blocks["whole"]
    assert abs(e.lambda_max - want) / want < 1e-3
    assert e.residual == e.residuals[0] and e.lambda_min is None and e.vectors is None
    assert r.dtype == "float32" and r.bn == "eval" and r.n_samples == 10 and r.seconds > 0
    assert r.settings()["top_k"] == 1


def test_bn_train_option_changes_the_answer_but_not_the_model(device):
    dev = make_case("cnn_bn", n=10).to(device)
    before = copy.deepcopy(dev.model.state_dict())
    ev = hessian_eigs(dev.model, dev.inputs, dev.targets, tol=1e-8)
    tr = hessian_eigs(dev.model, dev.inputs, dev.targets, tol=1e-8, bn="train")
    assert tr.bn == "train"
    assert abs(ev.blocks["whole"].lambda_max - tr.blocks["whole"].lambda_max) > 1e-3
    assert all(torch.equal(t, before[k]) for k, t in dev.model.state_dict().items())


def test_errors():
    case = make_case("mlp")
    with pytest.raises(BlockError, match="valid"):
        hessian_eigs(case.model, case.inputs, case.targets, blocks=("attn",))
    with pytest.raises(SpecError):
        hessian_eigs(case.model, case.inputs, case.targets, top_k=0)
    with pytest.raises(SpecError):
        hessian_eigs(case.model, case.inputs, case.targets, schedule="parallel")
    with pytest.raises(SpecError):
        hessian_eigs(case.model, case.inputs[:0], case.targets[:0])


def _trained_mlp():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    m = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    m.zero_grad(set_to_none=True)
    return m, x, y


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
def test_pyhessian_cross_check_on_trained_model(device):
    pyhessian = pytest.importorskip("pyhessian")
    m, x, y = _trained_mlp()
    ours = hessian_eigs(copy.deepcopy(m).to(device), x.to(device), y.to(device),
                        tol=1e-10).blocks["whole"].lambda_max
    # shim: PyHessian draws float32 vectors with torch.randn; run it with float64 defaults,
    # on a CPU copy (it leaves graph-carrying .grad on the parameters)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        h = pyhessian.hessian(copy.deepcopy(m), nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        theirs = h.eigenvalues(maxIter=2000, tol=1e-9, top_n=1)[0][0]
    finally:
        torch.set_default_dtype(old)
    assert ours > 0
    assert abs(ours - theirs) / abs(ours) < 1e-3, (ours, theirs)


class _SdpaNet(torch.nn.Module):
    """Attention through F.scaled_dot_product_attention, as timm's ViTs do."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(4, 12)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        q, k, v = self.qkv(x.reshape(len(x), 1, 4, 4)).chunk(3, dim=-1)  # [B, heads, T, d]
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.head(out.mean((1, 2)))


@pytest.mark.parametrize("strategy", ["reuse", "stream", "func"])
def test_fused_attention_models_are_differentiated_twice(strategy, device):
    """The fused SDPA kernels (CPU, and CUDA's flash / memory-efficient ones) have no double
    backward; the HVP must still work (float32, where a fused kernel is chosen) and agree
    with the dense oracle (float64, on the CPU)."""
    torch.manual_seed(0)
    model = _SdpaNet()
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    m_dev, x_dev, y_dev = copy.deepcopy(model).to(device), x.to(device), y.to(device)
    res = hessian_eigs(m_dev, x_dev, y_dev, blocks=("whole",), strategy=strategy, tol=1e-8,
                       dtype=torch.float64)
    m64 = _SdpaNet().double()
    m64.load_state_dict(model.state_dict())
    names = [n for n, _ in m64.named_parameters()]
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        dense = dense_hessian(m64, names, x.double(), y)
    top = torch.linalg.eigvalsh(dense)[-1].item()
    assert abs(res.blocks["whole"].lambda_max - top) <= 1e-6 * abs(top)
    res32 = hessian_eigs(m_dev, x_dev, y_dev, blocks=("whole",), strategy=strategy)
    assert abs(res32.blocks["whole"].lambda_max - top) <= 1e-3 * abs(top)


def test_top_k_beyond_the_block_or_max_iter_and_nan_weights():
    """Refused instead of returning fewer values than asked; NaN is never 'converged'."""
    case = make_case("mlp")
    with pytest.raises(SpecError, match="exceeds max_iter"):
        hessian_eigs(case.model, case.inputs, case.targets, top_k=20, max_iter=10)
    with pytest.raises(SpecError, match="exceeds block 'b'"):
        hessian_eigs(case.model, case.inputs, case.targets, blocks=(), regex={"b": r"^3\.bias"},
                     top_k=4)
    with torch.no_grad():
        next(case.model.parameters())[0, 0] = float("nan")
    r = hessian_eigs(case.model, case.inputs, case.targets, max_iter=5)
    assert math.isnan(r.blocks["whole"].lambda_max) and not r.blocks["whole"].converged
