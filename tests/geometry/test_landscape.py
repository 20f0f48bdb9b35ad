"""Directions and grid evaluation of geomkit.geometry.landscape, against explicit oracles.

Measurement tests take the ``device`` fixture (CPU, and CUDA when present): oracles run on
the CPU case, the landscape on ``case.to(device)``, and results are compared on the CPU.
Directions are drawn on the CPU and moved, so they are the same numbers on every device.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomkit.errors import CheckpointError, SpecError
from geomkit.geometry.landscape import (
    Grid,
    cosine,
    evaluate,
    evaluate_points,
    interpolation_direction,
    loss_landscape,
    normalize_direction,
    random_direction,
    random_directions,
)
from tests.cases import CASE_NAMES, OutputWrapper, make_case


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, saved):
    now = model.state_dict()
    assert list(now) == list(saved)
    for k, v in saved.items():
        assert now[k].device == v.device and torch.equal(now[k], v), k


def _cpu(direction):
    return {k: v.cpu() for k, v in direction.items()}


def _on(direction, device):
    return all(t.device.type == device.type for t in direction.values())


# ---------------------------------------------------------------- directions


@pytest.mark.parametrize("name", CASE_NAMES)
def test_filter_normalization_matches_weight_filters(name, device):
    case = make_case(name)
    w = dict(case.model.named_parameters())
    d = random_direction(case.to(device).model, seed=3)
    assert list(d) == list(w) and _on(d, device)  # state_dict names, unmodified, same order
    for k, t in _cpu(d).items():
        if t.dim() <= 1:
            assert torch.count_nonzero(t) == 0, k  # biasbn: 1-D parameters zeroed
            continue
        for i in range(t.shape[0]):  # every filter (dim-0 slice) has its weight filter's norm
            torch.testing.assert_close(t[i].norm(), w[k][i].detach().norm(), rtol=1e-9, atol=1e-9)


def test_filter_normalization_oracle_per_filter_loop(device):
    """Li et al.: D_i <- D_i * ||W_i|| / (||D_i|| + 1e-10), written as an explicit loop."""
    case = make_case("cnn_bn")
    weights = {k: p.detach() for k, p in case.model.named_parameters()}
    dev_weights = {k: p.detach() for k, p in case.to(device).model.named_parameters()}
    g = torch.Generator().manual_seed(5)
    raw = {
        k: torch.randn(w.shape, generator=g, dtype=torch.float32).to(w.dtype)
        for k, w in weights.items()
    }
    on_device = normalize_direction(
        {k: r.to(device) for k, r in raw.items()}, dev_weights, norm="filter", ignore="biasbn"
    )
    # a CPU direction against weights on the device: normalized where the direction lives
    mixed = normalize_direction(raw, dev_weights, norm="filter", ignore="biasbn")
    assert _on(on_device, device) and _on(mixed, torch.device("cpu"))
    for k, r in raw.items():
        want = torch.zeros_like(r)
        if r.dim() > 1:
            for i in range(r.shape[0]):
                want[i] = r[i] * weights[k][i].norm() / (r[i].norm() + 1e-10)
        torch.testing.assert_close(on_device[k].cpu(), want, rtol=1e-12, atol=0)
        torch.testing.assert_close(mixed[k], want, rtol=1e-12, atol=0)
    assert torch.count_nonzero(raw["1.weight"]) > 0  # input untouched


def test_ignore_none_keeps_1d_params_normalized_as_a_whole(device):
    case = make_case("cnn_bn")
    w = dict(case.model.named_parameters())
    model = case.to(device).model
    d = _cpu(random_direction(model, seed=1, ignore="none"))
    d_bb = _cpu(random_direction(model, seed=1, ignore="biasbn"))
    for k, t in d.items():
        if t.dim() <= 1:
            assert torch.count_nonzero(t) == t.numel()
            torch.testing.assert_close(t.norm(), w[k].detach().norm(), rtol=1e-9, atol=0)
        else:  # the >= 2-D entries do not depend on `ignore`
            assert torch.equal(t, d_bb[k])


def test_layer_and_none_normalization(device):
    case = make_case("vit1")
    w = dict(case.model.named_parameters())
    model = case.to(device).model
    lay = _cpu(random_direction(model, seed=2, norm="layer"))
    raw = random_direction(model, seed=2, norm="none", ignore="none")
    assert _on(raw, device)
    raw = _cpu(raw)
    g = torch.Generator().manual_seed(2)
    for k, p in w.items():  # drawn by the CPU generator, then moved: the same bits anywhere
        want = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
        assert torch.equal(raw[k], want)
        if p.dim() > 1:
            torch.testing.assert_close(lay[k].norm(), p.detach().norm(), rtol=1e-9, atol=0)
    with pytest.raises(SpecError):
        random_direction(case.model, norm="bogus")
    with pytest.raises(SpecError):
        random_direction(case.model, ignore="bogus")


def test_same_seed_same_directions_and_near_orthogonal(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)).to(device)
    a1, b1 = random_directions(model, 2, seed=7)
    a2, b2 = random_directions(model, 2, seed=7)
    c, _ = random_directions(model, 2, seed=8)
    for k in a1:
        assert torch.equal(a1[k], a2[k]) and torch.equal(b1[k], b2[k])
    assert not torch.equal(a1["0.weight"], c["0.weight"])
    assert abs(cosine(a1, b1)) < 0.05  # ~11k entries: cosine ~ 0.01
    assert cosine(a1, a1) == pytest.approx(1.0)
    assert cosine(a1, _cpu(b1)) == cosine(a1, b1)  # one of them back on the CPU


def test_interpolation_direction_reaches_the_target(device):
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    m2 = copy.deepcopy(m1)
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(torch.randn_like(p))
    d = interpolation_direction(copy.deepcopy(m1).to(device), m2)  # target left on the CPU
    assert set(d) == {k for k, _ in m1.named_parameters()}  # no running stats
    assert _on(d, device)
    for k, p in m1.named_parameters():
        torch.testing.assert_close(p.detach() + d[k].cpu(), dict(m2.named_parameters())[k].detach())
    with pytest.raises(CheckpointError):
        interpolation_direction(m1, nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2)))


# ---------------------------------------------------------------- evaluation


def _oracle(model, inputs, targets, dirs, coeffs):
    """Loss and accuracy of a fresh copy loaded with theta + sum c_k d_k (no batching)."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for k, p in m.named_parameters():
            p.add_(sum(c * d[k] for c, d in zip(coeffs, dirs, strict=True)))
        out = m(inputs)
    return F.cross_entropy(out, targets).item(), 100.0 * (
        out.argmax(1) == targets
    ).double().mean().item()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_grid_matches_oracle_and_center_is_exact(name, device):
    case = make_case(name, n=12)
    dev = case.to(device)
    model, x, y = dev.model, dev.inputs, dev.targets
    saved = _state(model)
    dirs = random_directions(model, 2, seed=0, ignore="none")
    assert all(_on(d, device) for d in dirs)
    grid = Grid((-1.0, 1.0, 3), (-0.5, 0.5, 3))
    surf = loss_landscape(model, x, y, dirs, grid, batch_size=5)
    assert surf.loss.shape == (3, 3) and surf.done.all()
    # the center reproduces the unperturbed evaluation on the device bit for bit
    assert surf.loss[1, 1] == evaluate(model, x, y, batch_size=5)[0]
    assert surf.center_loss == surf.loss[1, 1]
    # oracle: a CPU copy of the model loaded with theta + a d1 + b d2, the whole set at once
    cpu_dirs = [_cpu(d) for d in dirs]
    for i, b in enumerate(grid.ycoordinates):  # row i is y_i, column j is x_j
        for j, a in enumerate(grid.xcoordinates):
            loss, acc = _oracle(case.model, case.inputs, case.targets, cpu_dirs, (a, b))
            assert surf.loss[i, j] == pytest.approx(loss, rel=1e-12)
            assert surf.acc[i, j] == pytest.approx(acc)
    _assert_same_state(model, saved)


