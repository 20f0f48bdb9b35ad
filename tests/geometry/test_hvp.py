"""Hessian-vector products against dense float64 Hessians, for every strategy.

Measurement tests take the ``device`` fixture (CPU, and CUDA when present): the dense
oracle is computed from the CPU case, the operator runs on ``case.to(device)`` (or, where
said, keeps the model on the CPU and computes on ``device``), and products are brought to
the CPU to be compared. Tolerances are the same on every device.
"""

import copy

import pytest
import torch
import torch.nn as nn

from geomkit.errors import SpecError
from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.hvp import HessianOperator, default_memory_budget
from tests.cases import CASE_NAMES, make_case
from tests.geometry._hessian_oracle import (
    cached_block_hessians,
    dense_hessian,
    fd_hessian,
    loop_hessian,
)

STRATS = ("reuse", "stream", "func")


def _close(a, b, rtol=1e-10):
    a = a.detach().cpu()  # a measured product, possibly on the device; b the CPU oracle's
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rtol * scale, float((a - b).abs().max()) / scale


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hvp_equals_dense_every_strategy_and_block(name, device):
    case = make_case(name, n=10)
    dev = case.to(device)
    blocks = resolve_blocks(dev.model, ("paper",))
    g = torch.Generator().manual_seed(1)
    dense = cached_block_hessians(name, 10)
    for strat in STRATS:
        for bs in (None, 4):  # 4: uneven batches 4/4/2
            op = HessianOperator(dev.model, dev.inputs, dev.targets, blocks, strategy=strat,
                                 batch_size=bs)
            # drawn on the CPU (the oracle's vectors), multiplied on the device
            vs = {b: torch.randn(op.dims[b], generator=g, dtype=torch.float64) for b in blocks}
            outs = op.matvecs([(b, v.to(device)) for b, v in vs.items()])
            for (b, v), hv in zip(vs.items(), outs, strict=True):
                assert hv.device.type == device.type and hv.dtype == torch.float64
                _close(hv, dense[b] @ v)
            assert op.n_hvps == {b: 1 for b in blocks}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_batched_block_products_equal_dense(name, device):
    # one vmapped backward over stacked tangents (is_grads_batched) gives every paper
    # block's H_BB v, LayerNorm blocks included, as the dense oracle does
    case = make_case(name, n=10)
    dev = case.to(device)
    blocks = resolve_blocks(dev.model, ("paper",))
    dense = cached_block_hessians(name, 10)
    g = torch.Generator().manual_seed(2)
    for strat in ("reuse", "stream"):
        op = HessianOperator(dev.model, dev.inputs, dev.targets, blocks, strategy=strat,
                             batch_size=4, batched=True)
        vs = {b: torch.randn(op.dims[b], generator=g, dtype=torch.float64) for b in blocks}
        outs = op.matvecs([(b, v.to(device)) for b, v in vs.items()])
        for (b, v), hv in zip(vs.items(), outs, strict=True):
            _close(hv, dense[b] @ v)
        # and the same block twice in one call (two Lanczos runs of one block)
        b0 = next(iter(blocks))
        v1, v2 = (torch.randn(op.dims[b0], generator=g, dtype=torch.float64) for _ in "ab")
        h1, h2 = op.matvecs([(b0, v1.to(device)), (b0, v2.to(device))])
        _close(h1, dense[b0] @ v1)
        _close(h2, dense[b0] @ v2)


