"""The empirical NTK against explicit Jacobian products in float64.

Measurement tests take the ``device`` fixture (CPU, and CUDA when present): the oracle
(explicit Jacobians, closed forms) is computed on the CPU case, :func:`ntk` runs on
``case.to(device)``; its results are NumPy arrays and floats, so they compare directly.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from geomkit.errors import BlockError, SpecError
from geomkit.geometry.blocks import resolve_blocks
from geomkit.geometry.ntk import NTKResult, ntk, ntk_at_init
from tests.cases import CASE_NAMES, OutputWrapper, make_case

N = 6


def dense_jacobian(model: nn.Module, x: torch.Tensor, bn: str, names=None) -> torch.Tensor:
    """J[i, c, p] = ∂f_c(x_i)/∂θ_p of the batched forward (TE-NAS style for bn='train')."""
    m = copy.deepcopy(model)
    m.train() if bn == "train" else m.eval()
    named = dict(m.named_parameters())
    names = list(named) if names is None else names
    primals = tuple(named[n].detach() for n in names)

    def f(*p):
        return functional_call(m, dict(zip(names, p, strict=True)), (x,))

    jac = torch.autograd.functional.jacobian(f, primals)
    return torch.cat([j.reshape(*j.shape[:2], -1) for j in jac], dim=-1)


def dense_kernel(jac: torch.Tensor, mode: str) -> np.ndarray:
    n, c, p = jac.shape
    if mode == "sum":
        g = jac.sum(1)
    elif mode == "trace":
        g = jac.reshape(n, c * p)
    else:
        g = jac.reshape(n * c, p)
    return (g @ g.T).numpy()


def assert_kernel_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-10) -> None:
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < rtol, f"max relative error {err:.2e}"


def _params_unchanged(before: dict, model: nn.Module) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _on(model: nn.Module, device: torch.device) -> bool:
    return all(t.device.type == device.type for t in (*model.parameters(), *model.buffers()))


@pytest.mark.parametrize(
    "name,bn",
    [(c, "eval") for c in CASE_NAMES] + [("cnn_bn", "train")],
)
def test_every_mode_matches_explicit_jacobian(name, bn, device):
    case = make_case(name, n=N)
    jac = dense_jacobian(case.model, case.inputs, bn)
    dev = case.to(device)
    before = {k: v.clone() for k, v in dev.model.state_dict().items()}
    for mode in ("sum", "trace", "full"):
        res = ntk(dev.model, dev.inputs, mode=mode, bn=bn)
        want = dense_kernel(jac, mode)
        assert_kernel_close(res.kernel, want)
        ev = np.linalg.eigvalsh(want)
        np.testing.assert_allclose(res.eigenvalues, ev, rtol=1e-8, atol=1e-10 * ev[-1])
        assert res.kernel.dtype == np.float64 and res.eigenvalues.dtype == np.float64
        assert res.mode == mode and res.bn == bn and res.n_samples == N and res.n_outputs == 3
        assert res.n_params == jac.shape[-1]
        assert res.method == ("batch-jacobian" if bn == "train" else "per-sample")
        assert res.lambda_max == pytest.approx(ev[-1], rel=1e-8)
        assert res.kappa == pytest.approx(ev[-1] / ev[0], rel=1e-6)
    assert _params_unchanged(before, dev.model) and _on(dev.model, device)
    assert not dev.model.training


def test_batchnorm_train_uses_batch_statistics_and_leaves_model_alone(device):
    case = make_case("cnn_bn", n=N)
    dev = case.to(device)
    model = dev.model
    model.train()  # flags must come back exactly as they were, buffers untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = ntk(model, dev.inputs, bn="train")
    ev = ntk(model, dev.inputs, bn="eval")
    assert not np.allclose(tr.kernel, ev.kernel)
    want = dense_kernel(dense_jacobian(case.model, case.inputs, "eval"), "sum")
    assert_kernel_close(ev.kernel, want)
    assert _params_unchanged(before, model) and _on(model, device)
    assert all(m.training for m in model.modules())
    assert model[1].track_running_stats


@pytest.mark.parametrize("name,bn", [("vit1", "eval"), ("cnn_bn", "train")])
@pytest.mark.parametrize("mode", ["sum", "full"])
def test_chunking_and_batching_do_not_change_the_kernel(name, bn, mode, device):
    case = make_case(name, n=N).to(device)
    ref = ntk(case.model, case.inputs, mode=mode, bn=bn)
    assert ref.n_chunks == 1
    # every tensor its own chunk; a few tensors per chunk with small row batches
    few = {"vit1": (120, 4), "cnn_bn": (40, 5)}[name]
    for chunk_size, batch_size in [(1, None), few]:
        res = ntk(case.model, case.inputs, mode=mode, bn=bn, chunk_size=chunk_size,
                  batch_size=batch_size)
        assert res.n_chunks > 1
        assert_kernel_close(res.kernel, ref.kernel, rtol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_model_closed_form(bias, device):
    # f(x) = W x (+ b): sum mode Θ = C (X Xᵀ + 1[bias]), trace the same, full (XXᵀ + 1) ⊗ I_C
    c, s = 4, torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    x = torch.diag(s)
    gram = x @ x.T + (1.0 if bias else 0.0)  # the oracle, on the CPU
    x = x.to(device)
    model = nn.Linear(4, c, bias=bias).double().to(device)
    res = ntk(model, x, mode="sum")
    np.testing.assert_allclose(res.kernel, c * gram.numpy(), rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(ntk(model, x, mode="trace").kernel, c * gram.numpy(), rtol=1e-14)
    full = ntk(model, x, mode="full")
    np.testing.assert_allclose(full.kernel, np.kron(gram.numpy(), np.eye(c)), atol=1e-13)
    if not bias:  # Θ = C diag(s²): κ = (5/1)² exactly
        assert res.kappa == 25.0
        assert res.lambda_max == c * 25.0 and res.lambda_min == c * 1.0
    else:
        ev = np.linalg.eigvalsh(c * gram.numpy())
        assert res.kappa == pytest.approx(ev[-1] / ev[0], rel=1e-12)


def test_singular_kernel_gives_inf_with_warning(device):
    x = torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)).to(device)  # a zero input
    model = nn.Linear(3, 2, bias=False).double().to(device)
    with pytest.warns(RuntimeWarning, match="kappa set to inf"):
        res = ntk(model, x)
    assert res.kappa == math.inf and res.lambda_min == 0.0 and res.lambda_max == 8.0


def test_non_finite_kernel_gives_inf_with_warning(device):
    model = nn.Linear(3, 2).double().to(device)
    x = torch.randn(4, 3, dtype=torch.float64)
    x[1, 2] = float("nan")  # ∂f/∂W = x: a NaN gradient
    x = x.to(device)
    with pytest.warns(RuntimeWarning, match="not finite"):
        res = ntk(model, x)
    assert res.kappa == math.inf and math.isnan(res.lambda_max)
    assert np.isnan(res.eigenvalues).all()


def test_parameter_block_is_the_jacobian_of_that_block_only(device):
    case = make_case("vit1", n=N)
    names = resolve_blocks(case.model, ["attn"])["attn"]
    dev = case.to(device)
    res = ntk(dev.model, dev.inputs, params=names, bn="eval")
    want = dense_kernel(dense_jacobian(case.model, case.inputs, "eval", names), "sum")
    assert_kernel_close(res.kernel, want)
    assert res.n_params == sum(dict(case.model.named_parameters())[n].numel() for n in names)


def test_bad_arguments_raise_user_errors():
    case = make_case("mlp", n=N)
    with pytest.raises(BlockError, match="unknown parameter"):
        ntk(case.model, case.inputs, params=["nope.weight"])
    with pytest.raises(BlockError, match="empty"):
        ntk(case.model, case.inputs, params=[])
    with pytest.raises(SpecError, match="mode"):
        ntk(case.model, case.inputs, mode="diag")
    with pytest.raises(SpecError, match="BatchNorm"):
        ntk(case.model, case.inputs, bn="frozen")
    with pytest.raises(SpecError, match="chunk_size"):
        ntk(case.model, case.inputs, chunk_size=0)


def test_batchnorm_without_running_stats_is_coupled_in_eval_mode_too(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False),
                          nn.Tanh(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    res = ntk(copy.deepcopy(model).to(device), x.to(device), bn="eval")
    assert res.method == "batch-jacobian"
    assert_kernel_close(res.kernel, dense_kernel(dense_jacobian(model, x, "eval"), "sum"))


def test_model_modes_restored_on_error():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.bn = nn.BatchNorm1d(2)

        def forward(self, x):
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        ntk(model, torch.randn(4, 3))
    assert all(m.training for m in model.modules()) and model.bn.track_running_stats


def test_dtype_and_device_options_compute_without_casting_or_moving_the_model(device):
    # a float32 CPU model, computed in float64 on ``device`` (the inputs stay on the CPU too)
    case = make_case("mlp", n=N)
    model32 = copy.deepcopy(case.model).float()
    res = ntk(model32, case.inputs.float(), dtype=torch.float64, bn="eval", device=device)
    assert next(model32.parameters()).dtype == torch.float32 and _on(model32, torch.device("cpu"))
    m64 = copy.deepcopy(model32).double()
    want = dense_kernel(dense_jacobian(m64, case.inputs.float().double(), "eval"), "sum")
    assert_kernel_close(res.kernel, want)


def test_ntk_at_init_mean_and_std_over_seeds(device):
    x = make_case("mlp", n=N).inputs.to(device)

    def factory(seed: int) -> nn.Module:
        torch.manual_seed(seed)  # initialized on the CPU (same weights on every device)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 3))
        return model.double().to(device)

    res = ntk_at_init(factory, x, repeats=3, seed=5, bn="eval")
    assert res.seeds == (5, 6, 7) and res.repeats == 3
    kappas = [ntk(factory(s), x, bn="eval").kappa for s in (5, 6, 7)]
    assert [r.kappa for r in res.results] == pytest.approx(kappas, rel=1e-12)
    assert res.kappa == pytest.approx(np.mean(kappas), rel=1e-12)
    assert res.kappa_std == pytest.approx(np.std(kappas, ddof=1), rel=1e-10)
    assert len(set(kappas)) == 3
    assert ntk_at_init(factory, x, repeats=1, seed=5, bn="eval").kappa_std == 0.0
    assert isinstance(res.results[0], NTKResult)
    with pytest.raises(SpecError):
        ntk_at_init(factory, x, repeats=0)


# --------------------------------------------------------------------------- data and outputs


def assert_same_kernel(got: NTKResult, want: NTKResult, device: torch.device, msg="") -> None:
    """Bitwise on the CPU (the same arithmetic on the same tensors); on CUDA, whose reductions
    (cuDNN's convolution backward) need not be deterministic, to 1e-10 in float64."""
    if device.type == "cpu":
        np.testing.assert_array_equal(got.kernel, want.kernel, err_msg=msg)
        assert got.kappa == want.kappa, msg
    else:
        assert_kernel_close(got.kernel, want.kernel, rtol=1e-10)
        assert got.kappa == pytest.approx(want.kappa, rel=1e-8), msg


_Wrapped = OutputWrapper  # the shared tuple/dict/.logits output wrapper


@pytest.mark.parametrize("name,bn", [("mlp", "eval"), ("cnn_bn", "train")])
def test_uneven_dataloader_and_bare_input_batches_give_the_same_kernel(name, bn, device):
    from torch.utils.data import DataLoader, TensorDataset

    case = make_case(name, n=10).to(device)
    x, y = case.inputs, case.targets
    ref = ntk(case.model, x, mode="trace", bn=bn)
    # the batches are gathered into the very tensor ``x`` before any arithmetic: bitwise on
    # the CPU (assert_same_kernel)
    sources = {
        "(x, y) loader, batches 3+3+3+1": DataLoader(TensorDataset(x, y), batch_size=3),
        "bare-x loader": DataLoader(TensorDataset(x), batch_size=3),
        "list of x batches": [x[:3], x[3:6], x[6:9], x[9:]],
        "(x, y) tensors": (x, y),
        "generator": ((x[i : i + 4], y[i : i + 4]) for i in range(0, 10, 4)),
    }
    for label, data in sources.items():
        res = ntk(case.model, data, mode="trace", bn=bn)
        assert_same_kernel(res, ref, device, label)
        assert res.n_samples == 10, label
    # the first n examples, across a batch boundary
    first7 = ntk(case.model, DataLoader(TensorDataset(x, y), batch_size=3), n=7, bn=bn)
    assert_same_kernel(first7, ntk(case.model, x[:7], bn=bn), device)
    assert_same_kernel(ntk(case.model, x, n=7, bn=bn), first7, device)
    assert first7.n_samples == 7
    with pytest.raises(SpecError, match="n must be"):
        ntk(case.model, x, n=0)


def test_ntk_at_init_reads_a_loader_once(device):
    from torch.utils.data import DataLoader, TensorDataset

    x = make_case("mlp", n=N).inputs.to(device)

    def factory(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 3))
        return model.double().to(device)

    ref = ntk_at_init(factory, x, repeats=2, seed=1, bn="eval")
    once = ((x[i : i + 4],) for i in range(0, N, 4))  # one-shot, bare inputs
    for data in (DataLoader(TensorDataset(x), batch_size=4), once):
        res = ntk_at_init(factory, data, repeats=2, seed=1, bn="eval")
        for got, want in zip(res.results, ref.results, strict=True):
            assert_same_kernel(got, want, device)
    sub = ntk_at_init(factory, x, n=4, repeats=2, seed=1, bn="eval")
    assert sub.n_samples == 4
    for got, want in zip(sub.results, ntk_at_init(factory, x[:4], repeats=2, seed=1,
                                                  bn="eval").results, strict=True):
        assert_same_kernel(got, want, device)