def test_center_equals_unperturbed_float32_and_buffers_untouched(device):
    case = make_case("cnn_bn", n=20, dtype=torch.float32)
    dev = case.to(device)
    model = dev.model.train()  # evaluated in eval mode, flags restored
    saved = _state(model)
    dirs = random_directions(case.model, 2, seed=0)  # CPU directions for the device model
    surf = loss_landscape(model, dev.inputs, dev.targets, dirs, Grid((-1, 1, 5), (-1, 1, 5)))
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    assert surf.loss[2, 2] == evaluate(model, dev.inputs, dev.targets)[0]
    _assert_same_state(model, saved)  # incl. BatchNorm running statistics, on the device
    # the center is the model's own loss, computed directly on the CPU (float32; CUDA sums
    # the mean cross-entropy in another order, so it agrees to float32 rounding only)
    with torch.no_grad():
        direct = F.cross_entropy(case.model(case.inputs), case.targets).item()
    assert surf.loss[2, 2] == pytest.approx(direct, rel=1e-6 if device.type == "cpu" else 1e-5)


def test_weights_restored_on_error(device):
    case = make_case("vit1").to(device)
    saved = _state(case.model)
    dirs = random_directions(case.model, 2, seed=0)

    def boom(p, loss, acc):
        if p == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_points(
            case.model,
            case.inputs,
            case.targets,
            dirs,
            Grid((-1, 1, 3), (-1, 1, 3)).coords(),
            callback=boom,
        )
    _assert_same_state(case.model, saved)