def test_oracle_agrees_with_finite_differences_and_torch_func_hessian_does_not():
    case = make_case("vit1", n=4)
    names = resolve_blocks(case.model, (), regex={"b": r"norm|attn.proj"})["b"]
    H = dense_hessian(case.model, names, case.inputs, case.targets)
    _close(H, fd_hessian(case.model, names, case.inputs, case.targets), rtol=1e-6)
    _close(H, loop_hessian(case.model, names, case.inputs, case.targets), rtol=1e-12)
    # torch.func.hessian (jacfwd of jacrev) through LayerNorm: known-wrong with this torch;
    # if this starts to pass, the upstream bug is fixed and the comment in the oracle can go.
    from tests.geometry._hessian_oracle import block_loss_fn

    flat, f = block_loss_fn(case.model, names, case.inputs, case.targets)
    Hfunc = torch.func.hessian(f)(flat).detach()
    assert float((Hfunc - H).abs().max()) > 1e-6 * float(H.abs().max())


def test_layernorm_only_block(device):
    case = make_case("vit1", n=10)
    dev = case.to(device)
    blocks = resolve_blocks(case.model, (), regex={"ln": r"norm\d?\.weight$"})
    assert blocks["ln"] and all("norm" in n for n in blocks["ln"])
    H = dense_hessian(case.model, blocks["ln"], case.inputs, case.targets)
    Hfd = fd_hessian(case.model, blocks["ln"], case.inputs, case.targets)
    _close(H, Hfd, rtol=1e-6)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    for strat in STRATS:
        op = HessianOperator(dev.model, dev.inputs, dev.targets, blocks, strategy=strat)
        _close(op.matvec("ln", v.to(device)), H @ v)


def test_uneven_batches_are_size_weighted(device):
    case = make_case("mlp", n=10)
    dev = case.to(device)
    names = resolve_blocks(case.model, ("whole",))
    v = torch.randn(163, dtype=torch.float64)
    H = dense_hessian(case.model, names["whole"], case.inputs, case.targets)
    for strat in STRATS:
        op = HessianOperator(dev.model, dev.inputs, dev.targets, names, strategy=strat,
                             batch_size=4)
        _close(op.matvec("whole", v.to(device)), H @ v)
    # the naive equal-weight mean of the batch means is measurably different
    x, y = case.inputs, case.targets
    parts = [dense_hessian(case.model, names["whole"], x[s:s + 4], y[s:s + 4]) @ v
             for s in (0, 4, 8)]
    naive = sum(parts) / 3
    assert float((naive - H @ v).abs().max()) > 1e-3 * float((H @ v).abs().max())


@pytest.mark.parametrize("strat", STRATS)
def test_bn_train_uses_batch_stats_and_leaves_model_untouched(strat, device):
    case = make_case("cnn_bn", n=10)
    dev = case.to(device)
    model = dev.model
    model.train()  # the measurement must restore this
    before = copy.deepcopy(model.state_dict())
    names = resolve_blocks(model, ("whole",))
    v = torch.randn(75, dtype=torch.float64)
    op = HessianOperator(model, dev.inputs, dev.targets, names, strategy=strat, bn="train",
                         batch_size=5)
    hv = op.matvec("whole", v.to(device))
    hv2 = op.matvec("whole", v.to(device))
    for k, t in model.state_dict().items():
        assert t.device.type == device.type and torch.equal(t, before[k]), k
    assert model.training and all(m.training for m in model.modules())
    # oracle (CPU): batch statistics of each batch of 5, on a copy in train mode
    ref = copy.deepcopy(case.model).train()
    H = loop_hessian(ref, names["whole"], case.inputs, case.targets, batch_size=5)
    _close(hv, H @ v)
    _close(hv2, H @ v)
    model.eval()
    He = dense_hessian(case.model, names["whole"], case.inputs, case.targets)
    op_eval = HessianOperator(model, dev.inputs, dev.targets, names, strategy=strat)
    _close(op_eval.matvec("whole", v.to(device)), He @ v)
    assert float((He @ v - H @ v).abs().max()) > 1e-2 * float((He @ v).abs().max())