@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("name,bn", [("vit1", "eval"), ("cnn_bn", "train")])
def test_dict_and_tuple_outputs_give_the_plain_kernel(kind, name, bn, device):
    case = make_case(name, n=N).to(device)
    wrapped = _Wrapped(case.model, kind)
    for mode in ("sum", "full"):
        ref = ntk(case.model, case.inputs, mode=mode, bn=bn)
        res = ntk(wrapped, case.inputs, mode=mode, bn=bn)
        # the same parameters, the same forward, the logits picked out of the output: bitwise
        # on the CPU
        assert_same_kernel(res, ref, device)
        assert res.n_outputs == 3 and res.n_params == ref.n_params


@pytest.mark.parametrize("repeats", [0, 10_001, 2.0, True])
def test_ntk_at_init_refuses_repeats_it_cannot_mean(repeats):
    from geomkit.errors import SpecError
    from geomkit.geometry.ntk import ntk_at_init

    def never(seed):
        raise AssertionError("no model may be built")

    with pytest.raises(SpecError) as e:
        ntk_at_init(never, torch.zeros(2, 3), repeats=repeats)
    assert e.value.param == "repeats"


def test_float32_gradients_get_a_float64_gram_over_long_rows():
    """Rows of 10^7 float32 gradients: each gradient is exact here (the input itself), so
    the kernel must equal the float64 Gram of the inputs; a float32 GEMM is ~1e-3 off."""
    from geomkit.geometry.ntk import ntk

    torch.manual_seed(0)
    d = 2_500_000
    model = nn.Linear(d, 4)  # sum of 4 logits: d/dW = ones(4) ⊗ x, d/db = ones(4)
    x = torch.randn(6, d) + 0.5
    for budget in (4.0, 0.05):  # one chunk, or many: the kernel may not depend on it
        k = ntk(model, x, dtype=torch.float32, memory_gib=budget).kernel
        xd = x.double()
        want = (4 * (xd @ xd.T) + 4).numpy()
        np.testing.assert_allclose(k, want, rtol=1e-9)


def test_float32_chunks_do_not_pay_for_a_float64_copy():
    """The float64 Gram converts a bounded column slice at a time, so a float32 Jacobian
    chunk may hold twice the columns of a float64 one at the same budget (a whole float64
    copy of the chunk made float32 use *more* chunks than float64); same kernel either way."""
    from geomkit.geometry.ntk import ntk

    torch.manual_seed(0)
    layers = [m for _ in range(10) for m in (nn.Linear(256, 256), nn.Tanh())]
    model = nn.Sequential(*layers, nn.Linear(256, 3))
    x = torch.randn(4, 256)
    r32 = ntk(model, x, dtype=torch.float32, memory_gib=0.01)
    r64 = ntk(model, x, dtype=torch.float64, memory_gib=0.01)
    assert 1 < r32.n_chunks < r64.n_chunks, (r32.n_chunks, r64.n_chunks)
    one = ntk(model, x, dtype=torch.float32, memory_gib=4.0)
    assert one.n_chunks == 1
    np.testing.assert_allclose(r32.kernel, one.kernel, rtol=1e-12)
    np.testing.assert_allclose(r32.kernel, r64.kernel, rtol=1e-4)