def test_non_finite_losses_are_stored(device):
    case = make_case("mlp").to(device)
    d = random_direction(case.model, seed=0)
    huge = {k: v * 1e308 for k, v in d.items()}
    surf = loss_landscape(case.model, case.inputs, case.targets, [huge], Grid((-10, 10, 3)))
    assert surf.loss.shape == (3,)
    assert (
        np.isfinite(surf.loss[1])
        and not np.isfinite(surf.loss[0])
        and not np.isfinite(surf.loss[2])
    )


def test_vmap_path_matches_loop(device):
    case = make_case("vit1")
    dirs = random_directions(case.model, 2, seed=0)  # CPU directions
    model = case.to(device).model  # CPU inputs: batches go to the model's device
    g = Grid((-1, 1, 3), (-1, 1, 3))
    loop = loss_landscape(model, case.inputs, case.targets, dirs, g, batch_size=4)
    vm = loss_landscape(model, case.inputs, case.targets, dirs, g, batch_size=4, points_per_call=4)
    np.testing.assert_allclose(vm.loss, loop.loss, rtol=1e-10)
    np.testing.assert_array_equal(vm.acc, loop.acc)
    # and the one-point loop is the CPU oracle's (float64)
    for (a, b), loss in zip(g.coords(), loop.loss.reshape(-1), strict=True):
        want, _ = _oracle(case.model, case.inputs, case.targets, dirs, (a, b))
        assert loss == pytest.approx(want, rel=1e-12)


def test_grid_spec_and_errors():
    g = Grid((-1, 1, 51), (-0.5, 2.5, 4))
    assert g.shape == (4, 51) and g.size == 204
    assert g.spec() == {"x": "-1:1:51", "y": "-0.5:2.5:4"}
    assert g.xcoordinates[25] == 0.0
    c = g.coords([0, 52])
    assert c.tolist() == [[-1.0, -0.5], [-0.96, 0.5]]
    with pytest.raises(SpecError):
        Grid((1, -1, 5))
    case = make_case("mlp")
    with pytest.raises(SpecError):
        loss_landscape(case.model, case.inputs, case.targets, [{}], Grid((-1, 1, 3), (-1, 1, 3)))
    with pytest.raises(SpecError):
        loss_landscape(
            case.model, case.inputs, case.targets, [{"nope": torch.ones(1)}], Grid((-1, 1, 3))
        )