def test_frozen_and_unused_parameters_are_skipped(device):
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 5)
            self.unused = nn.Linear(3, 3)
            self.b = nn.Linear(5, 3)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    m = Net().double()
    m.a.bias.requires_grad_(False)
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    blocks = resolve_blocks(m, ("whole",))
    assert "a.bias" not in blocks["whole"] and "unused.weight" in blocks["whole"]
    H = dense_hessian(m, blocks["whole"], x, y)
    assert float(H[20:32].abs().max()) == 0.0  # the unused layer's rows
    v = torch.randn(H.shape[0], dtype=torch.float64)
    m_dev = copy.deepcopy(m).to(device)
    for strat in STRATS:
        op = HessianOperator(m_dev, x.to(device), y.to(device), blocks, strategy=strat)
        _close(op.matvec("whole", v.to(device)), H @ v)
    assert not m_dev.a.bias.requires_grad


def test_auto_strategy_follows_memory_budget(device):
    case = make_case("vit1", n=10)
    dev = case.to(device)
    blocks = resolve_blocks(case.model, ("whole",))
    # an index-less device name means the model's own device (its GPU, not the current one)
    big = HessianOperator(dev.model, dev.inputs, dev.targets, blocks, memory_budget=1 << 40,
                          device=device.type)
    assert big.device == next(dev.model.parameters()).device
    assert big.strategy == "reuse" and big.graph_bytes > 0
    # the default budget probes this device's free memory (CUDA) or RAM (CPU)
    assert default_memory_budget(big.device) > big.graph_bytes
    small = HessianOperator(dev.model, dev.inputs, dev.targets, blocks,
                            memory_budget=big.graph_bytes // 3)
    assert small.strategy == "stream" and 1 <= small.batch_size <= 4
    v = torch.randn(375, dtype=torch.float64, device=device)
    _close(small.matvec("whole", v), big.matvec("whole", v).cpu())


def test_float32_model_float64_compute_and_model_unchanged(device):
    # the model stays a float32 CPU model; the operator computes on ``device`` in float64
    # from converted copies of its tensors
    case = make_case("mixer1", n=10)
    m32 = copy.deepcopy(case.model).float()
    before = {k: t.clone() for k, t in m32.state_dict().items()}
    blocks = resolve_blocks(m32, ("whole",))
    op = HessianOperator(m32, case.inputs.float(), case.targets, blocks, dtype=torch.float64,
                         device=device)
    v = torch.randn(op.dims["whole"], dtype=torch.float64)
    hv = op.matvec("whole", v)
    assert hv.dtype == torch.float64 and hv.device.type == device.type
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in m32.parameters())
    assert all(torch.equal(t, before[k]) for k, t in m32.state_dict().items())
    H = dense_hessian(case.model.double(), blocks["whole"], case.inputs, case.targets)
    # the parameters were rounded to float32; the Hessian matches to float32 precision
    _close(hv, H @ v, rtol=1e-4)


def test_gradient_and_loss(device):
    case = make_case("mlp", n=10)
    dev = case.to(device)
    blocks = resolve_blocks(case.model, ("whole",))
    op = HessianOperator(dev.model, dev.inputs, dev.targets, blocks, batch_size=3)
    loss = nn.functional.cross_entropy(case.model(case.inputs), case.targets)
    g = torch.autograd.grad(loss, list(case.model.parameters()))
    _close(op.gradient("whole"), torch.cat([t.reshape(-1) for t in g]))
    assert abs(op.loss() - float(loss.detach())) < 1e-12


def test_bad_options():
    case = make_case("mlp")
    blocks = resolve_blocks(case.model, ("whole",))
    with pytest.raises(SpecError, match="valid: auto"):
        HessianOperator(case.model, case.inputs, case.targets, blocks, strategy="fast")
    with pytest.raises(SpecError, match="valid: eval, train"):
        HessianOperator(case.model, case.inputs, case.targets, blocks, bn="batch")
    op = HessianOperator(case.model, case.inputs, case.targets, blocks, strategy="stream")
    with pytest.raises(ValueError, match="163"):
        op.matvec("whole", torch.zeros(5, dtype=torch.float64))
