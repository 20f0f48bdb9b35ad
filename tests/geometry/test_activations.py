"""Activation sparsity, dead neurons and norms against counts computed by hand.

Measurement tests take the ``device`` fixture (CPU, and CUDA when present): the oracle
(hand counts, hooks keeping every activation) runs on the CPU model, the measurement on a
copy on ``device``; the statistics are Python numbers, so they compare directly.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from geomkit import distributed
from geomkit.errors import BlockError, DataError
from geomkit.geometry import activations as act_mod
from geomkit.geometry.activations import activation_stats, find_blocks
from tests.cases import make_case

DT = torch.float64


class TwoBlockMLP(nn.Module):
    """blocks.0 = Linear(2, 3) + ReLU, blocks.1 = Linear(3, 2) + GELU, head = Linear(2, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(2, 3), nn.ReLU()),
                nn.Sequential(nn.Linear(3, 2), nn.GELU()),
            ]
        )
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            # neuron 2 of blocks.0 is -x1 - x2 - 10 < 0 on the data below: dead
            self.blocks[0][0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
            self.blocks[0][0].bias.copy_(torch.tensor([0.0, 0.0, -10.0]))
            # blocks.1: neuron 0 = relu-sum - 100 (dead), neuron 1 = r0 + r1 - 1
            self.blocks[1][0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
            self.blocks[1][0].bias.copy_(torch.tensor([-100.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)


X = torch.tensor([[1.0, -1.0], [2.0, 3.0], [-1.0, -2.0], [0.5, 0.0]], dtype=DT)


def _hand_mlp_oracle():
    # blocks.0 pre-activations: x1, x2, -x1-x2-10
    # x1 = [1, 2, -1, .5] -> 3 active; x2 = [-1, 3, -2, 0] -> 1 active; third: none
    # relu outputs r = [[1,0,0],[2,3,0],[0,0,0],[.5,0,0]]
    # blocks.1 pre: n0 = sum(r) - 100 < 0 (dead); n1 = r0 + r1 - 1 = [0, 4, -1, -.5] -> 1 active
    return {
        "l0": dict(active=4, values=12, neurons=3, dead=1),
        "l1": dict(active=1, values=8, neurons=2, dead=1),
    }


def _on(model: nn.Module, device: torch.device) -> bool:
    return all(t.device.type == device.type for t in (*model.parameters(), *model.buffers()))


def test_counts_by_hand_two_block_mlp(device):
    model = TwoBlockMLP().to(DT)  # the oracle's (CPU)
    s = activation_stats(copy.deepcopy(model).to(device), X.to(device), batch_size=3)
    hand = _hand_mlp_oracle()
    l0, l1 = s.layers["blocks.0.1"], s.layers["blocks.1.1"]
    assert (l0.kind, l0.block, l1.kind, l1.block) == ("ReLU", "blocks.0", "GELU", "blocks.1")
    for got, want in ((l0, hand["l0"]), (l1, hand["l1"])):
        assert (got.active, got.values, got.neurons, got.dead) == tuple(want.values())
    assert l0.active_fraction == 4 / 12 and l1.active_fraction == 1 / 8
    assert list(s.blocks) == ["blocks.0", "blocks.1"]
    b0, b1 = s.blocks["blocks.0"], s.blocks["blocks.1"]
    assert b0.layers == ("blocks.0.1",) and (b0.active, b0.dead, b0.neurons) == (4, 1, 3)
    assert (s.active, s.values, s.neurons, s.dead, s.samples) == (5, 20, 5, 2, 4)
    assert s.active_fraction == 5 / 20

    # block output norms: mean over examples of ||block output||_2
    r = torch.relu(X @ model.blocks[0][0].weight.T + model.blocks[0][0].bias)
    h = nn.functional.gelu(r @ model.blocks[1][0].weight.T + model.blocks[1][0].bias)
    assert b0.output_norm == pytest.approx(r.norm(dim=1).mean().item(), rel=1e-14)
    assert b1.output_norm == pytest.approx(h.norm(dim=1).mean().item(), rel=1e-14)
    assert s.output_norms == (b0.output_norm, b1.output_norm)
    # weight norms: global and per block
    every = torch.cat([p.flatten() for p in model.parameters()])
    assert s.weight_norm == pytest.approx(every.norm().item(), rel=1e-14)
    blk = torch.cat([p.flatten() for p in model.blocks[1].parameters()])
    assert b1.weight_norm == pytest.approx(blk.norm().item(), rel=1e-14)
    assert b1.params == 8
    d = s.to_dict()
    assert d["blocks"]["blocks.1"]["layers"] == ["blocks.1.1"] and d["dead"] == 2


def test_gelu_counts_its_input_not_its_underflowing_output(device):
    gelu = nn.GELU()
    x = torch.tensor([[5e-324, -1.0, 2.0]], dtype=DT)
    assert (gelu(x) > 0).sum() == 1  # the output underflows to 0 for the first value
    s = activation_stats(nn.Sequential(nn.Identity(), gelu).to(device), x.to(device))
    assert s.layers["1"].active == 2 and s.layers["1"].dead == 1


def _captured_inputs(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Oracle: keep every activation input in memory (what the library must not do)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, a[0].clone()))
        for n, m in model.named_modules()
        if isinstance(m, (nn.ReLU, nn.GELU))
    ]
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("case", ["mlp", "cnn_bn", "vit1", "mixer1"])
def test_case_table_against_dense_oracle(case, device):
    c = make_case(case, n=7)
    if case == "cnn_bn":
        with torch.no_grad():
            c.model[1].bias[1] = -50.0  # channel 1 never fires: dead
    seen = _captured_inputs(c.model, c.inputs)
    d = c.to(device)
    s = activation_stats(d.model, d.inputs, d.targets, batch_size=3)
    assert set(s.layers) == set(seen)
    for name, x in seen.items():
        nd = 1 if x.ndim == 4 else x.ndim - 1
        fired = (x > 0).movedim(nd, -1).reshape(-1, x.shape[nd]).any(0)
        got = s.layers[name]
        assert got.active == int((x > 0).sum()) and got.values == x.numel()
        assert got.neurons == x.shape[nd] and got.dead == int((~fired).sum())
    if case == "cnn_bn":
        assert s.layers["2"].dead == 1 and s.layers["2"].neurons == 3
    if case == "mixer1":  # token MLP neurons are its hidden units, channel MLP likewise
        assert s.layers["blocks.0.mlp_tokens.act"].neurons == 4
        assert s.layers["blocks.0.mlp_channels.act"].neurons == 8
    if case in ("vit1", "mixer1"):
        with torch.no_grad():
            out = []
            h = c.model.blocks[0].register_forward_hook(lambda _m, _a, o: out.append(o))
            c.model(c.inputs)
            h.remove()
        want = out[0].flatten(1).norm(dim=1).mean().item()
        assert s.blocks["blocks.0"].output_norm == pytest.approx(want, rel=1e-12)


def test_batch_size_does_not_change_the_result(device):
    c = make_case("vit1", n=9).to(device)
    ref = activation_stats(c.model, c.inputs, batch_size=None)
    for bs in (1, 4):
        s = activation_stats(c.model, c.inputs, batch_size=bs)
        assert s.layers == ref.layers
        for k, b in s.blocks.items():
            assert b.output_norm == pytest.approx(ref.blocks[k].output_norm, rel=1e-13)
            assert (b.active, b.dead, b.weight_norm) == (
                ref.blocks[k].active,
                ref.blocks[k].dead,
                ref.blocks[k].weight_norm,
            )


def _snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_model_unchanged_and_bn_statistics_not_updated(device):
    c = make_case("cnn_bn", n=6)
    d = c.to(device)
    model = d.model.train()
    model[5].eval()  # mixed modes must come back as they were
    model[0].weight.requires_grad_(False)
    before = _snapshot(model)
    s = activation_stats(model, d.inputs)
    after = _snapshot(model)
    assert all(torch.equal(v, after[0][k]) for k, v in before[0].items())
    assert before[1:] == after[1:] and _no_hooks(model) and _on(model, device)
    # measured in eval mode: running statistics, not batch statistics (oracle: the CPU case)
    with torch.no_grad():
        pre = c.model.eval()[1](c.model[0](c.inputs))
    assert s.layers["2"].active == int((pre > 0).sum())


def test_restored_on_error():
    class Boom(Exception):
        pass

    model = TwoBlockMLP().to(DT).train()
    calls = []

    def explode(_m, _a):
        calls.append(1)
        if len(calls) == 2:
            raise Boom

    model.head.register_forward_pre_hook(explode)
    with pytest.raises(Boom):
        activation_stats(model, X, batch_size=2)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.blocks.modules())


def test_dtype_and_device_options_measure_a_copy(device):
    c = make_case("mixer1", n=5, dtype=torch.float32)
    d = c.to(device)
    before, before_cpu = _snapshot(d.model), _snapshot(c.model)
    s64 = activation_stats(d.model, d.inputs, dtype=DT)  # a float64 copy on the model's device
    s_cpu = activation_stats(d.model, d.inputs, device="cpu")  # a CPU copy (on CUDA: moved)
    s_dev = activation_stats(c.model, c.inputs, device=device)  # a CPU model run on ``device``
    for model, snap in ((d.model, before), (c.model, before_cpu)):
        after = _snapshot(model)
        assert all(
            torch.equal(v, after[0][k]) and v.dtype == torch.float32 for k, v in snap[0].items()
        )
        assert snap[1:] == after[1:] and _no_hooks(model)
    assert _on(d.model, device) and _on(c.model, torch.device("cpu"))
    assert s64.neurons == s_cpu.neurons == s_dev.neurons and s64.samples == s_dev.samples == 5
    assert s64.weight_norm == pytest.approx(s_cpu.weight_norm, rel=1e-6)
    assert s_dev.weight_norm == pytest.approx(s_cpu.weight_norm, rel=1e-6)


def test_sharded_ranks_sum_to_the_single_process_result(monkeypatch, device):
    """Simulate two torchrun ranks: rank 1's accumulators are added into rank 0's."""
    c = make_case("vit1", n=5).to(device)
    ref = activation_stats(c.model, c.inputs, batch_size=2)
    one = activation_stats(c.model, c.inputs[:1])

    def run_as(rank: int, n: int, add: torch.Tensor | None):
        captured = []

        def reduce(t):
            captured.append(t.clone())
            return t.add_(add) if add is not None else t

        monkeypatch.setattr(distributed, "rank", lambda: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(act_mod.distributed, "all_reduce_sum", reduce)
        return activation_stats(c.model, c.inputs[:n], batch_size=2), captured[0]

    _, v1 = run_as(1, 5, None)
    assert v1.device.type == device.type  # NCCL all-reduces only tensors on the GPU
    s, _ = run_as(0, 5, v1)
    assert s.samples == 5 and s.layers == ref.layers
    for k, b in s.blocks.items():
        assert b.output_norm == pytest.approx(ref.blocks[k].output_norm, rel=1e-13)
    # one example, two ranks: rank 1's shard is empty but its accumulators match in shape
    _, w1 = run_as(1, 1, None)
    s1, w0 = run_as(0, 1, w1)
    assert w0.shape == w1.shape and float(w1[0]) == 0.0 and float(w1[1:].abs().sum()) == 0.0
    assert s1.layers == one.layers


def test_real_model_block_names():
    from geomkit.models import build

    vit = build("vit", image_size=4, patch_size=2, in_chans=1, num_classes=3, embed_dim=8,
                depth=2, num_heads=2)  # fmt: skip
    assert find_blocks(vit) == ["blocks.0", "blocks.1"]
    s = activation_stats(vit, torch.randn(3, 1, 4, 4))
    assert s.blocks["blocks.1"].layers == ("blocks.1.mlp.act",)
    res = build("resnet-tiny", image_size=8, in_chans=1, num_classes=3)
    blocks = find_blocks(res)
    assert blocks[0] == "layer1.0" and all(b.startswith("layer") for b in blocks)
    s = activation_stats(res, torch.randn(2, 1, 8, 8))
    assert s.layers["act1"].block is None  # the stem belongs to no block
    assert s.blocks["layer1.0"].layers == ("layer1.0.act1", "layer1.0.act2")
    conv_channels = res.layer1[0].conv1.out_channels
    assert s.layers["layer1.0.act1"].neurons == conv_channels


def test_block_selection_and_errors():
    model = TwoBlockMLP().to(DT)
    assert find_blocks(model, r"blocks\.1") == ["blocks.1"]
    assert find_blocks(model, ["blocks.1", "blocks.0"]) == ["blocks.1", "blocks.0"]
    s = activation_stats(model, X, blocks=["head"])
    assert list(s.blocks) == ["head"] and math.isnan(s.blocks["head"].active_fraction)
    with pytest.raises(BlockError, match="matches no module"):
        find_blocks(model, r"layer\d+")
    with pytest.raises(BlockError, match="unknown block"):
        activation_stats(model, X, blocks=["blocks.7"])
    with pytest.raises(BlockError, match="regular expression"):
        find_blocks(model, "(")
    with pytest.raises(DataError):
        activation_stats(model, X[:0])
    with pytest.raises(DataError):
        activation_stats(model, X, torch.zeros(3))


def test_shared_activation_module_counts_each_call_site():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(2, 3), nn.Linear(3, 5), nn.ReLU()

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    model = Shared().to(DT)
    seen = []
    h = model.act.register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
    with torch.no_grad():
        model(X)
    h.remove()
    s = activation_stats(model, X, batch_size=3)
    layer = s.layers["act"]
    assert layer.neurons == 8
    assert layer.active == sum(int((t > 0).sum()) for t in seen)
    assert layer.dead == sum(int((~(t > 0).any(0)).sum()) for t in seen)


# ---------------------------------------------------------------- data and outputs


def _same_stats(got, want, rel: float | None = None) -> None:
    """Counts exactly; norms bitwise (``rel=None``) or to ``rel``."""
    assert got.samples == want.samples and got.layers == want.layers
    assert (got.active, got.values, got.neurons, got.dead) == (
        want.active, want.values, want.neurons, want.dead)
    assert list(got.blocks) == list(want.blocks) and got.weight_norm == want.weight_norm
    for k, b in got.blocks.items():
        w = want.blocks[k]
        assert (b.active, b.values, b.dead, b.weight_norm) == (w.active, w.values, w.dead,
                                                               w.weight_norm)
        if rel is None:
            assert b.output_norm == w.output_norm, k
        else:
            assert b.output_norm == pytest.approx(w.output_norm, rel=rel), k


def test_uneven_dataloader_gives_the_same_statistics(device):
    from torch.utils.data import DataLoader, TensorDataset

    c = make_case("vit1", n=10).to(device)
    x, y = c.inputs.cpu(), c.targets.cpu()  # a loader's batches come from the CPU
    ref = activation_stats(c.model, c.inputs, batch_size=3)  # batches 3, 3, 3, 1
    # the same batches (3, 3, 3, 1): the same sums in the same order, bitwise on the CPU
    # (on CUDA too: each batch's norms are the same kernels on the same values)
    for data in (DataLoader(TensorDataset(x, y), batch_size=3),
                 DataLoader(TensorDataset(x), batch_size=3),  # bare inputs
                 ((x[i : i + 3], y[i : i + 3]) for i in range(0, 10, 3))):  # one-shot
        _same_stats(activation_stats(c.model, data, batch_size=3), ref)
    # other batchings: counts exact, the float64 norm means to rounding (1e-12)
    whole = activation_stats(c.model, c.inputs, batch_size=None)
    _same_stats(activation_stats(c.model, DataLoader(TensorDataset(x, y), batch_size=3),
                                 batch_size=None), whole, rel=1e-12)
    _same_stats(activation_stats(c.model, DataLoader(TensorDataset(x), batch_size=4),
                                 batch_size=2), whole, rel=1e-12)
    with pytest.raises(DataError, match="given twice"):
        activation_stats(c.model, DataLoader(TensorDataset(x, y)), y)


def test_sharded_ranks_over_a_dataloader(monkeypatch, device):
    """Two simulated torchrun ranks over an uneven loader: each rank's accumulators are the
    tensor path's for the same shard, and together they give the single-process result."""
    from torch.utils.data import DataLoader, TensorDataset

    c = make_case("vit1", n=7).to(device)
    loader = DataLoader(TensorDataset(c.inputs.cpu(), c.targets.cpu()), batch_size=3)
    ref = activation_stats(c.model, c.inputs, batch_size=3)
    captured: dict[tuple[str, int], torch.Tensor] = {}

    def run_as(rank: int, data, label: str, add: torch.Tensor | None = None):
        def reduce(t):
            captured[(label, rank)] = t.clone()
            return t.add_(add) if add is not None else t

        monkeypatch.setattr(distributed, "rank", lambda: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(act_mod.distributed, "all_reduce_sum", reduce)
        return activation_stats(c.model, data, batch_size=3)

    for rank in (0, 1):  # shards [0, 4) and [4, 7): rank 1's crosses the loader's batches
        run_as(rank, c.inputs, "tensor")
        run_as(rank, loader, "loader")
        got, want = captured[("loader", rank)], captured[("tensor", rank)]
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
        assert torch.equal(got[:1], want[:1])  # the example count
    s = run_as(0, loader, "sum", add=captured[("loader", 1)])
    assert s.samples == 7 and s.layers == ref.layers
    for k, b in s.blocks.items():
        assert b.output_norm == pytest.approx(ref.blocks[k].output_norm, rel=1e-13)


class _DictOut(TwoBlockMLP):
    def forward(self, x):
        return {"logits": super().forward(x), "features": x}


class _TupleOut(TwoBlockMLP):
    def forward(self, x):
        return super().forward(x), x


@pytest.mark.parametrize("cls", [_DictOut, _TupleOut])
def test_dict_and_tuple_outputs_do_not_matter(cls, device):
    plain = TwoBlockMLP().to(DT).to(device)
    other = cls().to(DT).to(device)
    other.load_state_dict(plain.state_dict())
    _same_stats(activation_stats(other, X.to(device), batch_size=3),
                activation_stats(plain, X.to(device), batch_size=3))