def test_hessian_directions_are_the_dense_top_eigenvectors(device):
    from geomkit.geometry.landscape import hessian_available, hessian_directions

    if not hessian_available():
        pytest.skip("geomkit.geometry.hessian.hessian_eigs(return_vectors=True) not present")
    from torch.func import functional_call, hessian

    case = make_case("mlp")
    names = [n for n, _ in case.model.named_parameters()]
    shapes = [p.shape for _, p in case.model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in case.model.parameters()])

    def loss(v):
        ps, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            ps[n] = v[i : i + s.numel()].view(s)
            i += s.numel()
        return F.cross_entropy(functional_call(case.model, ps, (case.inputs,)), case.targets)

    _, vecs = torch.linalg.eigh(hessian(loss)(flat))  # the dense oracle, on the CPU
    dev = case.to(device)
    d = hessian_directions(dev.model, dev.inputs, dev.targets, k=2, tol=1e-10)
    assert all(_on(dk, device) for dk in d)
    for k in range(2):
        v = torch.cat([d[k][n].cpu().flatten() for n in names])
        assert abs(float(v @ vecs[:, -1 - k])) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- data, losses, outputs


def test_uneven_dataloader_gives_the_same_surface(device):
    from torch.utils.data import DataLoader, TensorDataset

    case = make_case("cnn_bn", n=10)
    dirs = random_directions(case.model, 2, seed=0)  # CPU directions
    model = case.to(device).model
    x, y = case.inputs, case.targets
    g = Grid((-1, 1, 3), (-1, 1, 3))
    for ppc in (1, 4):  # the in-place loop and the vmap path
        ref = loss_landscape(model, x, y, dirs, g, batch_size=3, points_per_call=ppc)
        # the same batches 3, 3, 3, 1 in the same order: the same sums, bitwise (CPU and CUDA)
        for data in (DataLoader(TensorDataset(x, y), batch_size=3),
                     ((x[i : i + 3], y[i : i + 3]) for i in range(0, 10, 3))):  # one-shot
            surf = loss_landscape(model, data, dirs, g, batch_size=3, points_per_call=ppc)
            np.testing.assert_array_equal(surf.loss, ref.loss)
            np.testing.assert_array_equal(surf.acc, ref.acc)
        # other batchings (one batch of 10 against the loader's 3, 3, 3, 1): float64 rounding
        whole = loss_landscape(model, x, y, dirs, g, points_per_call=ppc)
        loader = DataLoader(TensorDataset(x, y), batch_size=3)
        surf = loss_landscape(model, loader, directions=dirs, grid=g, points_per_call=ppc)
        np.testing.assert_allclose(surf.loss, whole.loss, rtol=1e-10, atol=0)
        np.testing.assert_array_equal(surf.acc, whole.acc)
    coords = g.coords([0, 4, 8])
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    got = evaluate_points(model, loader, dirs, coords, batch_size=3)
    want = evaluate_points(model, x, y, dirs, coords, batch_size=3)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert evaluate(model, loader, batch_size=3) == evaluate(model, x, y, batch_size=3)
    assert evaluate(model, (x, y), batch_size=3) == evaluate(model, x, y, batch_size=3)


def _hand_loss(name, out, y):
    """Per-example losses written out: the oracle of each loss name."""
    onehot = F.one_hot(y, out.shape[1]).to(out.dtype)
    if name == "bce":
        return -(onehot * F.logsigmoid(out) + (1 - onehot) * F.logsigmoid(-out)).sum(1)
    if name == "mse":
        return ((out - onehot) ** 2).sum(1)
    if name == "ce:0.2":  # (1 - ε) CE + ε · mean over classes of -log p
        logp = torch.log_softmax(out, 1)
        return -0.8 * logp.gather(1, y[:, None])[:, 0] - 0.2 * logp.mean(1)
    raise AssertionError(name)


def _margin(out, y):
    """A callable loss: the multiclass hinge, one value per example."""
    true = out.gather(1, y[:, None])
    return torch.relu(1 + out - true).sum(1) - 1


@pytest.mark.parametrize("loss", ["bce", "mse", "ce:0.2", "callable"])
def test_other_losses_match_a_hand_written_evaluation(loss, device):
    case = make_case("vit1", n=10)
    dirs = random_directions(case.model, 2, seed=1)
    model = case.to(device).model
    g = Grid((-1, 1, 3), (-0.5, 0.5, 3))
    spec = _margin if loss == "callable" else loss
    for ppc in (1, 3):
        surf = loss_landscape(model, case.inputs, case.targets, dirs, g, loss=spec,
                              batch_size=4, points_per_call=ppc)
        for k in (0, 4, 7):  # a few grid points, the center among them
            i, j = divmod(k, 3)
            a, b = g.xcoordinates[j], g.ycoordinates[i]
            m = copy.deepcopy(case.model).eval()  # the oracle: float64 on the CPU, all at once
            with torch.no_grad():
                for n, p in m.named_parameters():
                    p.add_(a * dirs[0][n] + b * dirs[1][n])
                out = m(case.inputs)
            per = _margin(out, case.targets) if loss == "callable" else _hand_loss(
                loss, out, case.targets)
            assert surf.loss[i, j] == pytest.approx(per.mean().item(), rel=1e-12, abs=1e-12)
            acc = 100.0 * (out.argmax(1) == case.targets).double().mean().item()
            assert surf.acc[i, j] == pytest.approx(acc)
    # label_smoothing= is the same loss as the "ce:ε" spec, and the center is evaluate()'s
    a = loss_landscape(model, case.inputs, case.targets, dirs, g, loss="ce", label_smoothing=0.2)
    b = loss_landscape(model, case.inputs, case.targets, dirs, g, loss="ce:0.2")
    np.testing.assert_array_equal(a.loss, b.loss)
    center = evaluate(model, case.inputs, case.targets, loss=spec)[0]
    plain = loss_landscape(model, case.inputs, case.targets, dirs, g, loss=spec)
    assert plain.loss[1, 1] == center


def test_soft_targets_accuracy_is_their_argmax(device):
    case = make_case("mlp", n=10)
    dirs = random_directions(case.model, 1, seed=0)
    dev = case.to(device)
    soft = F.one_hot(dev.targets, 3).double() * 0.7 + 0.1  # mixup-like rows, argmax = label
    g = Grid((-1, 1, 5))
    for ppc in (1, 5):
        hard = loss_landscape(dev.model, dev.inputs, dev.targets, dirs, g, loss="mse",
                              points_per_call=ppc)
        surf = loss_landscape(dev.model, dev.inputs, soft, dirs, g, loss="mse",
                              points_per_call=ppc)
        np.testing.assert_array_equal(surf.acc, hard.acc)
        assert not np.allclose(surf.loss, hard.loss)  # the soft targets do enter the loss


_Wrapped = OutputWrapper  # the shared tuple/dict/.logits output wrapper


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_dict_and_tuple_outputs_give_the_plain_surface(kind, device):
    case = make_case("vit1", n=10)
    dirs = random_directions(case.model, 2, seed=0)
    model = case.to(device).model
    wrapped = _Wrapped(model, kind)
    wdirs = [{f"inner.{k}": v for k, v in d.items()} for d in dirs]
    g = Grid((-1, 1, 3), (-1, 1, 3))
    for ppc in (1, 4):
        ref = loss_landscape(model, case.inputs, case.targets, dirs, g, batch_size=4,
                             points_per_call=ppc)
        surf = loss_landscape(wrapped, case.inputs, case.targets, wdirs, g, batch_size=4,
                              points_per_call=ppc)
        # the same parameters and forward, the logits picked out of the output: bitwise
        np.testing.assert_array_equal(surf.loss, ref.loss)
        np.testing.assert_array_equal(surf.acc, ref.acc)
    _assert_same_state(model, _state(case.to(device).model))
